"""Built-in data set loaders; each module registers one or more data sets."""

from . import omniglot  # noqa: F401
