"""User-facing errors and the exit code of each failure family.

Every error MPCTF raises on purpose is an :class:`MpctfError`; the CLI prints its one-line message and exits with
its code, never a traceback. ``EXIT_CODES`` is the table ``mpctf --help`` shows; a test checks that every code has
help text.
"""

from __future__ import annotations


class MpctfError(Exception):
    """Base class: a problem the user can fix, reported as one line."""

    exit_code: int = 1


class ConfigError(MpctfError):
    """The configuration (YAML keys, values, paths, names) is invalid."""

    exit_code = 2


class DataError(MpctfError):
    """A data source is missing, unreadable or too small for what the config asks."""

    exit_code = 3


class ModelError(MpctfError):
    """The model cannot be found or loaded."""

    exit_code = 4


class FederationError(MpctfError):
    """The federation could not start or could not finish a round (too few parties, timeouts)."""

    exit_code = 5


class LaunchError(MpctfError):
    """A process or host of the federation failed to start or died."""

    exit_code = 6


class UpdateRejected(MpctfError):
    """One party's update is unusable for this round (missing key, wrong shape, NaN, absurd norm)."""

    exit_code = 7


class StorageError(MpctfError):
    """A file or folder cannot be read or written (permissions, a full disk, a file where a folder must be)."""

    exit_code = 8


class Interrupted(MpctfError):
    """The user stopped the run (Ctrl-C); everything was torn down, completed rounds are kept."""

    exit_code = 130


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "unexpected internal error (a bug: please report it with the run directory's logs)",
    ConfigError.exit_code: "invalid configuration: fix the named key and run again",
    DataError.exit_code: "data problem: a file is missing or unreadable, or a party has too little data",
    ModelError.exit_code: "model problem: the model path or name cannot be resolved or loaded offline",
    FederationError.exit_code: "federation problem: too few parties answered, or a round timed out",
    LaunchError.exit_code: "launch problem: a server or party process failed to start or died",
    UpdateRejected.exit_code: "a party update was rejected",
    StorageError.exit_code: "file system problem: a file or folder cannot be read or written (permissions, disk full)",
    Interrupted.exit_code: "interrupted by the user; processes were stopped, completed rounds are kept",
}
