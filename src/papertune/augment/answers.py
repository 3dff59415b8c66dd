"""Alternative answers written by the instruct model, and the LLM plumbing shared with LLM paraphrases.

The model in ``augment.llm`` is built once per run (:func:`build_chat_model`); each reply is cleaned by
:func:`clean_reply`, which refuses replies that repeat the original, answer instead of rewording, or
ramble.
"""

from __future__ import annotations

import re
from typing import Any

from papertune.config import AugmentConfig
from papertune.errors import ConfigError
from papertune.text import normalize

ANSWER_SYSTEM = (
    "You rewrite answers to questions about machine-learning research. Keep every fact, number and "
    "technical term; change the wording and sentence structure. Reply with the rewritten answer only."
)

# One worked example per prompt: small instruct models otherwise tend to answer instead of rewording.
_ANSWER_EXAMPLE = ("What is dropout used for?", "It randomly zeroes activations during training to reduce overfitting.",
                   "During training it sets random activations to zero, which makes overfitting less likely.")


def alternative_answer_prompt(question: str, answer: str) -> list[dict[str, str]]:
    """The conversation asking the instruct model to reword ``answer`` (one worked example first)."""
    q, a, r = _ANSWER_EXAMPLE
    return [{"role": "system", "content": ANSWER_SYSTEM},
            {"role": "user", "content": f"Question: {q}\nAnswer: {a}\nRewritten answer:"},
            {"role": "assistant", "content": r},
            {"role": "user", "content": f"Question: {question}\nAnswer: {answer}\nRewritten answer:"}]


def clean_reply(reply: str | None, original: str, *, question: bool, other: str = "") -> str | None:
    """The first usable line of a model reply, without labels or quotes; None if unusable.

    A paraphrase must itself be a question (a reply that answers it is not a paraphrase); an
    alternative answer must not be a question, nor repeat ``other`` (the question).
    """
    if not reply:
        return None
    lines = [ln.strip() for ln in reply.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    text = re.sub(r"^(paraphrased question|paraphrase|question|rewritten answer|answer)\s*:\s*", "", lines[0], flags=re.I)
    text = text.strip().strip('"“”\'').strip()
    if not text or normalize(text) == normalize(original) or len(text) > 4 * len(original) + 40:
        return None
    if question and (not text.endswith("?") or re.match(r"(yes|no)\b", text, re.I)):
        return None
    if not question and (text.endswith("?") or (other and normalize(text) == normalize(other))):
        return None
    return text


def build_chat_model(cfg: AugmentConfig, why: str) -> Any:
    """The chat model of ``augment.llm``; a ConfigError naming ``why`` (the setting that needs it) if it fails."""
    from papertune.llm import make_chat_model

    try:
        return make_chat_model(cfg.llm, "augment.llm")
    except Exception as exc:  # noqa: BLE001 - any failure to set up the model becomes one clear message
        raise ConfigError(
            f"{why} needs an instruct model, but augment.llm (backend={cfg.llm.backend}, model={cfg.llm.model!r}) "
            f"could not be set up: {exc}"
        ) from exc

