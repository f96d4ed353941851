"""`phonerec transcribe`: single feature files or recordings decoded, with a posteriorgram plot."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.atomic import ensure_writable
from pipeline.features import FRAME_RATE, STORAGE_DTYPE
from pipeline.npyfile import UtteranceError, load_features
from pipeline.vocab import F22, Inventory

from decoding import CTCBeamDecoder, greedy_decode, restrict_to_labels
from decoding.decoder import DecodePlan
from decoding.rerank import greedy_frames

from . import distributed as D
from .config import TranscribeConfig
from .inference import beam_settings, decoding_choice
from .loading import CompatibilityError, Loaded, load_model


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def audio_features(path: Path) -> np.ndarray:
    """15 MFCCs per 10 ms of an audio file, extracted exactly as `phonerec synth-speech` does."""
    from pipeline.features import AudioTooShort
    try:
        from pipeline.features import mfcc_from_wav
        x = mfcc_from_wav(path)
    except AudioTooShort as exc:
        raise UtteranceError(f"audio of {exc}") from None
    except ModuleNotFoundError as exc:
        raise UtteranceError(f"reading audio needs the speech extra ({exc.name} is missing): "
                             "pip install -e '.[speech]'") from None
    except Exception as exc:  # noqa: BLE001 - soundfile/librosa errors on a bad file
        msg = " ".join(str(exc).split())[:200]
        raise UtteranceError(f"unreadable audio ({type(exc).__name__}: {msg})") from None
    if x.shape[0] < 1 or not np.isfinite(x).all():
        raise UtteranceError("audio gives no usable frames (empty or not finite)")
    return x


# The longest input transcribe decodes in one pass (30 minutes at 10 ms): the model's memory grows
# with the length (a 2,000,000-frame input asked for 8.3 GB at once), so longer ones are refused from
# their header, before their samples are read.
MAX_INPUT_FRAMES = 30 * 60 * FRAME_RATE


def check_input(path: Path, max_frames: int = MAX_INPUT_FRAMES) -> None:
    """A regular file (a FIFO, device or socket is refused before it is opened, whatever its
    name) whose header claims at most `max_frames` frames (a .npy's shape, an audio file's length)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UtteranceError(f"cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise UtteranceError("is not a regular file (a FIFO, device or socket); give a .npy or audio file")
    frames = _claimed_frames(path)
    if frames is not None and frames > max_frames:
        raise UtteranceError(f"holds {frames:,} frames ({frames / FRAME_RATE / 60:.0f} minutes), over transcribe's limit "
                             f"of {max_frames:,} ({max_frames / FRAME_RATE / 60:.0f} minutes) in one pass; split it")


def _claimed_frames(path: Path) -> int | None:
    """The frames a file's header claims (None where it cannot say: its reader reports why)."""
    try:
        if path.suffix.lower() in AUDIO_SUFFIXES:
            import soundfile as sf
            info = sf.info(str(path))
            return int(info.frames * FRAME_RATE // max(info.samplerate, 1)) + 1
        with open(path, "rb") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape = read(fh)[0]                    # the header only: a literal, no pickle
        return int(shape[0]) if shape else None
    except Exception:  # noqa: BLE001 - a damaged or unknown header: the reader's own message says what
        return None


def features_for(loaded: Loaded, path: Path) -> np.ndarray:
    """A raw .npy feature file (or an audio file) normalized exactly as the shards are
    (including the rounding to their storage dtype), after check_input."""
    check_input(path)
    width = loaded.model.config.input_dim
    x = audio_features(path) if path.suffix.lower() in AUDIO_SUFFIXES else load_features(path, width)
    if x.shape[1] != width:
        raise UtteranceError(f"audio gives {x.shape[1]} MFCCs per frame (this project's front-end), the model in "
                             f"{loaded.path} takes {width}: transcribe audio with a model trained on such features")
    return loaded.stats.normalize(x).astype(STORAGE_DTYPE).astype(np.float32)


@torch.no_grad()
def transcribe(loaded: Loaded, paths: list[Path], device: torch.device,
               beam: DecodePlan = DecodePlan()) -> list[tuple[Path, list[int], list[int], torch.Tensor]]:
    """(file, hypothesis, frame of each token, log-probs [T', C]) per file."""
    decoder = beam.decoders(loaded.inventory.symbols).get(beam.final)
    out = []
    for p in paths:
        try:
            feats = features_for(loaded, p)
        except UtteranceError as exc:
            raise UtteranceError(f"{p}: {exc}") from None
        x = torch.from_numpy(feats)[None].to(device)
        lp, ol = loaded.model(x, torch.tensor([x.shape[1]], device=device))
        lp, ol = restrict_to_labels(lp.float().cpu(), loaded.inventory), ol.cpu()
        out.append((p, *_hypothesis_frames(decoder, lp, ol), lp[0, : int(ol[0])]))
    return out


def _hypothesis_frames(decoder: CTCBeamDecoder | None, lp: torch.Tensor, ol: torch.Tensor):
    """(hypothesis, the frame of each token) of one utterance: the decoder's best (re-ranked, as
    predict keeps it) with its n-best row's timesteps, or the greedy path's and its frames."""
    starts, counts = greedy_frames(lp, ol, blank=0)
    greedy = (greedy_decode(lp, ol)[0], starts[0, : int(counts[0])].tolist())
    if decoder is None:
        return greedy
    hyp = decoder.best(lp, ol)[0]
    res, _, steps, lens = decoder.decode(lp, ol)
    for j in range(res.shape[1]):
        n = int(lens[0, j])
        if res[0, j, :n].tolist() == hyp:
            return hyp, steps[0, j, :n].tolist()
    return greedy                        # the re-ranking chose the greedy path's hypothesis


def plot_posteriorgram(path: Path, log_probs: torch.Tensor, hyp: list[int], frames: list[int], title: str,
                       inventory: Inventory = F22) -> Path:
    from matplotlib.figure import Figure           # no pyplot: a notebook's backend is left alone

    probs = log_probs.exp().numpy().T                # [C, T]
    fig = Figure(figsize=(min(24, 4 + probs.shape[1] / 40), 7))
    ax = fig.subplots()
    ax.imshow(probs, aspect="auto", origin="lower", cmap="magma", interpolation="nearest")
    ax.plot(frames, hyp, "o", ms=3, mfc="none", color="cyan", label="decoded symbols")
    ax.set_yticks(range(inventory.num_classes))
    ax.set_yticklabels(["<b>" if s == "" else s for s in inventory.symbols], fontsize=6)
    ax.set_xlabel("output frame")
    ax.set_title(f"{title}\n{' '.join(inventory.to_arpabet(hyp))[:200]}", fontsize=8)
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from pipeline.atomic import atomic_path
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return path


@dataclass
class Transcription:
    """What `transcribe` made of one file: its symbols (ARPAbet) and one-character codes."""
    file: Path
    arpabet: list[str]
    codes: str


@dataclass
class Transcribed:
    """`transcribe_files`' result: a Transcription per file read, and a problem per file that was not."""
    done: list[Transcription]
    failed: list[str]


def transcribe_files(cfg: TranscribeConfig, files: list[str | Path], echo=print, warn=print) -> Transcribed:
    """`phonerec transcribe`: print `name<TAB>labels` per file (ARPAbet with cfg.arpabet), one file
    at a time so that a bad file is reported (`warn`) and the others decoded; with cfg.plot a
    posteriorgram of the first. Returns the transcriptions and the problems."""
    if cfg.plot:                         # a folder that is a file: one line now, not after decoding
        ensure_writable(Path(cfg.plot).parent)
    device = D.init(cfg.device).device
    choice = decoding_choice(cfg)
    if choice.tune:
        raise CompatibilityError(f"--lm {cfg.lm} needs --alpha and --beta, or choose them on dev with `phonerec "
                                 f"evaluate --tune --lm {cfg.lm}` (recorded in decode.json, which transcribe then uses)")
    loaded = load_model(cfg.weights, device)
    beam, inv = beam_settings(cfg, choice, plain=False), loaded.inventory   # the checkpoint's symbols and codes
    failed, first, done = [], None, []
    for f in files:
        try:
            [out] = transcribe(loaded, [Path(f)], device, beam)
        except UtteranceError as exc:
            failed.append(f"cannot read features {exc}")
            if len(files) > 1:
                warn(f"error: {failed[-1]}")
            continue
        first = first or out
        done.append(Transcription(out[0], inv.to_arpabet(out[1]), inv.to_codes(out[1])))
        echo(f"{out[0].name}\t{' '.join(done[-1].arpabet) if cfg.arpabet else done[-1].codes}")
    if cfg.plot and first is not None:
        path, hyp, frames, lp = first
        warn(f"posteriorgram: {plot_posteriorgram(Path(cfg.plot), lp, hyp, frames, path.name, inv)}")
    return Transcribed(done, failed)
