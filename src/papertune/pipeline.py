"""The whole job in one command: ingest -> generate -> curate -> augment -> build -> train -> evaluate.

Every stage works in one run directory. A stage is skipped when its outputs are current: its
*fingerprint* -- a hash of the content of every file it reads and of the config settings its outputs
depend on -- equals the one recorded when it last finished, and none of the files it wrote then is
missing. The record is ``RUN/<stage dir>/stage_fingerprint.json``: written with ``"state": "running"``
before the stage starts and replaced, atomically, by ``"state": "done"`` (or ``"partial"``) with the
input hashes, the settings and the list of outputs once it has finished. A stage that runs rewrites its
outputs, so the next stage sees changed inputs and runs too; a stage whose rerun produced the same
bytes leaves everything downstream current.

An interrupted run continues where it stopped: finished stages are skipped, ingest and generate reuse
their own per-document and per-chunk progress, and train resumes from its last complete checkpoint
when the checkpoints were written under the same fingerprint (and train's own resume check,
``RUN/train/fingerprint.json``, agrees); otherwise it starts over.

The run ends with ``RUN/summary.md`` and ``RUN/summary.json``: counts after each stage, training time
and speed, the loss table, base vs tuned metrics, every artifact's path, and what ran or was skipped.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import papertune
from papertune.config import PapertuneConfig, config_to_dict, load_config
from papertune.errors import ConfigError, ExitCode, PapertuneError
from papertune.rundir import data_files, read_jsonl, sha256_file, sha256_json, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "stage_fingerprint.json"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"

# Settings that change how fast a stage runs, never what it writes; left out of fingerprints.
SPEED_ONLY = frozenset({
    "ingest.workers",
    "build.num_proc",
    "train.dataloader_workers",  # the same batches in the same order, collated elsewhere
    *(f"{section}.llm.{key}" for section in ("generate", "augment")
      for key in ("concurrency", "timeout_s", "max_retries", "retry_backoff_s", "api_key_env")),
    *(f"evaluate.judge.{key}" for key in ("concurrency", "timeout_s", "max_retries", "retry_backoff_s", "api_key_env")),
})


# --- profiles --------------------------------------------------------------------------------------


def _profiles_dir() -> Path:
    from importlib.resources import files

    return Path(str(files("papertune") / "profiles"))


def available_profiles() -> list[str]:
    """Names of the profiles shipped in the package (``papertune/profiles/NAME.yaml``, copies of ``configs/``)."""
    return sorted(p.stem for p in _profiles_dir().glob("*.yaml"))


def profile_path(name: str) -> Path:
    """A profile shipped inside the package, so it is found wherever papertune is installed."""
    path = _profiles_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown profile {name!r}; use one of {', '.join(available_profiles())} or a YAML file")
    return path


def pick_profile() -> Path:
    """The profile for this machine: gpu-fast (the report's model and hyperparameters on papertune's fast
    training path) when PyTorch sees a CUDA GPU, else cpu. The report's recipe as written is ``gpu``."""
    import torch

    if torch.cuda.is_available():
        path = profile_path("gpu-fast")
        log.info("run: no config given; CUDA GPU found (%s): using the gpu-fast profile %s (the report's recipe "
                 "as written: --config gpu)", torch.cuda.get_device_name(), path)
    else:
        path = profile_path("cpu")
        log.info("run: no config given; no CUDA GPU: using the cpu profile %s", path)
    return path


def resolve_config_file(spec: str | None) -> Path:
    """A config argument: a YAML file, a profile name (cpu, gpu, gpu-fast), or nothing (picked from the hardware)."""
    if not spec:
        return pick_profile()
    path = Path(spec)
    if not path.exists() and spec in available_profiles():
        return profile_path(spec)
    return path  # load_config reports a missing file


# --- stages and fingerprints -----------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """What the pipeline knows about a stage: where it records, what it reads, what it writes."""

    name: str  # the command and the module papertune.<name>
    directory: str  # RUN/<directory> holds its config.yaml, report and stage_fingerprint.json
    settings: tuple[str, ...]  # dotted config paths its outputs depend on
    outputs: tuple[str, ...]  # files and folders under RUN it writes (the first must exist afterwards)
    inputs: Callable[[PapertuneConfig], list[tuple[str, Path]]]  # (label, file or folder) it reads


