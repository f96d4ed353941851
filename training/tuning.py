"""The decoding a weights folder recommends: the phone LM and its weights, chosen on dev.

After training (and with `phonerec evaluate --tune`), a phone n-gram LM is estimated on the
training transcripts, the dev split is beam-decoded without it and with each (alpha, beta) of a
grid (extended where the best pair sits on its edge), and the choice is recorded in
``<weights>/decode.json``: the LM file and its sha256, alpha, beta, the dev PER with and without
the LM, and whether the LM is used at all (only where it helped on dev). `predict`, `evaluate` and
`transcribe` decode with the recorded choice unless told otherwise (`resolve`): explicit flags
override it, `--no-lm` turns it off. An LM file deleted or changed after it was recorded is one
line naming it, never a silent fallback that would change the results.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.atomic import write_json
from pipeline.errors import PhonerecError
from pipeline.options import check_types
from pipeline.strict import DocumentError, read_document

RECORD = "decode.json"
ALPHAS: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
BETAS: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0)
MAX_EXTENSIONS = 2          # times the grid grows past an edge its best pair sits on


class DecodeRecordError(PhonerecError):
    """A decode.json that cannot be used (damaged, or naming an LM that is gone or changed)."""


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_folder(weights: str | Path) -> Path:
    """The folder of `weights` (a folder, or a checkpoint file in one)."""
    p = Path(weights)
    return p if p.is_dir() or not p.suffix else p.parent


@dataclass
class DecodeRecord:
    """What decode.json holds. PERs are fractions; `grid` is best first."""

    checkpoint: str                  # the checkpoint file the choice was made with (in the folder)
    checkpoint_sha256: str
    split: str                       # the split it was chosen on
    utterances: int
    beam_width: int
    greedy_per: float
    beam_per: float                  # the beam without the LM
    lm: str                          # the ARPA file: a name inside the weights folder, or a path
    lm_sha256: str
    lm_per: float                    # the beam with the LM at (alpha, beta)
    alpha: float
    beta: float
    use_lm: bool                     # the LM helped on dev: decoders use it by default
    edge: list[str] = field(default_factory=list)    # grid edges the best pair still sits on
    grid: list[dict] = field(default_factory=list)
    averaged: bool = False           # the checkpoint holds averaged weights
    seconds: float = 0.0

    def lm_path(self, folder: Path) -> Path:
        p = Path(self.lm)
        return p if p.is_absolute() else folder / p

    def describe(self) -> str:
        """'LM phones-4gram.arpa (alpha 0.75, beta 2): dev-clean PER 8.33 % vs 11.66 % without'."""
        figures = f"{self.split} PER {100 * self.lm_per:.2f} % vs {100 * self.beam_per:.2f} % without"
        if not self.use_lm:
            return f"no LM (with {self.lm} the best was {figures}: it did not help)"
        return f"LM {self.lm} (alpha {self.alpha:g}, beta {self.beta:g}): {figures}"


def read_record(weights: str | Path) -> DecodeRecord | None:
    """The folder's decode.json (None when there is none); a damaged one is one line."""
    path = weights_folder(weights) / RECORD
    if not path.is_file():
        return None
    try:
        raw = read_document(path)           # strict: duplicate keys, nesting, size; one line with the line
        names = set(DecodeRecord.__dataclass_fields__)
        if not isinstance(raw, dict) or not names >= set(raw):
            raise ValueError("not a decode record")
        check_types(DecodeRecord, raw)      # ints, finite floats, real bools, strings, lists
        rec = DecodeRecord(**raw)
    except DocumentError as exc:
        raise DecodeRecordError(f"{exc}; the record is damaged: rerun `phonerec evaluate --tune` to choose the "
                                "decoding again, or delete it") from None
    except (ValueError, TypeError) as exc:
        raise DecodeRecordError(f"{path} is damaged ({' '.join(str(exc).split())[:120]}): rerun `phonerec evaluate "
                                "--tune` to choose the decoding again, or delete it") from None
    return rec


def write_record(weights: str | Path, rec: DecodeRecord) -> Path:
    path = weights_folder(weights) / RECORD
    write_json(path, asdict(rec))
    return path


