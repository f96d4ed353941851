"""Exact re-ranking of a search's n-best.

The prefix search ranks its beams by the mass of the alignments it kept, a lower bound of the
hypothesis's probability that depends on what pruning dropped; on posteriors far from peaked (an
early model, a hard utterance) its top beam can be less likely than the greedy path's hypothesis.
Here every candidate, the n-best rows and the greedy hypothesis, is scored exactly, the CTC
log-likelihood summed over all alignments (``exact_acoustic``) plus ``alpha`` times the LM's
log-probability of the sequence and its end plus ``beta`` per token, and the best wins: the result
is never less likely than greedy's, and its score is exact.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .ctc import greedy_decode

# States scored per pass of the forward: its float32 alpha is [utterances x K, 2L + 1] (16 MB each)
CHUNK_ELEMENTS = 2 ** 22


def lm_scores(lm, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Natural-log LM probability of each row's first `lengths` class ids, then </s> ([N] float64)."""
    n = tokens.shape[0]
    table = lm.table.to(tokens.device, torch.float64)
    index = lm.label_index.to(tokens.device)
    state = torch.full((n,), lm.bos_state, dtype=torch.long, device=tokens.device)
    total = torch.zeros(n, dtype=torch.float64, device=tokens.device)
    for t in range(tokens.shape[1]):
        live = t < lengths
        sym = index[tokens[:, t]].clamp(min=0)
        total += torch.where(live, table[state, sym], 0.0)
        state = torch.where(live, lm.next_state(state, sym), state)
    return total + table[state, lm.eos]