def _run_files(*names: str) -> Callable[[PapertuneConfig], list[tuple[str, Path]]]:
    return lambda config: [(name, Path(config.run_dir) / name) for name in names]


def _ingest_inputs(config: PapertuneConfig) -> list[tuple[str, Path]]:
    from papertune.ingest.stage import discover

    docs = Path(config.ingest.docs_dir)
    files, _ignored = discover(docs, config.ingest.extensions)
    return [(f"docs/{path.relative_to(docs).as_posix()}", path) for path in files]


def _evaluate_inputs(config: PapertuneConfig) -> list[tuple[str, Path]]:
    from papertune.evaluate import adapter_path

    run_dir = Path(config.run_dir)
    inputs = [("dataset", run_dir / "dataset")]
    if config.evaluate.tuned:
        adapter = adapter_path(config)
        inputs.append(("train/adapter" if not config.evaluate.adapter else str(adapter), adapter))
    if config.evaluate.judge_enabled:  # the judge sees the source chunk
        inputs.append(("chunks.jsonl", run_dir / "chunks.jsonl"))
    return inputs


STAGES: tuple[Stage, ...] = (
    Stage("ingest", "ingest", ("ingest",), ("chunks.jsonl", "ingest/report.json"), _ingest_inputs),
    # The rules generator splits sentences with the ingest segmenter.
    Stage("generate", "generate", ("generate", "ingest.segmenter"), ("qa.jsonl", "generate/report.json"),
          _run_files("chunks.jsonl")),
    Stage("curate", "curate", ("curate",), ("qa_curated.jsonl", "qa_dropped.jsonl", "curate/report.json"),
          _run_files("qa.jsonl", "chunks.jsonl")),
    Stage("augment", "augment", ("augment",), ("qa_augmented.jsonl", "augment/report.json"),
          _run_files("qa_curated.jsonl")),
    # build formats with build.model's chat template (train warns when train.model differs).
    Stage("build", "build", ("build",),
          ("dataset", "output.json", "dataset_card.md", "build/report.json", "build/lengths.png"),
          _run_files("qa_augmented.jsonl")),
    Stage("train", "train", ("train",),
          ("train/adapter", "train/report.json", "train/metrics.jsonl", "train/best_checkpoint.json",
           "train/loss_table.md", "train/loss_curve.png"),
          _run_files("dataset")),
    # evaluate loads train.model with the training dtype and prompt, and skips rows over max_seq_length.
    Stage("evaluate", "eval",
          ("evaluate", "train.model", "train.dtype", "train.max_seq_length", "train.trust_remote_code",
           "build.system_prompt"),
          ("eval/metrics.json", "eval/answers.jsonl", "eval/report.md", "eval/metrics.png", "eval/per_document.png"),
          _evaluate_inputs),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)
_BY_NAME = {stage.name: stage for stage in STAGES}


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def stage_settings(stage: Stage, config: PapertuneConfig) -> dict[str, Any]:
    """The resolved settings ``stage``'s outputs depend on, flattened to dotted keys."""
    data = config_to_dict(config)
    selected: dict[str, Any] = {}
    for dotted in stage.settings:
        node: Any = data
        for key in dotted.split("."):
            node = node[key]
        selected.update(_flatten(node, dotted))
    return {key: value for key, value in sorted(selected.items()) if key not in SPEED_ONLY}


class FileHasher:
    """sha256 of files and folders, remembered per (path, size, mtime) so one run hashes each file once."""

    def __init__(self) -> None:
        self._memo: dict[tuple[str, int, int], str] = {}

    def file(self, path: Path) -> str:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._memo:
            self._memo[key] = sha256_file(path)
        return self._memo[key]

    def tree(self, label: str, path: Path) -> dict[str, str]:
        """label -> hash for a file, or label/relative -> hash for every data file under a folder; a missing
        path hashes as "missing" (the stage then fails with its own message)."""
        if path.is_file():
            return {label: self.file(path)}
        if not path.is_dir():
            return {label: "missing"}
        found = {f"{label}/{item.relative_to(path).as_posix()}": self.file(item) for item in data_files(path)}
        return found or {label: "empty"}


