"""CTC decoding: greedy, exact hypothesis scoring, and a ctcdecode-compatible beam search.

Scores are always exact CTC log-likelihoods (``ctc_log_likelihood``) rather than whatever a
search backend accumulated, so hypotheses from different decoders can be compared directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.vocab import BLANK, F22, VOCAB, Inventory

try:  # the classic C++ decoder; used when present (not installable in this project's env)
    import ctcdecode as _ctcdecode
except (ImportError, OSError):
    _ctcdecode = None

import fast_ctc_decode

__all__ = [
    "CTCBeamDecoder",
    "beam_decode",
    "ctc_log_likelihood",
    "greedy_decode",
    "hypotheses_to_codes",
    "prune_probs",
]

# fast-ctc-decode returns a string; class index c is rendered as chr(_CHAR_BASE + c) so the
# string maps back to indices exactly, for any class count (no clash with VOCAB/CODES symbols).
_CHAR_BASE = 0x100
# fast-ctc-decode extends every label whose probability is not below its threshold, zeros
# included; this smallest normal float32 makes classes removed by top-n/top-p (set to 0) and
# float32-underflowed ones (< 1.2e-38) really skipped, without pruning anything else.
_MIN_CUT = float(np.finfo(np.float32).tiny)


def _check_lengths(lengths, batch: int, frames: int) -> torch.Tensor:
    lengths = torch.as_tensor(lengths).detach().to("cpu", torch.long).reshape(-1)
    if lengths.numel() != batch:
        raise ValueError(f"expected {batch} lengths, got {lengths.numel()}")
    if batch and (int(lengths.min()) < 0 or int(lengths.max()) > frames):
        raise ValueError(f"lengths must lie in [0, {frames}]")
    return lengths


def greedy_decode(log_probs: torch.Tensor, lengths, blank: int = BLANK) -> list[list[int]]:
    """Best-path decoding, vectorised over the batch because it runs on the dev set every epoch."""
    if log_probs.dim() != 3:
        raise ValueError("log_probs must be [B, T, C]")
    batch, frames, _ = log_probs.shape
    lengths = _check_lengths(lengths, batch, frames).to(log_probs.device)
    pred = log_probs.detach().argmax(dim=-1)  # [B, T]
    prev = torch.cat([torch.full_like(pred[:, :1], -1), pred[:, :-1]], dim=1)
    valid = torch.arange(frames, device=pred.device)[None, :] < lengths[:, None]
    keep = valid & (pred != blank) & (pred != prev)
    tokens = pred[keep].tolist()  # row-major, so utterance i's tokens are contiguous
    out, start = [], 0
    for n in keep.sum(dim=1).tolist():
        out.append(tokens[start:start + n])
        start += n
    return out


@torch.no_grad()
def ctc_log_likelihood(
    log_probs: torch.Tensor, lengths, hypotheses: Sequence[Sequence[int]], blank: int = BLANK
) -> torch.Tensor:
    """Exact log P(hypothesis | x), summed over all CTC alignments (float64, -inf if infeasible).

    The common yardstick for every decoder: a search's own running score is a lower bound that
    depends on its pruning, this is not. An empty hypothesis scores the all-blank path.
    ``log_probs`` must be normalised log-probabilities (log_softmax output).
    """
    if log_probs.dim() != 3:
        raise ValueError("log_probs must be [B, T, C]")
    batch, frames, classes = log_probs.shape
    if len(hypotheses) != batch:
        raise ValueError(f"expected {batch} hypotheses, got {len(hypotheses)}")
    lengths = _check_lengths(lengths, batch, frames)
    if batch == 0:
        return torch.zeros(0, dtype=torch.float64, device=log_probs.device)
    flat = [int(c) for h in hypotheses for c in h]
    if any(c < 0 or c >= classes or c == blank for c in flat):
        raise ValueError(f"hypothesis labels must be in [0, {classes}) and not the blank {blank}")
    device = log_probs.device
    targets = torch.tensor(flat, dtype=torch.long, device=device)
    target_lengths = torch.tensor([len(h) for h in hypotheses], dtype=torch.long, device=device)
    nll = F.ctc_loss(
        log_probs.detach().to(torch.float64).transpose(0, 1),  # [T, B, C]
        targets,
        lengths.to(device),
        target_lengths,
        blank=blank,
        reduction="none",
        zero_infinity=False,
    )
    return -nll


def prune_probs(probs: torch.Tensor, top_n: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Zero, per frame, the classes that ctcdecode's ``get_pruned_log_probs`` would not expand.

    Classes are ranked by probability; the kept set is the shortest prefix whose cumulative
    probability reaches ``top_p`` (ctcdecode's ``cutoff_prob``), capped at ``top_n`` classes
    (``cutoff_top_n``); the blank is ranked like any other class. The survivors keep their
    original values (no renormalisation): rescaling a frame multiplies every hypothesis by the
    same factor, so it cannot change which hypothesis a beam search keeps.
    """
    classes = probs.shape[-1]
    use_n = top_n is not None and top_n < classes
    use_p = top_p is not None and top_p < 1.0
    if not (use_n or use_p):
        return probs
    if use_n and not use_p:
        idx = probs.topk(int(top_n), dim=-1).indices
        return torch.zeros_like(probs).scatter_(-1, idx, probs.gather(-1, idx))
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(dim=-1) - sorted_p  # mass ranked strictly above each class
    keep = before < top_p  # the class that first reaches top_p is itself kept
    if use_n:
        keep[..., int(top_n):] = False
    kept = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
    return torch.zeros_like(probs).scatter_(-1, order, kept)


