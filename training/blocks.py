"""Convolutional pieces of the acoustic model: the strided stem's ConvBlock and the embedding
blocks after it (ConvNeXt-style, ResNet-style).

All work on the conv layout x [B, C, T] with `lengths` [B] (real frames per utterance, on x's
device). Padding is treated as absent: padded frames are zeroed before every convolution (what an
unbatched utterance's conv sees there) and batch statistics are taken over real frames only, so
an utterance's outputs on its real frames never depend on the batch's padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MaskedBatchNorm1d", "ConvBlock", "ConvNeXtBlock", "ResBlock", "EMBED_BLOCKS", "Dropout", "dropout",
           "conv_output_length", "frame_mask", "make_norm", "apply_norm"]


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout, at about half its CPU cost: torch's CPU bernoulli_ takes 5 ns an element (8 % of
    the demo recipe's step for its four dropouts), one float32 uniform compared with p half that.
    The same distribution (each element kept with probability 1 - p, scaled by 1 / (1 - p)), other
    masks. Elsewhere (CUDA's fused kernel is faster) it is F.dropout."""
    if not training or p <= 0.0 or x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training)
    keep = torch.rand(x.shape, dtype=torch.float32, device=x.device).ge_(p).mul_(1.0 / (1.0 - p))
    return x * keep.to(x.dtype)


class Dropout(nn.Dropout):
    """nn.Dropout through `dropout` (the same state dict: none)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def conv_output_length(length, kernel: int, stride: int, padding: int):
    """Conv1d length rule floor((L + 2p - k) / s) + 1, for ints or integer tensors."""
    if isinstance(length, torch.Tensor):
        return torch.div(length + 2 * padding - kernel, stride, rounding_mode="floor") + 1
    return (int(length) + 2 * padding - kernel) // stride + 1


def frame_mask(lengths: torch.Tensor, total: int) -> torch.Tensor:
    """[B, total] bool, True on real frames."""
    return torch.arange(total, device=lengths.device)[None, :] < lengths[:, None]


class MaskedBatchNorm1d(nn.Module):
    """BatchNorm over [B, C, T] whose batch statistics ignore padded frames.

    Plain BatchNorm1d would fold padding (and the conv's response to it) into the
    mean/variance, so results would depend on how much padding a batch carries.
    Deliberately not an nn.BatchNorm subclass: SyncBatchNorm conversion would drop
    the mask, so under DDP each rank keeps its own statistics.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, C, T], mask [B, T] (True on real frames) -> [B, C, T]."""
        # Statistics in float32 even under autocast: half-precision sums over ~1e5 frames drift.
        xf = x.float()
        if self.training:
            m = mask.to(xf.dtype).unsqueeze(1)  # [B, 1, T]
            n = m.sum().clamp(min=1.0)
            mean = (xf * m).sum(dim=(0, 2)) / n
            centred = (xf - mean[None, :, None]) * m
            var = centred.square().sum(dim=(0, 2)) / n
            with torch.no_grad():
                unbiased = var * (n / (n - 1.0).clamp(min=1.0))
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(unbiased.detach(), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        scale = self.weight * torch.rsqrt(var + self.eps)
        shift = self.bias - mean * scale
        y = xf * scale[None, :, None] + shift[None, :, None]
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


def make_norm(kind: str, channels: int) -> nn.Module:
    """The normalization `kind` ("batch" | "layer" | "none") over `channels`."""
    if kind == "batch":
        return MaskedBatchNorm1d(channels)
    if kind == "layer":
        return nn.LayerNorm(channels)
    return nn.Identity()


def apply_norm(norm: nn.Module, kind: str, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """y [B, C, T] normalized by make_norm(kind)'s module; mask [B, T] (real frames) for "batch".
    LayerNorm works per frame, so padding cannot reach it."""
    if kind == "batch":
        return norm(y, mask)
    if kind == "layer":
        return norm(y.transpose(1, 2)).transpose(1, 2)
    return y


def _activation(name: str) -> nn.Module:
    return nn.GELU() if name == "gelu" else nn.ReLU()


class ConvBlock(nn.Module):
    """Conv1d -> norm -> activation -> dropout, optionally with a (projected) residual skip.

    x [B, C, T] -> [B, C', T'] with T' = output_length(T) (ceil(T / stride) for odd kernels)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, norm: str,
                 activation: str, dropout: float, residual: bool):
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, kernel // 2
        # A bias before BatchNorm is cancelled by the mean subtraction.
        self.conv = nn.Conv1d(in_ch, out_ch, kernel, stride=stride, padding=self.padding,
                              bias=norm != "batch")
        self.norm_kind = norm
        self.norm = make_norm(norm, out_ch)
        self.act = _activation(activation)
        self.dropout = Dropout(dropout)
        self.skip: nn.Module | None = None
        if residual:
            if in_ch == out_ch and stride == 1:
                self.skip = nn.Identity()
            else:
                # 1x1 strided projection: with odd kernels it yields the same length as the conv.
                self.skip = nn.Conv1d(in_ch, out_ch, 1, stride=stride)

    def output_length(self, length):
        return conv_output_length(length, self.kernel, self.stride, self.padding)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: [B, C, T]; lengths [B] on x's device. Returns [B, C', T']."""
        # Zero padding first so the conv sees exactly what an unbatched utterance sees (zeros).
        x = x * frame_mask(lengths, x.size(-1)).unsqueeze(1).to(x.dtype)
        y = self.conv(x)
        y = apply_norm(self.norm, self.norm_kind, y, frame_mask(self.output_length(lengths), y.size(-1)))
        y = self.dropout(self.act(y))
        if self.skip is not None:
            y = y + self.skip(x)
        return y


