"""Typed configuration: dataclasses with defaults, loaded from YAML, overridable with ``--set``.

Precedence, lowest first: dataclass defaults < YAML file < ``--set section.key=value`` < explicit CLI flags.
Every error names the offending field (``ingest.chunk_tokens``) so a user knows what to change.
The sections live in :mod:`papertune.config_data` (ingest to build) and :mod:`papertune.config_model` (train to
serve), their marks and checks in :mod:`papertune.config_fields`; everything is importable from here.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from papertune.config_data import (
    GENERATORS,
    SMOLLM2_PACKAGED,
    AugmentConfig,
    BuildConfig,
    CurateConfig,
    GenerateConfig,
    IngestConfig,
    LLMConfig,
)
from papertune.config_fields import INPUT_SELECTION, RESUME_SAFE, SPEED_ONLY, require
from papertune.config_model import (
    EVAL_MODES,
    EXPORT_FORMATS,
    GGUF_TYPES,
    LORA_ALL_LINEAR,
    EvaluateConfig,
    ExportConfig,
    RetrievalConfig,
    ServeConfig,
    TrainConfig,
)
from papertune.errors import ConfigError
from papertune.settings import apply_overrides, from_dict, parse_yaml

__all__ = [
    "EVAL_MODES",
    "EXPORT_FORMATS",
    "GENERATORS",
    "GGUF_TYPES",
    "INPUT_SELECTION",
    "LORA_ALL_LINEAR",
    "RESUME_SAFE",
    "SMOLLM2_PACKAGED",
    "SPEED_ONLY",
    "AugmentConfig",
    "BuildConfig",
    "CurateConfig",
    "EvaluateConfig",
    "ExportConfig",
    "GenerateConfig",
    "IngestConfig",
    "LLMConfig",
    "PapertuneConfig",
    "RetrievalConfig",
    "ServeConfig",
    "TrainConfig",
    "apply_overrides",
    "config_to_dict",
    "load_config",
    "marked_settings",
    "settings_without",
]


@dataclass
class PapertuneConfig:
    """The whole pipeline's configuration; one section per stage."""

    run_dir: str = "runs/default"
    ingest: IngestConfig = field(default_factory=IngestConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def validate(self) -> None:
        require(bool(self.run_dir), "run_dir must be a directory path, e.g. runs/demo")
        self.ingest.validate()
        self.generate.validate()
        self.curate.validate()
        self.augment.validate()
        self.build.validate()
        self.train.validate()
        self.export.validate()
        self.retrieval.validate()
        self.evaluate.validate()
        self.serve.validate()
        require(not self.retrieval.verify or self.build.raft_verify_rows,
                "retrieval.verify asks the tuned model whether a passage holds its answer, which it learns from "
                "build.raft_verify_rows (untrained, its yes or no is about chance): set build.raft_verify_rows=true "
                "(build.mode raft) and build and train again, or set retrieval.verify=false and "
                "retrieval.verify_retry=false")



# ---------------------------------------------------------------------------------------------
# dict <-> dataclass


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-serialisable dict of a config dataclass."""
    return dataclasses.asdict(cfg)


def marked_settings(kind: str, cls: type | None = None, prefix: str = "") -> frozenset[str]:
    """Dotted paths of the settings marked ``kind`` in the config class ``cls`` (default: the whole
    config), e.g. ``marked_settings(SPEED_ONLY)`` holds ``ingest.workers`` and ``generate.llm.concurrency``."""
    found: set[str] = set()
    hints = typing.get_type_hints(cls or PapertuneConfig)
    for item in dataclasses.fields(cls or PapertuneConfig):
        path = f"{prefix}.{item.name}" if prefix else item.name
        if item.metadata.get(kind):
            found.add(path)
        elif dataclasses.is_dataclass(hints[item.name]):
            found |= marked_settings(kind, hints[item.name], path)
    return frozenset(found)


def settings_without(cfg: Any, *kinds: str) -> dict[str, Any]:
    """``config_to_dict(cfg)`` of a config section without the settings marked with any of ``kinds``
    (nested sections too): what a cache key or fingerprint of that section hashes."""
    left_out = set().union(*(marked_settings(kind, type(cfg)) for kind in kinds))
    data = config_to_dict(cfg)
    for dotted in left_out:
        *parents, name = dotted.split(".")
        node = data
        for key in parents:
            node = node[key]
        del node[name]
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PapertuneConfig:
    """Defaults, then the YAML file at ``path`` (if any), then ``overrides``; validated."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass a YAML file such as configs/cpu.yaml")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        loaded = parse_yaml(text, f"config file {path}")
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections (ingest: ...), not {type(loaded).__name__}")
        data = loaded or {}
    apply_overrides(data, overrides or [])
    try:
        cfg = from_dict(PapertuneConfig, data, "")
    except ConfigError as exc:
        if path is not None:
            raise ConfigError(f"{path}: {exc}") from exc
        raise
    cfg.validate()
    return cfg
