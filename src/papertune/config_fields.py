"""What a config setting is (its marks) and the checks every config section uses.

The bottom of the config: :mod:`papertune.config_data` and :mod:`papertune.config_model` declare the sections
with :func:`marked` fields and :func:`require` checks; :mod:`papertune.config` puts them together.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any

from papertune.errors import ConfigError

# What a setting is, declared once on the field itself (``dataclasses.field(metadata=...)``) and read by
# every fingerprint and cache key (:func:`marked_settings`, :func:`settings_without`). A setting without a
# mark changes what its stage writes.
#
# SPEED_ONLY: how a stage runs (parallelism, batch sizes, timeouts and retries, where an API key is read
# from), never what it writes. Left out of the pipeline's stage fingerprints, ingest's per-document cache
# key, generate's per-chunk progress and train's resume check.
SPEED_ONLY = "speed_only"
# INPUT_SELECTION: which inputs a stage takes or refuses -- the documents folder and file types (what is
# read), the limits that fail a document (size, pages, time) and generate.max_chunks -- never what one
# input becomes. Part of the stage's fingerprint (its output changes), but left out of the per-item caches:
# a document's cached chunks (ingest) and a chunk's recorded pairs (generate) stay valid.
INPUT_SELECTION = "input_selection"
# RESUME_SAFE: training settings that may change between a run and its resume (when to stop, which
# checkpoints to keep, how often to log, merging afterwards) without changing what a step learns. Unlike
# SPEED_ONLY they do change train's outputs, so the pipeline's fingerprint keeps them.
RESUME_SAFE = "resume_safe"


def marked(kind: str, default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field carrying the mark ``kind`` (SPEED_ONLY, INPUT_SELECTION or RESUME_SAFE)."""
    return field(default=default, default_factory=factory, metadata={kind: True})



def require(condition: bool, message: str) -> None:
    """Raise a :class:`ConfigError` with ``message`` (naming the setting and what to do) unless ``condition``."""
    if not condition:
        raise ConfigError(message)
