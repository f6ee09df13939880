"""Errors a user can act on. The CLI prints them as one line (no traceback unless --debug)."""


class DtnError(Exception):
    """Base class: an error whose message alone tells the user what to do."""


class DataError(DtnError):
    """A dataset file is missing, corrupt, or of the wrong shape."""


class ConfigError(DtnError):
    """An unknown config key, a bad value, or a preset that does not exist."""


class RunError(DtnError):
    """A run directory is missing, half-written, or from another version."""
