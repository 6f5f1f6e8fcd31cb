"""User-facing errors: one line naming the problem and the fix, never a traceback."""


class NfviError(Exception):
    """An error caused by the user's input or environment; printed as one line by the CLI."""


class ConfigError(NfviError):
    """A configuration value that cannot be used."""


class DataError(NfviError):
    """Data that is missing, unreadable or malformed."""


class CheckpointError(NfviError):
    """A checkpoint that is missing, corrupt or incompatible."""


class DeviceError(NfviError):
    """A device that is requested but not available."""