def stage_inputs(stage: Stage, config: PapertuneConfig, hasher: FileHasher | None = None) -> dict[str, str]:
    hasher = hasher or FileHasher()
    hashes: dict[str, str] = {}
    for label, path in stage.inputs(config):
        hashes.update(hasher.tree(label, path))
    return hashes


def fingerprint_of(stage: str, settings: dict[str, Any], inputs: dict[str, str], extra: dict[str, Any] | None = None) -> str:
    """One hash of everything a stage's outputs depend on (its name, papertune's version, settings, inputs)."""
    return sha256_json({"stage": stage, "papertune": papertune.__version__, "settings": settings,
                        "inputs": inputs, "extra": extra or {}})


@dataclass
class Fingerprint:
    stage: str
    value: str
    settings: dict[str, Any]
    inputs: dict[str, str]
    extra: dict[str, Any]


def compute_fingerprint(stage: Stage, config: PapertuneConfig, hasher: FileHasher | None = None) -> Fingerprint:
    settings = stage_settings(stage, config)
    inputs = stage_inputs(stage, config, hasher)
    extra: dict[str, Any] = {}
    if stage.name == "train":
        # "auto" resolves per machine; checkpoints of one backend are not resumed by another.
        from papertune.train.model import choose_backend

        extra["backend"] = choose_backend(config.train)
    return Fingerprint(stage.name, fingerprint_of(stage.name, settings, inputs, extra), settings, inputs, extra)


def read_record(run_dir: Path, stage: Stage) -> dict[str, Any] | None:
    path = run_dir / stage.directory / FINGERPRINT_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _missing_outputs(run_dir: Path, record: dict[str, Any]) -> list[str]:
    return [name for name in record.get("outputs", []) if not (run_dir / name).exists()]


def _changed(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k, "<unset>") != new.get(k, "<unset>"))


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def why_stale(run_dir: Path, stage: Stage, fp: Fingerprint, record: dict[str, Any] | None) -> str | None:
    """Why ``stage`` must run (a reason for the log and summary), or None when its outputs are current."""
    if record is None:
        return "no earlier run"
    if record.get("state") == "running":
        return "the last run stopped before it finished"
    if record.get("state") == "partial":
        return "some inputs failed last time; trying them again"
    if record.get("fingerprint") != fp.value:
        reasons = []
        if record.get("papertune") != papertune.__version__:
            reasons.append(f"papertune {record.get('papertune')} -> {papertune.__version__}")
        settings = _changed(record.get("settings", {}), fp.settings)
        if settings:
            reasons.append(f"settings changed: {_few(settings)}")
        inputs = _changed(record.get("inputs", {}), fp.inputs)
        if inputs:
            reasons.append(f"inputs changed: {_few(inputs)}")
        if record.get("extra", {}) != fp.extra:
            reasons.append(f"{_few(_changed(record.get('extra', {}), fp.extra))} changed")
        return "; ".join(reasons) or "fingerprint changed"
    missing = _missing_outputs(run_dir, record)
    if missing:
        return f"outputs missing: {_few(missing)}"
    return None


def _output_files(run_dir: Path, stage: Stage) -> list[str]:
    """Every file the stage wrote, relative to RUN (folders expanded), for the missing-output check."""
    found = []
    for name in stage.outputs:
        path = run_dir / name
        if path.is_file():
            found.append(name)
        elif path.is_dir():
            found += [f"{name}/{p.relative_to(path).as_posix()}" for p in sorted(path.rglob("*"))
                      if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)]
    return found


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --- running ---------------------------------------------------------------------------------------


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


def _selection(from_stage: str | None, to_stage: str | None, only: str | None) -> tuple[list[str], set[str]]:
    """(stages to consider, stages to run even when current)."""
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


def _checkpoints_match(config: PapertuneConfig, backend: str) -> bool:
    """Whether RUN/train's checkpoints were written with the settings, data and model train would use now
    (train's own resume fingerprint, RUN/train/fingerprint.json, which train checks again on resume)."""
    from papertune.train.data import run_fingerprint

    run_dir = Path(config.run_dir)
    recorded = _load_json(run_dir / "train" / "fingerprint.json")
    return recorded == run_fingerprint(config.train, run_dir, backend)