def _default_labels(classes: int) -> tuple[str, ...]:
    return VOCAB if classes == len(VOCAB) else tuple([""] + [str(i) for i in range(1, classes)])


class CTCBeamDecoder:
    """Prefix beam search with the interface of ``ctcdecode.CTCBeamDecoder`` (no LM).

    Backend: ``ctcdecode`` when importable, else ``fast_ctc_decode.beam_search`` (Rust; it
    releases the GIL, so utterances run in ``num_processes`` threads). ``backend`` forces one.

    ``decode`` returns ``(beam_results [B,W,T] int32, beam_scores [B,W] float32,
    timesteps [B,W,T] int32, out_lens [B,W] int32)``; the best hypothesis of utterance i is
    ``beam_results[i][0][:out_lens[i][0]]``.

    Unlike ctcdecode (which reports -log p of its own beam estimate), ``beam_scores[:, 0]`` is
    the exact CTC log-likelihood of the top hypothesis under the full, unpruned input
    distribution. fast-ctc-decode returns only its best hypothesis, so with that backend beams
    >= 1 are absent: ``out_lens[:, 1:] == 0`` and ``beam_scores[:, 1:] == -inf``. (With
    ctcdecode, beams >= 1 carry ctcdecode's own beam log-probability, sign-flipped.)
    ``timesteps[:, 0]`` holds the frame fast-ctc-decode reports for each emitted token: the
    frame at which its (backward-in-time) search first created that token's prefix node, a
    rough alignment rather than the Viterbi one; strictly increasing and < length. Other
    positions are 0. Like any prefix beam search it can, rarely, return a string less likely
    than the greedy one (alignment mass lost to pruning); compare with ``ctc_log_likelihood``.

    Pruning (exact, not approximated): ``cutoff_top_n`` / ``cutoff_prob`` restrict each frame
    to the classes ctcdecode would expand (see ``prune_probs``); pruned classes get
    probability 0 and are skipped by the search. ``beam_cut_threshold`` (fast-ctc-decode only)
    additionally skips any class whose probability is below it (must be < 1/C).
    ``labels`` only fixes the class count; ``labels=None`` accepts any C.
    """

    def __init__(
        self,
        labels: Sequence[str] | None = VOCAB,
        beam_width: int = 10,
        blank_id: int = BLANK,
        num_processes: int = 1,
        cutoff_top_n: int = 40,
        cutoff_prob: float = 1.0,
        log_probs_input: bool = True,
        *,
        beam_cut_threshold: float = 0.0,
        backend: str = "auto",
    ) -> None:
        if beam_width < 1 or num_processes < 1 or cutoff_top_n < 1:
            raise ValueError("beam_width, num_processes and cutoff_top_n must be >= 1")
        if not 0.0 < cutoff_prob <= 1.0:
            raise ValueError("cutoff_prob must be in (0, 1]")
        if beam_cut_threshold < 0.0:
            raise ValueError("beam_cut_threshold must be >= 0")
        if backend == "auto":
            backend = "ctcdecode" if _ctcdecode is not None else "fast_ctc_decode"
        if backend not in ("ctcdecode", "fast_ctc_decode"):
            raise ValueError(f"unknown backend {backend!r}")
        if backend == "ctcdecode":
            if _ctcdecode is None:
                raise ImportError("ctcdecode is not installed")
            if labels is None:
                raise ValueError("the ctcdecode backend needs labels")
        self.labels = None if labels is None else tuple(labels)
        self.beam_width = int(beam_width)
        self.blank_id = int(blank_id)
        self.num_processes = int(num_processes)
        self.cutoff_top_n = int(cutoff_top_n)
        self.cutoff_prob = float(cutoff_prob)
        self.log_probs_input = bool(log_probs_input)
        self.beam_cut_threshold = float(beam_cut_threshold)
        self.backend = backend
        self._ctc = None
        if backend == "ctcdecode":
            self._ctc = _ctcdecode.CTCBeamDecoder(
                list(self.labels), cutoff_top_n=self.cutoff_top_n, cutoff_prob=self.cutoff_prob,
                beam_width=self.beam_width, num_processes=self.num_processes,
                blank_id=self.blank_id, log_probs_input=self.log_probs_input,
            )

    def decode(self, probs: torch.Tensor, seq_lens=None, *, compute_scores: bool = True):
        """``compute_scores=False`` skips the exact rescoring (``beam_scores[:, 0]`` left -inf),
        which costs about as much as a width-1 search on long utterances."""
        probs = torch.as_tensor(probs).detach()
        if probs.dim() != 3:
            raise ValueError("probs must be [B, T, C]")
        batch, frames, classes = probs.shape
        if self.labels is not None and len(self.labels) != classes:
            raise ValueError(f"{len(self.labels)} labels but {classes} classes in probs")
        if not 0 <= self.blank_id < classes:
            raise ValueError(f"blank_id {self.blank_id} out of range for {classes} classes")
        seq_lens = _check_lengths(
            torch.full((batch,), frames) if seq_lens is None else seq_lens, batch, frames
        )
        x = probs.to("cpu", torch.float32)
        log_probs = x if self.log_probs_input else torch.log(x)
        if self.backend == "ctcdecode":
            return self._decode_ctcdecode(x, seq_lens, log_probs if compute_scores else None)
        return self._decode_fast(x, seq_lens, log_probs if compute_scores else None)

    def _decode_ctcdecode(self, x, seq_lens, log_probs):
        out, scores, timesteps, out_lens = self._ctc.decode(x.contiguous(), seq_lens.int())
        scores = -scores.float()  # ctcdecode reports -log p
        if log_probs is None:
            scores[:, 0] = float("-inf")
        else:
            top = [out[i, 0, : out_lens[i, 0]].tolist() for i in range(x.shape[0])]
            scores[:, 0] = ctc_log_likelihood(log_probs, seq_lens, top, self.blank_id).float()
        return out.int(), scores, timesteps.int(), out_lens.int()

    def _decode_fast(self, x, seq_lens, log_probs):
        batch, frames, classes = x.shape
        cut = max(self.beam_cut_threshold, _MIN_CUT)
        if cut >= 1.0 / classes:
            raise ValueError(f"beam_cut_threshold must be < 1/C = {1.0 / classes}")
        p = x.exp() if self.log_probs_input else x
        p = prune_probs(p, self.cutoff_top_n, self.cutoff_prob)
        # fast-ctc-decode wants the blank in column 0; the alphabet keeps original indices.
        order = [self.blank_id] + [c for c in range(classes) if c != self.blank_id]
        if self.blank_id != 0:
            p = p[..., order]
        arr = np.ascontiguousarray(p.numpy(), dtype=np.float32)
        alphabet = [chr(_CHAR_BASE + c) for c in order]
        lens = seq_lens.tolist()
        width = self.beam_width

        def one(i: int):
            return fast_ctc_decode.beam_search(arr[i, : lens[i]], alphabet, width, cut)

        workers = min(self.num_processes, batch)
        if workers > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                results = list(pool.map(one, range(batch)))
        else:
            results = [one(i) for i in range(batch)]

        beam_results = torch.zeros(batch, width, frames, dtype=torch.int32)
        timesteps = torch.zeros(batch, width, frames, dtype=torch.int32)
        out_lens = torch.zeros(batch, width, dtype=torch.int32)
        beam_scores = torch.full((batch, width), float("-inf"), dtype=torch.float32)
        hyps = []
        for i, (seq, path) in enumerate(results):
            hyp = [ord(ch) - _CHAR_BASE for ch in seq]
            hyps.append(hyp)
            n = len(hyp)
            if n:
                beam_results[i, 0, :n] = torch.tensor(hyp, dtype=torch.int32)
                timesteps[i, 0, :n] = torch.as_tensor(np.asarray(path, dtype=np.int32))
            out_lens[i, 0] = n
        if log_probs is not None:
            beam_scores[:, 0] = ctc_log_likelihood(log_probs, seq_lens, hyps, self.blank_id).float()
        return beam_results, beam_scores, timesteps, out_lens


