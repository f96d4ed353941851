"""Decoding (``decoding``) against independent references: plain-Python greedy, brute-force CTC
sums; tests/test_search.py covers the torch search in depth (n-best, LM, timesteps)."""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.bench_decode import peaked_log_probs
from pipeline.vocab import CODES, VOCAB
from decoding import (
    CTCBeamDecoder,
    beam_decode,
    ctc_log_likelihood,
    greedy_decode,
    hypotheses_to_codes,
    prune_probs,
)

from decoding.decoder import BEST_OF

ROOT = Path(__file__).resolve().parents[1]


def random_log_probs(batch, frames, classes, seed, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, frames, classes, generator=g) * scale).log_softmax(-1)


peaked = peaked_log_probs      # spiky CTC-like posteriors: the decoding benchmark's inputs too


def random_lengths(batch, frames, seed, low=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, frames + 1, (batch,), generator=g)
    lengths[0] = frames  # always exercise a full-length row
    return lengths


def greedy_reference(lp_rows, length):
    out, prev = [], None
    for t in range(length):
        row = lp_rows[t]
        best = max(range(len(row)), key=row.__getitem__)
        if best != prev and best != 0:
            out.append(best)
        prev = best
    return out


def brute_force(lp: np.ndarray) -> dict[tuple, float]:
    """P(labelling) for every labelling, by summing all C^T frame paths after collapsing."""
    frames, classes = lp.shape
    probs = np.exp(lp.astype(np.float64))
    table: dict[tuple, float] = {}
    for path in itertools.product(range(classes), repeat=frames):
        p = math.prod(probs[t, c] for t, c in enumerate(path))
        labels = tuple(c for i, c in enumerate(path) if c != 0 and (i == 0 or path[i - 1] != c))
        table[labels] = table.get(labels, 0.0) + p
    return table


# --------------------------------------------------------------------------- greedy


@pytest.mark.parametrize("classes", [3, 43])
def test_greedy_matches_python_reference(classes):
    for seed in range(8):
        lp = random_log_probs(6, 40, classes, seed)
        lengths = random_lengths(6, 40, seed + 100)
        got = greedy_decode(lp, lengths)
        rows = lp.tolist()
        want = [greedy_reference(rows[i], int(lengths[i])) for i in range(6)]
        assert got == want


def test_greedy_ignores_padding_and_handles_empty():
    lp = random_log_probs(3, 10, 5, 0)
    lengths = torch.tensor([10, 4, 0])
    base = greedy_decode(lp, lengths)
    junk = lp.clone()
    junk[1, 4:] = random_log_probs(1, 6, 5, 1)[0]
    junk[2] = random_log_probs(1, 10, 5, 2)[0]
    assert greedy_decode(junk, lengths) == base
    assert base[2] == []
    assert greedy_decode(lp[:0], torch.zeros(0, dtype=torch.long)) == []
    with pytest.raises(ValueError):
        greedy_decode(lp, torch.tensor([11, 1, 1]))


# --------------------------------------------------------------------------- exact scoring


def test_ctc_log_likelihood_matches_brute_force():
    rng = np.random.default_rng(0)
    for seed in range(25):
        classes = 3 if seed % 2 else 4
        lp = random_log_probs(6, 5, classes, seed, scale=1.5)
        lengths = random_lengths(6, 5, seed)
        hyps = []
        for i in range(6):
            n = int(rng.integers(0, int(lengths[i]) + 2))  # includes infeasible lengths
            hyps.append([int(c) for c in rng.integers(1, classes, n)])
        hyps[1] = []  # the all-blank path
        if int(lengths[2]) >= 2:
            hyps[2] = [1, 1]  # repeat: needs a blank between
        got = ctc_log_likelihood(lp, lengths, hyps)
        assert got.dtype == torch.float64 and got.shape == (6,)
        for i in range(6):
            table = brute_force(lp[i, : int(lengths[i])].numpy())
            p = table.get(tuple(hyps[i]), 0.0)
            if p == 0.0:
                assert got[i].item() == float("-inf")
            else:
                assert got[i].item() == pytest.approx(math.log(p), abs=1e-5)


def test_ctc_log_likelihood_empty_batch_and_all_empty_targets():
    lp = random_log_probs(3, 7, 5, 3)
    lengths = torch.tensor([7, 3, 0])
    got = ctc_log_likelihood(lp, lengths, [[], [], []])
    want = [lp[i, : int(lengths[i]), 0].double().sum().item() for i in range(3)]
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError):
        ctc_log_likelihood(lp, lengths, [[0], [], []])  # blank is not a label


# --------------------------------------------------------------------------- beam search