def _call_stage(stage: Stage, config: PapertuneConfig, fp: Fingerprint, previous: dict[str, Any] | None,
                forced: bool) -> bool:
    """Run one stage; returns True when it finished with some inputs failed (exit code 3)."""
    run_dir = Path(config.run_dir)
    if stage.name == "train":
        from papertune import train
        from papertune.train.trainer import complete_checkpoints

        checkpoints = complete_checkpoints(run_dir / "train" / "checkpoints")
        # The pipeline's record says the checkpoints come from a run of this fingerprint (a stricter test than
        # train's own, which allows some settings to change); train's own record says they survived (a run
        # that failed before train cleared them leaves a record of the new fingerprint beside old checkpoints).
        same_run = previous is not None and previous.get("fingerprint") == fp.value
        if checkpoints and not forced and same_run and _checkpoints_match(config, fp.extra["backend"]):
            log.info("run: train resumes from %s (written with the same settings and data)", checkpoints[-1].name)
            train.run(config, resume=True)
        else:
            if checkpoints:
                log.info("run: train starts over; the %d checkpoint(s) in %s are from %s and are deleted",
                         len(checkpoints), run_dir / "train" / "checkpoints",
                         "a forced rerun" if forced else "other settings or data")
            train.run(config, force=True)
        return False
    if stage.name == "ingest":
        from papertune import ingest

        ingest.run(config)
        failed = ingest.failed_documents(run_dir)
        for doc in failed:
            log.error("run: ingest: %s", doc["reason"])
        return bool(failed)
    importlib.import_module(f"papertune.{stage.name}").run(config)
    return False


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
    selected, forced = _selection(from_stage, to_stage, only)
    if force:
        forced = set(selected)
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
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
        stage = _BY_NAME[name]
        result = results[name]
        t0 = time.perf_counter()
        try:
            fp = compute_fingerprint(stage, config, hasher)
            result.fingerprint = fp.value
            record = read_record(run_dir, stage)
            reason = _forced_reason(from_stage, only, force) if name in forced else why_stale(run_dir, stage, fp, record)
            if reason is None:
                result.status, result.reason = "skipped", "outputs current"
                result.last_ran = {k: record.get(k) for k in ("finished_at", "seconds")} if record else None
                result.seconds = round(time.perf_counter() - t0, 3)
                log.info("run: %s skipped: outputs current (fingerprint %s)", name, fp.value[:12])
                continue
            result.reason = reason
            log.info("run: %s runs: %s", name, reason)
            stage_started = _now()
            write_json_atomic(run_dir / stage.directory / FINGERPRINT_FILE,
                              {"stage": name, "state": "running", "fingerprint": fp.value, "started_at": stage_started,
                               "papertune": papertune.__version__})
            was_partial = _call_stage(stage, config, fp, record, name in forced)
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
        # The stage's own outputs are the next stage's inputs: hash them after it wrote them.
        write_json_atomic(run_dir / stage.directory / FINGERPRINT_FILE, {
            "stage": name, "state": "partial" if was_partial else "done", "fingerprint": fp.value,
            "papertune": papertune.__version__, "started_at": stage_started, "finished_at": _now(),
            "seconds": seconds, "settings": fp.settings, "inputs": fp.inputs, "extra": fp.extra,
            "outputs": _output_files(run_dir, stage),
        })
        log.info("run: %s %s in %.1f s", name, "finished with failures" if was_partial else "done", seconds)

    code = ExitCode.PARTIAL if partial else ExitCode.OK
    return _finish(config, results, context, started, code)


def run(config: PapertuneConfig, **options: Any) -> Path:
    """``papertune run`` as a function like every stage's: returns ``RUN/summary.json``."""
    return run_pipeline(config, **options).summary_path


# --- summary ---------------------------------------------------------------------------------------


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _count_lines(path: Path) -> int | None:
    if not path.is_file():
        return None
    with path.open(encoding="utf-8", errors="replace") as fh:
        return sum(1 for line in fh if line.strip())


