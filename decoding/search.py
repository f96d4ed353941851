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
  extension (k, c) is beam j when hash(k) == parent_hash(j), c == last(j) and the lengths agree,
  and its mass is added to j (never a duplicate in the beam, so the n-best rows are distinct).
- **Exact, device-independent ties.** Candidates are ranked on one int64 key: the float32 score's
  order-preserving bits, then the lower candidate index (stays before extensions, beam-major,
  then class rank). ``topk`` over unique keys is deterministic and the same on any device.

Prefixes are not stored as token tensors: each step records the chosen candidate of each beam
(which names its parent beam and emitted class), and the n-best strings are read back at the end
by one backward pass over those pointers: O(1) work per beam and step instead of copying [W, L]
tokens. On a CPU the search is bound by the number of tensor operations per frame, not by their
size, so a step is written with as few as it can be (about 50).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEG = float("-inf")
_HASH_MUL = 0x100000001B3            # FNV-64 prime (odd): int64 products wrap, a polynomial hash mod 2**64
_LOW32 = 0xFFFFFFFF


@dataclass(frozen=True)
class SearchOptions:
    """What the search does; ``CTCBeamDecoder`` maps ctcdecode's arguments onto it."""
    beam_width: int = 10
    blank: int = 0
    cutoff_top_n: int = 40           # at most this many classes per frame (the blank ranked with the rest)
    cutoff_prob: float = 1.0         # ...and only the most likely ones whose probabilities add up to this
    blank_skip: float = 0.999        # frames with P(blank) >= this extend nothing (> 1: search every frame)
    alpha: float = 0.0               # LM weight (shallow fusion)
    beta: float = 0.0                # bonus per emitted token (only with an LM, as in ctcdecode)


@dataclass
class Result:
    """n-best per utterance, best first: ``tokens [B, W, L]`` (0-padded), ``lengths [B, W]``,
    ``frames [B, W, L]`` (each token's peak frame), ``acoustic [B, W]`` (the search's CTC log-mass
    of the hypothesis, -inf for an empty row), ``total [B, W]`` (the ranking score: acoustic +
    alpha * LM + beta * tokens)."""
    tokens: torch.Tensor
    lengths: torch.Tensor
    frames: torch.Tensor
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
    count: torch.Tensor      # [B] searched frames per sorted row
    tiebreak: torch.Tensor   # [W + M] _LOW32 - candidate number (stays, then the grid)
    own: torch.Tensor        # [W] each beam's first column in the flat [W * (K + 1)] extensions
    neg: torch.Tensor        # [B, W] -inf
    lm_cand: torch.Tensor | None   # [B, S, K + 1] the candidates' LM symbols
    grid_p: torch.Tensor     # [M] beam positions (in order of mass) and class ranks of the extensions
    grid_r: torch.Tensor     #     that can make the top W


def _pack(log_probs: torch.Tensor, lengths: torch.Tensor, opts: SearchOptions, fusion=None) -> _Frames:
    batch, frames, classes = log_probs.shape
    dev = log_probs.device
    valid = torch.arange(frames, device=dev)[None, :] < lengths[:, None]
    skip = log_probs[..., opts.blank] >= torch.log(torch.tensor(opts.blank_skip, dtype=torch.float64)).item()
    active = valid & ~skip
    count = active.sum(1)
    order = torch.sort(count, descending=True, stable=True).indices
    log_probs, valid, active, count = log_probs[order], valid[order], active[order], count[order]
    counts = count.tolist()
    size = max(counts, default=0)
    steps = [sum(c > s for c in counts) for s in range(size)]
    # the searched frames first, in time order (a stable sort of "not searched")
    pos = torch.sort((~active).to(torch.int8), dim=1, stable=True).indices[:, :size]
    lp = log_probs[:, :size] if bool(active[:, :size].all()) else \
        log_probs.gather(1, pos[..., None].expand(-1, -1, classes))
    lp = lp.float()
    cand, cv, rank = _candidates(lp, opts)
    run_b, run_nb, run_x, nonempty = _runs(log_probs, valid, active, size, opts.blank)
    searching = count[:, None] > torch.arange(size, device=dev)
    has_run = (nonempty[:, :size] & searching).any(0).tolist()
    width, k1 = opts.beam_width, cand.shape[-1]
    grid_p, grid_r = _grid(width, k1 - 1, full=fusion is not None, device=dev)
    tiebreak = _LOW32 - torch.arange(width + len(grid_p), device=dev)
    own = torch.arange(width, device=dev) * k1
    neg = torch.full((batch, width), NEG, device=dev)
    lm_cand = fusion.index[cand] if fusion is not None else None
    return _Frames(order, steps, lp, pos, cand, cv, rank, run_b, run_nb, run_x, has_run, count,
                   tiebreak, own, neg, lm_cand, grid_p, grid_r)


