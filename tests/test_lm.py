"""decoding.lm against hand computations and an independent backoff reference: Kneser-Ney values,
normalisation of every dense row, ARPA round trips, and one ArpaError (file:line) per malformed file."""

from __future__ import annotations

import math
import random

import pytest
import torch

from decoding.lm import (
    BOS,
    EOS,
    MAX_ORDER,
    UNK,
    Arpa,
    ArpaError,
    dense,
    estimate,
    read_arpa,
    write_arpa,
)
from pipeline.errors import PhonerecError
from pipeline.vocab import VOCAB

LN10 = math.log(10.0)
LETTERS = ("", "a", "b", "c", "d", "e")          # a toy decoder inventory: blank first


def random_corpus(symbols, n, seed, max_len=8):
    rng = random.Random(seed)
    return [[rng.choice(symbols) for _ in range(rng.randint(0, max_len))] for _ in range(n)]


def prob(arpa, *words):
    """The listed (not backed-off) probability of an n-gram."""
    return 10 ** arpa.ngrams[len(words) - 1][tuple(words)][0]


def backoff(arpa, *words):
    return 10 ** arpa.ngrams[len(words) - 1][tuple(words)][1]


def ref_log10(arpa, context, w):
    """ARPA backoff, written independently of decoding.lm: listed, else bo(context) + shorter."""
    key = (*context, w)
    if key in arpa.ngrams[len(key) - 1]:
        return arpa.ngrams[len(key) - 1][key][0]
    if not context:
        return arpa.ngrams[0].get((UNK,), (-99.0, None))[0]
    bo = arpa.ngrams[len(context) - 1].get(context, (0.0, None))[1]
    return (bo or 0.0) + ref_log10(arpa, context[1:], w)


def ref_score(arpa, seq):
    history = [BOS] * (arpa.order - 1)
    total = 0.0
    for w in [*seq, EOS]:
        context = tuple(history[len(history) - (arpa.order - 1):]) if arpa.order > 1 else ()
        total += ref_log10(arpa, context, w)
        history.append(w)
    return total * LN10


# ------------------------------------------------------------------------------------ estimation

def test_rows_sum_to_one_and_unseen_labels_are_possible():
    labels = VOCAB
    phones = list(VOCAB[1:12])              # the corpus uses 11 of the 42 labels
    corpus = random_corpus(phones, 60, seed=1) + [["AE", "R"]] * 20 + [["AE", "N"]]
    arpa = estimate(corpus, 3, vocabulary=labels[1:])
    lm = dense(arpa, labels)
    assert lm.table.shape == (len(lm.symbols) ** 2, len(lm.symbols)) and lm.table.dtype == torch.float32
    assert torch.isfinite(lm.table).all()
    predicted = [i for i, s in enumerate(lm.symbols) if s != BOS]
    sums = lm.table[:, predicted].double().exp().sum(1)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5), (sums.min(), sums.max())
    unseen = lm.symbols.index("[SOS]")
    assert lm.table[lm.bos_state, unseen] > math.log(1e-6)     # never in the corpus, still possible
    assert lm.table[:, lm.bos].max() < -200                     # <s> is never predicted (log10 -99)
    after_ae = lm.next_state(lm.bos_state, lm.symbols.index("AE"))
    assert lm.table[after_ae, lm.symbols.index("R")] > lm.table[after_ae, lm.symbols.index("N")] + 1.0


def test_kneser_ney_bigram_by_hand():
    arpa = estimate([["a", "b"], ["a", "c"], ["b", "a"]], 2, vocabulary=["d"])
    # bigrams: <s> a:2, the other seven once -> n1=7, n2=1
    d2 = 7 / (7 + 2 * 1)
    # unigram continuation counts N1+(. w): a {<s>,b}=2, b {a,<s>}=2, c {a}=1, </s> {a,b,c}=3
    cont, total = {"a": 2, "b": 2, "c": 1, "d": 0, EOS: 3}, 8
    d1 = 1 / (1 + 2 * 2)                         # n1 = 1 (c), n2 = 2 (a, b)
    p1 = {w: max(c - d1, 0) / total + d1 * 4 / total / 5 for w, c in cont.items()}
    assert sum(p1.values()) == pytest.approx(1.0)
    for w in p1:
        assert prob(arpa, w) == pytest.approx(p1[w], rel=1e-12)
    # contexts: <s> (a:2, b:1), a (b, c, </s>: 1 each), b (</s>, a), c (</s>)
    assert prob(arpa, BOS, "a") == pytest.approx((2 - d2) / 3 + d2 * 2 / 3 * p1["a"], rel=1e-12)
    assert prob(arpa, "a", "b") == pytest.approx((1 - d2) / 3 + d2 * 3 / 3 * p1["b"], rel=1e-12)
    assert prob(arpa, "c", EOS) == pytest.approx((1 - d2) / 1 + d2 * 1 / 1 * p1[EOS], rel=1e-12)
    assert backoff(arpa, "b") == pytest.approx(d2 * 2 / 2, rel=1e-12)
    assert backoff(arpa, BOS) == pytest.approx(d2 * 2 / 3, rel=1e-12)
    assert arpa.ngrams[0][(BOS,)][0] == -99.0 and arpa.ngrams[0][("d",)][1] is None
    lm = dense(arpa, ["", "a", "b", "c", "d"])
    s = lm.symbols.index
    # an unseen bigram backs off: gamma(b) * P1(c)
    assert math.exp(lm.table[s("b"), s("c")]) == pytest.approx(d2 * p1["c"], rel=1e-5)
    assert math.exp(lm.table[s("a"), s("d")]) == pytest.approx(d2 * p1["d"], rel=1e-5)