def exact_acoustic(log_probs: torch.Tensor, lengths: torch.Tensor, tokens: torch.Tensor, lens: torch.Tensor,
                   blank: int) -> torch.Tensor:
    """log P(row | x) over all CTC alignments for every candidate ``tokens [B, K, L]`` of lengths
    ``lens [B, K]``: [B, K] float64 (-inf where infeasible). The CTC forward pass in probability
    space, rescaled every frame, for all B x K candidates at once (``_forward``): about ten tensor
    operations a frame (2.5-3.5x faster than F.ctc_loss on 600-1,500 frames, equal within 4e-6 nats)."""
    batch, k, size = tokens.shape
    frames = log_probs.shape[1]
    if frames == 0 or batch == 0:                      # no frames: only the empty hypothesis, with probability 1
        return torch.where(lens == 0, 0.0, float("-inf")).to(torch.float64)
    out = torch.empty(batch, k, dtype=torch.float64, device=log_probs.device)
    per = max(1, CHUNK_ELEMENTS // max((2 * size + 1) * k, 1))          # utterances per pass
    for b0 in range(0, batch, per):
        b1 = min(batch, b0 + per)
        out[b0:b1] = _forward(log_probs[b0:b1], lengths[b0:b1], tokens[b0:b1], lens[b0:b1], blank)
    return out


def _forward(log_probs: torch.Tensor, lengths: torch.Tensor, tokens: torch.Tensor, lens: torch.Tensor,
             blank: int) -> torch.Tensor:
    """[B, K] exact log-likelihoods: alpha over the 2L + 1 states of each candidate (blank, label,
    blank, ...), float32 normalised to sum 1 after each frame, the log of the factors summed in float64."""
    batch, k, size = tokens.shape
    dev = log_probs.device
    states = 2 * size + 1
    ext = torch.full((batch * k, states), blank, dtype=torch.long, device=dev)
    ext[:, 1::2] = tokens.reshape(batch * k, size).long().clamp(min=0)
    n_states = 2 * lens.reshape(-1).long() + 1
    live = torch.arange(states, device=dev)[None, :] < n_states[:, None]
    skip = torch.zeros_like(live)
    skip[:, 2:] = (ext[:, 2:] != blank) & (ext[:, 2:] != ext[:, :-2])   # label after a different label
    owner = torch.arange(batch, device=dev).repeat_interleave(k)
    ends = lengths.to(dev).long().repeat_interleave(k)
    alpha = torch.zeros(batch * k, states, dtype=torch.float32, device=dev)
    alpha[:, :2] = 1.0
    alpha = alpha * live
    scale = torch.zeros(batch * k, dtype=torch.float64, device=dev)
    probs = log_probs.float().exp()
    for t in range(log_probs.shape[1]):
        e = probs[:, t][owner].gather(1, ext) * live
        if t:
            moved = alpha.clone()
            moved[:, 1:] += alpha[:, :-1]
            moved[:, 2:] += alpha[:, :-2] * skip[:, 2:]
        else:
            moved = alpha
        new = moved * e
        total = new.sum(1)
        running = t < ends
        alpha = torch.where(running[:, None], new / torch.where(total > 0, total, 1.0)[:, None], alpha)
        scale = scale + torch.where(running, total.double().log(), 0.0)
    last = (n_states - 1)[:, None]
    final = alpha.gather(1, last)[:, 0] + torch.where(n_states > 1, alpha.gather(1, (last - 1).clamp(min=0))[:, 0], 0.0)
    out = torch.where(ends > 0, scale + final.double().log(), torch.where(lens.reshape(-1) == 0, 0.0, float("-inf")))
    return out.reshape(batch, k)


def with_greedy(log_probs: torch.Tensor, lengths: torch.Tensor, tokens: torch.Tensor, lens: torch.Tensor,
                blank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The n-best ``tokens [B, K, L]``, ``lens [B, K]`` with each utterance's greedy hypothesis added
    as row K."""
    greedy = greedy_decode(log_probs, lengths, blank)
    size = max(tokens.shape[2], max((len(g) for g in greedy), default=0))
    out = torch.zeros(tokens.shape[0], tokens.shape[1] + 1, size, dtype=torch.long, device=tokens.device)
    out[:, :-1, : tokens.shape[2]] = tokens
    for i, g in enumerate(greedy):
        out[i, -1, : len(g)] = torch.tensor(g, dtype=torch.long)
    glens = torch.tensor([len(g) for g in greedy], dtype=lens.dtype, device=lens.device)
    return out, torch.cat([lens, glens[:, None]], 1)


def rerank(log_probs: torch.Tensor, lengths: torch.Tensor, tokens: torch.Tensor, lens: torch.Tensor,
           valid: torch.Tensor, *, blank: int = 0, lm=None, alpha: float = 0.0, beta: float = 0.0):
    """The candidates (the n-best rows marked `valid` [B, K], and the greedy hypothesis) re-ranked by
    exact score, best first: (tokens [B, K+1, L], lens [B, K+1], acoustic, total), the scores float64
    (-inf for rows that are no candidate)."""
    lengths = lengths.to(log_probs.device)
    cand, clens = with_greedy(log_probs, lengths, tokens.to(log_probs.device).long(),
                              lens.to(log_probs.device).long(), blank)
    acoustic = exact_acoustic(log_probs, lengths, cand, clens, blank)
    total = acoustic.clone()
    if lm is not None:
        flat = cand.reshape(-1, cand.shape[2])
        total += alpha * lm_scores(lm, flat, clens.reshape(-1)).reshape(clens.shape) + beta * clens.double()
    k = tokens.shape[1]
    valid = valid.to(total.device)
    same = (cand[:, :k] == cand[:, k:]).all(2) & (clens[:, :k] == clens[:, k:]) & valid
    ok = torch.cat([valid, ~same.any(1, keepdim=True)], 1)     # the greedy hypothesis, unless already a row
    total = total.masked_fill(~ok, float("-inf"))              # n-best rows past the distinct hypotheses
    order = torch.sort(total, dim=1, descending=True, stable=True).indices
    return Reranked(*(_pick(x, order) for x in (cand, clens, acoustic, total)), order)


def best_rows(log_probs: torch.Tensor, lengths: torch.Tensor, res, rows: int, *, blank: int = 0, lm=None,
              alpha: float = 0.0, beta: float = 0.0) -> list[list[int]]:
    """The best hypothesis per utterance of a search's ``res``, never less likely than greedy's:
    greedy's exact score is computed; where the top row's own score (a lower bound of its exact
    one) already reaches it, the top row is kept, else the likeliest by exact score of the first
    ``rows`` rows and greedy's. One exact score per utterance where the search is sure."""
    lengths = lengths.to(log_probs.device)
    tokens, lens = res.tokens.to(log_probs.device).long(), res.lengths.to(log_probs.device).long()
    greedy, glens = with_greedy(log_probs, lengths, tokens[:, :0], lens[:, :0], blank)
    floor = _totals(log_probs, lengths, greedy, glens, blank, lm, alpha, beta)[:, 0]
    top = res.total[:, 0].to(floor.device).double()
    sure = top - 1e-5 * top.abs() - 1e-3 >= floor           # the float32 running score, rounding allowed for
    out = [t[:k] for t, k in zip(tokens[:, 0].tolist(), lens[:, 0].tolist())]
    same = [o == g[:k] for o, g, k in zip(out, greedy[:, 0].tolist(), glens[:, 0].tolist())]
    sure = sure | torch.tensor(same, dtype=torch.bool, device=sure.device)   # the top row is greedy's string
    unsure = (~sure).nonzero()[:, 0]
    if len(unsure):
        u = unsure
        total = _totals(log_probs[u], lengths[u], tokens[u, :rows], lens[u, :rows], blank, lm, alpha, beta)
        total = total.masked_fill(~(res.total[:, :rows] > float("-inf")).to(total.device)[u], float("-inf"))
        pick = total.argmax(1)
        for n, i in enumerate(unsure.tolist()):
            j = int(pick[n])
            if total[n, j] > floor[i]:
                out[i] = tokens[i, j, : lens[i, j]].tolist()
            else:                                          # greedy's hypothesis is the likeliest
                out[i] = greedy[i, 0, : glens[i, 0]].tolist()
    return out


def _totals(log_probs, lengths, tokens, lens, blank, lm, alpha, beta) -> torch.Tensor:
    """Exact totals [B, K] of candidates ``tokens [B, K, L]``: acoustic + alpha * LM + beta * tokens."""
    total = exact_acoustic(log_probs, lengths, tokens, lens, blank)
    if lm is not None:
        lm_part = lm_scores(lm, tokens.reshape(-1, tokens.shape[2]), lens.reshape(-1)).reshape(lens.shape)
        total = total + alpha * lm_part + beta * lens.double()
    return total


def grid_best(log_probs: torch.Tensor, lengths: torch.Tensor, results: list, pairs, lm,
              blank: int = 0) -> dict[tuple[float, float], list[list[int]]]:
    """For each LM weight pair (alpha, beta), the best per utterance of the candidates (every row
    of the searches' ``results`` and greedy's hypothesis) by exact score: acoustic + alpha * LM +
    beta * tokens, the acoustic and LM parts computed once for all pairs."""
    lengths = lengths.to(log_probs.device)
    size = max(r.tokens.shape[2] for r in results)
    tokens = torch.cat([F.pad(r.tokens.to(log_probs.device).long(), (0, size - r.tokens.shape[2])) for r in results], 1)
    lens = torch.cat([r.lengths.to(log_probs.device).long() for r in results], 1)
    valid = torch.cat([(r.total > float("-inf")).to(log_probs.device) for r in results], 1)
    tokens, lens = with_greedy(log_probs, lengths, tokens, lens, blank)
    valid = torch.cat([valid, torch.ones_like(valid[:, :1])], 1)
    acoustic = exact_acoustic(log_probs, lengths, tokens, lens, blank)
    lm_part = lm_scores(lm, tokens.reshape(-1, tokens.shape[2]), lens.reshape(-1)).reshape(lens.shape)
    rows, out = torch.arange(len(lens), device=lens.device), {}
    for alpha, beta in pairs:
        pick = (acoustic + alpha * lm_part + beta * lens.double()).masked_fill(~valid, float("-inf")).argmax(1)
        out[(alpha, beta)] = [t[:k] for t, k in zip(tokens[rows, pick].tolist(), lens[rows, pick].tolist())]
    return out


def _pick(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Rows of `x` ([B, K] or [B, K, L]) in `order` [B, K]."""
    return x.gather(1, order) if x.dim() == 2 else x.gather(1, order[..., None].expand_as(x))


class Reranked(NamedTuple):
    """Candidates best first: the n-best rows and, last before re-ranking, the greedy hypothesis.
    `order[b, j]` is the candidate number of row j (the greedy hypothesis is number K)."""
    tokens: torch.Tensor          # [B, K+1, L]
    lengths: torch.Tensor         # [B, K+1]
    acoustic: torch.Tensor        # [B, K+1] float64, exact
    total: torch.Tensor           # [B, K+1] float64, exact (-inf: no candidate)
    order: torch.Tensor           # [B, K+1]


def greedy_frames(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The frame each greedy token is emitted at ([B, L], padded with 0) and the token counts [B]."""
    pred = log_probs.argmax(-1)
    prev = torch.cat([torch.full_like(pred[:, :1], -1), pred[:, :-1]], 1)
    valid = torch.arange(pred.shape[1], device=pred.device)[None, :] < lengths.to(pred.device)[:, None]
    keep = valid & (pred != blank) & (pred != prev)
    counts = keep.sum(1)
    out = torch.zeros(pred.shape[0], int(counts.max()) if counts.numel() else 0, dtype=torch.long,
                      device=pred.device)
    for i in range(pred.shape[0]):
        at = torch.nonzero(keep[i]).flatten()
        out[i, : len(at)] = at
    return out, counts
