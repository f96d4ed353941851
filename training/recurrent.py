"""Recurrent pieces of the acoustic model: one (multi-layer) BiLSTM run exactly on padded or
packed input, locked (variational) dropout, the pyramidal frame merge, and a BiLSTM stack of
one nn.LSTM per layer that puts locked dropout and pyramidal layers between them.

Layout: x [B, T, C] (batch first), lengths [B] int64 (real frames per utterance). Every module
gives exact results on real frames and zeros on padding, whichever way the LSTM is run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .blocks import dropout, frame_mask

__all__ = ["LockedDropout", "BiLSTMStack", "lstm_masked", "run_lstm", "pyramid", "halved_length"]


def lstm_masked(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """A bidirectional nn.LSTM (any number of layers, its weights and inter-layer dropout) on
    padded x [B, T, C] -> [B, T, 2H], exact on real frames, zero on padding.

    Each direction sees its utterance's real frames first and padding last, so real frames get
    exactly the packed result. Used on CPU, where torch's packed-LSTM backward grows
    quadratically with T when lengths differ. lengths [B] on x's device."""
    b, t, _ = x.shape
    steps = torch.arange(t, device=x.device).expand(b, t)
    lens = lengths.view(b, 1)
    # Reverses each utterance's real frames in place and leaves padding at the end; an involution.
    rev = torch.where(steps < lens, lens - 1 - steps, steps)
    h0 = x.new_zeros(1, b, lstm.hidden_size)
    out = x
    for layer in range(lstm.num_layers):
        if layer > 0 and lstm.dropout > 0:
            out = dropout(out, lstm.dropout, lstm.training)
        dirs = []
        for suffix, reverse in (("", False), ("_reverse", True)):
            params = [getattr(lstm, f"{n}_l{layer}{suffix}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            inp = out.gather(1, rev.unsqueeze(-1).expand_as(out)) if reverse else out
            y = torch.lstm(inp, (h0, h0), params, True, 1, 0.0, lstm.training, False, True)[0]
            dirs.append(y.gather(1, rev.unsqueeze(-1).expand_as(y)) if reverse else y)
        out = torch.cat(dirs, dim=-1)
    mask = (steps < lens).unsqueeze(-1)
    return out * mask   # padding zeroed, as pad_packed_sequence does


def run_lstm(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor, packed: bool) -> torch.Tensor:
    """x [B, T, C], lengths [B] int64 on the CPU -> [B, T, 2H] (zero on padding): on a
    PackedSequence (cuDNN on GPU) or with lstm_masked (the same numbers on real frames)."""
    if packed:
        seq = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = lstm(seq)
        return pad_packed_sequence(out, batch_first=True, total_length=x.size(1))[0]
    return lstm_masked(lstm, x, lengths.to(x.device))


def halved_length(length):
    """Frames after a pyramidal merge: ceil(L / 2), for ints or integer tensors."""
    return (length + 1) // 2


def pyramid(x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, T, C], lengths [B] -> ([B, ceil(T/2), 2C], ceil(lengths/2)): frames 2i and 2i+1
    side by side. An odd utterance's last frame is paired with zeros (padding is zeroed first),
    which is what the same utterance alone gets from the zero frame added to its odd T."""
    b, t, c = x.shape
    x = x * frame_mask(lengths.to(x.device), t).unsqueeze(-1).to(x.dtype)
    if t % 2:
        x = F.pad(x, (0, 0, 0, 1))
    return x.reshape(b, (t + 1) // 2, 2 * c), halved_length(lengths)


class LockedDropout(nn.Module):
    """Variational dropout: x [B, T, C] -> [B, T, C], one mask per utterance and channel, the same
    at every time step (Gal & Ghahramani 2016). A per-step mask (nn.LSTM's own dropout) lets the
    next layer average the noise away over neighbouring frames; a locked one drops a channel for
    the whole utterance. Masks come from torch's RNG on x's device, as nn.Dropout's do."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty(x.size(0), 1, x.size(2)).bernoulli_(keep) / keep
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


class BiLSTMStack(nn.Module):
    """BiLSTM layers run as one nn.LSTM each, so something can sit between them: locked dropout
    and nn.LSTM-style per-step dropout before every layer but the first, and, in the last
    `pyramidal` layers, a pyramid() merge (Listen, Attend and Spell's pBLSTM) that halves time.

    forward: x [B, T, C], lengths [B] int64 on the CPU -> ([B, T', 2H], lengths' [B] on the CPU),
    T' = ceil(T / 2**pyramidal) and each length halved (rounded up) as often."""

    def __init__(self, input_size: int, hidden: int, layers: int, pyramidal: int = 0,
                 locked_dropout: float = 0.0, step_dropout: float = 0.0):
        super().__init__()
        self.first_pyramidal = layers - pyramidal
        self.step_dropout = step_dropout
        self.locked = LockedDropout(locked_dropout)
        lstms = []
        width = input_size
        for i in range(layers):
            width = 2 * width if i >= self.first_pyramidal else width
            lstms.append(nn.LSTM(width, hidden, batch_first=True, bidirectional=True))
            width = 2 * hidden
        self.layers = nn.ModuleList(lstms)
        self.hidden_size = hidden

    def output_length(self, length):
        for _ in range(len(self.layers) - self.first_pyramidal):
            length = halved_length(length)
        return length

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, packed: bool) -> tuple[torch.Tensor, torch.Tensor]:
        for i, lstm in enumerate(self.layers):
            if i > 0:
                x = self.locked(x)
                if self.step_dropout > 0:
                    x = dropout(x, self.step_dropout, self.training)
            if i >= self.first_pyramidal:
                x, lengths = pyramid(x, lengths)
            x = run_lstm(lstm, x, lengths, packed)
        return x, lengths
