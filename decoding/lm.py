"""Phone n-gram language models: Kneser-Ney estimation, ARPA files (written and read as plain
text, never executed) and the dense log-probability table the beam decoder looks up per step.

An ARPA file is what SRILM and KenLM write: optional text, ``\\data\\`` with one ``ngram N=count``
line per order, then one ``\\N-grams:`` section per order (``log10prob w1 .. wN [log10backoff]``),
then ``\\end\\``. Reading checks everything those tools check, so a bad file is one line naming the
file and the line (`ArpaError`) rather than a silently wrong model.
"""

from __future__ import annotations

import math
import os
import re
import stat
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.atomic import write_text
from pipeline.errors import PhonerecError
from pipeline.limits import gigabytes, memory_bytes

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
MAX_ORDER = 6
LOG10_ZERO = -99.0              # the ARPA convention for "never" (<s> as a prediction)
LN10 = math.log(10.0)
MAX_LOG10_PROB = 1e-5           # tolerance for rounding in files written with few digits
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_COUNT = re.compile(r"ngram\s+(\d+)\s*=\s*(\d+)")
_HEADER = re.compile(r"\\(\d{1,9})-grams:")          # bounded: a 5,000-digit number is no section
MAX_DIGITS = 12                 # a count or order with more digits is refused before int() (Python caps at 4,300)
# A log10 weight's bound: any sum the dense table forms (a probability and up to MAX_ORDER backoffs,
# times ln 10) stays finite in its float32; files hold -99 at the most negative.
MAX_LOG10_WEIGHT = 1e6


class ArpaError(PhonerecError):
    """An ARPA file (or model) that cannot be used; one line: ``path:line: problem``."""


def _error(path: str, problem: str, line: int | None = None) -> ArpaError:
    return ArpaError(f"{path}: {problem}" if line is None else f"{path}:{line}: {problem}")


@dataclass
class Arpa:
    """A backoff n-gram model: ngrams[n-1] maps n symbols to (log10 prob, log10 backoff or None)."""

    order: int
    ngrams: list[dict[tuple[str, ...], tuple[float, float | None]]]


# ------------------------------------------------------------------------------------ estimation

def estimate(sequences: Iterable[Sequence[str]], order: int, vocabulary: Sequence[str] = ()) -> Arpa:
    """Interpolated Kneser-Ney (one discount per order) over ``<s> w1 .. wk </s>``, written in
    backoff form, so the decoder's table and any ARPA tool see the same normalised model.
    `vocabulary` adds symbols that get probability even if the corpus never uses them."""
    _check_order(order, "<estimate>")
    raw = _raw_counts(sequences, order)
    vocab = sorted(({g[0] for g in raw[0]} | set(vocabulary) | {EOS}) - {BOS})
    for w in vocab:
        _check_symbol(w, EOS)
    counts = _kn_counts(raw)
    discounts = [_discount(c) for c in counts]
    probs, gammas = [_unigrams(counts[0], discounts[0], vocab)], []
    for n in range(2, order + 1):
        p, g = _interpolate(counts[n - 1], discounts[n - 1], probs[-1])
        probs.append(p)
        gammas.append(g)
    return _backoff_form(probs, gammas + [{}], order)


def _check_order(order: int, name: str) -> None:
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= MAX_ORDER:
        raise _error(name, f"n-gram order {order!r} is not an integer from 1 to {MAX_ORDER}")


def _check_symbol(sym, reserved: str | None = None) -> str:
    """A symbol must survive an ARPA line (one whitespace-free word) and not be a sentence marker."""
    if not isinstance(sym, str) or not sym or sym.split() != [sym] or sym in (BOS, EOS) and sym != reserved:
        raise PhonerecError(f"LM symbol {sym!r}: symbols are non-empty words without whitespace, "
                            f"other than {BOS} and {EOS} (added around every sentence)")
    return sym


