from __future__ import annotations

import pytest

from papertune.ingest.segment import get_splitter, split_sentences

TRICKY = (
    "Dr. Smith et al. trained the model on A100s, e.g. eight GPUs. "
    "The loss fell to 3.5 as in Fig. 2 and Eq. (3) shows. "
    "Results in the U.S. differ, i.e. they are lower. "
    "We use LoRA (Hu et al., 2021). "
    "See Sec. 4 and Tab. 3 vs. Fig. 4 for details. "
    "It ends here."
)
EXPECTED = [
    "Dr. Smith et al. trained the model on A100s, e.g. eight GPUs.",
    "The loss fell to 3.5 as in Fig. 2 and Eq. (3) shows.",
    "Results in the U.S. differ, i.e. they are lower.",
    "We use LoRA (Hu et al., 2021).",
    "See Sec. 4 and Tab. 3 vs. Fig. 4 for details.",
    "It ends here.",
]


@pytest.mark.parametrize("segmenter", ["nupunkt", "nltk"])
def test_no_split_at_research_abbreviations(segmenter: str):
    assert split_sentences(TRICKY, segmenter) == EXPECTED


@pytest.mark.parametrize("segmenter", ["nupunkt", "nltk"])
def test_spans_index_the_original_text(segmenter: str):
    spans = get_splitter(segmenter)(TRICKY)
    assert [TRICKY[a:b].strip() for a, b in spans] == EXPECTED


def test_unknown_segmenter():
    with pytest.raises(ValueError, match="ingest.segmenter"):
        get_splitter("spacy")
