"""The error every layer raises for a problem the user fixes in the configuration (the bottom layer: no imports)."""


class ConfigError(ValueError):
    """A configuration problem; the message names the key and what is allowed."""