class ConvNeXtBlock(nn.Module):
    """ConvNeXt-style block (Liu et al. 2022, in 1-D): x + pw2(act(pw1(norm(depthwise_k7(x))))).

    x [B, C, T] -> [B, C, T]: lengths unchanged. The depthwise conv mixes time per channel, the
    x4-expanded pointwise pair mixes channels per frame; the residual keeps deep stacks trainable.
    """

    def __init__(self, channels: int, norm: str, activation: str, dropout: float,
                 kernel: int = 7, expansion: int = 4):
        super().__init__()
        self.norm_kind = norm
        self.depthwise = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=channels,
                                   bias=norm != "batch")
        self.norm = make_norm(norm, channels)
        self.expand = nn.Conv1d(channels, expansion * channels, 1)
        self.act = _activation(activation)
        self.project = nn.Conv1d(expansion * channels, channels, 1)
        self.dropout = Dropout(dropout)

    def output_length(self, length):
        return length

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x [B, C, T], lengths [B] on x's device -> [B, C, T]."""
        mask = frame_mask(lengths, x.size(-1))
        x = x * mask.unsqueeze(1).to(x.dtype)
        y = apply_norm(self.norm, self.norm_kind, self.depthwise(x), mask)
        y = self.project(self.act(self.expand(y)))
        return x + self.dropout(y)


class ResBlock(nn.Module):
    """ResNet-style basic block (He et al. 2016, in 1-D): act(x + norm(conv3(act(norm(conv3(x)))))).

    x [B, C, T] -> [B, C, T]: lengths unchanged."""

    def __init__(self, channels: int, norm: str, activation: str, dropout: float, kernel: int = 3):
        super().__init__()
        self.norm_kind = norm
        bias = norm != "batch"
        self.conv1 = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, bias=bias)
        self.norm1 = make_norm(norm, channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, bias=bias)
        self.norm2 = make_norm(norm, channels)
        self.act = _activation(activation)
        self.dropout = Dropout(dropout)

    def output_length(self, length):
        return length

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x [B, C, T], lengths [B] on x's device -> [B, C, T]."""
        mask = frame_mask(lengths, x.size(-1))
        keep = mask.unsqueeze(1).to(x.dtype)
        x = x * keep
        y = self.act(apply_norm(self.norm1, self.norm_kind, self.conv1(x), mask))
        y = apply_norm(self.norm2, self.norm_kind, self.conv2(self.dropout(y) * keep), mask)
        return self.act(x + y)


EMBED_BLOCKS = {"convnext": ConvNeXtBlock, "resnet": ResBlock}
