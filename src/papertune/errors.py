"""Errors the CLI turns into one-line messages and exit codes."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes; scripts can tell a bad config from a partly failed run."""

    OK = 0
    ERROR = 1  # unexpected failure (a bug, or an environment problem we did not foresee)
    USAGE = 2  # bad command line or configuration
    PARTIAL = 3  # the stage finished, but some inputs failed (see the stage's report)
    NONFINITE_LOSS = 4  # training stopped: the loss became NaN or infinite
    PREEMPTED = 5  # training stopped on SIGTERM after saving a checkpoint; rerun with --resume
    INTERRUPTED = 130


class PapertuneError(Exception):
    """An error with a message written for the user; the CLI prints it without a traceback."""

    exit_code: ExitCode = ExitCode.ERROR


class ConfigError(PapertuneError):
    """A setting is missing, unknown or out of range; the message names the field."""

    exit_code = ExitCode.USAGE


class InputError(PapertuneError):
    """The input (a folder, a file) cannot be used; the message names it and says what to do."""

    exit_code = ExitCode.USAGE


class DocumentError(PapertuneError):
    """One document cannot be ingested; the others go on."""


class NonFiniteLossError(PapertuneError):
    """The training loss became NaN or infinite; the last good checkpoint is left as it was."""

    exit_code = ExitCode.NONFINITE_LOSS


class PreemptedError(PapertuneError):
    """Training received SIGTERM, saved a checkpoint and stopped; ``--resume`` continues from it."""

    exit_code = ExitCode.PREEMPTED