def test_beam_is_exact_maximum_on_tiny_inputs():
    """With width 64 >= every prefix set of <= 5 frames over 2 symbols (63), nothing is
    pruned before the last frame, so the top beam must be the true most probable labelling
    (and, for the torch search, its own score the exact probability)."""
    checked = 0
    for seed in range(120):
        lp = random_log_probs(4, 6, 3, seed, scale=1.0 + (seed % 3))
        lengths = random_lengths(4, 6, seed + 7)
        via_fn = beam_decode(lp, lengths, beam_width=64)
        dec = CTCBeamDecoder(labels=None, beam_width=64, log_probs_input=True, blank_skip=2.0)
        res, scores, _, out_lens = dec.decode(lp, lengths)
        for i in range(4):
            hyp = res[i, 0, : out_lens[i, 0]].tolist()
            assert hyp == via_fn[i]
            table = brute_force(lp[i, : int(lengths[i])].numpy())
            best = max(table.values())
            # float32 inside the search: allow near-ties (relative 1e-4) to swap
            assert table.get(tuple(hyp), 0.0) >= best * (1 - 1e-4), (seed, i)
            assert -scores[i, 0].item() == pytest.approx(math.log(table[tuple(hyp)]), abs=1e-4)
            checked += 1
    assert checked == 480


# Prefix beam search is a heuristic: it can drop alignment mass of the greedy string and so,
# rarely, return a string that is less likely than greedy's. An independent numpy prefix beam
# search (bench/bench_decode.py) returns exactly the same strings on these inputs, so the loss
# is search error, not a decoding bug. Stated tolerance at width 10: 0.25 nats per utterance.
PER_UTT_TOLERANCE = 0.25


def test_beam_beats_greedy_on_peaked_inputs():
    lp = peaked(48, 80, 43, seed=0)
    lengths = random_lengths(48, 80, 1, low=40)
    greedy = greedy_decode(lp, lengths)
    beam = beam_decode(lp, lengths, beam_width=10)
    ll_greedy = ctc_log_likelihood(lp, lengths, greedy)
    ll_beam = ctc_log_likelihood(lp, lengths, beam)
    diff = ll_beam - ll_greedy
    assert sum(b != g for b, g in zip(beam, greedy)) >= 10  # greedy is often not the best string
    assert diff.mean().item() >= 0.1
    assert (diff > 1e-6).float().mean().item() >= 0.3
    assert diff.min().item() >= -PER_UTT_TOLERANCE
    assert (diff < -1e-6).sum().item() <= 3


def test_batched_equals_one_by_one_and_threads_agree():
    lp = peaked(10, 120, 43, seed=3)
    lengths = random_lengths(10, 120, 4)
    lengths[3] = 0
    padded = lp.clone()
    for i in range(10):  # junk beyond each length must not matter
        padded[i, int(lengths[i]):] = random_log_probs(1, 120 - int(lengths[i]), 43, 50 + i)[0]
    one_thread = beam_decode(padded, lengths, beam_width=8, threads=1)
    two_threads = beam_decode(padded, lengths, beam_width=8, threads=2)
    singles = [
        beam_decode(lp[i:i + 1, : int(lengths[i])], lengths[i:i + 1], beam_width=8)[0]
        for i in range(10)
    ]
    assert one_thread == two_threads == singles
    assert one_thread[3] == []
    assert greedy_decode(padded, lengths) == [
        greedy_decode(lp[i:i + 1, : int(lengths[i])], lengths[i:i + 1])[0] for i in range(10)
    ]


def test_blank_id_other_than_zero():
    lp = peaked(4, 60, 43, seed=9)
    lengths = random_lengths(4, 60, 10)
    moved = torch.cat([lp[..., 1:], lp[..., :1]], dim=-1)  # old class c -> c - 1, blank -> 42
    dec = CTCBeamDecoder(labels=None, beam_width=BEST_OF, blank_id=42, cutoff_top_n=43,
                         log_probs_input=True)
    res, scores, _, out_lens = dec.decode(moved, lengths)
    got = [[c + 1 for c in res[i, 0, : out_lens[i, 0]].tolist()] for i in range(4)]
    assert got == beam_decode(lp, lengths, beam_width=BEST_OF)
    exact = ctc_log_likelihood(lp, lengths, got).float()
    assert (-scores[:, 0] <= exact + 1e-3).all()    # the search's own mass: a lower bound of the exact one