def beam_decode(
    log_probs: torch.Tensor,
    lengths,
    beam_width: int = 10,
    threads: int = 1,
    top_n: int | None = None,
    top_p: float | None = None,
    *,
    backend: str = "auto",
) -> list[list[int]]:
    """Top beam-search hypothesis per utterance; no pruning unless top_n / top_p are given."""
    classes = log_probs.shape[-1]
    decoder = CTCBeamDecoder(
        labels=_default_labels(classes),
        beam_width=beam_width,
        blank_id=BLANK,
        num_processes=threads,
        cutoff_top_n=classes if top_n is None else top_n,
        cutoff_prob=1.0 if top_p is None else top_p,
        log_probs_input=True,
        backend=backend,
    )
    results, _, _, out_lens = decoder.decode(log_probs, lengths, compute_scores=False)
    return [results[i, 0, : int(out_lens[i, 0])].tolist() for i in range(results.shape[0])]


def hypotheses_to_codes(hypotheses: Sequence[Sequence[int]], inventory: Inventory = F22) -> list[str]:
    """Index hypotheses -> submission strings (one code character per phoneme)."""
    return [inventory.to_codes(h) for h in hypotheses]


def restrict_to_labels(log_probs: torch.Tensor, inventory: Inventory | None = None) -> torch.Tensor:
    """Make the outputs that are never targets impossible: the framing tokens when they are outputs
    (F22's [SOS]/[EOS]), so an undertrained model cannot put them into a transcript; an inventory
    without such outputs (S24's) decodes over all of them. Without `inventory`: F22's when there
    are 43 classes, else nothing is masked."""
    classes = log_probs.shape[-1]
    if inventory is None:
        inventory = F22 if classes == F22.num_classes else None
    elif classes != inventory.num_classes:
        raise ValueError(f"{classes} classes in log_probs but {inventory.num_classes} outputs in inventory "
                         f"{inventory.name}")
    masked = list(inventory.masked) if inventory is not None else []
    if not masked:
        return log_probs
    out = log_probs.clone()
    out[..., masked] = float("-inf")
    return out
