"""Built-in data set loaders; each module registers one or more data sets."""

from . import cifar10, cifarfs, digits, folder, miniimagenet, mnist, omniglot  # noqa: F401
