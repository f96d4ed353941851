"""Batched CTC prefix beam search in torch: every utterance and beam of a batch in one tensor step,
on whatever device the posteriors are on (CPU tensors on a CPU, CUDA tensors on a GPU).

The algorithm is the standard prefix search (Graves 2006, Hannun 2014): per prefix the log mass of
the paths ending in a blank (``b``) and in its last label (``nb``), equal prefixes merged at every
step, a repeated label only after a blank. Batched as torchaudio's ``cuda_ctc_decoder`` does, with
three differences that make it exact where that one approximates:

- **Blank frames without extension, exactly.** A frame whose blank probability reaches
  ``blank_skip`` extends nothing; instead of dropping it (torchaudio), every run of such frames
  between two searched frames is applied to each beam as one closed-form "stay" transition
  (``_runs``): the blank mass, the label continuing, and the label-then-blank paths, summed in
  float64 per run. Only the extensions inside such frames are lost (their mass < 1 - blank_skip).
- **Exact merging.** Each beam keeps a 64-bit rolling hash of its prefix and of its parent; an
  extension (k, c) is beam j when hash(k) == parent_hash(j) and c == last(j) (the hash encodes
  the length), and its mass is added to j, whether or not c is a candidate of the frame (never a
  duplicate in the beam, so the n-best rows are distinct).
- **Exact, device-independent ties.** Candidates are ranked on one float64 key per candidate:
  the float32 score moved by less than its rounding gap in proportion to the candidate's number
  (stays first, then extensions by beam position in order of mass, then class rank; ``_keys``).
  ``topk`` over unique keys is deterministic and the same on any device.

Prefixes are not stored as token tensors [B, W, L]: each step records each beam's parent and
emitted class (or -1), and the n-best strings are read back at the end by one backward pass over
those pointers: O(1) work per beam and step instead of copying [W, L] tokens. A prefix whose
merged-in mass outweighs its own is re-pointed along that path, so the frames read back follow
the path carrying the most mass (the tokens are the same either way). On a CPU the search is bound
by the number of tensor operations per frame, not by their size: the loop runs as TorchScript
(``_loops``), width 1 has a loop of its own (``_loop1``), and each is written with as few
operations as it can be.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

NEG = float("-inf")
_HASH_MUL = 0x100000001B3            # FNV-64 prime (odd): int64 products wrap, a polynomial hash mod 2**64
_TIE = 2.0 ** -45                     # tie-break step (see _keys): candidate numbers below 2**20


@dataclass(frozen=True)
class SearchOptions:
    """What the search does: the one declaration of each search setting and its default, which the
    decoding commands' options (training.config.SearchConfig), ``CTCBeamDecoder`` (ctcdecode's
    arguments) and ``beam_decode`` take theirs from."""
    beam_width: int = 50
    blank: int = 0
    cutoff_top_n: int = 40           # at most this many classes per frame (the blank ranked with the rest)
    cutoff_prob: float = 1.0         # ...and only the most likely ones whose probabilities add up to this
    blank_skip: float = 0.999        # frames with P(blank) >= this extend nothing (> 1: search every frame)
    alpha: float = 0.0               # LM weight (shallow fusion)
    beta: float = 0.0                # bonus per emitted token (only with an LM, as in ctcdecode)


@dataclass
class Result:
    """n-best per utterance, best first: ``tokens [B, W, L]`` (0-padded), ``lengths [B, W]``,
    ``frames [B, W, L]`` (each token's peak frame; None if not asked for), ``acoustic [B, W]`` (the
    search's CTC log-mass of the hypothesis, -inf for an empty row), ``total [B, W]`` (the ranking
    score: acoustic + alpha * LM + beta * tokens)."""
    tokens: torch.Tensor
    lengths: torch.Tensor
    frames: torch.Tensor | None
    acoustic: torch.Tensor
    total: torch.Tensor


def candidate_mask(log_probs: torch.Tensor, top_n: int, top_p: float) -> torch.Tensor | None:
    """Per frame, the classes ctcdecode's ``get_pruned_log_probs`` would expand: the most likely
    ones, ranked with the blank, until their probabilities reach ``top_p``, at most ``top_n``."""
    classes = log_probs.shape[-1]
    if top_n >= classes and top_p >= 1.0:
        return None                            # all of them
    sorted_lp, order = log_probs.sort(dim=-1, descending=True, stable=True)
    keep = torch.ones_like(sorted_lp, dtype=torch.bool)
    if top_p < 1.0:
        p = sorted_lp.double().exp()
        keep = (p.cumsum(-1) - p) < top_p      # the class that first reaches top_p is itself kept
    keep[..., min(top_n, classes):] = False
    return torch.zeros_like(keep).scatter_(-1, order, keep)


@dataclass
class _Frames:
    """The batch's searched frames packed to the left, utterances sorted by their count (so step s
    works on a prefix [:n_s] of the rows), with the candidates and the runs of skipped frames."""
    order: torch.Tensor      # [B] original row of each sorted row
    steps: list[int]         # n_s: rows still searching at step s
    lp: torch.Tensor         # [B, S, C] float32 log-probs of the searched frames
    frame: torch.Tensor      # [B, S] their frame index
    cand: torch.Tensor       # [B, S, K + 1] candidate classes (ranked; the last one a dummy: the
    #                          blank at -inf), cv = their log-probs (-inf: pruned)
    cv: torch.Tensor
    rank: torch.Tensor       # [B, S, C] position of each class in cand (K: not a candidate)
    run_b: torch.Tensor      # [B, S+1]    log P(all blank) over the run before step s (s = count: the tail)
    run_nb: torch.Tensor     # [B, S+1, C] log P(label c all along)
    run_x: torch.Tensor      # [B, S+1, C] log P(label c, then blank to the end of the run)
    has_run: list[bool]      # step s has a non-empty run in some row
    tail: bool               # some row ends in a non-empty run
    count: torch.Tensor      # [B] searched frames per sorted row
    tiebreak: torch.Tensor   # [W + M] -(candidate number + 1) * _TIE (stays, then the grid)
    own: torch.Tensor        # [W] each beam's first column in the flat [W * (K + 1)] extensions
    neg: torch.Tensor        # [B, W] -inf
    lm_cand: torch.Tensor | None   # [B, S, K + 1] the candidates' LM symbols
    grid_p: torch.Tensor     # [M] beam positions (in order of mass) and class ranks of the extensions
    grid_r: torch.Tensor     #     that can make the top W


def _pack(log_probs: torch.Tensor, lengths: torch.Tensor, opts: SearchOptions, fusion=None) -> _Frames:
    """Everything the loop reads, computed once for the batch (on its device)."""
    batch, frames, classes = log_probs.shape
    dev = log_probs.device
    valid = torch.arange(frames, device=dev)[None, :] < lengths[:, None]
    skip = log_probs[..., opts.blank] >= torch.log(torch.tensor(opts.blank_skip, dtype=torch.float64)).item()
    active = valid & ~skip
    count = active.sum(1)
    order = torch.sort(count, descending=True, stable=True).indices
    if not torch.equal(order, torch.arange(batch, device=dev)):      # (a copy of the batch otherwise)
        log_probs, valid, active, count = log_probs[order], valid[order], active[order], count[order]
    counts = count.tolist()
    size = max(counts, default=0)
    steps = [sum(c > s for c in counts) for s in range(size)]
    # the searched frames first, in time order (a stable sort of "not searched")
    pos = torch.sort((~active).to(torch.int8), dim=1, stable=True).indices[:, :size]
    lp = log_probs[:, :size] if bool(active[:, :size].all()) else \
        log_probs.gather(1, pos[..., None].expand(-1, -1, classes))
    lp = lp.float()
    cand, cv, rank = _candidates(lp, opts, fused=fusion is not None)
    run_b, run_nb, run_x, nonempty = _runs(log_probs, valid, active, size, opts.blank)
    if nonempty is None:
        has_run = [False] * size
    else:
        searching = count[:, None] > torch.arange(size, device=dev)
        has_run = (nonempty[:, :size] & searching).any(0).tolist()
    width, k1 = opts.beam_width, cand.shape[-1]
    grid_p, grid_r = _grid(width, k1 - 1, full=fusion is not None, device=dev)
    tiebreak = -(torch.arange(width + len(grid_p), device=dev, dtype=torch.float64) + 1) * _TIE
    own = torch.arange(width, device=dev) * k1
    neg = torch.full((batch, width), NEG, device=dev)
    lm_cand = fusion.index[cand] if fusion is not None else None
    tail = nonempty is not None and bool(nonempty.gather(1, count[:, None]).any())
    return _Frames(order, steps, lp, pos, cand, cv, rank, run_b, run_nb, run_x, has_run, tail, count,
                   tiebreak, own, neg, lm_cand, grid_p, grid_r)


def _grid(width: int, k: int, full: bool, device):
    """The (beam position, class rank) pairs that can reach the top W, p-major. With beams sorted by
    mass and classes by probability, (p, r) is outranked by every (p' <= p, r' <= r) but the two per
    row a beam may lower (its repeated label, a merged class): (p + 1)(r - 1) - 1 of them, so it is
    kept only when that is < W. With an LM the classes' order differs per beam: all pairs."""
    pairs = [(p, r) for p in range(width) for r in range(k) if full or (p + 1) * (r - 1) - 1 < width]
    p, r = zip(*pairs) if pairs else ((0,), (k,))      # no class but the blank: a dummy (-inf) column
    return torch.tensor(p, dtype=torch.long, device=device), torch.tensor(r, dtype=torch.long, device=device)


