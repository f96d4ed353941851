"""Acoustic model: CNN stem -> embedding blocks -> BiLSTM (packed) -> classifier -> CTC log-probabilities.

Padding is treated as absent everywhere: padded frames are zeroed before every
convolution, BatchNorm statistics are taken over real frames only, and the LSTM
only ever sees an utterance's real frames (packed, or padded with the padding last).
So (in eval mode) an utterance's outputs do not depend on what it was batched with,
and in train mode the amount of padding does not change the result.

The pieces live in training/blocks.py (convolutions) and training/recurrent.py (BiLSTMs, locked
dropout, pyramidal layers); this module assembles them from a ModelConfig and holds the presets.
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

from pipeline.errors import PhonerecError
from pipeline.limits import gigabytes, memory_bytes
from pipeline.options import check_known, check_types, from_dict
from pipeline.vocab import NUM_CLASSES
from pipeline.features import FEATURE_DIM

from .blocks import EMBED_BLOCKS, ConvBlock, Dropout, MaskedBatchNorm1d, conv_output_length, frame_mask
from .recurrent import BiLSTMStack, run_lstm

__all__ = [
    "ModelConfig",
    "Model",
    "MaskedBatchNorm1d",
    "ConvBlock",
    "PRESETS",
    "preset_parameters",
    "build_model",
    "preset_config",
    "count_parameters",
    "check_fits",
    "device_memory",
    "ModelTooLarge",
    "describe",
    "conv_output_length",
]

_NORMS = ("batch", "layer", "none")
_ACTIVATIONS = ("gelu", "relu")
_INPUT_NORMS = ("none", "utterance")
_EMBED_BLOCKS = ("none", *EMBED_BLOCKS)


@dataclass
class ModelConfig:
    """Everything needed to rebuild a Model; plain types so checkpoints can store it as JSON.

    Every field added after the first checkpoints defaults to "absent", so an old checkpoint's
    config (which lacks it) rebuilds the same model with the same state_dict keys."""

    input_dim: int = FEATURE_DIM
    # "utterance": each utterance's features get zero mean and unit variance over its own frames
    # (cepstral mean and variance normalization), which removes a channel's and part of a
    # speaker's constant spectral colouring; "none" keeps the shards' corpus-wide normalization.
    input_norm: str = "none"
    conv_channels: list[int] = field(default_factory=list)        # the stem: strided ConvBlocks
    conv_kernels: list[int] = field(default_factory=list)
    conv_strides: list[int] = field(default_factory=list)
    conv_residual: bool = False
    conv_dropout: float = 0.0                                      # stem and embedding blocks
    # Embedding blocks after the stem, at its output width and frame rate: "convnext" (depthwise
    # k7, norm, pointwise x4, activation, pointwise, residual) or "resnet" (two k3 convs, residual).
    embed_block: str = "none"
    embed_blocks: int = 0
    norm: str = "batch"
    activation: str = "gelu"
    lstm_hidden: int = 128
    lstm_layers: int = 1
    lstm_dropout: float = 0.0                # a fresh mask per time step, between BiLSTM layers
    # One mask per utterance and channel, the same at every time step, between BiLSTM layers
    # (then the layers run as one nn.LSTM each).
    locked_dropout: float = 0.0
    # How many of the lstm_layers (the last ones) are pyramidal: each first merges adjacent
    # frames (time / 2, rounded up), so the model downsamples by 2**pblstm_layers more.
    pblstm_layers: int = 0
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
        for name in ("conv_dropout", "lstm_dropout", "locked_dropout", "classifier_dropout"):
            p = getattr(self, name)
            if not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p!r}")
        self._validate_additions()

    def _validate_additions(self) -> None:
        """The embedding blocks, locked dropout and pyramidal layers."""
        if self.embed_block not in _EMBED_BLOCKS:
            raise ValueError(f"embed_block must be one of {_EMBED_BLOCKS}, got {self.embed_block!r}")
        if not isinstance(self.embed_blocks, int) or self.embed_blocks < 0:
            raise ValueError(f"embed_blocks must be a whole number >= 0, got {self.embed_blocks!r}")
        if (self.embed_block == "none") != (self.embed_blocks == 0):
            raise ValueError(f"embed_block={self.embed_block!r} with embed_blocks={self.embed_blocks}: set both "
                             "(e.g. embed_block=convnext embed_blocks=2) or neither")
        if not isinstance(self.pblstm_layers, int) or not 0 <= self.pblstm_layers <= self.lstm_layers:
            raise ValueError(f"pblstm_layers must be a whole number in [0, lstm_layers={self.lstm_layers}] (the last "
                             f"pblstm_layers BiLSTM layers are pyramidal), got {self.pblstm_layers!r}")
        if self.locked_dropout > 0 and self.lstm_layers < 2:
            raise ValueError(f"locked_dropout acts between BiLSTM layers: it needs lstm_layers >= 2, "
                             f"got {self.lstm_layers}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Strict: an unknown key means the checkpoint came from a different model version.
        Missing keys take their defaults (older checkpoints lack the later fields)."""
        return from_dict(cls, data, "ModelConfig field")

    @property
    def split_lstm(self) -> bool:
        """Whether the BiLSTM runs as one nn.LSTM per layer (BiLSTMStack): something sits between
        the layers. Otherwise one multi-layer nn.LSTM, whose state_dict keys old checkpoints hold."""
        return self.locked_dropout > 0 or self.pblstm_layers > 0

    @property
    def downsampling(self) -> int:
        """Time downsampling: the stem's strides times 2 per pyramidal BiLSTM layer."""
        strides = math.prod(self.conv_strides) if self.conv_strides else 1
        return strides * 2 ** self.pblstm_layers


