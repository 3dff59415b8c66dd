"""The contract between a stage and the commands that run it (``papertune <stage>`` and ``papertune run``).

Each stage module declares ``SPEC = StageSpec(...)`` beside its ``run(config, **options) -> Path``: where
it records, which settings and files its outputs depend on, what it writes, its command's help and
options, and the few hooks where a stage really differs (inputs that may fail one by one, a resume from
checkpoints, a fingerprint that depends on the machine). The CLI and the pipeline know stages only
through these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from papertune.config import PapertuneConfig

Inputs = Callable[[PapertuneConfig], list[tuple[str, Path]]]


def run_files(*names: str) -> Inputs:
    """``inputs`` of a stage that reads files (or folders) of the run directory, given by layout name."""
    return lambda config: [(name, Path(config.run_dir) / name) for name in names]


@dataclass(frozen=True)
class CommandOption:
    """A command-line argument of a stage's command, besides the common --config/--set/--run-dir."""

    flags: tuple[str, ...]  # ("docs_dir",): an optional positional argument; ("--workers", "-j"): an option
    help: str
    setting: str | None = None  # the dotted config setting its value sets, as --set SETTING=VALUE would
    type: Callable[[str], Any] = str
    metavar: str | None = None
    # A switch without a value, passed to the stage's run() as the keyword argument of the option's name.
    switch: bool = False

    @property
    def dest(self) -> str:
        """The attribute argparse stores it under (and, for a switch, run()'s keyword)."""
        return next((f for f in self.flags if f.startswith("--")), self.flags[0]).lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class StageSpec:
    """What the commands know about a stage; its module's ``run(config, **options)`` does the work."""

    name: str  # the command, papertune NAME, and the stage's name in papertune run
    directory: str  # RUN/<directory> holds its report, config.yaml, versions.json and stage_fingerprint.json
    help: str  # one line in papertune --help
    description: str  # papertune NAME --help
    settings: tuple[str, ...]  # dotted config paths its outputs depend on (SPEED_ONLY ones are left out)
    outputs: tuple[str, ...]  # layout names of the files and folders under RUN it writes
    inputs: Inputs  # (label, file or folder) it reads
    options: tuple[CommandOption, ...] = ()
    # Inputs that failed one by one while the rest were written (exit code 3): a message for each, read back
    # from the run directory after run() returned.
    failures: Callable[[Path], list[str]] | None = None
    # The keyword arguments papertune run calls run() with; the bool says whether the last run of this stage
    # had the same fingerprint and was not forced (so its leftovers, e.g. checkpoints, may be resumed).
    run_options: Callable[[PapertuneConfig, bool], dict[str, Any]] | None = None
    # Facts of the machine the outputs depend on (e.g. the training backend "auto" resolves to), fingerprinted
    # beside the settings.
    environment: Callable[[PapertuneConfig], dict[str, Any]] | None = None