def _raw_counts(sequences: Iterable[Sequence[str]], order: int) -> list[Counter]:
    raw = [Counter() for _ in range(order)]
    for seq in sequences:
        if isinstance(seq, str):
            raise PhonerecError(f"LM sentence {seq[:40]!r} is a string: give a sequence of symbols")
        words = [BOS, *(_check_symbol(s) for s in seq), EOS]
        for n in range(1, order + 1):
            raw[n - 1].update(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return raw


def _kn_counts(raw: list[Counter]) -> list[dict]:
    """Highest order: raw counts; below: distinct left contexts N1+(. g), except n-grams starting
    with <s>, which have no left context and keep raw counts (as KenLM and SRILM do)."""
    counts = [dict(raw[-1])]
    for n in range(len(raw) - 1, 0, -1):
        cont = Counter(g[1:] for g in raw[n])
        counts.insert(0, {g: c if g[0] == BOS else cont[g] for g, c in raw[n - 1].items()})
    return counts


def _discount(counts: dict) -> float:
    """D = n1 / (n1 + 2 n2) from the count-of-counts; 0.5 when that is 0 or 1 (n1 or n2 is 0)."""
    cc = Counter(c for g, c in counts.items() if g != (BOS,))
    n1, n2 = cc[1], cc[2]
    return n1 / (n1 + 2 * n2) if n1 and n2 else 0.5


def _unigrams(counts: dict, d: float, vocab: list[str]) -> dict:
    """Unigrams interpolate with the uniform distribution, so every vocabulary symbol is possible."""
    seen = {g[0]: c for g, c in counts.items() if g[0] != BOS}
    total = sum(seen.values())
    if not total:
        return {(w,): 1.0 / len(vocab) for w in vocab}
    uniform = d * len(seen) / total / len(vocab)
    return {(w,): max(seen.get(w, 0) - d, 0.0) / total + uniform for w in vocab}


def _interpolate(counts: dict, d: float, lower: dict) -> tuple[dict, dict]:
    """P(w|h) = max(c(hw) - D, 0) / c(h.) + gamma(h) P(w|h'), gamma(h) = D N1+(h .) / c(h.)."""
    totals, types = Counter(), Counter()
    for g, c in counts.items():
        totals[g[:-1]] += c
        types[g[:-1]] += 1
    gamma = {h: d * types[h] / totals[h] for h in totals}
    probs = {g: max(c - d, 0.0) / totals[g[:-1]] + gamma[g[:-1]] * lower[g[1:]] for g, c in counts.items()}
    return probs, gamma


def _backoff_form(probs: list[dict], gammas: list[dict], order: int) -> Arpa:
    """Seen n-grams keep their interpolated probability; a context's backoff weight is gamma(h),
    which equals (1 - sum_seen P(w|h)) / (1 - sum_seen P(w|h')) for this model."""
    ngrams = []
    for n in range(1, order + 1):
        gam = gammas[n - 1]
        level = {g: (math.log10(p), _log10_or_none(gam.get(g))) for g, p in probs[n - 1].items()}
        ngrams.append(level)
    ngrams[0][(BOS,)] = (LOG10_ZERO, _log10_or_none(gammas[0].get((BOS,))))
    return Arpa(order, ngrams)


def _log10_or_none(x: float | None) -> float | None:
    return None if x is None else math.log10(x)


# ------------------------------------------------------------------------------------ ARPA files

def write_arpa(arpa: Arpa, path) -> None:
    """Write `arpa` atomically (readers never see half a model), n-grams sorted for stable files."""
    if arpa.order != len(arpa.ngrams):
        raise _error(str(path), f"model of order {arpa.order} has {len(arpa.ngrams)} n-gram levels")
    lines = ["\\data\\", *(f"ngram {n}={len(g)}" for n, g in enumerate(arpa.ngrams, 1)), ""]
    for n, grams in enumerate(arpa.ngrams, 1):
        lines.append(f"\\{n}-grams:")
        lines.extend(_entry_line(words, p, bo, n, path) for words, (p, bo) in sorted(grams.items()))
        lines.append("")
    lines.append("\\end\\")
    write_text(path, "\n".join(lines) + "\n")


def _entry_line(words: tuple[str, ...], p: float, bo: float | None, n: int, path) -> str:
    if len(words) != n or any(not isinstance(w, str) or w.split() != [w] for w in words):
        raise _error(str(path), f"cannot write the {n}-gram {words!r}: {n} whitespace-free words needed")
    if not math.isfinite(p) or bo is not None and not math.isfinite(bo):
        raise _error(str(path), f"cannot write the {n}-gram {' '.join(words)!r}: non-finite weight")
    return f"{p:.7f}\t{' '.join(words)}" + ("" if bo is None else f"\t{bo:.7f}")


def read_arpa(path, max_bytes: int = 256 * 2**20, memory: int | None = None) -> Arpa:
    """Parse an ARPA file as plain text, checking it the way SRILM and KenLM do; files over
    `max_bytes` are refused from their size, before anything is read, and files whose counts claim
    more n-grams than the file can hold or than `memory` bytes (this machine's) can keep, from their
    header, before any n-gram is. The lines are streamed, never all held at once."""
    with _Lines(str(path), max_bytes) as lines:
        lines.skip_to_data()
        counts = _read_counts(lines)
        _check_claims(lines, counts, memory_bytes() if memory is None else memory)
        ngrams: list[dict] = []
        for n, (count, declared) in enumerate(counts, 1):
            ngrams.append(_read_section(lines, n, count, declared, ngrams, final=n == len(counts)))
        _read_end(lines, len(counts))
    return Arpa(len(counts), ngrams)


BYTES_PER_NGRAM = 400           # what one n-gram costs in memory once read (key, weights, dict slot)
MIN_LINE = 4                    # the shortest n-gram line: "0 a" and its newline


def _check_claims(lines: _Lines, counts: list[tuple[int, int]], memory: int) -> None:
    """The counts against the file's size and the memory their n-grams would take."""
    total = sum(c for c, _ in counts)
    if total * MIN_LINE > lines.size:
        raise lines.error(f"the counts declare {total} n-grams, more than a file of {lines.size} bytes can hold "
                          "(truncated, or the counts are wrong)", counts[-1][1])
    if total * BYTES_PER_NGRAM > memory // 2:
        raise lines.error(f"the counts declare {total} n-grams, which would take about "
                          f"{gigabytes(total * BYTES_PER_NGRAM)} to read, more than half of this machine's "
                          f"{gigabytes(memory)}; prune the model (e.g. a lower order)", counts[-1][1])


class _Lines:
    """The file's lines streamed with 1-based numbers, so every problem can name its line; a FIFO,
    device or file over `max_bytes` is refused before it is opened."""

    def __init__(self, path: str, max_bytes: int):
        self.path, self.max_bytes = path, max_bytes
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                raise _error(path, "not a regular file")
            if st.st_size > max_bytes:
                raise _error(path, f"file is {st.st_size} bytes, over the limit of {max_bytes} bytes (max_bytes)")
            if st.st_size == 0:
                raise _error(path, "empty file: not an ARPA model")
            self.fh = open(path, "rb")      # noqa: SIM115 - closed by __exit__
        except OSError as exc:
            raise _error(path, f"cannot read ({exc.strerror or exc})") from None
        self.size = st.st_size
        self.i, self.read, self.last, self.pushed = 0, 0, "", False   # i: number of the last line returned

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()

    def next(self) -> str | None:
        """The next non-blank line, or None at the end of the file."""
        if self.pushed:
            self.pushed, self.i = False, self.i + 1
            return self.last
        for raw in self.fh:
            self.i += 1
            self.read += len(raw)
            if self.read > self.max_bytes:          # the file grew since the stat
                raise _error(self.path, f"file is over the limit of {self.max_bytes} bytes (max_bytes)")
            line = self._decode(raw).strip()
            if line:
                self.last = line
                return line
        return None

    def _decode(self, raw: bytes) -> str:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _error(self.path, f"not UTF-8 text (byte 0x{raw[exc.start]:02x})", self.i) from None
        return text.removeprefix("\ufeff") if self.i == 1 else text

    def back(self) -> None:
        self.pushed, self.i = True, self.i - 1

    def error(self, problem: str, line: int | None = -1) -> ArpaError:
        return _error(self.path, problem, max(self.i, 1) if line == -1 else line)

    def first_line(self, words: tuple[str, ...], after: int) -> int:
        """The line, after line `after`, where the n-gram `words` first appears (an error's detail:
        the file is read again rather than every line number kept)."""
        with open(self.path, "rb") as fh:
            for number, raw in enumerate(fh, 1):
                if number > after and tuple(raw.decode("utf-8", "replace").split()[1:1 + len(words)]) == words:
                    return number
        return after

    def skip_to_data(self) -> None:
        while (line := self.next()) is not None:
            if line == "\\data\\":
                return
        raise self.error("no \\data\\ line: not an ARPA file", None)


def _read_counts(lines: _Lines) -> list[tuple[int, int]]:
    """The `ngram N=count` lines: orders 1, 2, ... each once; returns (count, its line) per order."""
    counts: list[tuple[int, int]] = []
    while (line := lines.next()) is not None and line.startswith("ngram"):
        m = _COUNT.fullmatch(line)
        if not m:
            raise lines.error(f"malformed count line {line[:60]!r} (expected 'ngram N=count')")
        if len(m[1].lstrip("0")) > MAX_DIGITS or len(m[2].lstrip("0")) > MAX_DIGITS:
            raise lines.error(f"count line {line[:40]!r}... has a number of over {MAX_DIGITS} digits")
        n, count = int(m[1]), int(m[2])
        if n < 1:
            raise lines.error("ngram 0= is no order: orders count from 1")
        if n > MAX_ORDER:
            raise lines.error(f"ngram {n}= is beyond the highest order read ({MAX_ORDER})")
        if n <= len(counts):
            raise lines.error(f"duplicate count for order {n} (first on line {counts[n - 1][1]})")
        if n != len(counts) + 1:
            raise lines.error(f"ngram {n}= is not consecutive: expected 'ngram {len(counts) + 1}=' next")
        counts.append((count, lines.i))
    if line is None:
        raise lines.error("truncated file: it ends after \\data\\" + (" and its counts" if counts else ""))
    if not counts:
        raise lines.error(f"no 'ngram N=count' lines after \\data\\ (found {line[:60]!r})")
    lines.back()
    return counts


def _read_section(lines: _Lines, n: int, count: int, declared: int, ngrams: list[dict], final: bool) -> dict:
    """The \\n-grams: section: exactly `count` entries, each new, each with its context listed."""
    line = lines.next()
    if line != f"\\{n}-grams:":
        found = "the end of the file (truncated)" if line is None else repr(line[:60])
        raise lines.error(f"expected the \\{n}-grams: section here, found {found}")
    grams: dict[tuple[str, ...], tuple[float, float | None]] = {}
    start = lines.i
    while (line := lines.next()) is not None and not line.startswith("\\"):
        if len(grams) == count:
            raise lines.error(f"more {n}-grams than the {count} declared on line {declared}")
        words, weights = _parse_entry(lines, line, n, final)
        if words in grams:
            raise lines.error(f"repeated {n}-gram {' '.join(words)!r} (first on line "
                              f"{lines.first_line(words, start)})")
        if n > 1 and words[:-1] not in ngrams[n - 2]:
            raise lines.error(f"the context {' '.join(words[:-1])!r} of this {n}-gram is not listed as a "
                              f"{n - 1}-gram (SRILM requires every n-gram's prefix to be listed)")
        grams[words] = weights
    if len(grams) < count:
        end = "the file ends (no \\end\\)" if line is None else "the next section starts"
        raise lines.error(f"truncated: the \\{n}-grams: section has {len(grams)} entries, fewer than the "
                          f"{count} declared on line {declared}, when {end}")
    if line is not None:
        lines.back()
    return grams


def _parse_entry(lines: _Lines, line: str, n: int, final: bool):
    """`log10prob w1 .. wn [log10backoff]`: the words and (prob, backoff or None)."""
    fields = line.split()
    if len(fields) == n + 2 and not final:
        words, backoff = tuple(map(sys.intern, fields[1:-1])), _number(lines, fields[-1], "backoff weight")
    elif len(fields) == n + 1:
        words, backoff = tuple(map(sys.intern, fields[1:])), None
    else:
        extra = " (the highest order has no backoff weight)" if final else " and an optional backoff weight"
        raise lines.error(f"a {n}-gram line has a log10 probability, {n} word(s){extra}; found "
                          f"{len(fields) - 1} field(s) after the probability: {line[:60]!r}")
    prob = _number(lines, fields[0], "log10 probability")
    if prob > MAX_LOG10_PROB:
        raise lines.error(f"log10 probability {fields[0]} is positive (a probability over 1)")
    return words, (prob, backoff)


def _number(lines: _Lines, text: str, what: str) -> float:
    if text.lower().lstrip("+-") in ("inf", "infinity", "nan"):
        raise lines.error(f"{what} {text!r} is not finite (write -99 for a zero probability)")
    if not _NUMBER.fullmatch(text):
        raise lines.error(f"{what} {text[:40]!r} is not a number")
    value = float(text)
    if not math.isfinite(value):
        raise lines.error(f"{what} {text[:40]!r} is not finite")
    if abs(value) > MAX_LOG10_WEIGHT:
        raise lines.error(f"{what} {text[:40]!r} is out of range (at most {MAX_LOG10_WEIGHT:g} in size; a zero "
                          "probability is -99)")
    return value


def _read_end(lines: _Lines, order: int) -> None:
    line = lines.next()
    if line is None:
        raise lines.error("truncated file: no \\end\\ after the last section")
    if (m := _HEADER.fullmatch(line)) and int(m[1]) > order:
        raise lines.error(f"section {line} is beyond the declared order {order} (no 'ngram {m[1]}=' count)")
    if line != "\\end\\":
        raise lines.error(f"expected \\end\\ here, found {line[:60]!r}")


# ------------------------------------------------------------------------------------ dense table

@dataclass(eq=False)
class DenseLM:
    """The model as a table: natural-log P(w | context) at table[state, w]; a state is the last
    order-1 symbols in mixed radix (oldest most significant), starting from all-<s>."""

    order: int
    symbols: tuple[str, ...]
    table: torch.Tensor
    bos_state: int
    bos: int
    eos: int
    label_index: torch.Tensor

    def next_state(self, state, sym):
        """The state after `sym` (ints or int64 tensors, broadcast): drop the oldest, append sym."""
        if self.order == 1:
            return state * 0 + sym * 0
        return (state % len(self.symbols) ** (self.order - 2)) * len(self.symbols) + sym

    def score(self, seq: Sequence[str]) -> float:
        """Natural-log probability of `seq` followed by </s>, read from the table."""
        index = {s: i for i, s in enumerate(self.symbols)}
        state, total = self.bos_state, 0.0
        for sym in (*seq, EOS):
            if sym not in index:
                raise PhonerecError(f"symbol {sym!r} is not one of the language model's symbols")
            total += float(self.table[state, index[sym]])
            state = self.next_state(state, index[sym])
        return total


def dense(arpa: Arpa, labels: Sequence[str], blank: int = 0, max_entries: int = 2**26, path=None) -> DenseLM:
    """The backoff model as one table lookup per decoder step, over the decoder's labels (blank
    excluded), <s> and </s>; refuses tables over `max_entries` floats rather than exhausting memory."""
    name = "<arpa>" if path is None else str(path)
    _check_order(arpa.order, name)
    symbols = _dense_symbols(labels, blank)
    size = len(symbols)
    _check_size(name, arpa.order, size, max_entries)
    index = {s: i for i, s in enumerate(symbols)}
    _check_inventory(name, arpa, index, symbols[:-2])
    table = (_backoff_table(arpa, index) * LN10).astype(np.float32)
    if not np.isfinite(table).all():        # checked in the table's own dtype, after the conversion
        raise _error(name, "the model has weights that are not finite as float32 (over about 1e38)")
    bos, eos = index[BOS], index[EOS]
    return DenseLM(order=arpa.order, symbols=symbols,
                   table=torch.from_numpy(table),
                   bos_state=sum(bos * size ** k for k in range(arpa.order - 1)), bos=bos, eos=eos,
                   label_index=torch.tensor([-1 if c == blank else index[s] for c, s in enumerate(labels)],
                                            dtype=torch.int64))


def _dense_symbols(labels: Sequence[str], blank: int) -> tuple[str, ...]:
    if not 0 <= blank < len(labels):
        raise PhonerecError(f"blank index {blank} is outside the {len(labels)} labels")
    symbols = tuple(s for c, s in enumerate(labels) if c != blank)
    for s in symbols:
        _check_symbol(s)
    if len(set(symbols)) != len(symbols):
        raise PhonerecError("the labels repeat a symbol")
    return (*symbols, BOS, EOS)


def _check_size(name: str, order: int, size: int, max_entries: int) -> None:
    entries = size ** order
    if entries > max_entries:
        fits = max((m for m in range(1, order) if size ** m <= max_entries), default=0)
        raise _error(name, f"order {order} over {size} symbols needs a table of {entries} entries "
                     f"({entries * 4 / 2**20:.0f} MB); use order ≤ {fits}")


def _check_inventory(name: str, arpa: Arpa, index: dict[str, int], labels: Sequence[str]) -> None:
    """Every ARPA word must be a label, <s>, </s> or <unk>: anything else is a different inventory."""
    for grams in arpa.ngrams:
        for words in grams:
            for w in words:
                if w not in index and w != UNK:
                    raise _error(name, f"symbol {w!r} is not in the inventory (labels: {' '.join(labels)})")


def _backoff_table(arpa: Arpa, index: dict[str, int]) -> np.ndarray:
    """log10 P(w|h) for every full context h: listed if (h, w) is, else bo(h) + P(w|h[1:])."""
    size = len(index)
    level = _unigram_row(arpa.ngrams[0], index)[None, :]
    for n in range(2, arpa.order + 1):
        rows = size ** (n - 1)
        backoff = np.zeros(rows)
        for h, (_, bo) in arpa.ngrams[n - 2].items():
            if bo is not None and (r := _row(h, index)) is not None:
                backoff[r] = bo
        level = backoff[:, None] + level[np.arange(rows) % (rows // size)]
        for g, (p, _) in arpa.ngrams[n - 1].items():
            if (r := _row(g[:-1], index)) is not None and g[-1] in index:
                level[r, index[g[-1]]] = p
    return level


def _unigram_row(unigrams: dict, index: dict[str, int]) -> np.ndarray:
    """Unlisted symbols get <unk>'s probability (or -99); an unlisted <s> is never predicted."""
    row = np.full(len(index), unigrams.get((UNK,), (LOG10_ZERO, None))[0], dtype=np.float64)
    row[index[BOS]] = LOG10_ZERO
    for (w,), (p, _) in unigrams.items():
        if w in index:
            row[index[w]] = p
    return row


def _row(context: tuple[str, ...], index: dict[str, int]) -> int | None:
    """Mixed-radix row of a context (oldest most significant); None if it holds <unk>."""
    r = 0
    for w in context:
        if w not in index:
            return None
        r = r * len(index) + index[w]
    return r
