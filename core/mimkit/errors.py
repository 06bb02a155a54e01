"""mimkit's exceptions: each message names the file, key or plugin at fault."""


class MimkitError(Exception):
    """Base class of every error mimkit raises on purpose."""


class ConfigError(MimkitError, ValueError):
    """A recipe is invalid: the message names the key path, the value and what is allowed."""


class PluginError(MimkitError):
    """A plugin is faulty: the message names the plugin."""


class DataError(MimkitError):
    """Input data is missing or unreadable: the message names the path."""


class CheckpointError(MimkitError):
    """A checkpoint cannot be loaded: the message names the file and the mismatch."""
