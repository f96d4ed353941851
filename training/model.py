"""Acoustic model: CNN embedding -> BiLSTM (packed) -> classifier -> CTC log-probabilities.

Padding is treated as absent everywhere: padded frames are zeroed before every
convolution, BatchNorm statistics are taken over real frames only, and the LSTM
only ever sees packed sequences.  So (in eval mode) an utterance's outputs do not
depend on what it was batched with, and in train mode the amount of padding does
not change the result.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from pipeline.vocab import NUM_CLASSES
from pipeline.features import FEATURE_DIM

__all__ = [
    "ModelConfig",
    "Model",
    "MaskedBatchNorm1d",
    "ConvBlock",
    "PRESETS",
    "build_model",
    "count_parameters",
    "describe",
    "conv_output_length",
]

_NORMS = ("batch", "layer", "none")
_ACTIVATIONS = ("gelu", "relu")
_INPUT_NORMS = ("none", "utterance")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a Model; plain types so checkpoints can store it as JSON."""

    input_dim: int = FEATURE_DIM
    # "utterance": each utterance's features get zero mean and unit variance over its own frames
    # (cepstral mean and variance normalization), which removes a channel's and part of a
    # speaker's constant spectral colouring; "none" keeps the shards' corpus-wide normalization.
    input_norm: str = "none"
    conv_channels: list[int] = field(default_factory=list)
    conv_kernels: list[int] = field(default_factory=list)
    conv_strides: list[int] = field(default_factory=list)
    conv_residual: bool = False
    conv_dropout: float = 0.0
    norm: str = "batch"
    activation: str = "gelu"
    lstm_hidden: int = 128
    lstm_layers: int = 1
    lstm_dropout: float = 0.0
    classifier_hidden: list[int] = field(default_factory=list)
    classifier_dropout: float = 0.0
    num_classes: int = NUM_CLASSES

    def __post_init__(self) -> None:
        # JSON round-trips and overrides may hand in tuples; keep lists so asdict() is stable.
        self.conv_channels = [int(c) for c in self.conv_channels]
        self.conv_kernels = [int(k) for k in self.conv_kernels]
        self.conv_strides = [int(s) for s in self.conv_strides]
        self.classifier_hidden = [int(h) for h in self.classifier_hidden]
        self.validate()

    def validate(self) -> None:
        """Fail at construction, not deep inside forward()."""
        n = len(self.conv_channels)
        if len(self.conv_kernels) != n or len(self.conv_strides) != n:
            raise ValueError(
                f"conv_channels/conv_kernels/conv_strides must have equal lengths, got "
                f"{n}/{len(self.conv_kernels)}/{len(self.conv_strides)}"
            )
        if any(c < 1 for c in self.conv_channels):
            raise ValueError(f"conv_channels must be positive, got {self.conv_channels}")
        # Odd kernels only: with padding k//2 an even kernel would grow stride-1 outputs by a frame.
        if any(k < 1 or k % 2 == 0 for k in self.conv_kernels):
            raise ValueError(f"conv_kernels must be odd and positive, got {self.conv_kernels}")
        if any(s not in (1, 2) for s in self.conv_strides):
            raise ValueError(f"conv_strides must be 1 or 2, got {self.conv_strides}")
        if self.input_norm not in _INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {_INPUT_NORMS}, got {self.input_norm!r}")
        if self.norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {self.norm!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {self.activation!r}")
        if self.input_dim < 1 or self.lstm_hidden < 1 or self.lstm_layers < 1 or self.num_classes < 2:
            raise ValueError("input_dim, lstm_hidden, lstm_layers must be >= 1 and num_classes >= 2")
        if any(h < 1 for h in self.classifier_hidden):
            raise ValueError(f"classifier_hidden must be positive, got {self.classifier_hidden}")
        for name in ("conv_dropout", "lstm_dropout", "classifier_dropout"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Strict: an unknown key means the checkpoint came from a different model version."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    @property
    def downsampling(self) -> int:
        return math.prod(self.conv_strides) if self.conv_strides else 1


def utterance_normalize(x: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """x [B, T, F] with each utterance's real frames at zero mean and unit variance per feature
    (statistics in float32, padding left at zero)."""
    mask = _frame_mask(lengths, x.size(1)).unsqueeze(-1).to(torch.float32)        # [B, T, 1]
    xf = x.float() * mask
    n = lengths.to(torch.float32).view(-1, 1, 1)
    mean = xf.sum(1, keepdim=True) / n
    var = ((xf - mean) ** 2 * mask).sum(1, keepdim=True) / n
    return ((xf - mean) * torch.rsqrt(var + eps) * mask).to(x.dtype)


def conv_output_length(length, kernel: int, stride: int, padding: int):
    """Conv1d length rule floor((L + 2p - k) / s) + 1, for ints or integer tensors."""
    if isinstance(length, torch.Tensor):
        return torch.div(length + 2 * padding - kernel, stride, rounding_mode="floor") + 1
    return (int(length) + 2 * padding - kernel) // stride + 1


def _frame_mask(lengths: torch.Tensor, total: int) -> torch.Tensor:
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


class ConvBlock(nn.Module):
    """Conv1d -> norm -> activation -> dropout, optionally with a (projected) residual skip."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, norm: str,
                 activation: str, dropout: float, residual: bool):
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, kernel // 2
        # A bias before BatchNorm is cancelled by the mean subtraction.
        self.conv = nn.Conv1d(in_ch, out_ch, kernel, stride=stride, padding=self.padding,
                              bias=norm != "batch")
        self.norm_kind = norm
        if norm == "batch":
            self.norm = MaskedBatchNorm1d(out_ch)
        elif norm == "layer":
            self.norm = nn.LayerNorm(out_ch)
        else:
            self.norm = nn.Identity()
        self.act = nn.GELU() if activation == "gelu" else nn.ReLU()
        self.dropout = nn.Dropout(dropout)
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
        """x: [B, C, T]; lengths on x's device. Returns [B, C', T']."""
        # Zero padding first so the conv sees exactly what an unbatched utterance sees (zeros).
        x = x * _frame_mask(lengths, x.size(-1)).unsqueeze(1).to(x.dtype)
        y = self.conv(x)
        if self.norm_kind == "batch":
            y = self.norm(y, _frame_mask(self.output_length(lengths), y.size(-1)))
        elif self.norm_kind == "layer":
            y = self.norm(y.transpose(1, 2)).transpose(1, 2)
        y = self.dropout(self.act(y))
        if self.skip is not None:
            y = y + self.skip(x)
        return y


class Model(nn.Module):
    """CNN + BiLSTM + classifier producing per-frame log-probabilities for CTC.

    lstm_dropout uses nn.LSTM's built-in inter-layer dropout (not locked/variational
    dropout): it keeps the stack a single cuDNN call on GPU.
    """

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config = copy.deepcopy(config) if config is not None else ModelConfig()
        config.validate()
        blocks = []
        in_ch = config.input_dim
        for out_ch, k, s in zip(config.conv_channels, config.conv_kernels, config.conv_strides):
            blocks.append(ConvBlock(in_ch, out_ch, k, s, config.norm, config.activation,
                                    config.conv_dropout, config.conv_residual))
            in_ch = out_ch
        self.conv = nn.ModuleList(blocks)
        self.lstm = nn.LSTM(
            input_size=in_ch,
            hidden_size=config.lstm_hidden,
            num_layers=config.lstm_layers,
            dropout=config.lstm_dropout if config.lstm_layers > 1 else 0.0,
            batch_first=True,
            bidirectional=True,
        )
        linears = []
        width = 2 * config.lstm_hidden
        for h in config.classifier_hidden:
            linears.append(nn.Linear(width, h))
            width = h
        linears.append(nn.Linear(width, config.num_classes))
        self.linears = nn.ModuleList(linears)
        self.classifier_act = nn.GELU() if config.activation == "gelu" else nn.ReLU()
        self.classifier_dropout = nn.Dropout(config.classifier_dropout)

    # "packed": nn.LSTM on a PackedSequence (cuDNN on GPU). "masked": the same computation on
    # padded tensors, each direction seeing its utterance's frames first and padding last, so
    # real frames get exactly the packed result. On CPU, torch's packed-LSTM backward grows
    # quadratically with T when lengths differ (12 x 1200 frames: 11 s instead of 0.17 s),
    # so "auto" picks masked there.
    lstm_impl: str = "auto"

    def _use_packed(self, feats: torch.Tensor) -> bool:
        if self.lstm_impl == "auto":
            return feats.is_cuda
        return self.lstm_impl == "packed"

    def _lstm_masked(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Bidirectional multi-layer LSTM on padded x, exact on real frames, using self.lstm's weights."""
        b, t, _ = x.shape
        steps = torch.arange(t, device=x.device).expand(b, t)
        lens = lengths.view(b, 1)
        # Reverses each utterance's real frames in place and leaves padding at the end; an involution.
        rev = torch.where(steps < lens, lens - 1 - steps, steps)
        h0 = x.new_zeros(1, b, self.lstm.hidden_size)
        out = x
        for layer in range(self.lstm.num_layers):
            if layer > 0 and self.lstm.dropout > 0:
                out = F.dropout(out, self.lstm.dropout, self.training)
            dirs = []
            for suffix, reverse in (("", False), ("_reverse", True)):
                params = [getattr(self.lstm, f"{n}_l{layer}{suffix}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                inp = out.gather(1, rev.unsqueeze(-1).expand_as(out)) if reverse else out
                y = torch.lstm(inp, (h0, h0), params, True, 1, 0.0, self.training, False, True)[0]
                dirs.append(y.gather(1, rev.unsqueeze(-1).expand_as(y)) if reverse else y)
            out = torch.cat(dirs, dim=-1)
        mask = (steps < lens).unsqueeze(-1)
        return out * mask   # padding zeroed, as pad_packed_sequence does

    @property
    def downsampling(self) -> int:
        return self.config.downsampling

    def output_lengths(self, lengths):
        """Exact frame counts after the conv stack (int or integer tensor, any device)."""
        for block in self.conv:
            lengths = block.output_length(lengths)
        return lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, F], lengths [B] -> (log_probs [B, T', C] float32, out_lengths [B]).

        out_lengths lives on the same device as `lengths`."""
        if x.dim() != 3 or x.size(-1) != self.config.input_dim:
            raise ValueError(f"expected x of shape [B, T, {self.config.input_dim}], got {tuple(x.shape)}")
        if lengths.dim() != 1 or lengths.numel() != x.size(0):
            raise ValueError(f"lengths must be [B={x.size(0)}], got {tuple(lengths.shape)}")
        lengths_cpu = lengths.detach().to("cpu", torch.int64)
        if lengths_cpu.numel() and (int(lengths_cpu.min()) < 1 or int(lengths_cpu.max()) > x.size(1)):
            raise ValueError(f"lengths must lie in [1, T={x.size(1)}], got {lengths_cpu.tolist()}")

        cur = lengths_cpu.to(x.device)
        if self.config.input_norm == "utterance":
            x = utterance_normalize(x, cur)
        h = x.transpose(1, 2)  # [B, F, T]: conv layout
        for block in self.conv:
            h = block(h, cur)
            cur = block.output_length(cur)
        feats = h.transpose(1, 2)  # [B, T', C]
        t_out = feats.size(1)
        out_lengths_cpu = self.output_lengths(lengths_cpu)

        if self._use_packed(feats):
            packed = pack_padded_sequence(feats, out_lengths_cpu, batch_first=True, enforce_sorted=False)
            lstm_out, _ = self.lstm(packed)
            unpacked, _ = pad_packed_sequence(lstm_out, batch_first=True, total_length=t_out)
        else:
            unpacked = self._lstm_masked(feats, out_lengths_cpu.to(feats.device))

        y = unpacked
        last = len(self.linears) - 1
        for i, linear in enumerate(self.linears):
            y = linear(y)
            if i < last:
                y = self.classifier_dropout(self.classifier_act(y))
        # CTC needs accurate log-probs: normalise in float32 even when autocast ran the matmuls in half.
        log_probs = F.log_softmax(y.float(), dim=-1)
        return log_probs, out_lengths_cpu.to(lengths.device)


PRESETS: dict[str, ModelConfig] = {
    # Reference shapes for the course-style baselines.
    "model1": ModelConfig(lstm_hidden=128, lstm_layers=1),
    "model2": ModelConfig(
        conv_channels=[64, 128], conv_kernels=[5, 5], conv_strides=[1, 1],
        norm="batch", activation="gelu", lstm_hidden=128, lstm_layers=1,
    ),
    "model3": ModelConfig(
        conv_channels=[64, 128, 256], conv_kernels=[5, 5, 5], conv_strides=[1, 1, 1],
        norm="batch", activation="gelu", lstm_hidden=256, lstm_layers=1,
        classifier_hidden=[128],
    ),
    # CPU-trainable: stride 2 halves the LSTM's work while keeping ~4 frames per phoneme.
    "default": ModelConfig(
        conv_channels=[256, 256], conv_kernels=[5, 5], conv_strides=[2, 1],
        conv_residual=True, conv_dropout=0.1, norm="batch", activation="gelu",
        lstm_hidden=256, lstm_layers=3, lstm_dropout=0.25,
        classifier_hidden=[512], classifier_dropout=0.2,
    ),
    # The public best recipe for this task; meant for a GPU.
    "large": ModelConfig(
        conv_channels=[1024, 1024], conv_kernels=[7, 5], conv_strides=[2, 2],
        conv_residual=False, conv_dropout=0.0, norm="batch", activation="gelu",
        lstm_hidden=512, lstm_layers=2, lstm_dropout=0.2,
        classifier_hidden=[4096], classifier_dropout=0.2,
    ),
}


def preset_config(preset: str = "default", **overrides: Any) -> ModelConfig:
    """A fresh (deep-copied) preset config with overrides applied."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; available: {', '.join(sorted(PRESETS))}")
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown ModelConfig override(s): {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    return dataclasses.replace(copy.deepcopy(PRESETS[preset]), **copy.deepcopy(overrides))


def build_model(preset: str = "default", **overrides: Any) -> Model:
    return Model(preset_config(preset, **overrides))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def describe(model: Model) -> str:
    """One-line human summary for logs and run reports."""
    c = model.config
    if c.conv_channels:
        widths = "->".join(str(w) for w in [c.input_dim, *c.conv_channels])
        kernels = ",".join(f"k{k}/s{s}" for k, s in zip(c.conv_kernels, c.conv_strides))
        extras = [f"{c.norm} norm", c.activation]
        if c.conv_residual:
            extras.append("residual")
        if c.conv_dropout:
            extras.append(f"dropout {c.conv_dropout:g}")
        cnn = f"CNN {widths} ({kernels}; {', '.join(extras)})"
    else:
        cnn = f"no CNN (input {c.input_dim})"
    lstm = f"BiLSTM {c.lstm_layers}x{c.lstm_hidden}/dir"
    if c.lstm_layers > 1 and c.lstm_dropout:
        lstm += f" (dropout {c.lstm_dropout:g})"
    cls_widths = "->".join(str(w) for w in [2 * c.lstm_hidden, *c.classifier_hidden, c.num_classes])
    classifier = f"classifier {cls_widths}"
    if c.classifier_hidden and c.classifier_dropout:
        classifier += f" (dropout {c.classifier_dropout:g})"
    n = count_parameters(model)
    if c.input_norm == "utterance":
        cnn = f"per-utterance feature normalization -> {cnn}"
    return (f"{cnn} -> {lstm} -> {classifier}; {n / 1e6:.2f} M parameters; "
            f"time downsampling x{model.downsampling}.")