def _candidates(lp: torch.Tensor, opts: SearchOptions, fused: bool = False):
    """[B, S, K + 1] classes to extend with per searched frame, best first (ties: the lower class),
    and a dummy (the blank at -inf, where a write that must go nowhere goes); their log-probs
    (-inf: pruned); and the inverse map [B, S, C] (a class's position there, K when absent)."""
    batch, size, classes = lp.shape
    dev = lp.device
    keep = candidate_mask(lp, opts.cutoff_top_n, opts.cutoff_prob)
    kept = classes if keep is None else int(keep.sum(-1).max()) if keep.numel() else 1
    # without an LM a beam's extensions rank as its classes do, except its repeated label and one
    # merged class: beyond the W + 2 likeliest classes none can enter the top W (ties go to the
    # lower rank); an LM reorders them, so then every kept class is a candidate
    k = max(0, min(kept, classes - 1, classes if fused else opts.beam_width + 2))
    masked = lp if keep is None else lp.masked_fill(~keep, NEG)
    cand = _top_classes(masked, k, opts.blank)
    cv = masked.gather(2, cand)
    rank = torch.full((batch, size, classes), k, dtype=torch.int16, device=dev)
    rank.scatter_(2, cand, torch.arange(k, dtype=torch.int16, device=dev).expand(batch, size, k))
    rank[..., opts.blank] = k
    cand = torch.cat([cand, cand.new_full((batch, size, 1), opts.blank)], -1)
    cv = torch.cat([cv, cv.new_full((batch, size, 1), NEG)], -1)
    return cand, cv, rank