def test_kneser_ney_trigram_lower_orders_use_continuation_counts():
    arpa = estimate([["a", "b"], ["a", "b"], ["c", "a", "b"]], 3)
    # unigram N1+(. w): a {<s>, c}=2, b {a}=1, c {<s>}=1, </s> {b}=1; raw counts would be 3, 3, 1, 3
    d1 = 3 / (3 + 2 * 1)
    p1 = {w: (c - d1) / 5 + d1 * 4 / 5 / 4 for w, c in {"a": 2, "b": 1, "c": 1, EOS: 1}.items()}
    # bigram level: <s> a and <s> c keep raw counts (2, 1); a b: N1+(. a b) = {<s>, c} = 2 (raw 3)
    d2 = 3 / (3 + 2 * 2)                         # adjusted counts 2, 2, 1, 1, 1
    p_b_a = (2 - d2) / 2 + d2 * 1 / 2 * p1["b"]
    assert prob(arpa, "a", "b") == pytest.approx(p_b_a, rel=1e-12)
    assert prob(arpa, BOS, "a") == pytest.approx((2 - d2) / 3 + d2 * 2 / 3 * p1["a"], rel=1e-12)
    d3 = 2 / (2 + 2 * 1)                         # raw trigram counts 2, 3, 1, 1
    assert prob(arpa, BOS, "a", "b") == pytest.approx((2 - d3) / 2 + d3 * 1 / 2 * p_b_a, rel=1e-12)


def test_estimate_rejects_markers_and_bad_symbols():
    for bad in ([["a", BOS]], [["a", EOS]], [["a b"]], [[""]], ["ab"]):
        with pytest.raises(PhonerecError):
            estimate(bad, 2)
    with pytest.raises(PhonerecError, match="order"):
        estimate([["a"]], MAX_ORDER + 1)


# ------------------------------------------------------------------------------------ round trips

