"""What evaluate measures: answer scores against the reference, retrieval and citations, and the validation
loss of a model.

- Answer scores: SQuAD's exact match and token F1 (normalised answers), ROUGE-L (rouge-score, stemmed),
  and the embedding cosine of answer and reference (``papertune.index``), all on the answer without its
  "[n]" citation markers; per system, a mean over answers.
- Retrieval and grounding: recall@k (the question's source chunk among the k retrieved passages), citation
  accuracy (a citing answer cites the source chunk, or a passage that contains the reference answer:
  :func:`passage_contains`), citation rate, and the share of answers that decline (``papertune.chat.abstains``).
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

from papertune.chat import abstains, cited_numbers
from papertune.errors import InputError
from papertune.index import embed_texts
from papertune.text import content_words, counts_f1

MODELS = ("base", "tuned")
GROUPS = ("in_domain", "held_out_document")
# Scores of an answer to an answerable question (None where not measured).
ANSWER_METRICS = ("rouge_l", "f1", "exact_match", "embedding_cosine", "judge_correctness", "judge_groundedness",
                  "judge_correct")
# A judge correctness (1-5) at or above this counts as a correct answer (judge_correct).
JUDGE_CORRECT_AT = 4
# A passage contains a reference answer when it holds at least this share of the answer's content words.
CONTAINS_RECALL = 0.6


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
    return counts_f1(Counter(pred), Counter(ref))


def passage_contains(passage_text: str, reference: str) -> bool:
    """Whether a passage contains a reference answer: it holds at least :data:`CONTAINS_RECALL` of the
    answer's content words (an answer without content words is contained nowhere)."""
    wanted = content_words(reference)
    if not wanted:
        return False
    return len(wanted & content_words(passage_text)) / len(wanted) >= CONTAINS_RECALL


def recall_at_k(source_chunk_ids: Sequence[str | None], retrieved_ids: Sequence[Sequence[str]]) -> float | None:
    """The share of questions whose source chunk is among its retrieved chunks (None without questions)."""
    if not source_chunk_ids:
        return None
    hits = sum(1 for source, got in zip(source_chunk_ids, retrieved_ids, strict=True) if source and source in got)
    return hits / len(source_chunk_ids)


def citation_correct(answer: str, passages: Sequence[dict], source_chunk_id: str | None,
                     reference: str) -> bool | None:
    """Whether a citing answer cites right: one of the passages it cites ([n], numbered from 1 in
    ``passages``, chunk dicts) is the source chunk or contains the reference answer. None when the answer
    cites nothing; a number with no passage is a wrong citation."""
    numbers = cited_numbers(answer)
    if not numbers:
        return None
    for n in numbers:
        if 1 <= n <= len(passages):
            chunk = passages[n - 1]
            if (source_chunk_id and chunk.get("id") == source_chunk_id) or passage_contains(chunk["text"], reference):
                return True
    return False


def verify_counts(settled: Sequence[Any], retry: bool) -> dict[str, int]:
    """``retrieval.verify`` for one system (``papertune.verify.Settled`` answers): the answers the model was
    asked about and those shown as the decline for its "no"; with ``retrieval.verify_retry`` also how many it
    said no to, how many were answered again (it said yes to another passage) and how many of those were kept."""
    said_no = [s for s in settled if s.said_no]
    counts = {"asked": sum(s.verify_reply is not None for s in settled),
              "declined": sum(abstains(s.answer) for s in said_no)}
    if retry:
        counts.update(said_no=len(said_no), answered_again=sum(s.retry is not None for s in said_no),
                      kept=sum(s.retry is not None and not abstains(s.answer) for s in said_no))
    return counts


_ROUGE = None


def check_scorers() -> None:
    """The packages the answers' scores need are installed; a clear error before any answer is generated."""
    import importlib.util

    if importlib.util.find_spec("rouge_score") is None:
        raise InputError("evaluate scores ROUGE-L with the package rouge-score, which is not installed: "
                         "pip install rouge-score (it is one of papertune's dependencies)")


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


LOSS_BATCH_TOKENS = 16384


def example_losses(model: Any, tokenizer: Any, examples: Sequence[dict[str, list[int]]], batch_size: int,
                   desc: str = "loss") -> list[tuple[float, int]]:
    """(summed cross-entropy, loss tokens) per example: labels -100 carry no loss, as in training."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    out: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]), reverse=True)
    # At most batch_size rows and LOSS_BATCH_TOKENS padded tokens a batch: the float logits of a batch take
    # tokens x vocabulary x 4 bytes (64 grounded rows of 4,096 tokens with Qwen's 151k vocabulary: 150 GiB).
    batches: list[list[int]] = []
    for i in order:  # longest first, so a batch's first row sets its width
        if batches and len(batches[-1]) < batch_size and \
                len(examples[batches[-1][0]]["input_ids"]) * (len(batches[-1]) + 1) <= LOSS_BATCH_TOKENS:
            batches[-1].append(i)
        else:
            batches.append([i])
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


def answer_summary(rows: Sequence[dict], *, answerable: bool, retrieval: bool) -> dict[str, Any]:
    """The number of answers of one system, the mean of each answer metric (answerable questions only; None
    where none has it), and its grounding shares: ``abstention_rate`` always; ``citation_rate`` and
    ``citation_accuracy`` (over the answers that cite) when it answered from passages, with
    ``model_citation_accuracy``: the same for the model's own citations, before they were checked; and
    ``quote_rate``: the share of the answers that did not decline shown with a quote found in a passage (a
    model trained with ``build.raft_quote``; ``papertune.verify.placed_quote``)."""
    summary: dict[str, Any] = {"questions": len(rows)}
    for metric in ANSWER_METRICS:
        summary[metric] = mean([r["scores"].get(metric) for r in rows]) if answerable else None
    summary["abstention_rate"] = mean([float(r["abstained"]) for r in rows])
    citing = [r for r in rows if r["cited"]]
    summary["citation_rate"] = len(citing) / len(rows) if retrieval and rows else None
    summary["citation_accuracy"] = (mean([float(r["scores"]["citation_correct"]) for r in citing])
                                    if retrieval and answerable and citing else None)
    summary["model_citation_accuracy"] = (mean([r["scores"].get("model_citation_correct") for r in citing])
                                          if retrieval and answerable and citing else None)
    answered = [r for r in rows if not r["abstained"]]
    summary["quote_rate"] = (mean([float(r.get("quote") is not None) for r in answered])
                             if retrieval and answered else None)
    return summary