def loss_table(metrics_path: Path) -> list[dict[str, Any]]:
    """(step, training loss, validation loss) at each evaluation, like the report's table; the last
    record of a step wins (a resumed run logs again the steps after its checkpoint)."""
    if not metrics_path.is_file():
        return []
    train: dict[int, float] = {}
    evals: dict[int, float] = {}
    for row in read_jsonl(metrics_path):
        if "loss" in row:
            train[row["step"]] = row["loss"]
        if "eval_loss" in row:
            evals[row["step"]] = row["eval_loss"]
    rows = []
    for step in sorted(evals):
        before = [train[s] for s in sorted(train) if s <= step]
        rows.append({"step": step, "train_loss": before[-1] if before else None, "val_loss": evals[step]})
    if not rows:  # no evaluation: the training losses alone
        rows = [{"step": s, "train_loss": train[s], "val_loss": None} for s in sorted(train)]
    return rows


def _artifacts(run_dir: Path) -> dict[str, str]:
    candidates = {
        "chunks": "chunks.jsonl", "ingest report": "ingest/report.json", "pairs (generated)": "qa.jsonl",
        "generate report": "generate/report.json", "pairs (curated)": "qa_curated.jsonl",
        "pairs (dropped)": "qa_dropped.jsonl", "curate report": "curate/report.json",
        "pairs (augmented)": "qa_augmented.jsonl", "augment report": "augment/report.json",
        "dataset (json)": "output.json", "dataset": "dataset", "dataset card": "dataset_card.md",
        "build report": "build/report.json", "adapter": "train/adapter", "merged model": "train/merged",
        "checkpoints": "train/checkpoints", "training metrics": "train/metrics.jsonl",
        "loss table": "train/loss_table.md", "loss curve": "train/loss_curve.png", "tensorboard": "train/tensorboard",
        "train report": "train/report.json", "eval metrics": "eval/metrics.json", "eval answers": "eval/answers.jsonl",
        "eval report": "eval/report.md", "eval chart": "eval/metrics.png", "per-document chart": "eval/per_document.png",
    }
    return {name: str(run_dir / rel) for name, rel in candidates.items() if (run_dir / rel).exists()}


