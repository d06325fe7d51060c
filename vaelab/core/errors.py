"""Exceptions that carry a message meant for people.

Library code raises these with a message that says what is wrong and how to fix it, naming Python
arguments (``latent_dim=8``); the CLI prints the message as one line on stderr, with those names
turned into its flags (``--latent-dim 8``), and exits with status 2.

Every error here is a ``ValueError`` (bad input), and the ones about a missing file or run
directory are also ``FileNotFoundError``, so callers can catch them with the built-in types.
"""

from __future__ import annotations


class VaelabError(ValueError):
    """A user-facing error: bad input, a missing file, an unknown name."""


class NotFoundError(VaelabError, FileNotFoundError):
    """A file, folder or run directory that was asked for does not exist."""

    def __str__(self) -> str:
        # FileNotFoundError would format several arguments as "[Errno ...]"; ours is one message
        return str(self.args[0]) if self.args else ""


class DataError(VaelabError):
    """A dataset is missing, corrupt, or does not fit what was asked of it."""


class DataNotFoundError(DataError, NotFoundError):
    """A dataset file or folder does not exist."""


class ConfigError(VaelabError):
    """A configuration value is unknown or out of range."""


class RunError(VaelabError):
    """A run directory or checkpoint is missing, incomplete or corrupt."""


class RunNotFoundError(RunError, NotFoundError):
    """A run directory, or a file a run should hold, does not exist."""


class UntrustedCodeError(RunError):
    """A run directory names code to import (a network factory) that the caller did not allow."""


class TrainingDiverged(VaelabError):
    """The loss became non-finite; the last good checkpoint was kept."""


class UnknownOptionError(ConfigError, TypeError):
    """A builder got a keyword argument it does not take (a TypeError, as Python's own calls raise,
    and a ConfigError, so the CLI shows it as one line)."""


class RunBusyError(RunError):
    """Another process is training into the run directory (it holds the directory's lock)."""


class RunFinishedError(RunError):
    """A run asked to continue has already finished, at the epochs it was asked for."""


class WriteError(RunError, OSError):
    """A file could not be written: the disk is full, a quota is reached, or the folder is
    read-only or not ours. The file that stood there before, if any, is left as it was."""
