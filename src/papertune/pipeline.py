"""The whole job in one command: ingest -> generate -> curate -> augment -> build -> train -> evaluate.

Every stage works in one run directory and is known here only through its module's ``SPEC`` and
``run`` (:mod:`papertune.stage`). A stage is skipped when its outputs are current (:mod:`papertune.fingerprint`):
its fingerprint equals the one recorded when it last finished, and none of the files it wrote then is
missing or changed. The record, ``RUN/<stage dir>/stage_fingerprint.json``, is written with ``"state":
"running"`` before the stage starts and replaced, atomically, by ``"state": "done"`` (or ``"partial"``)
with the input hashes, the settings and the hash of each output once it has finished. The run's config is
recorded in ``RUN/config.yaml``, the config later commands on the run directory default to. A stage that runs rewrites its outputs,
so the next stage sees changed inputs and runs too; a stage whose rerun produced the same bytes leaves
everything downstream current.

An interrupted run continues where it stopped: finished stages are skipped, ingest and generate reuse
their own per-document and per-chunk progress, and train resumes from its last complete checkpoint when
its spec's ``run_options`` allow it. The run ends with ``RUN/summary.md`` and ``RUN/summary.json``
(:mod:`papertune.summary`) saying also what ran or was skipped.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import papertune
from papertune.config import PapertuneConfig
from papertune.errors import ConfigError, ExitCode, PapertuneError
from papertune.fingerprint import (
    FileHasher,
    Fingerprint,
    compute_fingerprint,
    output_hashes,
    read_record,
    record_path,
    why_stale,
)
from papertune.inference.vllm_engine import release_engines
from papertune.rundir import SUMMARY_JSON, SUMMARY_MD, record_run_config, write_json_atomic, write_text_atomic
from papertune.stage import StageSpec
from papertune.summary import collect_summary, render_summary

log = logging.getLogger(__name__)

# The registry: the stages of papertune run, in order. Each module declares SPEC and run(config, **options).
STAGE_MODULES = (
    "papertune.ingest.stage",
    "papertune.generate.stage",
    "papertune.curate.stage",
    "papertune.augment.stage",
    "papertune.build",
    "papertune.train.stage",
    "papertune.evaluate.stage",
)


def _load(module_name: str) -> ModuleType:
    module = importlib.import_module(module_name)
    if not isinstance(getattr(module, "SPEC", None), StageSpec) or not callable(getattr(module, "run", None)):
        raise TypeError(f"{module_name} is in the stage registry but declares no SPEC (a StageSpec) and run()")
    return module


_MODULES = {module.SPEC.name: module for module in map(_load, STAGE_MODULES)}
STAGES: tuple[StageSpec, ...] = tuple(module.SPEC for module in _MODULES.values())
STAGE_NAMES = tuple(_MODULES)
STAGE_BY_NAME = {stage.name: stage for stage in STAGES}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class StageResult:
    stage: str
    status: str = "not run"  # ran, partial, skipped, failed, interrupted, not run
    reason: str = ""
    seconds: float = 0.0
    fingerprint: str | None = None
    last_ran: dict[str, Any] | None = None  # for skipped stages: when the outputs were made, in how long

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class PipelineResult:
    summary_path: Path
    exit_code: int
    summary: dict[str, Any] = field(default_factory=dict)


class StageFailedError(PapertuneError):
    """A stage of ``papertune run`` failed; the message names it, the exit code is the stage's."""

    def __init__(self, stage: str, message: str, exit_code: int) -> None:
        super().__init__(f"stage {stage} failed: {message}")
        self.stage = stage
        self.exit_code = ExitCode(exit_code) if exit_code in ExitCode._value2member_map_ else ExitCode.ERROR


def select_stages(from_stage: str | None, to_stage: str | None, only: str | None) -> tuple[list[str], set[str]]:
    """(stages to consider, stages to run even when current) for --from, --to and --only."""
    for value, option in ((from_stage, "--from"), (to_stage, "--to"), (only, "--only")):
        if value is not None and value not in STAGE_NAMES:
            raise ConfigError(f"{option} {value!r}: not a stage; use one of {', '.join(STAGE_NAMES)}")
    if only is not None:
        if from_stage or to_stage:
            raise ConfigError("--only cannot be combined with --from or --to")
        return [only], {only}
    last = STAGE_NAMES.index(to_stage) if to_stage else len(STAGE_NAMES) - 1
    first = STAGE_NAMES.index(from_stage) if from_stage else None
    if first is not None and first > last:
        raise ConfigError(f"--from {from_stage} comes after --to {to_stage}")
    selected = list(STAGE_NAMES[: last + 1])
    forced = set(STAGE_NAMES[first: last + 1]) if first is not None else set()
    return selected, forced


def run_stage(stage: StageSpec, config: PapertuneConfig, fp: Fingerprint, previous: dict[str, Any] | None,
              forced: bool) -> bool:
    """Run one stage; returns True when some of its inputs failed while the rest were written (exit code 3)."""
    same_run = not forced and previous is not None and previous.get("fingerprint") == fp.value
    options = stage.run_options(config, same_run) if stage.run_options else {}
    try:
        _MODULES[stage.name].run(config, **options)
    finally:
        release_engines()  # a vLLM engine a stage loaded holds its share of the GPU until released
    failures = stage.failures(Path(config.run_dir)) if stage.failures else []
    for message in failures:
        log.error("run: %s: %s", stage.name, message)
    return bool(failures)


def _forced_reason(from_stage: str | None, only: str | None, force: bool) -> str:
    return f"forced ({'--only ' + only if only else '--force' if force else '--from ' + str(from_stage)})"


