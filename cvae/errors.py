"""User-facing errors.

Anything a user can cause (a bad flag, a missing dataset, a corrupt checkpoint)
raises a `CVAEError`. Command lines catch it and print its message as one line
with exit code 2; the app shows it on the page. Anything else is a bug.
"""


class CVAEError(Exception):
    """A problem with the user's input, explained in one line."""


class ConfigError(CVAEError):
    """An invalid option or combination of options."""


class Elsewhere(CVAEError):
    """Another of the processes training one run failed, and said why (rank 0 reports it); this one stops with it."""


class DataError(CVAEError):
    """A dataset that is missing, unreadable or malformed."""


class CheckpointError(CVAEError):
    """A checkpoint that is missing, corrupt, unsafe or of another model."""