def test_prune_probs_matches_ctcdecode_rule():
    p = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    kept = lambda q: (q > 0).nonzero()[:, -1].tolist()  # noqa: E731
    assert kept(prune_probs(p, top_p=0.75)) == [1, 3]  # 0.5 < .75, 0.8 >= .75: stop
    assert kept(prune_probs(p, top_p=0.81)) == [0, 1, 3]
    assert kept(prune_probs(p, top_n=2, top_p=0.99)) == [1, 3]
    assert kept(prune_probs(p, top_n=3)) == [0, 1, 3]
    assert torch.equal(prune_probs(p, top_n=4, top_p=1.0), p)
    out = prune_probs(p, top_n=2)
    assert out[0, 1].item() == 0.5 and out[0, 3].item() == pytest.approx(0.3)  # not renormalised


def test_torch_pruning_limits_extensions_only():
    """The torch search prunes what a hypothesis may be extended with, never the mass of the
    paths that stay on it (blank, repeated label) or merge into it: with one class per frame every
    token is some frame's argmax label, and the result is no less likely than greedy's string."""
    lp = peaked(8, 70, 43, seed=11)
    lengths = random_lengths(8, 70, 12)
    greedy = greedy_decode(lp, lengths)
    for kw in ({"top_n": 1}, {"top_p": 1e-6}):
        dec = CTCBeamDecoder(labels=None, beam_width=10, cutoff_top_n=kw.get("top_n", 43),
                             cutoff_prob=kw.get("top_p", 1.0), log_probs_input=True)
        res, _, _, lens = dec.decode(lp, lengths)
        hyps = [res[i, 0, : lens[i, 0]].tolist() for i in range(8)]
        for i, h in enumerate(hyps):
            assert set(h) <= set(lp[i, : int(lengths[i])].argmax(-1).tolist())
        diff = ctc_log_likelihood(lp, lengths, hyps) - ctc_log_likelihood(lp, lengths, greedy)
        assert diff.min().item() >= -1e-4
    assert beam_decode(lp, lengths, beam_width=10, top_n=43) == beam_decode(lp, lengths, beam_width=10)


def test_decoder_argument_checks():
    lp = random_log_probs(2, 5, 3, 0)
    with pytest.raises(ValueError):
        CTCBeamDecoder(labels=VOCAB).decode(lp)  # 43 labels, 3 classes
    with pytest.raises(ValueError):
        CTCBeamDecoder(labels=None, blank_skip=0.0)
    with pytest.raises(ValueError):
        CTCBeamDecoder(beam_width=0)
    with pytest.raises(TypeError):
        CTCBeamDecoder(backend="fast-ctc-decode")     # the previous decoder is gone (the bench's baseline)


def test_one_default_per_search_setting():
    """Every way in takes its defaults from SearchOptions, the one declaration of the search."""
    from decoding import SearchOptions
    d, dec = SearchOptions(), CTCBeamDecoder()
    assert (dec.beam_width, dec.cutoff_top_n, dec.cutoff_prob, dec.blank_skip, dec.alpha, dec.beta) == (
        d.beam_width, d.cutoff_top_n, d.cutoff_prob, d.blank_skip, d.alpha, d.beta)
    assert inspect.signature(beam_decode).parameters["beam_width"].default == d.beam_width


def test_hypotheses_to_codes():
    assert hypotheses_to_codes([[1, 2, 3], []]) == [CODES[1] + CODES[2] + CODES[3], ""]


def test_bench_quick_runs():
    spec = importlib.util.spec_from_file_location("bench_decode", ROOT / "bench" / "bench_decode.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.run(quick=True, reference=True, log=lambda *a: None, repeats=1)
    rows = result["rows"]
    for family in ("peaked", "confusable"):
        for name in ("torch (ours)", "fast-ctc-decode"):
            mine = [r for r in rows if r["decoder"] == name and r["family"] == family]
            assert {(r["beam_width"], r["threads"]) for r in mine} == {(1, 1), (1, 2), (10, 1), (10, 2)}
        assert [r["beam_width"] for r in rows if r["decoder"].endswith("LM") and r["family"] == family] == [10]
    assert all(r["utt_per_s"] > 0 for r in rows)
    ours = [r for r in rows if r["decoder"] == "torch (ours)"]
    # the same unpruned search as the independent numpy one; never less likely than greedy
    assert all(r["agree_ref_pct"] == 100.0 and r["worse_than_greedy"] == 0 and r["ge_fast_pct"] >= 98 for r in ours)
    assert all(r["x_fast"] > 0 for r in ours)
    assert [(t["family"], t["beam_width"], t["threads"]) for t in result["targets"]] == [
        ("peaked", 10, 1), ("confusable", 10, 1)]
    md = bench.markdown(result)
    assert "| posteriors | decoder |" in md and md.count("target, ") == 2 and "target, confusable, beam 10" in md
