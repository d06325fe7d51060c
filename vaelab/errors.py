"""Exceptions that carry a message meant for people.

Library code raises these with a message that says what is wrong and how to fix it; the CLI
prints the message as one line on stderr and exits with status 2.
"""

from __future__ import annotations


class VaelabError(Exception):
    """A user-facing error: bad input, a missing file, an unknown name."""


class DataError(VaelabError):
    """A dataset is missing, corrupt, or does not fit what was asked of it."""


class ConfigError(VaelabError):
    """A configuration value is unknown or out of range."""


class RunError(VaelabError):
    """A run directory or checkpoint is missing, incomplete or corrupt."""


class TrainingDiverged(VaelabError):
    """The loss became non-finite; the last good checkpoint was kept."""
