"""Exact re-ranking of a search's n-best.

The prefix search ranks its beams by the mass of the alignments it kept, a lower bound of the
hypothesis's probability that depends on what pruning dropped; on posteriors far from peaked (an
early model, a hard utterance) its top beam can be less likely than the greedy path's hypothesis.
Here every candidate, the n-best rows and the greedy hypothesis, is scored exactly, the CTC
log-likelihood summed over all alignments (``F.ctc_loss``) plus ``alpha`` times the LM's
log-probability of the sequence and its end plus ``beta`` per token, and the best wins: the result
is never less likely than greedy's, and its score is exact.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .ctc import greedy_decode

# Candidates scored per ctc_loss call: its float32 input is [T, chunk, C].
CHUNK_ELEMENTS = 2 ** 24


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
    ``lens [B, K]``: [B, K] float64 (-inf where infeasible)."""
    batch, k, size = tokens.shape
    frames, classes = log_probs.shape[1], log_probs.shape[2]
    if frames == 0 or batch == 0:                      # no frames: only the empty hypothesis, with probability 1
        return torch.where(lens == 0, 0.0, float("-inf")).to(torch.float64)
    out = torch.empty(batch, k, dtype=torch.float64, device=log_probs.device)
    per = max(1, CHUNK_ELEMENTS // max(frames * classes * k, 1))          # utterances per call
    lp = log_probs.float().transpose(0, 1)                                # [T, B, C]
    for b0 in range(0, batch, per):
        b1 = min(batch, b0 + per)
        x = lp[:, b0:b1, None, :].expand(frames, b1 - b0, k, classes).reshape(frames, (b1 - b0) * k, classes)
        tl = lens[b0:b1].reshape(-1).long()
        targets = tokens[b0:b1].reshape(-1, size).long() if size else torch.zeros(len(tl), 1, dtype=torch.long)
        targets = torch.where(torch.arange(targets.shape[1], device=targets.device) < tl[:, None], targets, 1)
        nll = F.ctc_loss(x, targets.clamp(min=0), lengths[b0:b1, None].expand(-1, k).reshape(-1), tl,
                         blank=blank, reduction="none", zero_infinity=False)
        out[b0:b1] = (-nll.double()).reshape(b1 - b0, k)
    return out


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