def _grid(width: int, k: int, full: bool, device):
    """The (beam position, class rank) pairs that can reach the top W, p-major. With beams sorted by
    mass and classes by probability, (p, r) is outranked by every (p' <= p, r' <= r) but the two per
    row a beam may lower (its repeated label, a merged class): (p + 1)(r - 1) - 1 of them, so it is
    kept only when that is < W. With an LM the classes' order differs per beam: all pairs."""
    pairs = [(p, r) for p in range(width) for r in range(k) if full or (p + 1) * (r - 1) - 1 < width]
    p, r = zip(*pairs) if pairs else ((), ())
    return torch.tensor(p, dtype=torch.long, device=device), torch.tensor(r, dtype=torch.long, device=device)


def _candidates(lp: torch.Tensor, opts: SearchOptions):
    """[B, S, K + 1] classes to extend with per searched frame, best first (ties: the lower class),
    and a dummy (the blank at -inf, where a write that must go nowhere goes); their log-probs
    (-inf: pruned); and the inverse map [B, S, C] (a class's position there, K when absent)."""
    batch, size, classes = lp.shape
    dev = lp.device
    keep = candidate_mask(lp, opts.cutoff_top_n, opts.cutoff_prob)
    kept = classes if keep is None else int(keep.sum(-1).max(initial=1)) if keep.numel() else 1
    # a beam's extensions rank as its classes do, except its repeated label and one merged class:
    # beyond the W + 2 likeliest classes none can enter the top W (ties go to the lower rank)
    k = max(1, min(kept, classes - 1, opts.beam_width + 2))
    masked = lp if keep is None else lp.masked_fill(~keep, NEG)
    keys = _keys(masked, _LOW32 - torch.arange(classes, device=dev))
    keys[..., opts.blank] = torch.iinfo(torch.long).min                   # never a candidate
    cand = keys.topk(k, dim=-1, sorted=True).indices
    cv = masked.gather(2, cand)
    rank = torch.full((batch, size, classes), k, dtype=torch.int16, device=dev)
    rank.scatter_(2, cand, torch.arange(k, dtype=torch.int16, device=dev).expand(batch, size, k))
    rank[..., opts.blank] = k
    cand = torch.cat([cand, torch.full_like(cand[..., :1], opts.blank)], -1)
    cv = torch.cat([cv, torch.full_like(cv[..., :1], NEG)], -1)
    return cand, cv, rank


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
    if many == 0:
        zero = torch.zeros(shape, dtype=torch.float64, device=dev)
        return _run_tables(zero[..., blank], zero, torch.full_like(zero, NEG), zero[..., blank] > 0, size, blank)
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


def _keys(scores: torch.Tensor, tiebreak: torch.Tensor) -> torch.Tensor:
    """One int64 per candidate ordering by score, then by ``tiebreak`` (``_LOW32 - index``: the
    lower index first): unique, so ``topk`` is exact. Float bits order as signed ints once the
    negative ones have their magnitude bits flipped."""
    bits = scores.contiguous().view(torch.int32)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (ordered.long() << 32) | tiebreak