def run_pipeline(
    config: PapertuneConfig,
    *,
    from_stage: str | None = None,
    to_stage: str | None = None,
    only: str | None = None,
    force: bool = False,
    config_file: str | Path | None = None,
) -> PipelineResult:
    """Bring every selected stage up to date in ``config.run_dir`` and write the summary.

    ``from_stage``: rerun it and every later stage even when current; ``to_stage``: stop after it;
    ``only``: run just that stage, even when current; ``force``: rerun every selected stage.
    Raises :class:`StageFailedError` (after writing the summary) when a stage fails.
    """
    selected, forced = select_stages(from_stage, to_stage, only)
    if force:
        forced = set(selected)
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record_run_config(run_dir, config)
    started_at, started = _now(), time.perf_counter()
    results = {name: StageResult(name) for name in STAGE_NAMES}
    for name in STAGE_NAMES:
        if name not in selected:
            results[name].reason = "not selected"
    hasher = FileHasher()
    partial: list[str] = []
    context = {"config_file": str(config_file) if config_file else None, "started_at": started_at,
               "selection": {"from": from_stage, "to": to_stage, "only": only, "force": force}}
    log.info("run: %s in %s", " -> ".join(selected), run_dir)

    for name in selected:
        stage = STAGE_BY_NAME[name]
        result = results[name]
        t0 = time.perf_counter()
        try:
            fp = compute_fingerprint(stage, config, hasher)
            result.fingerprint = fp.value
            record = read_record(run_dir, stage)
            reason = _forced_reason(from_stage, only, force) if name in forced else why_stale(run_dir, stage, fp, record, hasher)
            if reason is None:
                result.status, result.reason = "skipped", "outputs current"
                result.last_ran = {k: record.get(k) for k in ("finished_at", "seconds")} if record else None
                result.seconds = round(time.perf_counter() - t0, 3)
                log.info("run: %s skipped: outputs current (fingerprint %s)", name, fp.value[:12])
                continue
            result.reason = reason
            log.info("run: %s runs: %s", name, reason)
            stage_started = _now()
            write_json_atomic(record_path(run_dir, stage),
                              {"stage": name, "state": "running", "fingerprint": fp.value, "started_at": stage_started,
                               "papertune": papertune.__version__})
            was_partial = run_stage(stage, config, fp, record, name in forced)
        except KeyboardInterrupt:
            result.status, result.seconds = "interrupted", round(time.perf_counter() - t0, 3)
            log.error("run: interrupted during %s; rerun the same command to continue", name)
            _finish(config, results, context, started, ExitCode.INTERRUPTED, failed=name, error="interrupted")
            raise
        except Exception as exc:
            result.status, result.seconds = "failed", round(time.perf_counter() - t0, 3)
            code = int(exc.exit_code) if isinstance(exc, PapertuneError) else int(ExitCode.ERROR)
            message = str(exc) or type(exc).__name__
            if not isinstance(exc, PapertuneError):  # a bug or an unforeseen environment problem: keep the traceback
                log.error("run: %s failed", name, exc_info=exc)
            log.error("run: the stages before %s are kept; rerun the same command to continue from %s", name, name)
            for later in selected[selected.index(name) + 1:]:
                results[later].reason = f"{name} failed"
            _finish(config, results, context, started, code, failed=name, error=message)
            raise StageFailedError(name, message, code) from exc
        seconds = round(time.perf_counter() - t0, 3)
        result.status, result.seconds = ("partial" if was_partial else "ran"), seconds
        if was_partial:
            partial.append(name)
        # The stage's own outputs are the next stage's inputs: hash them after it wrote them (once: the hasher
        # remembers them for the next stage's fingerprint).
        write_json_atomic(record_path(run_dir, stage), {
            "stage": name, "state": "partial" if was_partial else "done", "fingerprint": fp.value,
            "papertune": papertune.__version__, "started_at": stage_started, "finished_at": _now(),
            "seconds": seconds, "settings": fp.settings, "inputs": fp.inputs, "extra": fp.extra,
            "outputs": output_hashes(run_dir, stage, hasher),
        })
        log.info("run: %s %s in %.1f s", name, "finished with failures" if was_partial else "done", seconds)

    code = ExitCode.PARTIAL if partial else ExitCode.OK
    return _finish(config, results, context, started, code)


def run(config: PapertuneConfig, **options: Any) -> Path:
    """``papertune run`` as a function like every stage's: returns ``RUN/summary.json``."""
    return run_pipeline(config, **options).summary_path


def _finish(config: PapertuneConfig, results: dict[str, StageResult], context: dict[str, Any], started: float,
            exit_code: int, failed: str | None = None, error: str | None = None) -> PipelineResult:
    run_dir = Path(config.run_dir)
    status = {ExitCode.OK: "ok", ExitCode.PARTIAL: "partial", ExitCode.INTERRUPTED: "interrupted"}.get(
        ExitCode(exit_code) if exit_code in ExitCode._value2member_map_ else None, "failed")
    summary = {
        "status": status,
        "exit_code": int(exit_code),
        "failed_stage": failed,
        "error": error,
        "run_dir": str(run_dir),
        "config_file": context["config_file"],
        "selection": context["selection"],
        "papertune": papertune.__version__,
        "started_at": context["started_at"],
        "finished_at": _now(),
        "seconds": round(time.perf_counter() - started, 3),
        "stages": [results[name].as_dict() for name in STAGE_NAMES],
        **collect_summary(run_dir),
    }
    write_json_atomic(run_dir / SUMMARY_JSON, summary)
    text = render_summary(summary)
    write_text_atomic(run_dir / SUMMARY_MD, text)
    log.info("run: summary (%s)\n%s", run_dir / SUMMARY_MD, text)
    return PipelineResult(run_dir / SUMMARY_JSON, int(exit_code), summary)
