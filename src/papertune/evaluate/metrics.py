"""What evaluate measures: answer scores against the reference, and the validation loss of a model.

- Answer scores: SQuAD's exact match and token F1 (normalised answers), ROUGE-L (rouge-score, stemmed),
  and the embedding cosine of answer and reference (``papertune.index``); per model, a mean over answers.
- Loss: the summed cross-entropy and loss-token count of each example, computed exactly like training
  (labels of -100 carry no loss), and their token-weighted mean with its perplexity.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

from papertune.index import embed_texts

MODELS = ("base", "tuned")
GROUPS = ("in_domain", "held_out_document")
ANSWER_METRICS = ("rouge_l", "f1", "exact_match", "embedding_cosine", "judge_correctness", "judge_groundedness")


_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised answers are the same, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 of the normalised answers (1.0 when both are empty, 0.0 when one is)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


_ROUGE = None


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (rouge-score, Porter stemming)."""
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(_ROUGE.score(reference, prediction)["rougeL"].fmeasure)


def embedding_cosines(predictions: Sequence[str], references: Sequence[str], spec: str) -> list[float]:
    """Cosine of each prediction with its reference under the sentence-transformers model ``spec``."""
    if not predictions:
        return []
    a = embed_texts(list(predictions), spec, "evaluate.embedding_model")
    b = embed_texts(list(references), spec, "evaluate.embedding_model")
    return [float(x) for x in (a * b).sum(axis=1)]


def example_losses(model: Any, tokenizer: Any, examples: Sequence[dict[str, list[int]]], batch_size: int,
                   desc: str = "loss") -> list[tuple[float, int]]:
    """(summed cross-entropy, loss tokens) per example: labels -100 carry no loss, as in training."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    out: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]), reverse=True)
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    for index in tqdm(batches, desc=desc, unit="batch", leave=False):
        width = max(len(examples[i]["input_ids"]) for i in index)
        ids = torch.full((len(index), width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(index), width), -100, dtype=torch.long)
        mask = torch.zeros((len(index), width), dtype=torch.long)
        for row, i in enumerate(index):
            n = len(examples[i]["input_ids"])
            ids[row, :n] = torch.tensor(examples[i]["input_ids"])
            labels[row, :n] = torch.tensor(examples[i]["labels"])
            mask[row, :n] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:].to(device)
        losses = F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                                 ignore_index=-100, reduction="none").view(shift_labels.shape)
        valid = shift_labels != -100
        for row, i in enumerate(index):
            out[i] = (float(losses[row][valid[row]].sum()), int(valid[row].sum()))
    return out


def aggregate_loss(per_example: Sequence[tuple[float, int]]) -> dict[str, Any]:
    """Token-weighted mean loss and its perplexity (exp of the loss)."""
    total = sum(s for s, _ in per_example)
    tokens = sum(n for _, n in per_example)
    if tokens == 0:
        return {"loss": None, "perplexity": None, "tokens": 0, "examples": len(per_example)}
    loss = total / tokens
    return {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else None, "tokens": tokens,
            "examples": len(per_example)}


def mean(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are not None (None when there are none)."""
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def answer_summary(rows: Sequence[dict], model: str) -> dict[str, Any]:
    """The number of answers and the mean of each answer metric for ``model`` (None where none has it)."""
    summary: dict[str, Any] = {"questions": len(rows)}
    for metric in ANSWER_METRICS:
        summary[metric] = mean([r["scores"][model].get(metric) for r in rows]) if rows else None
    return summary