def utterance_normalize(x: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """x [B, T, F] with each utterance's real frames at zero mean and unit variance per feature
    (statistics in float32, padding left at zero)."""
    mask = frame_mask(lengths, x.size(1)).unsqueeze(-1).to(torch.float32)        # [B, T, 1]
    xf = x.float() * mask
    n = lengths.to(torch.float32).view(-1, 1, 1)
    mean = xf.sum(1, keepdim=True) / n
    var = ((xf - mean) ** 2 * mask).sum(1, keepdim=True) / n
    return ((xf - mean) * torch.rsqrt(var + eps) * mask).to(x.dtype)


class Model(nn.Module):
    """CNN stem + embedding blocks + BiLSTM + classifier producing per-frame log-probabilities for CTC.

    forward(x [B, T, F], lengths [B]) -> (log_probs [B, T', C] float32, out_lengths [B]), with
    T' = output_lengths(T) = ceil(T / downsampling) and each length downsampled exactly alike.

    Without locked dropout or pyramidal layers the BiLSTM is one multi-layer nn.LSTM (a single
    cuDNN call on GPU; lstm_dropout is its built-in per-step inter-layer dropout); with either it
    is a BiLSTMStack of one nn.LSTM per layer.
    """

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config = copy.deepcopy(config) if config is not None else ModelConfig()
        config.validate()
        # Built in this order (stem, embedding, BiLSTM, classifier) so that a seed gives the
        # configurations without the later additions the same initial weights as before them.
        blocks = []
        in_ch = config.input_dim
        for out_ch, k, s in zip(config.conv_channels, config.conv_kernels, config.conv_strides):
            blocks.append(ConvBlock(in_ch, out_ch, k, s, config.norm, config.activation,
                                    config.conv_dropout, config.conv_residual))
            in_ch = out_ch
        self.conv = nn.ModuleList(blocks)
        block = EMBED_BLOCKS.get(config.embed_block)
        self.embed = nn.ModuleList(block(in_ch, config.norm, config.activation, config.conv_dropout)
                                   for _ in range(config.embed_blocks))
        self.lstm = self._make_lstm(config, in_ch)
        linears = []
        width = 2 * config.lstm_hidden
        for h in config.classifier_hidden:
            linears.append(nn.Linear(width, h))
            width = h
        linears.append(nn.Linear(width, config.num_classes))
        self.linears = nn.ModuleList(linears)
        self.classifier_act = nn.GELU() if config.activation == "gelu" else nn.ReLU()
        self.classifier_dropout = Dropout(config.classifier_dropout)

    @staticmethod
    def _make_lstm(config: ModelConfig, input_size: int) -> nn.Module:
        if config.split_lstm:
            return BiLSTMStack(input_size, config.lstm_hidden, config.lstm_layers, config.pblstm_layers,
                               config.locked_dropout, config.lstm_dropout)
        return nn.LSTM(
            input_size=input_size,
            hidden_size=config.lstm_hidden,
            num_layers=config.lstm_layers,
            dropout=config.lstm_dropout if config.lstm_layers > 1 else 0.0,
            batch_first=True,
            bidirectional=True,
        )

    # "packed": nn.LSTM on a PackedSequence (cuDNN on GPU). "masked": the same computation on
    # padded tensors (recurrent.lstm_masked), each direction seeing its utterance's frames first and
    # padding last, so real frames get exactly the packed result. On CPU, torch's packed-LSTM
    # backward grows quadratically with T when lengths differ (12 x 1200 frames: 11 s instead of
    # 0.17 s), so "auto" picks masked there.
    lstm_impl: str = "auto"

    def _use_packed(self, feats: torch.Tensor) -> bool:
        if self.lstm_impl == "auto":
            return feats.is_cuda
        return self.lstm_impl == "packed"

    @property
    def downsampling(self) -> int:
        return self.config.downsampling

    def output_lengths(self, lengths):
        """Exact frame counts after the stem and the pyramidal BiLSTM layers (int or integer
        tensor, any device): what training's CTC feasibility check compares with the labels."""
        for block in self.conv:
            lengths = block.output_length(lengths)
        if isinstance(self.lstm, BiLSTMStack):
            lengths = self.lstm.output_length(lengths)
        return lengths

    def _check_inputs(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """lengths as int64 on the CPU, after checking the shapes and that each lies in [1, T]."""
        if x.dim() != 3 or x.size(-1) != self.config.input_dim:
            raise ValueError(f"expected x of shape [B, T, {self.config.input_dim}], got {tuple(x.shape)}")
        if lengths.dim() != 1 or lengths.numel() != x.size(0):
            raise ValueError(f"lengths must be [B={x.size(0)}], got {tuple(lengths.shape)}")
        lengths_cpu = lengths.detach().to("cpu", torch.int64)
        if lengths_cpu.numel() and (int(lengths_cpu.min()) < 1 or int(lengths_cpu.max()) > x.size(1)):
            raise ValueError(f"lengths must lie in [1, T={x.size(1)}], got {lengths_cpu.tolist()}")
        return lengths_cpu

    def _embed(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x [B, T, F], lengths [B] on x's device -> the stem's and embedding blocks' output [B, T_c, C]."""
        if self.config.input_norm == "utterance":
            x = utterance_normalize(x, lengths)
        h = x.transpose(1, 2)  # [B, F, T]: conv layout
        for block in self.conv:
            h = block(h, lengths)
            lengths = block.output_length(lengths)
        for block in self.embed:
            h = block(h, lengths)
        return h.transpose(1, 2)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, F], lengths [B] -> (log_probs [B, T', C] float32, out_lengths [B]).

        out_lengths lives on the same device as `lengths`."""
        lengths_cpu = self._check_inputs(x, lengths)
        feats = self._embed(x, lengths_cpu.to(x.device))
        conv_lengths = lengths_cpu
        for block in self.conv:
            conv_lengths = block.output_length(conv_lengths)
        packed = self._use_packed(feats)
        if isinstance(self.lstm, BiLSTMStack):
            y, out_lengths_cpu = self.lstm(feats, conv_lengths, packed)
        else:
            y, out_lengths_cpu = run_lstm(self.lstm, feats, conv_lengths, packed), conv_lengths
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
    # The F22 best public recipes' shape (GPU): a strided stem (x4) and ConvNeXt embedding blocks,
    # a 2x512 BiLSTM with locked dropout between its layers, a wide classifier 1024->4096->classes.
    "f22-best": ModelConfig(
        conv_channels=[256, 512], conv_kernels=[5, 5], conv_strides=[2, 2], conv_dropout=0.1,
        embed_block="convnext", embed_blocks=2, norm="batch", activation="gelu",
        lstm_hidden=512, lstm_layers=2, locked_dropout=0.3,
        classifier_hidden=[4096], classifier_dropout=0.2,
    ),
    # The S23/S24 recipes' shape (GPU): two stride-1 convs, two pyramidal BiLSTM layers of 512
    # (x4 between them) with locked dropout, classifier 1024->2048->1024->classes.
    "s24-pblstm": ModelConfig(
        conv_channels=[128, 256], conv_kernels=[3, 3], conv_strides=[1, 1], conv_dropout=0.1,
        norm="batch", activation="gelu",
        lstm_hidden=512, lstm_layers=2, pblstm_layers=2, locked_dropout=0.3,
        classifier_hidden=[2048, 1024], classifier_dropout=0.2,
    ),
}
# The same two recipes at CPU widths (~2.5-3 M parameters, like `default` narrowed to 192), for
# ablations on a CPU: only the widths (and the locked dropout, for the smaller model) differ.
PRESETS["f22-best-cpu"] = dataclasses.replace(copy.deepcopy(PRESETS["f22-best"]), conv_channels=[128, 192],
                                              lstm_hidden=192, locked_dropout=0.2, classifier_hidden=[768])
PRESETS["s24-pblstm-cpu"] = dataclasses.replace(copy.deepcopy(PRESETS["s24-pblstm"]), conv_channels=[96, 128],
                                                lstm_hidden=192, locked_dropout=0.2, classifier_hidden=[768, 384])


def preset_parameters(preset: str, input_dim: int = 15, num_classes: int = 43) -> int:
    """Trainable parameters of `preset` for that edition (15 features and 43 classes: F22's; the
    course caps a model at 20 M), counted on the meta device: no storage, milliseconds."""
    cfg = dataclasses.replace(PRESETS[preset], input_dim=input_dim, num_classes=num_classes)
    with torch.device("meta"):
        return count_parameters(Model(cfg))


def preset_help() -> str:
    """`--preset`'s help: every preset's size (preset_parameters) grouped by time downsampling."""
    groups: dict[int, list[str]] = {}
    for name in PRESETS:
        groups.setdefault(PRESETS[name].downsampling, []).append(f"{name} {preset_parameters(name) / 1e6:.2f} M")
    sizes = "; ".join(f"{', '.join(names)} (x{d})" for d, names in groups.items())
    return f"Model architecture; parameters at 15 features and 43 classes (time downsampling): {sizes}."


def preset_config(preset: str = "default", **overrides: Any) -> ModelConfig:
    """A fresh (deep-copied) preset config with overrides applied."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; available: {', '.join(sorted(PRESETS))}")
    check_known(ModelConfig, overrides, "ModelConfig override")
    check_types(ModelConfig, overrides)
    return dataclasses.replace(copy.deepcopy(PRESETS[preset]), **copy.deepcopy(overrides))


class ModelTooLarge(PhonerecError):
    """A model whose parameters (or first batch) need more memory than this machine has."""


def check_fits(config: ModelConfig, *, training: bool, frames: int = 0, memory: int | None = None,
               where: str = "the model") -> int:
    """Refuse, before any allocation, a model whose parameters (x4 training: weights, gradients,
    AdamW's two moments) and first batch of `frames` frames need more than `memory` bytes (this
    machine's). Counted on the meta device (no storage); an LSTM too wide for even that is refused
    from its own size. Returns the parameter count."""
    memory = memory_bytes() if memory is None else memory
    per_param = 16 if training else 4
    lstm = config.lstm_layers * 8 * config.lstm_hidden * (config.lstm_hidden + 1)   # a lower bound
    if lstm * per_param > memory:
        _too_large(where, f"at least {lstm:,} parameters", lstm * per_param, memory)
    try:
        with torch.device("meta"):
            params = sum(p.numel() for p in Model(config).parameters())
    except (RuntimeError, OverflowError):               # a size past what int64 can count
        _too_large(where, "parameters past 2**63 bytes", 2**63, memory)
    need = params * per_param + frames * _floats_per_frame(config) * 4 * (2 if training else 1)
    if need > memory:
        _too_large(where, f"{params:,} parameters" + (f" and a first batch of {frames:,} frames" if frames else ""),
                   need, memory)
    return params


def device_memory(device: torch.device) -> int:
    """The memory a model on `device` may use: the GPU's, else this machine's (memory_bytes)."""
    if device.type == "cuda":
        return min(torch.cuda.get_device_properties(device).total_memory, memory_bytes())
    return memory_bytes()


def _floats_per_frame(c: ModelConfig) -> int:
    """Activations kept per input frame (a rough lower bound: each layer's outputs, the LSTM's gates)."""
    conv = 3 * sum(c.conv_channels) + 8 * c.embed_blocks * (c.conv_channels[-1] if c.conv_channels else c.input_dim)
    lstm = c.lstm_layers * 2 * c.lstm_hidden * 6 // max(c.downsampling, 1)
    return c.input_dim + conv + lstm + sum(c.classifier_hidden) + c.num_classes


def _too_large(where: str, what: str, need: int, memory: int) -> None:
    raise ModelTooLarge(f"{where} would need {gigabytes(need)} ({what}), more than the {gigabytes(memory)} this "
                        "machine has; use a smaller preset or smaller widths (e.g. --set lstm_hidden=256)")


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
    if c.embed_blocks:
        width = c.conv_channels[-1] if c.conv_channels else c.input_dim
        cnn += f" -> {c.embed_blocks} {c.embed_block} block(s) at {width}"
    cls_widths = "->".join(str(w) for w in [2 * c.lstm_hidden, *c.classifier_hidden, c.num_classes])
    classifier = f"classifier {cls_widths}"
    if c.classifier_hidden and c.classifier_dropout:
        classifier += f" (dropout {c.classifier_dropout:g})"
    n = count_parameters(model)
    if c.input_norm == "utterance":
        cnn = f"per-utterance feature normalization -> {cnn}"
    return (f"{cnn} -> {_describe_lstm(c)} -> {classifier}; {n / 1e6:.2f} M parameters; "
            f"time downsampling x{model.downsampling}.")


def _describe_lstm(c: ModelConfig) -> str:
    """'BiLSTM 2x512/dir (last 2 pyramidal; locked dropout 0.3)'."""
    notes = []
    if c.pblstm_layers:
        notes.append(f"last {c.pblstm_layers} pyramidal" if c.pblstm_layers < c.lstm_layers else "all pyramidal")
    if c.lstm_layers > 1 and c.locked_dropout:
        notes.append(f"locked dropout {c.locked_dropout:g}")
    if c.lstm_layers > 1 and c.lstm_dropout:
        notes.append(f"dropout {c.lstm_dropout:g}")
    return f"BiLSTM {c.lstm_layers}x{c.lstm_hidden}/dir" + (f" ({'; '.join(notes)})" if notes else "")
