"""Exact re-ranking (decoding/rerank.py): the decoder's best hypothesis is never less likely than the
greedy path's, its score is exact, and on posteriors far from peaked (where pruning loses) it is
what makes that so."""

from __future__ import annotations

import math

import pytest
import torch

from decoding import CTCBeamDecoder, ctc_log_likelihood, greedy_decode
from decoding.lm import dense, estimate
from decoding.rerank import lm_scores, rerank
from decoding.search import SearchOptions, search

LABELS = ["", "a", "b", "c", "d", "e", "f", "g"]


def unpeaked(batch=48, frames=50, classes=len(LABELS), seed=0) -> torch.Tensor:
    """Posteriors of an early model: blank far from certain, a confusable runner-up on many frames."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, frames, classes, generator=g) * 0.5
    logits[..., 0] += 1.0
    return logits.log_softmax(-1)


def test_plain_pruning_loses_and_the_reranked_best_never_does():
    lp = unpeaked()
    lens = torch.full((lp.shape[0],), lp.shape[1])
    greedy = greedy_decode(lp, lens)
    g_ll = ctc_log_likelihood(lp, lens, greedy)
    plain = search(lp, lens, SearchOptions(beam_width=2, cutoff_top_n=len(LABELS), blank_skip=2.0))
    top = [t[:k] for t, k in zip(plain.tokens[:, 0].tolist(), plain.lengths[:, 0].tolist())]
    top_ll = ctc_log_likelihood(lp, lens, top)
    assert (top_ll < g_ll - 1e-9).any(), "these posteriors must make plain pruning lose somewhere"
    dec = CTCBeamDecoder(LABELS, beam_width=2, cutoff_top_n=len(LABELS), log_probs_input=True, blank_skip=2.0,
                         num_processes=1)
    best = dec.best(lp, lens)
    best_ll = ctc_log_likelihood(lp, lens, best)
    assert (best_ll >= g_ll - 1e-6).all() and (best_ll >= top_ll - 1e-6).all()


def test_scores_are_exact_and_ranked():
    lp = unpeaked(batch=6, frames=30, seed=3)
    lens = torch.tensor([30, 29, 20, 12, 5, 1])
    res = search(lp, lens, SearchOptions(beam_width=4, cutoff_top_n=len(LABELS)))
    tokens, tl, acoustic, total, _ = rerank(lp, lens, res.tokens, res.lengths, res.total > -math.inf)
    for i in range(6):
        rows = [tokens[i, j, : tl[i, j]].tolist() for j in range(tokens.shape[1]) if total[i, j] > -math.inf]
        exact = ctc_log_likelihood(lp[i:i + 1].expand(len(rows), -1, -1), lens[i:i + 1].expand(len(rows)), rows)
        assert torch.allclose(acoustic[i, : len(rows)], exact, atol=1e-4)
        assert (total[i, : len(rows)].diff() <= 1e-9).all()          # best first


def test_with_an_lm_the_total_is_exact():
    lm = dense(estimate([list("abcab"), list("bca"), list("dd"), list("efg")], 3), LABELS)
    lp = unpeaked(batch=8, frames=25, seed=5)
    lens = torch.full((8,), 25)
    alpha, beta = 0.7, 1.5
    dec = CTCBeamDecoder(LABELS, beam_width=3, cutoff_top_n=len(LABELS), log_probs_input=True, lm=lm, alpha=alpha,
                         beta=beta, num_processes=1)

    def score(hyps):
        ac = ctc_log_likelihood(lp, lens, hyps)
        return ac + torch.tensor([alpha * lm.score([LABELS[c] for c in h]) + beta * len(h) for h in hyps],
                                 dtype=torch.float64)
    best, greedy = dec.best(lp, lens), greedy_decode(lp, lens)
    assert (score(best) >= score(greedy) - 1e-4).all()
    # the table walk equals DenseLM.score
    toks = torch.tensor([[1, 2, 3, 0], [4, 4, 0, 0], [0, 0, 0, 0]])
    want = [lm.score(list("abc")), lm.score(list("dd")), lm.score([])]
    assert lm_scores(lm, toks, torch.tensor([3, 2, 0])).tolist() == pytest.approx(want, abs=1e-5)


def test_best_is_never_below_greedy_nor_the_top_row():
    """best() (predict, evaluate): where the top row's own score (a lower bound) does not already
    reach greedy's exact score, the first BEST_OF rows and greedy's are re-ranked exactly: the
    result is never less likely than greedy's, nor than the search's top row."""
    from decoding.decoder import BEST_OF
    lp = unpeaked(batch=16, frames=40, seed=7)
    lens = torch.full((16,), 40)
    dec = CTCBeamDecoder(LABELS, beam_width=3 * BEST_OF, cutoff_top_n=len(LABELS), log_probs_input=True,
                         num_processes=1)
    res = dec.search(lp, lens, timesteps=False)
    best_ll = ctc_log_likelihood(lp, lens, dec.best(lp, lens))
    top = [t[:k] for t, k in zip(res.tokens[:, 0].tolist(), res.lengths[:, 0].tolist())]
    greedy_ll = ctc_log_likelihood(lp, lens, greedy_decode(lp, lens))
    assert (best_ll >= greedy_ll - 1e-6).all() and (best_ll >= ctc_log_likelihood(lp, lens, top) - 1e-6).all()
    assert (res.total[:, 0].double() < greedy_ll).any()        # some utterances took the re-ranking path


def test_the_exact_forward_equals_ctc_loss_on_edge_cases():
    """exact_acoustic's own forward pass against F.ctc_loss (ctc_log_likelihood): repeated labels
    (a blank needed between), infeasible rows (too many labels for the frames), empty hypotheses,
    and an utterance of no frames."""
    from decoding.rerank import exact_acoustic
    lp = unpeaked(batch=4, frames=6, seed=11)
    lens = torch.tensor([6, 3, 1, 0])
    rows = [[], [1], [1, 1], [1, 2, 3], [2, 2, 2, 2]]
    tokens = torch.zeros(4, len(rows), 4, dtype=torch.long)
    for j, r in enumerate(rows):
        tokens[:, j, : len(r)] = torch.tensor(r, dtype=torch.long)
    tl = torch.tensor([len(r) for r in rows]).expand(4, -1)
    got = exact_acoustic(lp, lens, tokens, tl, 0)
    for j, r in enumerate(rows):
        want = ctc_log_likelihood(lp, lens, [r] * 4)
        assert torch.equal(torch.isinf(got[:, j]), torch.isinf(want)), (r, got[:, j], want)
        ok = torch.isfinite(want)
        assert torch.allclose(got[ok, j], want[ok], atol=1e-5), r
    assert got[3].tolist() == [0.0] + [float("-inf")] * 4         # no frames: only the empty hypothesis


def test_the_weight_grid_picks_each_pairs_best_candidate_exactly():
    """WeightGrid (evaluate --tune, train's choice): every pair's hypothesis is the candidate (a row
    of the plain or the middle pair's search, or greedy's) with the best exact total for that pair,
    so at the middle pair it is never below that pair's own search."""
    from decoding.decoder import WeightGrid
    lm = dense(estimate([list("abcab"), list("bca"), list("dd"), list("efg")], 3), LABELS)
    lp = unpeaked(batch=6, frames=20, seed=9)
    lens = torch.tensor([20, 18, 15, 9, 3, 1])
    plain = CTCBeamDecoder(LABELS, beam_width=4, cutoff_top_n=len(LABELS), log_probs_input=True, num_processes=1)
    pairs = [(a, b) for a in (0.0, 0.5, 1.0) for b in (0.0, 2.0)]
    grid = WeightGrid(plain, lm, pairs, plain_best=True)
    assert grid.pivot == (0.5, 2.0)
    got = grid.best(lp, lens)
    assert got.pop("beam") == plain.best(lp, lens)          # "beam" from the grid's own plain search
    rows = [plain.search(lp, lens, timesteps=False), grid.fused.search(lp, lens, timesteps=False)]
    greedy = greedy_decode(lp, lens)
    for (a, b), hyps in got.items():
        for i in range(6):
            cands = {tuple(greedy[i])} | {tuple(r.tokens[i, j, : r.lengths[i, j]].tolist()) for r in rows
                                         for j in range(4) if r.total[i, j] > -math.inf}
            def total(h):
                ac = ctc_log_likelihood(lp[i:i + 1], lens[i:i + 1], [list(h)])[0].item()
                return ac + a * lm.score([LABELS[c] for c in h]) + b * len(h)
            assert tuple(hyps[i]) in cands and total(hyps[i]) >= max(map(total, cands)) - 1e-4
    own = grid.fused.best(lp, lens)
    for i in range(6):
        t = lambda h: ctc_log_likelihood(lp[i:i + 1], lens[i:i + 1], [h])[0].item() + 0.5 * lm.score(  # noqa: E731
            [LABELS[c] for c in h]) + 2.0 * len(h)
        assert t(got[(0.5, 2.0)][i]) >= t(own[i]) - 1e-4


def test_the_exact_forward_in_chunks_equals_one_pass(monkeypatch):
    """Utterances scored a few at a time (CHUNK_ELEMENTS) give the scores of one pass."""
    from decoding import rerank as R
    lp = unpeaked(batch=5, frames=12, seed=13)
    lens = torch.tensor([12, 11, 7, 3, 0])
    res = search(lp, lens, SearchOptions(beam_width=3, cutoff_top_n=len(LABELS)))
    whole = R.exact_acoustic(lp, lens, res.tokens, res.lengths, 0)
    monkeypatch.setattr(R, "CHUNK_ELEMENTS", 1)
    assert torch.equal(R.exact_acoustic(lp, lens, res.tokens, res.lengths, 0), whole)
