"""Stage 4, augment: curated pairs -> ``RUN/qa_augmented.jsonl`` (originals and their variants).

One technique per kind of augmentation in the training report (section 3.3), each switched by its rate
in the ``augment`` section (the share of original pairs that get one variant of that kind; 0 = off),
each in its own module:

- ``paraphrase`` (3.3.1, :mod:`.paraphrase`): the question reworded. ``wordnet``: offline synonym
  substitution from WordNet (content words only; never AI terms, acronyms or numbers) and light syntactic
  rewrites ("What is X?" -> "Could you explain what X is?"). ``llm``: the instruct model in ``augment.llm``
  writes it.
- ``alternative_answer`` (3.3.2, :mod:`.answers`): the answer reworded by the instruct model; the question
  is kept.
- ``noise`` (3.3.3, :mod:`.noise`): typos (keyboard neighbour, dropped, doubled, swapped letters) at
  ``augment.noise_char_prob`` per letter, punctuation and casing variation, small grammatical slips.
  Only the question: the reference answer stays clean.
- ``entity_replacement`` (3.3.4, :mod:`.entities`): an AI term swapped for an analogous one from
  ``data/ai_terms.yaml`` ("Transformer models" -> "sequence models"), consistently in question and answer.
- ``adversarial`` (3.3.5, :mod:`.adversarial`): the same question phrased vaguely or adversarially (a
  generic stand-in for the specific term, a bare pronoun, a leading preface, "Is it true that ...?"),
  with the same answer.

:mod:`.grammar` (indirect questions, main verbs) and :mod:`.wordnet_data` (WordNet 3.0 from the system)
serve paraphrases and adversarial phrasings; :mod:`.stage` runs them all. Every variant copies its
original's fields (chunk, source, pages ...), gets a stable new ``id`` (``<original id>~<technique>``),
``parent_id`` = the original's id and ``augmentation`` = the technique. Which pairs get a variant, and
every random choice inside one, follow from ``augment.seed`` and the pair's id alone: the same inputs and
settings give byte-identical output.
"""

from papertune.augment.adversarial import ADVERSARIAL_KINDS, Adversary
from papertune.augment.answers import alternative_answer_prompt, clean_reply
from papertune.augment.entities import Lexicon, TermGroup, TermMatch, key_terms, load_lexicon, replace_entities
from papertune.augment.grammar import Grammar
from papertune.augment.noise import add_typos, grammatical_slip, noisy_question
from papertune.augment.paraphrase import Paraphraser, paraphrase_prompt
from papertune.augment.stage import INPUT_FILE, OUTPUT_FILE, REPORT_FILE, SPEC, TECHNIQUES, augment_rows, run
from papertune.augment.wordnet_data import wordnet, wordnet_data_dir

__all__ = [
    "ADVERSARIAL_KINDS", "INPUT_FILE", "OUTPUT_FILE", "REPORT_FILE", "SPEC", "TECHNIQUES", "Adversary", "Grammar",
    "Lexicon", "Paraphraser", "TermGroup", "TermMatch", "add_typos", "alternative_answer_prompt",
    "augment_rows", "clean_reply", "grammatical_slip", "key_terms", "load_lexicon", "noisy_question",
    "paraphrase_prompt", "replace_entities", "run", "wordnet", "wordnet_data_dir",
]