class _Beams:
    """The beams of every (sorted) utterance: ``f [B, 3, W]`` the masses (b, nb) and the last
    token's best log-prob so far, ``lm [B, W]`` the LM part of the score, ``i [B, 6, W]`` the prefix
    hash, its parent's hash, the last label, the length, the LM state and the frame of that best
    log-prob: stacked so that a step moves a beam's state with one gather."""

    HASH, PARENT, LAST, LENGTH, STATE, PEAK_T = range(6)

    def __init__(self, batch: int, width: int, blank: int, lm_state: int, device):
        self.f = torch.full((batch, 3, width), NEG, dtype=torch.float32, device=device)
        self.f[:, 0, 0] = 0.0                      # the empty prefix, all-blank so far
        self.lm = torch.zeros(batch, width, dtype=torch.float32, device=device)
        self.i = torch.zeros(batch, 6, width, dtype=torch.long, device=device)
        self.i[:, self.PARENT] = -1
        self.i[:, self.LAST] = blank
        self.i[:, self.STATE] = lm_state


class _Fusion:
    """Shallow fusion with a dense n-gram table (``decoding.lm.DenseLM``): an extension by class c
    adds ``alpha * ln P(c | last n-1 symbols) + beta``; the end adds ``alpha * ln P(</s> | ...)``."""

    def __init__(self, lm, alpha: float, beta: float, device):
        self.lm, self.beta = lm, float(beta)
        self.width = len(lm.symbols)
        self.rows = lm.table.shape[0]
        self.table = (lm.table.to(device, torch.float32) * float(alpha)).reshape(-1)
        index = lm.label_index.to(device)
        self.index = torch.where(index >= 0, index, lm.eos)    # the blank (never extended) -> any valid row

    def extend(self, state: torch.Tensor, sym: torch.Tensor) -> torch.Tensor:
        """[n, W] states x [n, K] symbols -> [n, W, K] weighted log-probs + beta."""
        return self.table[state[:, :, None] * self.width + sym[:, None, :]] + self.beta

    def next(self, state: torch.Tensor, sym: torch.Tensor) -> torch.Tensor:
        return (state % (self.rows // self.width)) * self.width + sym if self.rows > 1 else state

    def end(self, state: torch.Tensor) -> torch.Tensor:
        return self.table[state * self.width + self.lm.eos]


def _step(beams: _Beams, fr: _Frames, s: int, n: int, fusion: _Fusion | None, bp: torch.Tensor, blank: int):
    """One searched frame for the first n (sorted) utterances: stays, extensions, merges, top W."""
    b, nb, bi = beams.f[:n, 0], beams.f[:n, 1], beams.i[:n]
    last, width = bi[:, _Beams.LAST], b.shape[1]
    if fr.has_run[s]:                          # the skipped frames before this one: stays only
        b, nb = (torch.logaddexp(b + fr.run_b[:n, s, None], nb + fr.run_x[:n, s].gather(1, last)),
                 nb + fr.run_nb[:n, s].gather(1, last))
    lpf, cv = fr.lp[:n, s], fr.cv[:n, s]
    k1 = cv.shape[1]                           # K candidates + the dummy column (-inf)
    tot = torch.logaddexp(b, nb)
    lp_last = lpf.gather(1, last)
    stay_b, stay_nb = tot + lpf[:, blank, None], nb + lp_last
    at = fr.rank[:n, s].gather(1, last).long()   # each beam's last label among the candidates (K: absent)
    own = fr.own[:width]
    ext = (tot[:, :, None] + cv[:, None, :]).view(n, width * k1)
    ext.scatter_(1, own + at, b + cv.gather(1, at))     # a repeated label extends only paths ending in blank
    gained, kill = _merge(bi, b, tot, lp_last, at, k1, own)
    stay_nb = torch.logaddexp(stay_nb, gained)
    ext.scatter_(1, kill, NEG)
    stay = torch.logaddexp(stay_b, stay_nb)
    # beams in order of mass (stable: ties by index); the candidates, by (beam position, class rank)
    perm = torch.sort(tot, dim=1, descending=True, stable=True).indices
    grid = torch.add(fr.grid_r, perm.index_select(1, fr.grid_p), alpha=k1)   # flat index into ext
    ext_lm = None
    if fusion is not None:
        lm = beams.lm[:n]
        stay = stay + lm
        ext_lm = (lm[:, :, None] + fusion.extend(bi[:, _Beams.STATE], fr.lm_cand[:n, s])).view(n, width * k1)
    chosen = ext.gather(1, grid) if ext_lm is None else (ext + ext_lm).gather(1, grid)
    scores = torch.cat([stay, chosen], 1)
    top = _keys(scores, fr.tiebreak).topk(width, dim=1, sorted=True).indices
    is_ext = top >= width
    e = grid.gather(1, (top - width).clamp(min=0))
    _advance(beams, fr, s, n, is_ext, torch.where(is_ext, e // k1, top), e, stay_b, stay_nb, lp_last, ext,
             ext_lm, fusion, bp)


def _merge(bi, b, tot, lp_last, at, k1, own):
    """Extension (i, c) is beam j when j's parent hash is i's hash (the first such i: live beams come
    first) and c is j's last label: the mass each live j gains (-inf: none) and where to drop that
    candidate (its flat index, or j's own dummy column)."""
    match = bi[:, _Beams.HASH, None, :] == bi[:, _Beams.PARENT, :, None]     # [n, j, i]
    src = match.to(torch.uint8).argmax(-1)
    has = match.any(-1) & (tot > NEG)
    last = bi[:, _Beams.LAST]
    from_b = last.gather(1, src) == last
    gained = torch.where(from_b, b.gather(1, src), tot.gather(1, src)) + lp_last
    return torch.where(has, gained, NEG), torch.where(has, src * k1 + at, own + (k1 - 1))


def _advance(beams, fr, s, n, is_ext, parent, e, stay_b, stay_nb, lp_last, ext, ext_lm, fusion, bp):
    """Make the chosen candidates the new beams (``parent [n, W]`` the beam each comes from, ``e``
    the flat index of the extension into ``ext [n, W * (K + 1)]`` where ``is_ext``) and record the
    step's pointers: parent, emitted class or -1, the frame of the parent's last token's peak."""
    ci = e % fr.cv.shape[2]
    cls = fr.cand[:n, s].gather(1, ci)
    g = beams.i[:n].gather(2, parent[:, None, :].expand(-1, 6, -1))
    h, state, peak_t = g[:, _Beams.HASH], g[:, _Beams.STATE], g[:, _Beams.PEAK_T]
    if fusion is not None:
        state = fusion.next(state, fr.lm_cand[:n, s].gather(1, ci))
        beams.lm[:n] = torch.where(is_ext, ext_lm.gather(1, e), beams.lm[:n].gather(1, parent))
    gf = torch.stack([stay_b, stay_nb, lp_last, beams.f[:n, 2]], 1).gather(2, parent[:, None, :].expand(-1, 4, -1))
    up = gf[:, 2] > gf[:, 3]                   # the last label peaks here (ctcdecode's timestep)
    frame = fr.frame[:n, s, None].expand(-1, parent.shape[1])
    grown = torch.stack([h * _HASH_MUL + cls + 1, h, cls, g[:, _Beams.LENGTH] + 1, state, frame], 1)
    g[:, _Beams.PEAK_T] = torch.where(up, frame, peak_t)
    beams.i[:n] = torch.where(is_ext[:, None], grown, g)
    kept = torch.stack([gf[:, 0], gf[:, 1], torch.maximum(gf[:, 2], gf[:, 3])], 1)
    new = torch.stack([fr.neg[:n], ext.gather(1, e), fr.cv[:n, s].gather(1, ci)], 1)
    beams.f[:n] = torch.where(is_ext[:, None], new, kept)
    bp[s, :n] = torch.stack([parent, torch.where(is_ext, cls, -1), peak_t], 1)


def _tail(beams: _Beams, fr: _Frames) -> None:
    """Each utterance's last run of skipped frames (after its last searched frame)."""
    at = fr.count[:, None]
    last = beams.i[:, _Beams.LAST]
    classes = fr.run_nb.shape[2]
    b, nb = beams.f[:, 0], beams.f[:, 1]
    rb = fr.run_b.gather(1, at)
    rnb = fr.run_nb.gather(1, at[..., None].expand(-1, -1, classes))[:, 0].gather(1, last)
    rx = fr.run_x.gather(1, at[..., None].expand(-1, -1, classes))[:, 0].gather(1, last)
    beams.f[:, 0], beams.f[:, 1] = torch.logaddexp(b + rb, nb + rx), nb + rnb


def _backtrack(bp: torch.Tensor, cur: torch.Tensor, lengths: torch.Tensor, last_peak: torch.Tensor):
    """Tokens and their peak frames [B, W, L] of the beams ``cur [B, W]``, read back through the
    step pointers ``bp [S, B, 3, W]`` (parent, emitted class or -1, parent's last-token peak)."""
    batch, width = cur.shape
    size = int(lengths.max()) if lengths.numel() else 0
    tokens = torch.zeros(batch, width, size + 1, dtype=torch.long, device=cur.device)
    frames = torch.zeros_like(tokens)
    pos = lengths.long() - 1
    frames.scatter_(2, torch.where(pos >= 0, pos, size)[..., None], last_peak[..., None])
    for s in range(bp.shape[0] - 1, -1, -1):
        step = bp[s].gather(2, cur[:, None, :].expand(-1, 3, -1))
        emitted = (step[:, 1] >= 0) & (pos >= 0)
        at = torch.where(emitted, pos, size)[..., None]
        tokens.scatter_(2, at, step[:, 1, :, None])
        frames.scatter_(2, torch.where(emitted & (pos >= 1), pos - 1, size)[..., None], step[:, 2, :, None])
        pos = pos - emitted.long()
        cur = step[:, 0]
    return tokens[..., :size], frames[..., :size]


@torch.no_grad()
def search(log_probs: torch.Tensor, lengths: torch.Tensor, opts: SearchOptions, lm=None) -> Result:
    """n-best prefix beam search of ``log_probs [B, T, C]`` (normalised log-probabilities, float)
    with ``lengths [B]`` valid frames each, on ``log_probs.device``; ``lm`` a ``DenseLM`` or None."""
    batch = log_probs.shape[0]
    dev = log_probs.device
    width = opts.beam_width
    lengths = lengths.to(dev, torch.long)
    fusion = _Fusion(lm, opts.alpha, opts.beta, dev) if lm is not None else None
    fr = _pack(log_probs, lengths, opts, fusion)
    beams = _Beams(batch, width, opts.blank, lm.bos_state if lm is not None else 0, dev)
    bp = torch.full((len(fr.steps), batch, 3, width), -1, dtype=torch.long, device=dev)
    bp[:, :, 0] = torch.arange(width, device=dev)          # rows done searching stay put
    for s, n in enumerate(fr.steps):
        _step(beams, fr, s, n, fusion, bp, opts.blank)
    _tail(beams, fr)
    acoustic = torch.logaddexp(beams.f[:, 0], beams.f[:, 1])
    total = acoustic + beams.lm
    if fusion is not None:
        total = total + fusion.end(beams.i[:, _Beams.STATE])
    total = torch.where(acoustic > NEG, total, NEG)
    rank = _keys(total, _LOW32 - torch.arange(width, device=dev)).topk(width, dim=1, sorted=True).indices
    lens = beams.i[:, _Beams.LENGTH].gather(1, rank).masked_fill(total.gather(1, rank) == NEG, 0)
    tokens, peaks = _backtrack(bp, rank, lens, beams.i[:, _Beams.PEAK_T].gather(1, rank))
    unsort = torch.empty_like(fr.order)
    unsort[fr.order] = torch.arange(batch, device=dev)
    return Result(tokens[unsort].int(), lens[unsort].int(), peaks[unsort].int(),
                  acoustic.gather(1, rank)[unsort], total.gather(1, rank)[unsort])
