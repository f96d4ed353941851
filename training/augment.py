"""Training-time augmentation on padded batches [B, T, F].

All randomness comes from an explicit torch.Generator so a run is reproducible
from its seed.  Only real frames (t < length) are ever changed: padding stays
byte-identical, and inputs are never modified in place.  Random draws are made on
the generator's device and moved to the data's device, so a CPU generator works
for GPU batches too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .config import TrainConfig

__all__ = ["spec_augment", "add_noise", "speed_perturb", "AugmentConfig"]


def _valid_frames(lengths: torch.Tensor, total: int, device: torch.device) -> torch.Tensor:
    """[B, T] bool, True on real frames."""
    lengths = lengths.to(device=device, dtype=torch.int64)
    return torch.arange(total, device=device)[None, :] < lengths[:, None]


def _check(x: torch.Tensor, lengths: torch.Tensor) -> None:
    if x.dim() != 3:
        raise ValueError(f"expected x of shape [B, T, F], got {tuple(x.shape)}")
    if lengths.dim() != 1 or lengths.numel() != x.size(0):
        raise ValueError(f"lengths must be [B={x.size(0)}], got {tuple(lengths.shape)}")


def _uniform_int(high: torch.Tensor, generator: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """Integers uniform in [0, high] (inclusive, elementwise, high >= 0) from one rand() call."""
    u = torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64)
    high = high.to(device=generator.device, dtype=torch.int64)
    return torch.minimum((u * (high + 1).to(torch.float64)).floor().to(torch.int64), high)


def spec_augment(
    x: torch.Tensor,
    lengths: torch.Tensor,
    generator: torch.Generator,
    time_masks: int = 2,
    time_width: int = 40,
    freq_masks: int = 2,
    freq_width: int = 4,
    max_time_ratio: float = 0.2,
) -> torch.Tensor:
    """SpecAugment-style masking (set to 0 = the mean of normalised features).

    Each time mask has width uniform in [0, min(time_width, floor(max_time_ratio * L / time_masks))],
    so all time masks together cover at most max_time_ratio of an utterance's L real
    frames, and they lie inside [0, L).  Frequency masks have width uniform in
    [0, freq_width] and apply to real frames only.  Masks are drawn per utterance.
    """
    _check(x, lengths)
    B, T, F = x.shape
    if B == 0 or T == 0:
        return x.clone()
    gdev = generator.device
    lens = lengths.to(device=gdev, dtype=torch.int64).clamp(min=0, max=T)
    drop = torch.zeros(B, T, F, dtype=torch.bool, device=x.device)

    if time_masks > 0 and time_width > 0:
        cap = torch.clamp(
            torch.floor(lens.to(torch.float64) * max_time_ratio / time_masks).to(torch.int64),
            min=0, max=time_width,
        )  # [B]
        widths = _uniform_int(cap[:, None].expand(B, time_masks), generator, (B, time_masks))
        starts = _uniform_int((lens[:, None] - widths).clamp(min=0), generator, (B, time_masks))
        t = torch.arange(T, device=x.device)[None, None, :]
        starts, widths = starts.to(x.device), widths.to(x.device)
        in_mask = (t >= starts[..., None]) & (t < (starts + widths)[..., None])  # [B, M, T]
        drop |= in_mask.any(dim=1)[:, :, None]

    if freq_masks > 0 and freq_width > 0:
        fcap = torch.full((B, freq_masks), min(freq_width, F), dtype=torch.int64, device=gdev)
        fw = _uniform_int(fcap, generator, (B, freq_masks))
        f0 = _uniform_int(F - fw, generator, (B, freq_masks))
        f = torch.arange(F, device=x.device)[None, None, :]
        fw, f0 = fw.to(x.device), f0.to(x.device)
        in_fmask = (f >= f0[..., None]) & (f < (f0 + fw)[..., None])  # [B, M, F]
        drop |= in_fmask.any(dim=1)[:, None, :]

    drop &= _valid_frames(lengths, T, x.device)[:, :, None]
    return x.masked_fill(drop, 0.0)


def add_noise(
    x: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator, std: float = 0.1
) -> torch.Tensor:
    """Additive Gaussian noise on real frames; padding is returned unchanged."""
    _check(x, lengths)
    if std <= 0 or x.numel() == 0:
        return x.clone()
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=torch.float32)
    noise = noise.to(device=x.device, dtype=x.dtype) * std
    valid = _valid_frames(lengths, x.size(1), x.device)[:, :, None]
    return torch.where(valid, x + noise, x)


def speed_perturb(x: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator,
                  change: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Each utterance played faster or slower by a factor uniform in [1 - change, 1 + change]: its L
    real frames resampled (linear interpolation between neighbouring frames) to round(L / factor),
    which is what speed perturbation of the audio does to its feature frames, to first order.
    Returns the new batch [B, T', F] (padding zero) and lengths [B]."""
    _check(x, lengths)
    B, T, F = x.shape
    if B == 0 or T == 0 or change <= 0:
        return x.clone(), lengths.clone()
    u = torch.rand(B, generator=generator, device=generator.device, dtype=torch.float64).to(x.device)
    factor = 1.0 + change * (2.0 * u - 1.0)
    lens = lengths.to(device=x.device, dtype=torch.int64)
    new = torch.clamp(torch.round(lens.to(torch.float64) / factor), min=1).to(torch.int64)
    new = torch.where(lens > 0, new, lens)
    out_t = int(new.max())
    t = torch.arange(out_t, device=x.device, dtype=torch.float64)[None, :]
    # frame t of the new utterance sits at t * (L - 1) / (L' - 1) of the old one
    scale = (lens - 1).clamp(min=0).to(torch.float64) / (new - 1).clamp(min=1).to(torch.float64)
    pos = (t * scale[:, None]).clamp(max=(lens - 1).clamp(min=0).to(torch.float64)[:, None])
    lo = pos.floor().to(torch.int64)
    hi = torch.minimum(lo + 1, (lens - 1).clamp(min=0)[:, None])
    w = (pos - lo.to(torch.float64)).to(x.dtype)[..., None]
    gather = lambda idx: x.gather(1, idx[..., None].expand(-1, -1, F))    # noqa: E731
    y = gather(lo) * (1 - w) + gather(hi) * w
    valid = _valid_frames(new, out_t, x.device)[:, :, None]
    return y.masked_fill(~valid, 0.0), new.to(lengths.dtype).to(lengths.device)


