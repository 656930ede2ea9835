"""User-facing errors: one line that names the file or key at fault.

Library code raises :class:`GliosegError` for anything a user can fix (a missing file, a bad
param, a corrupt image). The CLI turns it into ``error: <message>`` and exit code 2, with no
traceback; anything else is a bug and keeps its traceback.
"""


class GliosegError(Exception):
    """A problem with the user's input, reported as a single line."""


class DataError(GliosegError):
    """Input data (a file, an archive, a folder) is missing, unreadable or inconsistent."""


class ConfigError(GliosegError):
    """A param in params.yaml is unknown, missing or has a wrong value."""


class TrainingError(GliosegError):
    """Training cannot go on (a loss that is no longer finite, outputs held by another training)."""


class BusyError(GliosegError):
    """Another process holds the outputs this one would write (a training still running)."""


class InputWarning(UserWarning):
    """Input the pipeline repaired or skipped instead of refusing; the message names the file and what was done."""


class RepairedInput(InputWarning):
    """A file read with a repair (mask values other than 0 and 255, non-finite voxels)."""


class SkippedInput(InputWarning):
    """A file or archive member left out (a name that does not fit the layout, a path that would escape)."""