def _top_classes(scores: torch.Tensor, k: int, blank: int) -> torch.Tensor:
    """The k best classes of each row of ``scores [..., C]``, never the blank before a real class,
    ordered by score then by the lower class: a float ``topk`` (whose order is exact where the
    values differ), and the exact int64 keys only for rows with equal values among the first k + 1."""
    classes = scores.shape[-1]
    s = scores.clone()
    s[..., blank] = NEG
    vals, idx = s.topk(min(k + 1, classes), dim=-1, sorted=True)
    cand = idx[..., :k].contiguous()
    tie = (vals[..., 1:] == vals[..., :-1]).any(-1)
    if k and bool(tie.any()):
        rows = tie.nonzero(as_tuple=True)
        keys = _int_keys(scores[rows], torch.arange(classes, device=scores.device))
        keys[..., blank] = torch.iinfo(torch.long).min
        cand[rows] = keys.topk(k, dim=-1, sorted=True).indices
    return cand


def _int_keys(scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """int64 keys in the order of ``_keys`` (score, then lower index), from the float32 bits
    (faster on big tensors; TorchScript cannot view bits, hence ``_keys`` in the loop)."""
    bits = scores.contiguous().view(torch.int32)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (ordered.long() << 32) | (0xFFFFFFFF - index)


def _runs(log_probs, valid, active, size, blank):
    """Closed-form stay transitions over each run of skipped frames (run s precedes searched frame
    s; run `count` is the tail). For a run of frames [s, e) and a prefix ending in label c:
    nb' = nb * prod p_c, b' = b * prod p_blank + nb * sum_j (p_c over [s, j)) (p_blank over [j, e)).
    Computed in float64 on the skipped frames alone, packed to the left in time order (a run's
    frames stay contiguous there)."""
    batch, frames, classes = log_probs.shape
    dev = log_probs.device
    skipped = valid & ~active
    nruns = size + 2                                   # the last one takes the padding, then is dropped
    shape = (batch, nruns, classes)
    many = int(skipped.sum(1).max()) if batch else 0
    if many == 0:                                      # nothing skipped: no tables (never read)
        none = torch.zeros(batch, 1, classes, device=dev)
        return none[..., 0], none, none, None
    pos = torch.sort((~skipped).to(torch.int8), dim=1, stable=True).indices[:, :many]
    real = skipped.gather(1, pos)
    run = torch.cumsum(active.long(), 1).gather(1, pos).masked_fill(~real, size + 1)
    lp = log_probs.gather(1, pos[..., None].expand(-1, -1, classes)).double().masked_fill(~real[..., None], 0.0)
    idx = run[..., None].expand(-1, -1, classes)
    run_nb = torch.zeros(shape, dtype=torch.float64, device=dev).scatter_add_(1, idx, lp)
    nonempty = torch.zeros(shape[:2], dtype=torch.long, device=dev).scatter_add_(1, run, real.long()) > 0
    # X_c[t] = sum_{<t} lp_c - sum_{<t} lp_blank; the switch at t has mass X_c[t] - X_c[start] + run_b
    g = torch.cumsum(lp, 1) - lp
    x = (g - g[..., blank:blank + 1]).masked_fill(~real[..., None], NEG)
    top = torch.full(shape, NEG, dtype=torch.float64, device=dev).scatter_reduce_(1, idx, x, "amax")
    safe = torch.where(torch.isfinite(top), top, 0.0)
    total = torch.zeros_like(top).scatter_add_(1, idx, (x - safe.gather(1, idx)).exp())
    t = torch.arange(many, device=dev).expand(batch, -1)
    first = torch.full((batch, nruns), many - 1, dtype=torch.long, device=dev)
    first.scatter_reduce_(1, run, t, "amin")
    start = x.gather(1, first[..., None].expand(-1, -1, classes))
    run_b = run_nb[..., blank]
    run_x = total.log() + safe - torch.where(torch.isfinite(start), start, 0.0) + run_b[..., None]
    return _run_tables(run_b, run_nb, run_x, nonempty, size, blank)


def _run_tables(run_b, run_nb, run_x, nonempty, size, blank):
    run_x = torch.where(torch.isfinite(run_x), run_x, NEG)
    run_x[..., blank] = NEG
    keep = slice(0, size + 1)
    return run_b[:, keep].float(), run_nb[:, keep].float(), run_x[:, keep].float(), nonempty[:, keep]


# Beam state, stacked so that a step moves a beam with one gather: ``f [B, 2, W]`` float32 (the
# masses b and nb), ``i [B, 5, W]`` int64 (the rows below).
HASH, PARENT, LAST, LENGTH, STATE = 0, 1, 2, 3, 4


def _initial(batch: int, width: int, blank: int, lm_state: int, device):
    f = torch.full((batch, 2, width), NEG, dtype=torch.float32, device=device)
    f[:, 0, 0] = 0.0                           # the empty prefix, all-blank so far: the only live beam
    i = torch.zeros(batch, 5, width, dtype=torch.long, device=device)
    i[:, PARENT] = -1
    i[:, LAST] = blank
    i[:, STATE] = lm_state
    return f, i, torch.zeros(batch, width, dtype=torch.float32, device=device)


class _Fusion:
    """Shallow fusion with a dense n-gram table (``decoding.lm.DenseLM``): an extension by class c
    adds ``alpha * ln P(c | last n-1 symbols) + beta``; the end adds ``alpha * ln P(</s> | ...)``."""

    def __init__(self, lm, alpha: float, beta: float, device):
        self.lm, self.beta = lm, float(beta)
        self.width = len(lm.symbols)
        self.rows = lm.table.shape[0]
        self.table = (lm.table.to(device, torch.float32) * float(alpha)).reshape(-1).contiguous()
        index = lm.label_index.to(device)
        self.index = torch.where(index >= 0, index, lm.eos)    # the blank (never extended) -> any valid row

    def end(self, state: torch.Tensor) -> torch.Tensor:
        return self.table[state * self.width + self.lm.eos]


def _keys(scores: torch.Tensor, tiebreak: torch.Tensor) -> torch.Tensor:
    """float64 keys ordering candidates by float32 score, then by lower index: ``tiebreak [M]`` is
    -(index + 1) * 2**-45, and the key is ``score - |score| * (index + 1) * 2**-45``: a move of
    less than 2**-25 of the score, below the gap to the next float32 (at least 2**-24 of it), so
    different scores keep their order and equal ones are ordered by index; float64 holds every
    key exactly apart. Unique keys make ``topk`` exact and the same on any device. (-inf stays
    -inf: dead candidates, whose order among themselves never matters; a score of exactly 0, a
    path of probability 1, has no rival.)"""
    s = scores.double()
    return torch.addcmul(s, s.abs(), tiebreak)


def _merge(bi: torch.Tensor, b: torch.Tensor, tot: torch.Tensor, lp_last: torch.Tensor, at: torch.Tensor,
           k1: int, dummy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Extension (i, c) is beam j when j's parent hash is i's hash (the first such i: live beams come
    first) and c is j's last label: (the mass each live j gains, -inf for none, whether or not c is
    a candidate; where that candidate is in the flat ext, or j's own dummy column; i)."""
    match = bi[:, 0, None, :] == bi[:, 1, :, None]                     # [n, j, i]: hash(i) == parent(j)
    src = match.to(torch.uint8).argmax(-1)
    has = match.any(-1) & (tot > float("-inf"))
    last = bi[:, 2]
    gained = torch.where(last.gather(1, src) == last, b.gather(1, src), tot.gather(1, src)) + lp_last
    return torch.where(has, gained, float("-inf")), torch.where(has, src * k1 + at, dummy), src


def _next_state(state: torch.Tensor, sym: torch.Tensor, lm_width: int, lm_rows: int) -> torch.Tensor:
    """The LM context after ``sym``: drop the oldest symbol, append ``sym`` (``DenseLM.next_state``,
    in a form TorchScript compiles)."""
    return (state % (lm_rows // lm_width)) * lm_width + sym if lm_rows > 1 else state


def _loop(f: torch.Tensor, i: torch.Tensor, lm: torch.Tensor, bp: torch.Tensor, lp: torch.Tensor,
          cand: torch.Tensor, cv: torch.Tensor, rank: torch.Tensor, run_b: torch.Tensor,
          run_nb: torch.Tensor, run_x: torch.Tensor, steps: list[int], has_run: list[bool],
          grid_p: torch.Tensor, grid_r: torch.Tensor, tiebreak: torch.Tensor, own: torch.Tensor,
          neg: torch.Tensor, blank: int, table: torch.Tensor | None, lm_cand: torch.Tensor | None,
          lm_width: int, lm_rows: int, beta: float, hash_mul: int) -> None:
    """Every searched frame, in place on the state ``f``, ``i``, ``lm`` and the pointers ``bp``.
    Step s works on the first ``steps[s]`` (sorted) utterances: the others are done."""
    width, k1 = f.shape[2], cv.shape[2]
    dummy = own + (k1 - 1)                     # each beam's own dummy column (-inf) in ext
    for s in range(len(steps)):
        n = steps[s]
        b, nb, bi = f[:n, 0], f[:n, 1], i[:n]
        last = bi[:, 2]
        if has_run[s]:                         # the skipped frames before this one: stays only
            b, nb = (torch.logaddexp(b + run_b[:n, s, None], nb + run_x[:n, s].gather(1, last)),
                     nb + run_nb[:n, s].gather(1, last))
        lpf, cvs = lp[:n, s], cv[:n, s]
        tot = torch.logaddexp(b, nb)
        lp_last = lpf.gather(1, last)
        stay_b, stay_nb = tot + lpf[:, blank, None], nb + lp_last
        at = rank[:n, s].gather(1, last).long()   # each beam's last label among the candidates (K: absent)
        ext = (tot[:, :, None] + cvs[:, None, :]).view(n, width * k1)
        ext.scatter_(1, own + at, b + cvs.gather(1, at))   # a repeated label extends only paths ending in blank
        gained, kill, src = _merge(bi, b, tot, lp_last, at, k1, dummy)
        # a prefix whose merged-in mass outweighs its own is read back along that path (alignment)
        via = gained > torch.logaddexp(stay_b, stay_nb)
        stay_nb = torch.logaddexp(stay_nb, gained)
        ext.scatter_(1, kill, float("-inf"))
        stay = torch.logaddexp(stay_b, stay_nb)
        # beams in order of mass (stable: ties by index); the candidates by (beam position, class rank)
        perm = torch.sort(tot, dim=1, descending=True, stable=True).indices
        grid = torch.add(grid_r, perm.index_select(1, grid_p), alpha=k1)    # flat index into ext
        ext_lm = ext
        if table is not None and lm_cand is not None:
            stay = stay + lm[:n]
            fused = table[bi[:, 4, :, None] * lm_width + lm_cand[:n, s, None, :]] + beta
            ext_lm = (lm[:n, :, None] + fused).view(n, width * k1)
            scores = torch.cat([stay, (ext + ext_lm).gather(1, grid)], 1)
        else:
            scores = torch.cat([stay, ext.gather(1, grid)], 1)
        top = _keys(scores, tiebreak).topk(width, dim=1, sorted=True).indices
        is_ext = top >= width
        e = grid.gather(1, (top - width).clamp(min=0))
        parent = torch.where(is_ext, e // k1, top)
        ci = e % k1
        cls = cand[:n, s].gather(1, ci)
        g = bi.gather(2, parent[:, None, :].expand(-1, 5, -1))
        h, state = g[:, 0], g[:, 4]
        if table is not None and lm_cand is not None:
            sym = lm_cand[:n, s].gather(1, ci)
            state = torch.where(is_ext, _next_state(state, sym, lm_width, lm_rows), state)
            lm[:n] = torch.where(is_ext, ext_lm.gather(1, e), lm[:n].gather(1, parent))
        grown = torch.stack([h * hash_mul + cls + 1, h, cls, g[:, 3] + 1, state], 1)
        i[:n] = torch.where(is_ext[:, None], grown, g)
        kept = torch.stack([stay_b, stay_nb], 1).gather(2, parent[:, None, :].expand(-1, 2, -1))
        f[:n] = torch.where(is_ext[:, None], torch.stack([neg[:n], ext.gather(1, e)], 1), kept)
        moved = via.gather(1, parent) & ~is_ext
        bp[s, :n] = torch.stack([torch.where(moved, src.gather(1, parent), parent),
                                 torch.where(is_ext, cls, torch.where(moved, g[:, 2], -1))], 1)


def _loop1(f: torch.Tensor, i: torch.Tensor, lm: torch.Tensor, bp: torch.Tensor, lp: torch.Tensor,
           cand: torch.Tensor, cv: torch.Tensor, rank: torch.Tensor, run_b: torch.Tensor,
           run_nb: torch.Tensor, run_x: torch.Tensor, steps: list[int], has_run: list[bool],
           grid_p: torch.Tensor, grid_r: torch.Tensor, tiebreak: torch.Tensor, own: torch.Tensor,
           neg: torch.Tensor, blank: int, table: torch.Tensor | None, lm_cand: torch.Tensor | None,
           lm_width: int, lm_rows: int, beta: float, hash_mul: int) -> None:
    """``_loop`` for one beam, with the same results in a third of the operations: no merges (a
    beam's parent is never beside it), no ranking of the beams, and the best of (stay, each
    candidate) by ``argmax``, whose first maximum is ``_keys``' tie-break (the stay, then the lower
    rank)."""
    k = cv.shape[2] - 1                        # the real candidates (the last column is the dummy)
    for s in range(len(steps)):
        n = steps[s]
        b, nb, last = f[:n, 0, 0], f[:n, 1, 0], i[:n, 2, :]
        if has_run[s]:
            b, nb = (torch.logaddexp(b + run_b[:n, s], nb + run_x[:n, s].gather(1, last)[:, 0]),
                     nb + run_nb[:n, s].gather(1, last)[:, 0])
        lpf, cvs, cls = lp[:n, s], cv[:n, s, :k], cand[:n, s, :k]
        tot = torch.logaddexp(b, nb)
        lp_last = lpf.gather(1, last)[:, 0]
        stay_b, stay_nb = tot + lpf[:, blank], nb + lp_last
        ext = torch.where(cls == last, b[:, None], tot[:, None]) + cvs   # a repeat only after a blank
        stay = torch.logaddexp(stay_b, stay_nb)
        ext_lm = ext
        if table is not None and lm_cand is not None:
            stay = stay + lm[:n, 0]
            ext_lm = lm[:n, 0, None] + (table[i[:n, 4, 0, None] * lm_width + lm_cand[:n, s, :k]] + beta)
            best = torch.cat([stay[:, None], ext + ext_lm], 1).argmax(1)
        else:
            best = torch.cat([stay[:, None], ext], 1).argmax(1)
        is_ext = best > 0
        e = (best - 1).clamp(min=0)[:, None]
        c = cls.gather(1, e)[:, 0]
        if table is not None and lm_cand is not None:
            sym = lm_cand[:n, s, :k].gather(1, e)[:, 0]
            state = i[:n, 4, 0]
            i[:n, 4, 0] = torch.where(is_ext, _next_state(state, sym, lm_width, lm_rows), state)
            lm[:n, 0] = torch.where(is_ext, ext_lm.gather(1, e)[:, 0], lm[:n, 0])
        f[:n, 0, 0] = torch.where(is_ext, float("-inf"), stay_b)
        f[:n, 1, 0] = torch.where(is_ext, ext.gather(1, e)[:, 0], stay_nb)
        i[:n, 2, 0] = torch.where(is_ext, c, last[:, 0])
        i[:n, 3, 0] += is_ext.long()
        bp[s, :n, 1, 0] = torch.where(is_ext, c, -1)


def _backtrack(bp: torch.Tensor, frame: torch.Tensor, cur: torch.Tensor, lengths: torch.Tensor,
               size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens of the beams ``cur [B, W]`` and the frame each was emitted at [B, W, L], read back
    through the step pointers ``bp [S, B, 2, W]`` (parent, emitted class or -1) and the searched
    frames ``frame [B, S]``."""
    batch, width = cur.shape[0], cur.shape[1]
    tokens = torch.zeros(batch, width, size + 1, dtype=torch.long, device=cur.device)
    starts = torch.zeros_like(tokens)
    pos = lengths.long() - 1
    for s in range(bp.shape[0] - 1, -1, -1):
        step = bp[s].gather(2, cur[:, None, :].expand(-1, 2, -1))
        emitted = (step[:, 1] >= 0) & (pos >= 0)
        at = torch.where(emitted, pos, size)[:, :, None]
        tokens.scatter_(2, at, step[:, 1, :, None])
        starts.scatter_(2, at, frame[:, s, None, None].expand(-1, width, 1))
        pos = pos - emitted.long()
        cur = step[:, 0]
    return tokens[:, :, :size], starts[:, :, :size]


def peak_frames(log_probs: torch.Tensor, tokens: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor,
                frames: torch.Tensor) -> torch.Tensor:
    """ctcdecode's timesteps: each token's frame of highest probability from the frame it was
    emitted at to the next token's (the utterance's end for the last; the first such frame on a
    tie). ``log_probs [B, T, C]``; ``tokens``, ``starts [B, W, L]``; ``lengths [B, W]`` tokens;
    ``frames [B]`` valid frames. A hypothesis merged from several paths keeps the frames of the
    path that first made it; the peaks are searched over all frames, skipped ones included."""
    batch, width, size = tokens.shape
    total, classes = log_probs.shape[1], log_probs.shape[2]
    if size == 0 or total == 0:
        return torch.zeros_like(tokens)
    dev = tokens.device
    real = torch.arange(size, device=dev) < lengths[..., None]
    bounds = torch.where(real, starts, total).reshape(batch * width, size).contiguous()
    t = torch.arange(total, device=dev).expand(batch * width, total).contiguous()
    seg = (torch.searchsorted(bounds, t, right=True) - 1).view(batch, width, total)   # the token at frame t
    t = t.view(batch, width, total)
    inside = (seg >= 0) & (t < frames.to(dev)[:, None, None])
    seg = torch.where(inside, seg, size)
    tok = torch.cat([tokens, torch.zeros_like(tokens[..., :1])], 2).gather(2, seg)
    flat = (torch.arange(batch, device=dev)[:, None, None] * total + t) * classes + tok
    val = torch.where(inside, log_probs.reshape(-1)[flat].float(), NEG)
    best = torch.full((batch, width, size + 1), NEG, device=dev).scatter_reduce(2, seg, val, "amax")
    first = torch.where(inside & (val == best.gather(2, seg)), t, total)
    peak = torch.full_like(tokens[..., :1], total).expand(-1, -1, size + 1).scatter_reduce(2, seg, first, "amin")
    return torch.where(real, peak[..., :size], 0)


def _scripted(fn):
    """TorchScript of a hot function when this torch can make it; else the function itself (same
    results). TorchScript is deprecated in torch 2.x but still runs the loop about 15-25 % faster
    than Python on a CPU (per-op overhead); a torch without it gets the Python loop."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.script(fn)
    except Exception:  # noqa: BLE001 - TorchScript missing or unable: plain Python is the fallback
        return fn


_USE_SCRIPT = True
_COMPILED: dict[bool, tuple] = {}


def use_torchscript(on: bool = True) -> None:
    """Run the search's loops as TorchScript (the default, where available) or as plain Python."""
    global _USE_SCRIPT
    _USE_SCRIPT = bool(on)


def scripted() -> bool:
    """Whether the search's loops run as TorchScript now (compiles them on first use)."""
    return _loops()[0] is not _loop


WIDTH1_LOOP = True     # width 1 runs _loop1 (the same results as _loop: tests compare them)


def _loops():
    """(loop, loop for width 1, backtrack) as chosen by use_torchscript, compiled once per process
    on first use."""
    if _USE_SCRIPT not in _COMPILED:
        fns = (_loop, _loop1, _backtrack)
        _COMPILED[_USE_SCRIPT] = tuple(_scripted(fn) for fn in fns) if _USE_SCRIPT else fns
    return _COMPILED[_USE_SCRIPT]


def _tail(f: torch.Tensor, i: torch.Tensor, fr: _Frames) -> None:
    """Each utterance's last run of skipped frames (after its last searched frame)."""
    at = fr.count[:, None]
    last = i[:, LAST]
    classes = fr.run_nb.shape[2]
    b, nb = f[:, 0], f[:, 1]
    rb = fr.run_b.gather(1, at)
    rnb = fr.run_nb.gather(1, at[..., None].expand(-1, -1, classes))[:, 0].gather(1, last)
    rx = fr.run_x.gather(1, at[..., None].expand(-1, -1, classes))[:, 0].gather(1, last)
    f[:, 0], f[:, 1] = torch.logaddexp(b + rb, nb + rx), nb + rnb


@torch.inference_mode()
def search(log_probs: torch.Tensor, lengths: torch.Tensor, opts: SearchOptions, lm=None,
           timesteps: bool = True) -> Result:
    """n-best prefix beam search of ``log_probs [B, T, C]`` (normalised log-probabilities, float)
    with ``lengths [B]`` valid frames each, on ``log_probs.device``; ``lm`` a ``DenseLM`` or None.
    ``timesteps=False`` leaves ``Result.frames`` None (they cost a pass over [B, W, T])."""
    batch = log_probs.shape[0]
    dev = log_probs.device
    width = opts.beam_width
    lengths = lengths.to(dev, torch.long)
    fusion = _Fusion(lm, opts.alpha, opts.beta, dev) if lm is not None else None
    fr = _pack(log_probs, lengths, opts, fusion)
    f, i, lm_part = _initial(batch, width, opts.blank, lm.bos_state if lm is not None else 0, dev)
    bp = torch.full((len(fr.steps), batch, 2, width), -1, dtype=torch.long, device=dev)
    bp[:, :, 0] = torch.arange(width, device=dev)          # rows done searching stay put
    loop, loop1, backtrack = _loops()
    (loop1 if width == 1 and WIDTH1_LOOP else loop)(f, i, lm_part, bp, fr.lp, fr.cand, fr.cv, fr.rank, fr.run_b, fr.run_nb, fr.run_x,
          fr.steps, fr.has_run, fr.grid_p, fr.grid_r, fr.tiebreak, fr.own, fr.neg, opts.blank,
          None if fusion is None else fusion.table, fr.lm_cand, 0 if fusion is None else fusion.width,
          0 if fusion is None else fusion.rows, 0.0 if fusion is None else fusion.beta, _HASH_MUL)
    if fr.tail:
        _tail(f, i, fr)
    acoustic = torch.logaddexp(f[:, 0], f[:, 1])
    total = acoustic + lm_part
    if fusion is not None:
        total = total + fusion.end(i[:, STATE])
    total = torch.where(acoustic > NEG, total, NEG)
    rank = _int_keys(total, torch.arange(width, device=dev)).topk(width, dim=1).indices
    lens = i[:, LENGTH].gather(1, rank).masked_fill(total.gather(1, rank) == NEG, 0)
    size = int(lens.max()) if lens.numel() else 0
    tokens, starts = backtrack(bp, fr.frame, rank, lens, size)
    unsort = torch.empty_like(fr.order)
    unsort[fr.order] = torch.arange(batch, device=dev)
    tokens, lens, starts = tokens[unsort], lens[unsort], starts[unsort]
    peaks = peak_frames(log_probs, tokens, starts, lens, lengths).int() if timesteps else None
    return Result(tokens.int(), lens.int(), peaks, acoustic.gather(1, rank)[unsort], total.gather(1, rank)[unsort])

