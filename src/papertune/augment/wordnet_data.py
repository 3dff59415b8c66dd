"""WordNet 3.0 from the system's files (Debian's wordnet-base), read with NLTK's reader; no download.

NLTK wants a ``corpora/wordnet`` folder with a ``lexnames`` file that Debian leaves out: it is made once
under the papertune cache. Paraphrases need WordNet; the grammar of adversarial phrasings uses it if present.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from papertune.errors import ConfigError

log = logging.getLogger(__name__)

WORDNET_SYSTEM_DIR = Path("/usr/share/wordnet")
_WORDNET_REQUIRED = tuple(f"{kind}.{pos}" for kind in ("data", "index") for pos in ("adj", "adv", "noun", "verb")) + (
    "adj.exc", "adv.exc", "noun.exc", "verb.exc",
)
_WORDNET_OPTIONAL = ("index.sense", "cntlist.rev")
# WordNet 3.0's lexicographer file names (lexnames), which Debian's packages leave out.
_LEXNAMES = (
    "adj.all 3|adj.pert 3|adv.all 4|noun.Tops 1|noun.act 1|noun.animal 1|noun.artifact 1|noun.attribute 1|"
    "noun.body 1|noun.cognition 1|noun.communication 1|noun.event 1|noun.feeling 1|noun.food 1|noun.group 1|"
    "noun.location 1|noun.motive 1|noun.object 1|noun.person 1|noun.phenomenon 1|noun.plant 1|noun.possession 1|"
    "noun.process 1|noun.quantity 1|noun.relation 1|noun.shape 1|noun.state 1|noun.substance 1|noun.time 1|"
    "verb.body 2|verb.change 2|verb.cognition 2|verb.communication 2|verb.competition 2|verb.consumption 2|"
    "verb.contact 2|verb.creation 2|verb.emotion 2|verb.motion 2|verb.perception 2|verb.possession 2|"
    "verb.social 2|verb.stative 2|verb.weather 2|adj.ppl 3"
)


def lexnames_text() -> str:
    return "".join(f"{i:02d}\t{name}\t{cat}\n" for i, (name, cat) in
                   enumerate(entry.split() for entry in _LEXNAMES.split("|")))


def wordnet_data_dir(source: Path | None = None) -> Path:
    """An NLTK data folder holding ``corpora/wordnet`` (a copy of ``source`` plus lexnames), made once.

    It lives under the papertune cache (``$PAPERTUNE_CACHE``, else ``~/.cache/papertune``).
    """
    from papertune.models import cache_dir

    source = WORDNET_SYSTEM_DIR if source is None else source
    root = cache_dir() / "nltk_data"
    target = root / "corpora" / "wordnet"
    if (target / "lexnames").is_file():
        return root
    missing = [name for name in _WORDNET_REQUIRED if not (source / name).is_file()]
    if missing:
        raise ConfigError(
            f"WordNet 3.0 is not installed at {source} (missing {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}); augment.paraphrase_backend=wordnet needs it: "
            "apt-get install wordnet-base wordnet-sense-index (or set augment.paraphrase_backend=llm, "
            "or augment.paraphrase_rate=0)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".wordnet.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name in _WORDNET_REQUIRED + _WORDNET_OPTIONAL:
        if (source / name).is_file():
            shutil.copyfile(source / name, tmp / name)
    (tmp / "lexnames").write_text(lexnames_text(), encoding="utf-8")
    try:
        os.replace(tmp, target)
        log.info("WordNet: copied %s to %s (once)", source, target)
    except OSError:  # another process put it there first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "lexnames").is_file():
            raise
    return root


@functools.cache
def _load_wordnet(source: str, cache: str) -> Any:
    """The reader for ``source``, once per (source, cache folder): tests may point either elsewhere."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    root = wordnet_data_dir(Path(source))
    if str(root) not in nltk.data.path:  # NLTK only reads corpora under its data path
        nltk.data.path.append(str(root))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": not needed here
        return WordNetCorpusReader(str(root / "corpora" / "wordnet"), None)


def wordnet() -> Any:
    """NLTK's WordNet reader over the system WordNet 3.0 (loaded once per process, about 5 s)."""
    from papertune.models import cache_dir

    return _load_wordnet(str(WORDNET_SYSTEM_DIR), str(cache_dir()))


def optional_wordnet() -> Any | None:
    """WordNet if it is installed, else None (logged)."""
    try:
        return wordnet()
    except ConfigError as exc:
        log.info("WordNet not available (%s); adversarial phrasings use simpler rules", exc)
        return None
