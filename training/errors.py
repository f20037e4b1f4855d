"""Errors the user can fix (bad recipe, bad data, failed export): the CLI prints them without a
traceback. Every training module raises a subclass of TrainingError for such problems."""


class TrainingError(Exception):
    """Base for user-facing training errors."""


class ConfigError(TrainingError):
    """The recipe or command line is wrong; the message names the key."""


class DataError(TrainingError):
    """The data cannot be trained on; raised before any training starts."""


class ExportError(TrainingError):
    """Export failed (e.g. the parity check); nothing was published."""
