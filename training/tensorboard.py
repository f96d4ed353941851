"""`--tensorboard`: metrics.jsonl's scalars also as TensorBoard events in results/, for users who
already have TensorBoard open (`tensorboard --logdir results`). metrics.jsonl and curves.png stay
the record; the `tensorboard` package is an optional extra (`pip install -e '.[tensorboard]'`).

Each epoch's record is written at its global `step`. A run's events must match its metrics.jsonl,
which a fresh run empties and a resumed one cuts to the checkpoint's epochs: the new events file
starts with a purge (SummaryWriter's purge_step) that hides every older event from that step on.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import PhonerecError

EXTRA = "pip install -e '.[tensorboard]'"
# Tags of the record's main fields (grouped as TensorBoard shows them); other numbers go under run/.
TAGS = {"train_loss": "loss/train", "dev_loss": "loss/dev", "dev_distance": "dev/distance", "dev_per": "dev/per",
        "lr": "lr", "frames_per_s": "speed/frames_per_s", "epoch_seconds": "speed/epoch_seconds",
        "data_wait_fraction": "data/wait_fraction", "padding_efficiency": "data/padding_efficiency"}


def require() -> None:
    """Fail before any training step, in one line, when the package is missing (not after an epoch)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PhonerecError(f"--tensorboard needs the tensorboard package ({why}): {EXTRA}") from None


def scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """The record's numbers by tag: None, flags, text and lists are left out; the step is the x axis."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
            out[TAGS.get(key, f"run/{key}") if not prefix else prefix + key] = float(value)
    return out


def open_writer(results: str | Path, purge_step: int):
    """A SummaryWriter in `results` that hides the older events at `purge_step` and later (the epochs
    metrics.jsonl no longer has). Rank 0 only."""
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(results), purge_step=purge_step)


STEP_EVERY = 10         # steps between the per-step points (loss and learning rate)


def write_step(writer, step: int, loss: float, lr: float) -> None:
    """Every STEP_EVERY steps: the step's training loss (per target symbol) and learning rate, not
    flushed (the epoch's write flushes)."""
    if step % STEP_EVERY == 0:
        writer.add_scalar("step/train_loss", loss, step)
        writer.add_scalar("step/lr", lr, step)


def write(writer, record: dict) -> None:
    """The epoch's scalars at its global step, flushed (TensorBoard shows the epoch at once)."""
    for tag, value in scalars(record).items():
        writer.add_scalar(tag, value, record["step"])
    writer.flush()