@dataclass
class AugmentConfig:
    """Which augmentations run and with what parameters; JSON-serialisable via asdict().

    Defaults are TrainConfig's (the one place for them); ``from_train`` takes a run's values.
    """

    spec_augment: bool = TrainConfig.spec_augment
    time_masks: int = TrainConfig.time_masks
    time_width: int = TrainConfig.time_width
    max_time_ratio: float = 0.2
    freq_masks: int = TrainConfig.freq_masks
    freq_width: int = TrainConfig.freq_width
    noise: bool = TrainConfig.noise_std > 0
    noise_std: float = TrainConfig.noise_std
    speed_perturb: float = TrainConfig.speed_perturb

    @classmethod
    def from_train(cls, cfg: TrainConfig) -> AugmentConfig:
        return cls(spec_augment=cfg.spec_augment, time_masks=cfg.time_masks, time_width=cfg.time_width,
                   freq_masks=cfg.freq_masks, freq_width=cfg.freq_width, noise=cfg.noise_std > 0,
                   noise_std=cfg.noise_std, speed_perturb=cfg.speed_perturb)

    @property
    def active(self) -> bool:
        return (self.spec_augment and (self.time_masks > 0 or self.freq_masks > 0)) or (
            self.noise and self.noise_std > 0
        ) or self.speed_perturb > 0

    def resample(self, x: torch.Tensor, lengths: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Speed perturbation (which changes the lengths), before `apply`; the inputs when it is off."""
        if self.speed_perturb <= 0:
            return x, lengths
        return speed_perturb(x, lengths, generator, self.speed_perturb)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def apply(self, x: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Noise first, then masking, so masked regions are exactly 0.  Returns a new tensor."""
        out = x
        if self.noise and self.noise_std > 0:
            out = add_noise(out, lengths, generator, std=self.noise_std)
        if self.spec_augment:
            out = spec_augment(
                out, lengths, generator,
                time_masks=self.time_masks, time_width=self.time_width,
                freq_masks=self.freq_masks, freq_width=self.freq_width,
                max_time_ratio=self.max_time_ratio,
            )
        return out if out is not x else x.clone()
