"""The ``llm`` generator: an instruct model writes study questions with answers for each chunk.

The prompt (:mod:`papertune.generate.prompt`) is a system message with the rules (questions a researcher
would ask, of several kinds, each understandable without the passage; answers of one to three complete
sentences supported by it), two worked examples, then the chunk with its document title and section, between
``<document>`` and ``</document>`` as data. With ``generate.llm_evidence_first`` each pair opens with the
chunk's sentence(s) it rests on. The number of pairs asked grows with the chunk's prose sentences, up to
``generate.pairs_per_chunk``, and the kinds suggested follow the passage's cues (numbers, "than",
"however", ...). The reply is constrained to the prompt's schema where the backend can, and read
leniently anyway by :func:`papertune.generate.replies.parse_pairs` (which keeps LaTeX backslashes).

Each pair is then checked; a dropped pair is counted under its reason:

- ``empty``: no question or no answer;
- ``injection``: the question or answer repeats an instruction aimed at the model ("ignore previous
  instructions", "you are now", "<document>", ...), or the pair is grounded only in the chunk's injected
  sentences (:func:`papertune.generate.base.pair_is_injected`, the check every generator shares);
- ``not_a_question``: the question neither ends with "?" nor starts like a question;
- ``ungrounded``: less than ``generate.llm_min_support`` of the answer's content words occur in the
  chunk, the question shares no content word with it, or the question names something (LoRA, GPT-3)
  that neither the chunk nor its title and section mention;
- ``not_self_contained``: the question needs the passage to be understood
  (:func:`papertune.generate.questions.context_dependence`: "the passage", "Fig. 6", a leading "it");
- ``bad_kind``: the pair's kind names none of :data:`papertune.generate.questions.KINDS` (synonyms are
  normalised; a missing kind, or "quantitative" with no number in the answer, is guessed from the question);
- ``answer_fragment``: the answer is not a sentence (under three words, or it opens like a fragment:
  "training a model on a dataset", "by adding noise");
- ``copies_example``: the question repeats six words in a row of a worked example's question;
- ``degenerate``: the answer repeats a short piece six times in a row, or a run of six words four times (a
  model stuck in a loop: ``\\text{ } \\text{ } ...``);
- ``same_answer``: the answer is word for word an earlier pair's of the same reply (a model that answers
  "what is X", "how does X work" and "why X" with one sentence fits at most one of them);
- ``no_evidence``, ``evidence_not_in_chunk``, ``evidence_is_formula``, ``evidence_unfinished``,
  ``evidence_is_caption``, ``evidence_about_the_text``, ``answer_not_in_evidence``
  (``generate.llm_evidence_first``): :func:`evidence_problem`;
- ``duplicate`` and ``over_limit`` (more than ``generate.pairs_per_chunk``);
- ``not_in_passage`` (``generate.llm_focused_answers``): asked again on its own, the question was found
  unanswered by the passage (:mod:`papertune.generate.answers`: a focused answer that passes the checks
  above replaces the first; answers that then coincide count as ``same_answer``).

Answers longer than three sentences are trimmed to their first three (not dropped). Replies with
nothing parseable count as ``unparseable``.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from papertune.config import PapertuneConfig
from papertune.errors import PapertuneError
from papertune.generate.base import (
    STOPWORDS,
    Chunk,
    ChunkResult,
    Grounding,
    content_words,
    finish_question,
    pair_is_injected,
    support,
    take_pairs,
    tidy,
)
from papertune.generate.answers import ANSWER_TOKENS, answer_conversation, declined, focused_answer
from papertune.generate.content import prose_sentences
from papertune.generate.prompt import EXAMPLES, build_conversation, reply_schema
from papertune.generate.questions import context_dependence, normalise_kind
from papertune.generate.replies import parse_pairs, without_repeats
from papertune.ingest.chunk import get_token_counter
from papertune.ingest.segment import split_sentences
from papertune.llm import ChatModel, LLMRequestError, LLMUnreachableError, Message, make_chat_model
from papertune.rundir import sha256_json
from papertune.text import (
    added_words,
    answer_words,
    carried,
    held_words,
    normalize,
    quote_match,
    restore_latex,
    unfinished,
    without_math,
)

log = logging.getLogger(__name__)


def prompt_fingerprint(evidence: bool = False) -> str:
    """A hash of everything fixed in the prompt (rules, examples, the message around a chunk, the reply
    schema) in the form ``evidence`` picks, so pairs written with another prompt are not reused."""
    return sha256_json([build_conversation('A "CHUNK"', 2, "TITLE", "SECTION", evidence), reply_schema(2, evidence),
                        answer_conversation('A "CHUNK"', "QUESTION?", "TITLE", "SECTION")])


def pairs_to_ask(text: str, cap: int, segmenter: str = "nupunkt") -> int:
    """How many pairs to ask of a chunk: one per three prose sentences, at least one, at most ``cap``."""
    return max(1, min(cap, math.ceil(len(prose_sentences(text, segmenter)) / 3)))


# ---------------------------------------------------------------------------------------------
# checks


_QUESTION_START = re.compile(
    r"^(?:what|which|who|whom|whose|when|where|why|how|is|are|was|were|do|does|did|can|could|should|would|will|"
    r"has|have|had|may|might|must|name|list|describe|explain|define|give|compare|according|in|on|for|at|by|with|"
    r"from|to|under|during|after|before)\b",
    re.IGNORECASE,
)


def looks_like_question(text: str) -> bool:
    """Ends with a question mark, or starts like one ("What ...", "Explain ...")."""
    text = text.strip()
    return text.endswith("?") or _QUESTION_START.match(text) is not None


MAX_ANSWER_SENTENCES = 3


# Figure furniture a teacher copies from the chunk into an answer: a caption's label ("Fig. 7. ", "Figure 2: ")
# where a sentence starts, and an image credit ("(Image source: Vaswani, et al., 2017)").
_FIGURE_LABEL = re.compile(r"(?:^|(?<=[.!?] ))(?:Fig\.|Figure|Table)\s*\d+[a-z]?[.:]\s+")
_IMAGE_CREDIT = re.compile(r"\s*\((?:Image|Figure) (?:source|credit)s?:[^()]*(?:\([^()]*\)[^()]*)*\)", re.I)
_DOUBLE_STOP = re.compile(r"([.!?])\s*\.(?!\.)")  # "big. (Image source: ...)." leaves "big.."


def finish_answer(answer: str, segmenter: str = "nupunkt") -> str:
    """The answer tidied, without figure labels and image credits, without repeated sentences, cut to its
    first :data:`MAX_ANSWER_SENTENCES` sentences, ending with a full stop where it ended with none. A last
    sentence cut off mid-way (:func:`papertune.text.unfinished`) is left out ("" when it was the only one:
    the pair is then dropped)."""
    answer = _DOUBLE_STOP.sub(r"\1", _IMAGE_CREDIT.sub("", tidy(answer)))
    answer = without_repeats(tidy(_FIGURE_LABEL.sub("", answer)))
    sentences = split_sentences(answer, segmenter) if answer else []
    if sentences and unfinished(sentences[-1]):
        sentences = sentences[:-1]
        answer = " ".join(sentences)
    if len(sentences) > MAX_ANSWER_SENTENCES:
        answer = " ".join(sentences[:MAX_ANSWER_SENTENCES])
    if answer and answer[-1].isalnum():
        answer += "."
    return answer


def is_fragment(answer: str) -> bool:
    """Whether an answer is no sentence: under three words, or opening like a fragment ("training a model
    on a dataset", "by adding noise", "to reduce overfitting")."""
    words = answer.split()
    if len(words) < 3:
        return True
    first = words[0].strip("\"'“‘(")
    return first[:1].islower() and (first.lower() in STOPWORDS or first.lower().endswith("ing"))


# A name in a question: a word with a capital after its first letter or a digit (LoRA, GPT-3, ResNet), or a
# capitalised word that does not open the question.
_NAME = re.compile(r"(?<!^)(?<![.?!] )\b[A-Z][\w-]*|\b[a-z]+[A-Z][\w-]*")


def unknown_names(question: str, known_words: set[str]) -> list[str]:
    """The names in ``question`` whose words are not among ``known_words`` (a model that copies its worked
    example asks about LoRA in a chunk about GANs)."""
    return [name for name in _NAME.findall(question.strip())
            if any(w not in known_words for w in content_words(name))]


def _shingles(text: str, n: int = 6) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


_EXAMPLE_SHINGLES = frozenset(s for example in EXAMPLES for pair in example[3] for s in _shingles(pair["question"]))


def copies_example(question: str) -> bool:
    """Whether a question repeats six words in a row of a worked example's question (small models fill the
    example's template with the chunk's nouns: "What does a sequence model learn instead of updating a
    pretrained weight matrix?")."""
    return not _shingles(question).isdisjoint(_EXAMPLE_SHINGLES)


# A piece of 1-16 characters starting with something other than spacing, then the same piece 5 more times.
_LOOP = re.compile(r"(\S[\s\S]{0,15}?)\1{5,}")


# A run of six words (formulas set aside) said four times: a longer loop ("..., measured as $y$ preserves the
# original text of $x$, measured as $y$ preserves ..."). An answer that names one thing three times is fine.
LOOP_RUN_WORDS = 6
LOOP_RUN_TIMES = 4


def degenerate(answer: str) -> bool:
    """Whether the answer repeats a short piece six times in a row (``\\text{ } \\text{ } ...``, "the the
    the ..."), or a run of six words four times: a model stuck in a loop."""
    if any(not m.group(1).strip().isdigit() for m in _LOOP.finditer(answer)):  # 1000000 is a number
        return True
    words = re.findall(r"[a-z0-9]+", without_math(answer).lower())
    runs = Counter(tuple(words[i:i + LOOP_RUN_WORDS]) for i in range(len(words) - LOOP_RUN_WORDS + 1))
    return any(n >= LOOP_RUN_TIMES for n in runs.values())


def check_pair(
    question: str, answer: str, grounding: Grounding, min_support: float, known_words: frozenset[str] = frozenset()
) -> str | None:
    """Why the pair is dropped (a reason name), or None if it is kept. ``known_words``: content words the
    question may name besides the chunk's (its document title and section)."""
    if not question.strip() or not answer.strip():
        return "empty"
    if pair_is_injected(question, answer, grounding, min_support):
        return "injection"
    if not looks_like_question(question):
        return "not_a_question"
    if (
        support(answer, grounding.clean_words) < min_support
        or not any(w in grounding.clean_words for w in content_words(question))
        or unknown_names(question, grounding.clean_words | known_words)
    ):
        return "ungrounded"
    if context_dependence(question):
        return "not_self_contained"
    if is_fragment(answer):
        return "answer_fragment"
    if copies_example(question):
        return "copies_example"
    if degenerate(answer):
        return "degenerate"
    return None


# The evidence-first form: the share of the evidence's words that must be found, in runs of three, in the chunk
# (its copy may differ in case, spacing, symbols and word endings), and the share of the answer's content words
# (stemmed) the evidence must hold, with every number of the answer. At 0.5 a GPU run kept answers that add a
# made-up "because" to their sentence; 0.6 drops 6 of its 458 kept pairs, 4 of them wrong or half right.
EVIDENCE_MIN_MATCH = 0.8
EVIDENCE_MIN_CARRIED = 0.6
# Evidence with fewer words than this outside its formulas is a bare formula: nothing in it says what the formula
# is, so a question about it is the teacher's guess (a GPU run's "formula for the reward shaping" was another one).
EVIDENCE_MIN_PROSE_WORDS = 4
# A figure's caption copied as evidence ("Illustration of the UDG framework.", "Performance of VC-GPT on the MS
# COCO test set, ..."): it names what a figure shows, not what was found (4 of a GPU run's 480 kept pairs, all
# empty of facts). A sentence with a finite verb of its own ("Performance of X drops when ...") is no caption.
_CAPTION = re.compile(r"^(?:fig(?:ure)?\.?\s*\d+[.:]?\s*)?(?:an?\s+)?(?:illustration|overview|performance|comparison|"
                      r"visuali[sz]ation|schematic|diagram|demonstration)\s+of\b", re.I)
_STATES = re.compile(r"\b(?:is|are|was|were|improves?|increases?|decreases?|drops?|outperforms?|leads?|achieves?|"
                     r"reaches?|shows?)\b", re.I)

# A sentence about the text itself, not its subject: the author's voice ("My previous post has covered ...",
# "Here I'm gonna include ...", "In this post, we will discuss ..."), a pointer elsewhere ("... has been
# discussed in Gulrajani et al.", "If you are interested in ...", "for more details").
_ABOUT_THE_TEXT = re.compile(
    r"\b(?:if you are interested|my (?:\w+ )?(?:posts?|blog|articles?|tutorials?)|(?:in this (?:post|article|blog|"
    r"tutorial|section),? |here )(?-i:I|we)(?: will| would|'ll|'m|'re| am| are)? (?:focus|include|review|discuss|"
    r"list|introduce|describe|cover|present|talk|look|gonna|going)|(?:has|have) been (?:discussed|covered|"
    r"described|explained) in|(?:is|are) covered in|check out (?:the|my|this|these|our)|for more details|"
    r"(?-i:I) (?:will|'ll|am going to|'m going to|'m gonna|borrow))\b", re.I)


def evidence_problem(evidence: str, answer: str, chunk_text: str, question: str = "") -> str | None:
    """Why an evidence-first pair is dropped for its evidence, or None: ``no_evidence`` (none given),
    ``evidence_not_in_chunk`` (the copy is not the passage's), ``evidence_is_formula`` (a formula with no words
    that say what it is), ``evidence_unfinished`` (a sentence cut off or announcing what follows it: "The NTK
    can be defined accordingly:"), ``evidence_is_caption`` (a figure's caption: "Illustration of ..."),
    ``evidence_about_the_text`` (the author or the post speaking of itself, or pointing elsewhere: "My previous
    post has covered ...", "... has been discussed in Gulrajani et al."),
    ``answer_not_in_evidence`` (the answer says what its evidence does not: a
    teacher that wrote its answer from elsewhere). The answer is held to its evidence twice: all its content
    words, and those its question does not already say, its new ones (an answer that repeats the question and
    adds "... is the sigmoid function" carries the question's words only)."""
    if not evidence.strip():
        return "no_evidence"
    if quote_match(evidence, chunk_text) < EVIDENCE_MIN_MATCH:
        return "evidence_not_in_chunk"
    if len(normalize(without_math(evidence, " ")).split()) < EVIDENCE_MIN_PROSE_WORDS:
        return "evidence_is_formula"
    if unfinished(evidence):
        return "evidence_unfinished"
    if _CAPTION.match(evidence.strip()) and not _STATES.search(evidence):
        return "evidence_is_caption"
    if _ABOUT_THE_TEXT.search(evidence):
        return "evidence_about_the_text"
    held = held_words(evidence)
    new = added_words(answer, question)  # the words the answer adds to its question
    whole = carried(answer_words(answer), held)
    added = carried(new, held) if new[0] else 1.0
    if min(whole, added) < EVIDENCE_MIN_CARRIED:
        return "answer_not_in_evidence"
    return None


def pairs_from_reply(
    reply: str,
    grounding: Grounding,
    limit: int,
    min_support: float,
    segmenter: str = "nupunkt",
    known_words: frozenset[str] = frozenset(),
    evidence: bool = False,
) -> ChunkResult:
    """The pairs of a reply that pass :func:`check_pair` and have a kind, at most ``limit``; drops counted.
    ``evidence``: the evidence-first form, each pair's evidence checked too (:func:`evidence_problem`)."""
    result = ChunkResult()
    parsed = parse_pairs(reply)
    if parsed is None:
        result.dropped["unparseable"] += 1
        return result
    kept = []
    answers: set[str] = set()
    for pair in parsed:
        # Replies held to JSON lose LaTeX backslashes (no "\\m" escape): put back those the chunk writes.
        question = restore_latex(pair.question, grounding.clean_text)
        answer = finish_answer(restore_latex(pair.answer, grounding.clean_text), segmenter)
        reason = check_pair(question, answer, grounding, min_support, known_words)
        if reason is None and evidence:
            reason = evidence_problem(pair.evidence, answer, grounding.clean_text, question)
        kind = normalise_kind(pair.kind, question, answer)
        if reason is None and kind is None:
            reason = "bad_kind"
        said = normalize(answer)
        if reason is None and said in answers:
            reason = "same_answer"
        if reason:
            result.dropped[reason] += 1
            continue
        answers.add(said)
        kept.append((finish_question(question), answer, kind, *([tidy(pair.evidence)] if evidence else [])))
    take_pairs(kept, limit, result)
    return result


@dataclass
class TeacherStats:
    """What the teacher model did in this run: its replies, their tokens and the time spent waiting for them."""

    model: str  # backend:model, e.g. llamacpp:packaged:qwen2.5-coder-0.5b-instruct
    replies: int = 0
    reply_tokens: int = 0
    seconds: float = 0.0  # time in the model's chat calls
    retried: int = 0  # chunks asked again (their first reply gave no pair), counted per attempt
    recovered: int = 0  # of those, chunks the new reply gave a pair
    answered_again: int = 0  # questions asked again on their own (generate.llm_focused_answers)
    replaced: int = 0  # of those, answers replaced by the focused one
    not_in_passage: int = 0  # questions the focused pass found unanswered (the pair is dropped)

    def report(self) -> dict[str, Any]:
        """The teacher's part of ``RUN/generate/report.json``."""
        return {
            "model": self.model,
            "replies": self.replies,
            "seconds": round(self.seconds, 3),
            # Replies come back as text: their tokens are counted with the Qwen2.5 BPE, as the curate judge's
            # are (exact for Qwen teachers).
            "reply_tokens": self.reply_tokens,
            "reply_tokens_per_s": round(self.reply_tokens / self.seconds, 1) if self.seconds else None,
            "chunks_asked_again": self.retried,
            "chunks_recovered": self.recovered,
            "focused_answers": {"questions": self.answered_again, "replaced": self.replaced,
                                "kept_first": self.answered_again - self.replaced - self.not_in_passage,
                                "not_in_passage": self.not_in_passage},
        }


class LLMGenerator:
    """Pairs from an instruct model, ``generate.llm`` (in-process or an OpenAI-compatible server)."""

    name = "llm"

    def __init__(self, config: PapertuneConfig, chat_model: ChatModel | None = None) -> None:
        self.cfg = config.generate
        self.segmenter = config.ingest.segmenter
        self.chat_model = chat_model if chat_model is not None else make_chat_model(self.cfg.llm, "generate.llm")
        self.model = self.chat_model.name
        llm = self.cfg.llm
        self.stats = TeacherStats(f"{llm.backend}:{llm.model}" if chat_model is None else self.model)
        # Chunks per call: what one call runs at once (a batch in-process, parallel requests to a server).
        self.batch_size = llm.batch_size if llm.backend in ("hf", "vllm") else max(llm.concurrency, 1)

    def conversation(self, chunk: Chunk) -> list[Message]:
        """The prompt for one chunk: as many pairs asked as its prose supports, with its title and section."""
        n = pairs_to_ask(chunk["text"], self.cfg.pairs_per_chunk, self.segmenter)
        return build_conversation(chunk["text"], n, chunk.get("title"), chunk.get("section"),
                                  self.cfg.llm_evidence_first)

    def _chat(self, conversations: list[list[Message]],
              **options: Any) -> tuple[list[str | None], PapertuneError | None]:
        """One reply per conversation (None where its request failed), and the failure to raise once the
        others are handed over."""
        started = time.perf_counter()
        try:
            replies: list[str | None] = list(self.chat_model.chat(conversations, **options))
            failure: PapertuneError | None = None
        except (LLMRequestError, LLMUnreachableError) as exc:
            # Keep what the other requests of this batch returned; raise once they are handed over.
            replies = list(exc.replies or [None] * len(conversations))
            failure = exc
        finally:
            self.stats.seconds += time.perf_counter() - started
        arrived = [r for r in replies if r is not None]
        self.stats.replies += len(arrived)
        self.stats.reply_tokens += sum(get_token_counter("qwen2.5")(arrived))
        if len(replies) != len(conversations):
            raise PapertuneError(
                f"generate.llm: the model returned {len(replies)} replies for {len(conversations)} prompts"
            )
        return replies, failure

    def _ask(self, chunks: list[Chunk], temperature: float | None,
             seed: int) -> tuple[list[str | None], PapertuneError | None]:
        """The pairs' reply for each chunk (see :meth:`_chat`)."""
        return self._chat([self.conversation(c) for c in chunks], temperature=temperature,
                          json_schema=reply_schema(self.cfg.pairs_per_chunk, self.cfg.llm_evidence_first), seed=seed)

    def _grounding(self, chunk: Chunk) -> tuple[Grounding, frozenset[str]]:
        """The chunk's text for the pair checks, and the words its title and section add."""
        known = frozenset(content_words(f"{chunk.get('title') or ''} {chunk.get('section') or ''}"))
        return Grounding(chunk["text"], self.segmenter), known

    def _read(self, chunk: Chunk, reply: str) -> ChunkResult:
        grounding, known = self._grounding(chunk)
        result = pairs_from_reply(reply, grounding, self.cfg.pairs_per_chunk, self.cfg.llm_min_support,
                                  self.segmenter, known, self.cfg.llm_evidence_first)
        if not result.pairs:
            log.debug("llm: no pairs kept for %s (%s); reply: %.300s", chunk["id"], dict(result.dropped), reply)
        return result

    def generate(self, chunks: list[Chunk], temperature: float | None = None,
                 seed: int = 0) -> Iterator[tuple[str, ChunkResult]]:
        """Pairs for each chunk; ``temperature`` (default: ``generate.llm``'s) for the first reply. Sampled
        replies are seeded by ``seed`` (the first) and ``seed`` + k (the k-th retry): the same on a rerun,
        another for each retry; a caller asking the same chunks again passes a ``seed`` these do not reach."""
        replies, failure = self._ask(chunks, temperature, seed)
        results = {c["id"]: self._read(c, r) for c, r in zip(chunks, replies) if r is not None}
        # Chunks whose reply gave no pair are asked again, sampling: what each attempt dropped is counted.
        again = [c for c in chunks if c["id"] in results and not results[c["id"]].pairs]
        attempts = 0
        while again and failure is None and attempts < self.cfg.llm_retries:
            attempts += 1
            self.stats.retried += len(again)
            replies, failure = self._ask(again, self.cfg.llm_retry_temperature, seed + attempts)
            for chunk, reply in zip(again, replies):
                if reply is not None:
                    result = self._read(chunk, reply)
                    result.dropped.update(results[chunk["id"]].dropped)
                    results[chunk["id"]] = result
                    self.stats.recovered += bool(result.pairs)
            again = [c for c in again if not results[c["id"]].pairs]
        if self.cfg.llm_focused_answers:  # also after a failed request: the chunks it finishes are kept
            focused_failure = self.answer_again([c for c in chunks if c["id"] in results], results)
            failure = failure or focused_failure
        for chunk in chunks:
            if chunk["id"] in results:
                yield chunk["id"], results[chunk["id"]]
        if failure is not None:
            raise failure

    def answer_again(self, chunks: list[Chunk], results: dict[str, ChunkResult]) -> PapertuneError | None:
        """Each kept question asked again on its own (:mod:`papertune.generate.answers`): a focused answer that
        passes the pair checks replaces the first, a question the passage does not answer is dropped. A chunk
        one of whose questions got no reply is taken out of ``results`` (not finished: a rerun asks it again);
        the failure is returned, to raise once the finished chunks are handed over."""
        asked = [(chunk, pair) for chunk in chunks for pair in results[chunk["id"]].pairs]
        if not asked:
            return None
        replies, failure = self._chat(
            [answer_conversation(chunk["text"], pair["question"], chunk.get("title"), chunk.get("section"))
             for chunk, pair in asked], max_new_tokens=min(ANSWER_TOKENS, self.cfg.llm.max_new_tokens))
        unanswered = {chunk["id"] for (chunk, _), reply in zip(asked, replies) if reply is None}
        dropped: set[int] = set()  # id() of the pairs dropped
        groundings: dict[str, tuple[Grounding, frozenset[str]]] = {}
        for (chunk, pair), reply in zip(asked, replies):
            if chunk["id"] in unanswered:
                continue
            self.stats.answered_again += 1
            if declined(reply):
                self.stats.not_in_passage += 1
                results[chunk["id"]].dropped["not_in_passage"] += 1
                dropped.add(id(pair))
                continue
            if chunk["id"] not in groundings:
                groundings[chunk["id"]] = self._grounding(chunk)
            grounding, known = groundings[chunk["id"]]
            answer = finish_answer(restore_latex(focused_answer(reply), grounding.clean_text), self.segmenter)
            if answer and check_pair(pair["question"], answer, grounding, self.cfg.llm_min_support, known) is None:
                pair["answer"] = answer
                self.stats.replaced += 1
        for chunk_id in unanswered:
            del results[chunk_id]
        for result in results.values():  # focused answers can coincide: the first pair keeps its answer
            kept, said = [], set()
            for pair in result.pairs:
                if id(pair) in dropped:
                    continue
                key = normalize(pair["answer"])
                if key in said:
                    result.dropped["same_answer"] += 1
                    continue
                said.add(key)
                kept.append(pair)
            result.pairs = kept
        return failure