def collect_summary(run_dir: Path) -> dict[str, Any]:
    """What the run directory holds now: counts read from the files themselves, and the reports."""
    ingest_report = _load_json(run_dir / "ingest" / "report.json") or {}
    augment_report = _load_json(run_dir / "augment" / "report.json") or {}
    build_report = _load_json(run_dir / "build" / "report.json") or {}
    train_report = _load_json(run_dir / "train" / "report.json")
    eval_metrics = _load_json(run_dir / "eval" / "metrics.json")
    output_rows = list(read_jsonl(run_dir / "output.json")) if (run_dir / "output.json").is_file() else []
    documents = {
        "documents": ingest_report.get("documents"),
        "pages": ingest_report.get("pages"),
        "ocr_pages": ingest_report.get("ocr_pages"),
        "failed": [{"source": d["source"], "reason": d.get("reason")}
                   for d in ingest_report.get("per_document", []) if d.get("status") == "failed"],
    }
    augmented = _count_lines(run_dir / "qa_augmented.jsonl")
    counts = {
        "chunks": _count_lines(run_dir / "chunks.jsonl"),
        "generated": _count_lines(run_dir / "qa.jsonl"),
        "curated": _count_lines(run_dir / "qa_curated.jsonl"),
        "dropped": _count_lines(run_dir / "qa_dropped.jsonl"),
        "augmented": augmented,
        "variants": augment_report.get("variants"),
        "dataset_rows": len(output_rows) if output_rows else None,
        "train": build_report.get("train"),
        "test": build_report.get("test"),
    }
    training = None
    if train_report:
        training = {k: train_report.get(k) for k in ("model", "backend", "device", "global_steps", "epochs", "wall_s",
                                                     "tokens_seen", "tokens_per_s", "train_loss", "best_eval_loss",
                                                     "best_checkpoint", "stopped_early", "resumed_from")}
    evaluation = None
    if eval_metrics:
        evaluation = {"questions": eval_metrics.get("questions"), "test_rows": eval_metrics.get("test_rows"),
                      "models": {}}
        for name in eval_metrics.get("models", []):
            loss = eval_metrics.get("loss", {}).get(name, {})
            answers = eval_metrics.get("answers", {}).get(name, {})
            evaluation["models"][name] = {"loss": loss.get("loss"), "perplexity": loss.get("perplexity"),
                                          **{k: v for k, v in answers.items() if k != "questions"}}
    return {"documents": documents, "counts": counts, "training": training,
            "loss_table": loss_table(run_dir / "train" / "metrics.jsonl"), "evaluation": evaluation,
            "artifacts": _artifacts(run_dir)}


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def render_summary(summary: dict[str, Any]) -> str:
    """``summary.json`` as Markdown (``RUN/summary.md``, also logged)."""
    lines = [f"# papertune run: {summary['status']} (exit code {summary['exit_code']})", "",
             f"Run directory `{summary['run_dir']}`, config `{summary['config_file'] or '(defaults)'}`, "
             f"{summary['seconds']:.1f} s.", ""]
    if summary.get("failed_stage"):
        lines += [f"**Stage {summary['failed_stage']} failed:** {summary['error']}", ""]
    lines += ["## Stages", "", "| stage | status | seconds | why |", "|---|---|---|---|"]
    for row in summary["stages"]:
        why = row["reason"]
        if row["status"] == "skipped" and row.get("last_ran") and row["last_ran"].get("seconds") is not None:
            why += f" (made in {row['last_ran']['seconds']:.1f} s at {row['last_ran']['finished_at']})"
        lines.append(f"| {row['stage']} | {row['status']} | {row['seconds']:.1f} | {why} |")
    docs, counts = summary["documents"], summary["counts"]
    lines += ["", "## Data", "", "| what | count |", "|---|---|",
              f"| documents | {_fmt(docs['documents'])} ({len(docs['failed'])} failed) |",
              f"| pages (PDF) | {_fmt(docs['pages'])} ({_fmt(docs['ocr_pages'])} OCR) |",
              f"| chunks | {_fmt(counts['chunks'])} |",
              f"| pairs generated | {_fmt(counts['generated'])} |",
              f"| pairs after curate | {_fmt(counts['curated'])} ({_fmt(counts['dropped'])} dropped) |",
              f"| pairs after augment | {_fmt(counts['augmented'])} ({_fmt(counts['variants'])} variants) |",
              f"| dataset train / test | {_fmt(counts['train'])} / {_fmt(counts['test'])} |"]
    if docs["failed"]:
        lines += ["", "Failed documents:", ""] + [f"- `{d['source']}`: {d['reason']}" for d in docs["failed"]]
    training = summary.get("training")
    if training:
        lines += ["", "## Training", "",
                  f"{training['model']} ({training['backend']}, {training['device']}): {_fmt(training['global_steps'])} "
                  f"steps in {_fmt(training['wall_s'], 1)} s, {_fmt(training['tokens_per_s'], 1)} tokens/s"
                  + (f", resumed from {training['resumed_from']}" if training.get("resumed_from") else "") + ".", ""]
    if summary.get("loss_table"):
        lines += ["| Step | Training Loss | Validation Loss |", "|---|---|---|"]
        lines += [f"| {r['step']} | {_fmt(r['train_loss'], 6)} | {_fmt(r['val_loss'], 6)} |" for r in summary["loss_table"]]
    evaluation = summary.get("evaluation")
    if evaluation and evaluation["models"]:
        models = list(evaluation["models"])
        metrics = [m for m in ("loss", "perplexity", "rouge_l", "f1", "exact_match", "embedding_cosine",
                               "judge_correctness", "judge_groundedness")
                   if any(evaluation["models"][n].get(m) is not None for n in models)]
        lines += ["", "## Base vs tuned", "",
                  f"{evaluation['test_rows']} test rows, {evaluation['questions']} questions answered.", "",
                  "| metric | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
        lines += [f"| {m} | " + " | ".join(_fmt(evaluation["models"][n].get(m)) for n in models) + " |" for m in metrics]
    lines += ["", "## Artifacts", ""] + [f"- {name}: `{path}`" for name, path in summary["artifacts"].items()]
    return "\n".join(lines) + "\n"


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


def load_run_config(config_file: str | None, overrides: list[str]) -> tuple[PapertuneConfig, Path]:
    """The config of ``papertune run [CONFIG]``: a file, a profile name, or the profile for this hardware."""
    path = resolve_config_file(config_file)
    return load_config(path, overrides), path
