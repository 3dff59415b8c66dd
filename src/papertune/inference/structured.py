"""Replies constrained to a JSON Schema in this process, with xgrammar (an optional dependency).

xgrammar compiles the schema against the model's tokenizer once and, at every step, masks the logits of
each constrained row to the tokens that keep its text a valid prefix of a document the schema accepts
(the engine vLLM and SGLang use for structured output). A constrained reply parses and validates unless
it is cut off at its token limit. Rows without a schema in the same batch are left free.

Constraints fit the static batches of :mod:`.generation` (a logits processor sees each row's tokens);
transformers' continuous batching has no per-request logits processing, so constrained requests are
decoded in static batches.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

from papertune.errors import ConfigError

INSTALL_HINT = "pip install xgrammar"


def require_xgrammar(setting: str = "constrain_json") -> Any:
    """The xgrammar module; a clear error naming ``setting`` and the package when it is not installed."""
    try:
        import xgrammar
    except ImportError as exc:
        raise ConfigError(
            f"{setting}: replies constrained to a JSON schema in this process need the xgrammar package "
            f"({INSTALL_HINT}); or set {setting}: false to parse free replies leniently"
        ) from exc
    return xgrammar


# Keyed by the tokenizer's id: the entry holds the tokenizer itself, so the id is never reused while cached.
_compilers: dict[tuple[int, int, tuple[int, ...]], tuple[Any, Any]] = {}
_compilers_lock = threading.Lock()


def _compiler(tokenizer: Any, vocab_size: int, stop_ids: tuple[int, ...]) -> Any:
    """One grammar compiler per tokenizer, vocabulary size and stop tokens (building the tokenizer's table
    takes a second)."""
    xgr = require_xgrammar()
    key = (id(tokenizer), vocab_size, stop_ids)
    with _compilers_lock:
        if key not in _compilers:
            info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_ids))
            _compilers[key] = (tokenizer, xgr.GrammarCompiler(info))
        return _compilers[key][1]


def compile_schemas(tokenizer: Any, vocab_size: int, schemas: Sequence[dict[str, Any] | None],
                    stop_ids: Sequence[int]) -> list[Any]:
    """Compiled grammars for each schema (None stays None); a schema xgrammar refuses is a ValueError."""
    compiler = _compiler(tokenizer, vocab_size, tuple(sorted(stop_ids)))
    grammars = []
    for schema in schemas:
        if schema is None:
            grammars.append(None)
            continue
        try:
            # The compiler caches what it compiled; properties keep their order (the reply's key order).
            grammars.append(compiler.compile_json_schema(json.dumps(schema), any_whitespace=False))
        except RuntimeError as exc:
            raise ValueError(f"JSON schema not supported for constrained decoding: {exc}") from exc
    return grammars


class JsonSchemaLogitsProcessor:
    """A transformers logits processor for one batch: row i follows ``grammars[i]`` (None: unconstrained).

    A row that was finished (its end of turn, or ended by a stopping criterion and padded since) is no
    longer masked."""

    def __init__(self, grammars: Sequence[Any], vocab_size: int) -> None:
        xgr = require_xgrammar()
        self._xgr = xgr
        self.matchers = [xgr.GrammarMatcher(g) if g is not None else None for g in grammars]
        self.bitmask = xgr.allocate_token_bitmask(len(self.matchers), vocab_size)
        self.batch = xgr.BatchGrammarMatcher()  # fills the rows' masks on several threads (large batches)
        self.started = False

    def _live(self) -> list[int]:
        return [row for row, m in enumerate(self.matchers) if m is not None and not m.is_terminated()]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.started:
            last = input_ids[:, -1].tolist()
            live = self._live()
            accepted = self.batch.batch_accept_token([self.matchers[r] for r in live], [last[r] for r in live])
            for row, ok in zip(live, accepted):
                if not ok:
                    self.matchers[row] = None  # padding after the row was ended
        self.started = True
        rows = self._live()
        if not rows:
            return scores
        self.bitmask.fill_(-1)  # every token allowed, then each constrained row's own mask
        self.batch.batch_fill_next_token_bitmask([self.matchers[r] for r in rows], self.bitmask, indices=rows)
        if scores.device.type == "cuda":
            self._xgr.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device))
            return scores
        host = scores.float().cpu()
        self._xgr.apply_token_bitmask_inplace(host, self.bitmask)
        return host.to(device=scores.device, dtype=scores.dtype)


def json_schema_processor(model: Any, tokenizer: Any, schemas: Sequence[dict[str, Any] | None],
                          stop_ids: Sequence[int]) -> JsonSchemaLogitsProcessor:
    """The logits processor constraining row i of a batch to ``schemas[i]`` (stop_ids end a turn)."""
    vocab_size = int(model.config.get_text_config().vocab_size)
    return JsonSchemaLogitsProcessor(compile_schemas(tokenizer, vocab_size, schemas, stop_ids), vocab_size)