@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_write_read_round_trip(tmp_path, order):
    arpa = estimate(random_corpus(LETTERS[1:5], 80, seed=order), order, vocabulary=LETTERS[1:])
    path = tmp_path / "lm.arpa"
    write_arpa(arpa, path)
    assert [p.name for p in tmp_path.iterdir()] == ["lm.arpa"]      # atomic: no temp file left
    back = read_arpa(path)
    assert back.order == order
    for mine, theirs in zip(arpa.ngrams, back.ngrams, strict=True):
        assert mine.keys() == theirs.keys()
        for g, (p, bo) in mine.items():
            assert theirs[g][0] == pytest.approx(p, abs=1e-6)
            assert (bo is None) == (theirs[g][1] is None)
            assert bo is None or theirs[g][1] == pytest.approx(bo, abs=1e-6)
    a, b = dense(arpa, LETTERS), dense(back, LETTERS)
    torch.testing.assert_close(a.table, b.table, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_score_matches_independent_backoff(order):
    arpa = estimate(random_corpus(LETTERS[1:], 50, seed=10 + order), order)
    lm = dense(arpa, LETTERS)
    rng = random.Random(order)
    for seq in [[]] + random_corpus(LETTERS[1:], 30, seed=20 + order, max_len=10):
        # contexts beyond the corpus (repeats, <s>-padding) exercise every backoff path
        seq = seq + [rng.choice(LETTERS[1:])] * rng.randint(0, 3)
        assert lm.score(seq) == pytest.approx(ref_score(arpa, seq), abs=1e-4)


def test_next_state_ints_and_tensors():
    lm = dense(estimate(random_corpus(LETTERS[1:], 30, seed=3), 3), LETTERS)
    size = len(lm.symbols)
    assert lm.bos_state == lm.bos * size + lm.bos
    g = torch.Generator().manual_seed(0)
    states = torch.randint(0, size ** 2, (50,), generator=g)
    syms = torch.randint(0, size, (50,), generator=g)
    out = lm.next_state(states, syms)
    assert out.dtype == torch.int64
    assert out.tolist() == [lm.next_state(int(s), int(w)) for s, w in zip(states, syms)]
    a, b = lm.symbols.index("a"), lm.symbols.index("b")
    assert lm.next_state(lm.next_state(lm.bos_state, a), b) == a * size + b
    assert lm.label_index.tolist() == [-1, *range(5)]


def test_order_one():
    arpa = estimate([["a", "b"], ["a"]], 1, vocabulary=["c"])
    lm = dense(arpa, LETTERS)
    assert lm.table.shape == (1, len(lm.symbols)) and lm.bos_state == 0
    assert lm.next_state(0, 3) == 0
    assert lm.next_state(torch.tensor([0, 0]), torch.tensor([1, 2])).tolist() == [0, 0]
    assert lm.score(["a"]) == pytest.approx(ref_score(arpa, ["a"]), abs=1e-5)
    sums = lm.table[0, [i for i, s in enumerate(lm.symbols) if s in ("a", "b", "c", EOS)]].exp().sum()
    assert float(sums) == pytest.approx(1.0, abs=1e-5)


# ------------------------------------------------------------------------------------ dense()

def unigram_arpa(**extra):
    grams = {(BOS,): (-99.0, None), ("a",): (-0.5, None), (EOS,): (-0.3, None)}
    grams.update({(w,): (p, None) for w, p in extra.items()})
    return Arpa(1, [grams])


def test_missing_label_uses_unk_else_minus_99():
    with_unk = dense(Arpa(1, [{**unigram_arpa().ngrams[0], (UNK,): (-2.0, None)}]), LETTERS)
    without = dense(unigram_arpa(), LETTERS)
    b = with_unk.symbols.index("b")
    assert float(with_unk.table[0, b]) == pytest.approx(-2.0 * LN10, rel=1e-6)
    assert float(without.table[0, b]) == pytest.approx(-99.0 * LN10, rel=1e-6)
    assert float(without.table[0, without.symbols.index("a")]) == pytest.approx(-0.5 * LN10, rel=1e-6)


def test_symbol_outside_inventory(tmp_path):
    arpa = estimate([["a", "zz"]], 2)
    with pytest.raises(ArpaError, match=r"^<arpa>: symbol 'zz' is not in the inventory \(labels: a b c d e\)"):
        dense(arpa, LETTERS)
    with pytest.raises(ArpaError, match="lm.arpa: symbol 'zz'"):
        dense(arpa, LETTERS, path=tmp_path / "lm.arpa")


def test_max_entries_refusal():
    arpa = estimate([["AE", "R"]], 3)
    with pytest.raises(ArpaError, match=r"order 3 over 44 symbols needs a table of 85184 entries .*use order ≤ 2"):
        dense(arpa, VOCAB, max_entries=10_000)
    assert dense(arpa, VOCAB, max_entries=44 ** 3).table.shape == (44 ** 2, 44)
    too_long = Arpa(MAX_ORDER + 1, [{} for _ in range(MAX_ORDER + 1)])
    with pytest.raises(ArpaError, match=f"order {MAX_ORDER + 1} is not an integer from 1 to {MAX_ORDER}"):
        dense(too_long, LETTERS)


def test_blank_elsewhere():
    labels = ("a", "b", "", "c")
    lm = dense(estimate([["a", "c"]], 2), labels, blank=2)
    assert lm.symbols == ("a", "b", "c", BOS, EOS)
    assert lm.label_index.tolist() == [0, 1, -1, 2]


# ------------------------------------------------------------------------------------ malformed files

GOOD = [
    "\\data\\",                # 1
    "ngram 1=4",               # 2
    "ngram 2=3",               # 3
    "",                        # 4
    "\\1-grams:",              # 5
    "-99\t<s>\t-0.3",          # 6
    "-0.5\ta\t-0.2",           # 7
    "-0.6\tb",                 # 8
    "-0.7\t</s>",              # 9
    "",                        # 10
    "\\2-grams:",              # 11
    "-0.1\t<s> a",             # 12
    "-0.2\ta b",               # 13
    "-0.3\ta </s>",            # 14
    "",                        # 15
    "\\end\\",                 # 16
]


def write_lines(tmp_path, lines, name="bad.arpa"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def replaced(line_no, text):
    lines = list(GOOD)
    lines[line_no - 1] = text
    return lines


def test_good_file_variants(tmp_path):
    base = read_arpa(write_lines(tmp_path, GOOD, "good.arpa"))
    assert base.order == 2 and base.ngrams[0][(BOS,)] == (-99.0, -0.3) and base.ngrams[1][("a", "b")] == (-0.2, None)
    spaced = ["Some tool's preamble", "with \\data\\-like words", ""] + [ln.replace("\t", "  ") for ln in GOOD]
    assert read_arpa(write_lines(tmp_path, spaced, "spaced.arpa")) == base
    crlf = tmp_path / "crlf.arpa"
    crlf.write_bytes(("\r\n".join(GOOD) + "\r\n").encode())
    assert read_arpa(crlf) == base
    assert dense(base, ("", "a", "b")).table.shape == (4, 4)


BAD = [   # (lines, expected line number or None, a phrase of the message)
    (GOOD[1:], None, "no \\data\\"),
    (GOOD[:1] + GOOD[3:], 3, "no 'ngram N=count'"),
    (replaced(3, "ngram 1=4"), 3, "duplicate count for order 1 (first on line 2)"),
    (replaced(3, "ngram 3=3"), 3, "not consecutive"),
    (replaced(3, "ngram two=3"), 3, "malformed count line"),
    (GOOD[:13], 13, "truncated: the \\2-grams: section has 2 entries, fewer than the 3 declared on line 3"),
    (GOOD[:8], 8, "truncated: the \\1-grams: section has 3 entries, fewer than the 4"),
    (GOOD[:4], 4, "truncated file: it ends after \\data\\ and its counts"),
    (GOOD[:5], 5, "truncated: the \\1-grams: section has 0 entries"),
    (GOOD[:10], 10, "expected the \\2-grams: section here, found the end of the file (truncated)"),
    (GOOD[:14], 14, "truncated file: no \\end\\"),
    (replaced(2, "ngram 1=5"), 11, "fewer than the 5 declared on line 2"),
    (replaced(3, "ngram 2=2"), 14, "more 2-grams than the 2 declared on line 3"),
    (replaced(13, "-0.2\ta"), 13, "found 1 field(s) after the probability"),
    (replaced(13, "-0.2\ta b -0.1"), 13, "the highest order has no backoff weight"),
    (replaced(8, "-0.6\tb c d"), 8, "found 3 field(s)"),
    (replaced(13, "-0.2x\ta b"), 13, "log10 probability '-0.2x' is not a number"),
    (replaced(13, "-inf\ta b"), 13, "'-inf' is not finite"),
    (replaced(13, "inf\ta b"), 13, "'inf' is not finite"),
    (replaced(13, "nan\ta b"), 13, "'nan' is not finite"),
    (replaced(13, "-1e999\ta b"), 13, "is not finite"),
    (replaced(7, "-0.5\ta\tnan"), 7, "backoff weight 'nan' is not finite"),
    (replaced(7, "-0.5\ta\t0x1"), 7, "backoff weight '0x1' is not a number"),
    (replaced(13, "0.5\ta b"), 13, "is positive"),
    (replaced(14, "-0.3\ta b"), 14, "repeated 2-gram 'a b' (first on line 13)"),
    (replaced(9, "-0.7\tb"), 9, "repeated 1-gram 'b' (first on line 8)"),
    (replaced(13, "-0.2\tc b"), 13, "context 'c' of this 2-gram is not listed as a 1-gram (SRILM requires"),
    (replaced(5, "\\2-grams:"), 5, "expected the \\1-grams: section here, found '\\\\2-grams:'"),
    (replaced(16, "\\3-grams:"), 16, "beyond the declared order 2"),
    (replaced(16, "\\the end"), 16, "expected \\end\\ here"),
]


@pytest.mark.parametrize("lines,line_no,phrase", BAD, ids=[f"{i}:{b[2][:30]}" for i, b in enumerate(BAD)])
def test_malformed(tmp_path, lines, line_no, phrase):
    path = write_lines(tmp_path, lines)
    with pytest.raises(ArpaError) as info:
        read_arpa(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}:{line_no}: " if line_no else f"{path}: "), msg
    assert phrase in msg, msg


def test_malformed_bytes(tmp_path):
    empty = tmp_path / "empty.arpa"
    empty.write_bytes(b"")
    with pytest.raises(ArpaError, match=r"empty\.arpa: empty file"):
        read_arpa(empty)
    latin = tmp_path / "latin.arpa"
    latin.write_bytes("\n".join(GOOD).encode().replace(b"-0.6\tb", b"-0.6\t\xe9"))
    with pytest.raises(ArpaError, match=r"latin\.arpa:8: not UTF-8"):
        read_arpa(latin)
    big = write_lines(tmp_path, GOOD, "big.arpa")
    with pytest.raises(ArpaError, match=r"big\.arpa: file is \d+ bytes, over the limit of 50 bytes"):
        read_arpa(big, max_bytes=50)
    with pytest.raises(ArpaError, match="not a regular file"):
        read_arpa(tmp_path)
    with pytest.raises(ArpaError, match="cannot read"):
        read_arpa(tmp_path / "missing.arpa")
