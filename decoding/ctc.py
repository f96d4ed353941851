"""CTC basics every decoder shares: greedy decoding, the exact CTC log-likelihood of a hypothesis
(the yardstick that compares decoders), ctcdecode's per-frame pruning, and the inventory's
masking of outputs that are never targets."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pipeline.vocab import BLANK, F22, VOCAB, Inventory


def check_lengths(lengths, batch: int, frames: int) -> torch.Tensor:
    """Lengths as an int64 CPU tensor of B values in [0, T]: any other input is a ValueError."""
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
    lengths = check_lengths(lengths, batch, frames).to(log_probs.device)
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
    lengths = check_lengths(lengths, batch, frames)
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


def default_labels(classes: int) -> tuple[str, ...]:
    return VOCAB if classes == len(VOCAB) else tuple([""] + [str(i) for i in range(1, classes)])


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
