"""Whether a stage's outputs are current: its fingerprint, and the record ``papertune run`` keeps of it.

A stage's *fingerprint* is a hash of the content of every file it reads, of the config settings its
outputs depend on (less the SPEED_ONLY ones) and of the machine facts its spec names. The record,
``RUN/<stage dir>/stage_fingerprint.json``, holds the fingerprint of the last finished run and the hash
of each output it wrote; the stage is current when the fingerprint is the same and no output has gone
missing or changed since.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import papertune
from papertune.config import SPEED_ONLY, PapertuneConfig, config_to_dict, marked_settings
from papertune.rundir import STAGE_FINGERPRINT, data_files, sha256_file, sha256_json
from papertune.stage import StageSpec


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def stage_settings(stage: StageSpec, config: PapertuneConfig) -> dict[str, Any]:
    """The resolved settings ``stage``'s outputs depend on, flattened to dotted keys."""
    data = config_to_dict(config)
    selected: dict[str, Any] = {}
    for dotted in stage.settings:
        node: Any = data
        for key in dotted.split("."):
            node = node[key]
        selected.update(_flatten(node, dotted))
    speed_only = marked_settings(SPEED_ONLY)
    return {key: value for key, value in sorted(selected.items()) if key not in speed_only}


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


def stage_inputs(stage: StageSpec, config: PapertuneConfig, hasher: FileHasher | None = None) -> dict[str, str]:
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


def compute_fingerprint(stage: StageSpec, config: PapertuneConfig, hasher: FileHasher | None = None) -> Fingerprint:
    settings = stage_settings(stage, config)
    inputs = stage_inputs(stage, config, hasher)
    extra = stage.environment(config) if stage.environment else {}
    return Fingerprint(stage.name, fingerprint_of(stage.name, settings, inputs, extra), settings, inputs, extra)


def record_path(run_dir: Path, stage: StageSpec) -> Path:
    return run_dir / stage.directory / STAGE_FINGERPRINT


def read_record(run_dir: Path, stage: StageSpec) -> dict[str, Any] | None:
    try:
        record = json.loads(record_path(run_dir, stage).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _output_problems(run_dir: Path, stage: StageSpec, record: dict[str, Any], hasher: FileHasher) -> str | None:
    """Which of the files the stage wrote last time are missing now, or hold other content."""
    recorded = record.get("outputs")
    if not isinstance(recorded, dict):
        return "no hashes of its outputs recorded (an older record)"
    now = output_hashes(run_dir, stage, hasher)
    missing = sorted(k for k, v in recorded.items() if v != "missing" and now.get(k, "missing") == "missing")
    if missing:
        return f"outputs missing: {_few(missing)}"
    changed = _changed(recorded, now)
    if changed:
        return f"outputs changed since the stage wrote them: {_few(changed)}"
    return None


def _changed(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k, "<unset>") != new.get(k, "<unset>"))


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def why_stale(run_dir: Path, stage: StageSpec, fp: Fingerprint, record: dict[str, Any] | None,
              hasher: FileHasher | None = None) -> str | None:
    """Why ``stage`` must run (a reason for the log and summary), or None when its outputs are current: the
    same fingerprint as its last finished run, and every file it wrote then still there with the same content."""
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
    return _output_problems(run_dir, stage, record, hasher or FileHasher())


def output_hashes(run_dir: Path, stage: StageSpec, hasher: FileHasher | None = None) -> dict[str, str]:
    """The hash of every file the stage writes, by its name under RUN (folders expanded, "missing" for an
    output not there): recorded when the stage finishes, compared when it is next considered."""
    hasher = hasher or FileHasher()
    hashes: dict[str, str] = {}
    for name in stage.outputs:
        hashes.update(hasher.tree(name, run_dir / name))
    return hashes