def check_lm(rec: DecodeRecord, folder: Path) -> Path:
    """The recorded LM file, if it is still the one that was chosen; else one line saying what to do."""
    path = rec.lm_path(folder)
    fix = "rerun `phonerec evaluate --tune` to choose again, or decode without it with --no-lm"
    if not path.is_file():
        raise DecodeRecordError(f"{folder / RECORD} names the LM {path}, which is missing: {fix}")
    if sha256(path) != rec.lm_sha256:
        raise DecodeRecordError(f"{folder / RECORD} names the LM {path}, which changed since it was chosen "
                                f"(sha256 differs): {fix}")
    return path


@dataclass(frozen=True)
class Choice:
    """The LM a decoding command uses (lm '' = none) and where the choice came from (for the log)."""

    lm: str = ""
    alpha: float | None = None
    beta: float | None = None
    origin: str = "no LM"

    @property
    def tune(self) -> bool:
        """An LM without weights: evaluate searches them."""
        return bool(self.lm) and (self.alpha is None or self.beta is None)


def resolve(weights: str | Path, lm: str, alpha: float | None, beta: float | None, no_lm: bool,
            width: int) -> Choice:
    """The LM settings of a decoding command: --no-lm, else --lm (its weights from the flags, or from
    decode.json when it records that file), else decode.json's choice, else none."""
    if width <= 0 or no_lm:
        return Choice(origin="--no-lm" if no_lm else "greedy")
    folder = weights_folder(weights)
    rec = read_record(folder)
    if lm:
        same = rec is not None and _same_file(rec.lm_path(folder), Path(lm))
        a = alpha if alpha is not None else (rec.alpha if same else None)
        b = beta if beta is not None else (rec.beta if same else None)
        return Choice(lm, a, b, origin="--lm")
    if rec is None:
        return Choice(origin=f"no LM ({folder / RECORD} does not exist: `phonerec evaluate --tune` chooses one)")
    if not rec.use_lm:
        return Choice(origin=f"{folder / RECORD}: {rec.describe()}")
    path = check_lm(rec, folder)
    stale = ""
    ck = folder / rec.checkpoint
    if ck.is_file() and sha256(ck) != rec.checkpoint_sha256:
        stale = f"; chosen for an earlier {rec.checkpoint}: `phonerec evaluate --tune` chooses again"
    return Choice(str(path), rec.alpha if alpha is None else alpha, rec.beta if beta is None else beta,
                  origin=f"{folder / RECORD}{stale}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.is_file() and b.is_file() and a.samefile(b)
    except OSError:
        return False


# --------------------------------------------------------------------------------------- the grid

def grid_pairs(alphas, betas) -> tuple[tuple[float, float], ...]:
    return tuple((float(a), float(b)) for a in alphas for b in betas)


def edges(best: tuple[float, float], alphas, betas) -> list[str]:
    """The outer edges of the grid the best pair sits on (alpha's low edge at 0 is a bound, not one)."""
    a, b = best
    out = []
    if a == max(alphas) and len(alphas) > 1:
        out.append("alpha high")
    if a == min(alphas) and a > 0 and len(alphas) > 1:
        out.append("alpha low")
    if b == max(betas) and len(betas) > 1:
        out.append("beta high")
    if b == min(betas) and len(betas) > 1:
        out.append("beta low")
    return out


def extend(alphas: list[float], betas: list[float], where: list[str]) -> tuple[list[float], list[float]]:
    """One more step of the grid past each edge in `where` (alpha never below 0)."""
    step = lambda xs: (xs[-1] - xs[0]) / max(len(xs) - 1, 1)    # noqa: E731
    alphas, betas = sorted(alphas), sorted(betas)
    if "alpha high" in where:
        alphas.append(round(alphas[-1] + step(alphas), 6))
    if "alpha low" in where:
        alphas.insert(0, round(max(alphas[0] - step(alphas), 0.0), 6))
    if "beta high" in where:
        betas.append(round(betas[-1] + step(betas), 6))
    if "beta low" in where:
        betas.insert(0, round(betas[0] - step(betas), 6))
    return alphas, betas


def parse_values(text: str, what: str) -> list[float]:
    """'0.25,0.5,1' -> [0.25, 0.5, 1.0]; ValueError naming the option otherwise."""
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a comma-separated list of numbers") from None
    if not vals or not all(math.isfinite(v) for v in vals) or len(set(vals)) != len(vals):
        raise ValueError(f"{what}: {text!r} must list distinct finite numbers")
    return sorted(vals)

