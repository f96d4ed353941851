"""Symbol inventories: what a model outputs (index 0 = the CTC blank) and the one-character code of
each output in a submission. The inventory is data, chosen per corpus at `phonerec shards
--inventory NAME|FILE.tsv` and recorded in every manifest and checkpoint.

Built-ins (`INVENTORIES`):

- ``f22`` (`F22`, the default): 43 outputs: blank, ``[SIL]``, 39 ARPAbet phonemes, ``[SOS]``,
  ``[EOS]`` (`VOCAB`/`CODES`). ``[SOS]``/``[EOS]`` are outputs but never targets: decoding masks them.
- ``s24`` (`S24`; also ``s23``): the same symbols and codes without ``[SOS]``/``[EOS]``: 41 outputs.
  Transcripts are still framed by ``[SOS]`` ... ``[EOS]``, which are stripped.

Anything else (S22, a course's own table) is a small TSV file, UTF-8::

    # comment lines start with '#'
    #framing<TAB><sos><TAB><eos>
    SIL<TAB>-
    AA<TAB>a
    AE<TAB>@
    ...

One ``symbol<TAB>code`` line per output after the blank, in output order (the first line is output
1; the blank, output 0, is implicit and its code is a space). A code is one character, and no two
outputs share a symbol or a code. A line whose first field starts with ``#`` is a comment, except
the optional ``#framing<TAB><start><TAB><end>`` line, which names the tokens that open and close
every transcript (stripped before encoding; default ``[SOS]``/``[EOS]``; ``#framing`` alone: the
transcripts are not framed). A third field starting with ``#`` is a comment; blank lines are
ignored. At most 255 outputs after the blank (labels are stored as uint8). Every problem is one
line naming the file and the line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from .errors import PhonerecError

VOCAB: tuple[str, ...] = (
    "", "[SIL]", "NG", "F", "M", "AE", "R", "UW", "N", "IY", "AW", "V", "UH", "OW", "AA", "ER",
    "HH", "Z", "K", "CH", "W", "EY", "ZH", "T", "EH", "Y", "AH", "B", "P", "TH", "DH", "AO",
    "G", "L", "JH", "OY", "SH", "D", "AY", "S", "IH", "[SOS]", "[EOS]",
)
# One-character code per symbol, as used in submissions (same order as VOCAB).
CODES: tuple[str, ...] = (
    " ", "-", "G", "f", "m", "@", "r", "u", "n", "i", "W", "v", "U", "o", "a", "R",
    "h", "z", "k", "C", "w", "e", "Z", "t", "E", "y", "A", "b", "p", "T", "D", "c",
    "g", "l", "j", "O", "S", "d", "Y", "s", "I", "[SOS]", "[EOS]",
)
NUM_CLASSES = len(VOCAB)
BLANK = 0
SOS, EOS = "[SOS]", "[EOS]"
SYMBOL_INDEX: dict[str, int] = {s: i for i, s in enumerate(VOCAB)}
# Symbols a transcript may contain between its [SOS] and [EOS] markers.
LABEL_SYMBOLS = frozenset(VOCAB[1:-2])
BLANK_CODE = " "
MAX_OUTPUTS = 256                 # labels are stored as uint8

assert NUM_CLASSES == 43 and len(CODES) == NUM_CLASSES


class TranscriptError(ValueError):
    """A transcript that cannot become a training target."""


class InventoryError(PhonerecError, ValueError):
    """An inventory that cannot be used (a bad TSV line, an unknown name, inconsistent records)."""


@dataclass(frozen=True)
class Inventory:
    """A model's outputs: `symbols[i]` is output i (symbols[0] = "" is the CTC blank), `codes[i]` its
    submission code; `framing` = the (start, end) tokens around every transcript, stripped before
    encoding (() = unframed). A framing token that is also an output is never a target, and the
    decoders never emit it (`masked`)."""

    name: str
    symbols: tuple[str, ...]
    codes: tuple[str, ...]
    framing: tuple[str, ...] = (SOS, EOS)

    def __post_init__(self) -> None:
        object.__setattr__(self, "symbols", tuple(str(s) for s in self.symbols))
        object.__setattr__(self, "codes", tuple(str(c) for c in self.codes))
        object.__setattr__(self, "framing", tuple(str(t) for t in self.framing))
        problem = self._problem()
        if problem:
            raise InventoryError(f"inventory {self.name!r}: {problem}")

    def _problem(self) -> str | None:
        syms, codes = self.symbols, self.codes
        if not syms or syms[0] != "":
            return "output 0 must be the CTC blank ''"
        if len(syms) < 2 or len(syms) > MAX_OUTPUTS:
            return f"{len(syms)} outputs; an inventory has 2 to {MAX_OUTPUTS} (labels are stored as uint8)"
        if len(codes) != len(syms):
            return f"{len(syms)} symbols but {len(codes)} codes"
        if any(not s for s in syms[1:]) or any(not c for c in codes):
            return "empty symbol or code"
        for what, seq in (("symbol", syms), ("code", codes)):
            seen: dict[str, int] = {}
            for i, s in enumerate(seq):
                if s in seen:
                    return f"{what} {s!r} of output {i} is also output {seen[s]}'s"
                seen[s] = i
        if len(self.framing) not in (0, 2) or any(not t for t in self.framing):
            return f"framing must be two non-empty tokens (or none), got {list(self.framing)}"
        if not self.label_symbols:
            return "no output can be a target"
        return None

    # -------------------------------------------------------------------------- derived tables

    @cached_property
    def index(self) -> dict[str, int]:
        """symbol -> output index."""
        return {s: i for i, s in enumerate(self.symbols)}

    @cached_property
    def label_symbols(self) -> frozenset[str]:
        """Symbols a transcript may hold between its framing tokens (neither the blank nor a framing token)."""
        return frozenset(self.symbols[1:]) - set(self.framing)

    @property
    def num_classes(self) -> int:
        return len(self.symbols)

    @property
    def masked(self) -> tuple[int, ...]:
        """Outputs that are never targets (framing tokens that are outputs, as in F22): decoding
        makes them impossible, so an undertrained model cannot put them into a transcript."""
        return tuple(i for i, s in enumerate(self.symbols) if i and s in self.framing)

    def describe(self) -> str:
        return f"{self.name} ({self.num_classes} outputs)"

    def matches(self, other: Inventory) -> bool:
        """The same outputs, codes and framing (names aside: s23 and s24 are one inventory)."""
        return (self.symbols, self.codes, self.framing) == (other.symbols, other.codes, other.framing)

    # ---------------------------------------------------------------------------- conversions

    def encode(self, symbols: Sequence[str]) -> np.ndarray:
        """A transcript's symbols -> output indices (uint8), its framing stripped; TranscriptError
        names what is wrong (a missing framing token, an empty body, the unknown symbols)."""
        syms = [str(s) for s in symbols]
        body = self._strip(syms)
        if not body:
            raise TranscriptError("transcript is empty" + (f" after stripping {self.framing[0]}/{self.framing[1]}"
                                                          if self.framing else ""))
        allowed = self.label_symbols
        unknown = sorted({s for s in body if s not in allowed})
        if unknown:
            shown = ", ".join(repr(s) for s in unknown[:5])
            where = (f"the {len(allowed)}-phoneme vocabulary" if self.name == "f22"
                     else f"the {len(allowed)} symbols of inventory {self.name}")
            raise TranscriptError(f"unknown symbol(s) {shown} (not in {where})")
        index = self.index
        return np.fromiter((index[s] for s in body), dtype=np.uint8, count=len(body))

    def _strip(self, syms: list[str]) -> list[str]:
        if not self.framing:
            return syms
        start, end = self.framing
        if len(syms) < 2 or syms[0] != start or syms[-1] != end:
            raise TranscriptError(f"transcript must start with {start} and end with {end}")
        return syms[1:-1]

    def to_codes(self, indices: Iterable[int]) -> str:
        """Indices -> the one-character-code string of a submission."""
        codes = self.codes
        return "".join(codes[int(i)] for i in indices)

    def to_arpabet(self, indices: Iterable[int]) -> list[str]:
        symbols = self.symbols
        return [symbols[int(i)] for i in indices]

    def to_json(self) -> dict:
        """What manifests and checkpoints record (their keys): name, symbols, codes, framing."""
        return {"inventory": self.name, "vocab": list(self.symbols), "codes": list(self.codes),
                "framing": list(self.framing)}

    @classmethod
    def from_json(cls, d: dict) -> Inventory:
        """The inventory a manifest or checkpoint records. Records without "codes" come from
        before inventories: F22's (their "vocab" must then be F22's symbols)."""
        symbols = d.get("vocab")
        if symbols is None:
            return F22
        if not d.get("codes"):
            if list(symbols) != list(F22.symbols):
                raise InventoryError(f"a vocabulary of {len(symbols)} symbols without codes (not F22's 43)")
            return F22
        framing = d.get("framing")
        inv = cls(str(d.get("inventory") or "custom"), tuple(symbols), tuple(d["codes"]),
                  (SOS, EOS) if framing is None else tuple(framing))
        builtin = INVENTORIES.get(inv.name)
        return builtin if builtin is not None and builtin.matches(inv) else inv


F22 = Inventory("f22", VOCAB, CODES)
S24 = Inventory("s24", VOCAB[:-2], CODES[:-2])
# The built-ins by name (S23 and S24 share one inventory).
INVENTORIES: dict[str, Inventory] = {"f22": F22, "s23": S24, "s24": S24}


def load_inventory(spec: str | Path | Inventory) -> Inventory:
    """A built-in by name (f22, s23, s24; any case) or a TSV file (see the module docstring)."""
    if isinstance(spec, Inventory):
        return spec
    text = str(spec).strip()
    if text.lower() in INVENTORIES:
        return INVENTORIES[text.lower()]
    path = Path(text)
    if not path.is_file():
        names = ", ".join(sorted(INVENTORIES))
        raise InventoryError(f"unknown inventory {text!r}: give a built-in ({names}) or a TSV file "
                             f"({'no such file' if not path.exists() else 'not a file'}: {path})")
    return read_tsv(path)


def read_tsv(path: str | Path) -> Inventory:
    """An inventory from a TSV file (format: the module docstring); InventoryError names file and line."""
    path = Path(path)
    try:
        lines = path.read_bytes().decode("utf-8-sig").splitlines()
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read the inventory: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise InventoryError(f"{path}, line {line}: not UTF-8 text") from None
    symbols, codes, framing, framing_line = [""], [BLANK_CODE], (SOS, EOS), 0
    first: dict[tuple[str, str], int] = {}          # (what, value) -> the line that used it
    for no, raw in enumerate(lines, 1):
        fields = [f.strip() for f in raw.split("\t")]
        if not any(fields):
            continue
        if fields[0].startswith("#"):
            if fields[0] != "#framing":
                continue
            if framing_line:
                raise InventoryError(f"{path}, line {no}: a second #framing line (the first is line {framing_line})")
            framing, framing_line = _framing(path, no, fields[1:]), no
            continue
        symbol, code = _entry(path, no, raw, fields)
        for what, value in (("symbol", symbol), ("code", code)):
            if (what, value) in first:
                raise InventoryError(f"{path}, line {no}: {what} {value!r} is already used on line "
                                     f"{first[what, value]}")
            first[what, value] = no
        symbols.append(symbol)
        codes.append(code)
        if len(symbols) > MAX_OUTPUTS:
            raise InventoryError(f"{path}, line {no}: more than {MAX_OUTPUTS - 1} outputs after the blank")
    if len(symbols) == 1:
        raise InventoryError(f"{path}: no `symbol<TAB>code` lines: an inventory needs at least one output "
                             "after the blank")
    try:
        return Inventory(path.stem, tuple(symbols), tuple(codes), framing)
    except InventoryError as exc:
        raise InventoryError(f"{path}: {exc}") from None


def _entry(path: Path, no: int, raw: str, fields: list[str]) -> tuple[str, str]:
    """(symbol, code) of one `symbol<TAB>code[<TAB>#comment]` line."""
    shown = json.dumps(raw[:60])
    extra = [f for f in fields[2:] if f]
    if len(fields) < 2 or (extra and not extra[0].startswith("#")):
        raise InventoryError(f"{path}, line {no}: expected `symbol<TAB>code`, got {shown}")
    symbol, code = fields[0], fields[1]
    if not symbol or not code:
        raise InventoryError(f"{path}, line {no}: empty {'symbol' if not symbol else 'code'} in {shown}")
    if len(code) != 1:
        raise InventoryError(f"{path}, line {no}: the code of {symbol!r} must be one character, got {code!r}")
    return symbol, code


def _framing(path: Path, no: int, tokens: list[str]) -> tuple[str, ...]:
    tokens = [t for t in tokens if t]
    if tokens and tokens[-1].startswith("#") and len(tokens) != 2:
        tokens = tokens[:-1]
    if len(tokens) not in (0, 2):
        raise InventoryError(f"{path}, line {no}: expected `#framing<TAB><start><TAB><end>` (or `#framing` alone "
                             f"for unframed transcripts), got {len(tokens)} token(s)")
    return tuple(tokens)


# ---------------------------------------------------------------------------- F22's helpers

def encode_transcript(symbols: Sequence[str]) -> np.ndarray:
    """F22: strip the [SOS]/[EOS] frame and map symbols to indices (uint8)."""
    return F22.encode(symbols)


def ctc_min_frames(labels: Sequence[int] | np.ndarray) -> int:
    """Fewest frames CTC needs: one per label plus a blank between each adjacent repeat."""
    lab = np.asarray(labels)
    if lab.size == 0:
        return 0
    return int(lab.size + np.count_nonzero(lab[1:] == lab[:-1]))


def ctc_min_frames_ragged(labels: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """`ctc_min_frames` of every utterance at once: utterance i's labels are
    labels[offsets[i]:offsets[i+1]]; int64 [len(offsets) - 1]."""
    lo = np.asarray(offsets, dtype=np.int64)
    labels = np.asarray(labels)
    if len(lo) < 2:
        return np.zeros(0, dtype=np.int64)
    same = labels[1:] == labels[:-1]
    inner = lo[1:-1]
    same[inner[(inner > 0) & (inner < len(labels))] - 1] = False      # pairs across utterances
    before = np.concatenate([[0], np.cumsum(same), [same.sum()]])     # [k]: repeat pairs before label k
    ends = np.maximum(lo[1:] - 1, lo[:-1])
    return (np.diff(lo) + before[ends] - before[lo[:-1]]).astype(np.int64)


def to_codes(indices: Iterable[int]) -> str:
    """F22: indices -> the one-character-code string of a submission."""
    return F22.to_codes(indices)


def to_arpabet(indices: Iterable[int]) -> list[str]:
    """F22: indices -> symbols."""
    return F22.to_arpabet(indices)
