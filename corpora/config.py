"""Stage 0's options (`phonerec synth-corpus`, `synth-speech`), declared once each."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import DEFAULT_WORKERS
from pipeline.reading import progress_field
from pipeline.features import FEATURE_DIM
from pipeline.limits import MAX_WORKERS
from pipeline.options import Options, Range, option, redefault


@dataclass
class CorpusConfig(Options):
    """What both corpus writers take."""

    data: str = option("data", path="folder", help="Root folder to write the corpus into (standard layout).")
    split: tuple = option((), multiple=True, metavar="NAME=COUNT", help="A split and its utterance count; repeat.")
    unlabelled: str = option("test-clean", help="Comma-separated splits written without transcripts.")
    seed: int = option(0, range=Range(0), help="Seed: same seed, same corpus (any --workers).")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.counts()                   # a malformed --split is an error before any work

    def counts(self) -> dict[str, int] | None:
        """--split NAME=COUNT values (ValueError for another form); None: the writer's defaults."""
        out = {}
        for v in self.split:
            name, sep, n = v.partition("=")
            if not sep or not n.isdigit():
                raise ValueError(f"--split {v!r}: expected NAME=COUNT, e.g. train-clean-100=28539")
            out[name] = int(n)
        return out or None

    def unlabelled_splits(self) -> tuple[str, ...]:
        return tuple(s for s in self.unlabelled.split(",") if s)


@dataclass
class SynthCorpusConfig(CorpusConfig):
    """`phonerec synth-corpus`: random features with LibriSpeech-like lengths."""

    split: tuple = redefault(CorpusConfig, "split", (), help="A split and its utterance count; repeat. "
                             "[default: train-clean-100=1000, dev-clean=100, test-clean=100]")
    nested_transcripts: bool = option(False, help="Write transcripts to transcript/raw/ as the published archive "
                                                  "does.")
    workers: int = option(DEFAULT_WORKERS, range=Range(1, MAX_WORKERS), help="Writer processes.")
    feature_dim: int = option(FEATURE_DIM, range=Range(1), help="Features per frame (the course's editions: 13, 15, "
                                                                "27, 28).")


@dataclass
class SynthSpeechConfig(CorpusConfig):
    """`phonerec synth-speech`: synthesized English speech with read-back phoneme labels."""

    data: str = redefault(CorpusConfig, "data", "data", help="Root folder to write the corpus into (standard "
                                                             "layout, plus <split>/metadata.tsv).")
    split: tuple = redefault(CorpusConfig, "split", (), help="A split and its utterance count; repeat. The name "
                             "must contain train, dev or test (that picks its voice set). [default: "
                             "train-clean-100=3000, dev-clean=200, test-clean=200]")
    workers: int = option(DEFAULT_WORKERS, range=Range(1, MAX_WORKERS), help="Synthesis processes.")
    engines: str = option("flite,festival,espeak-ng",
                          help="Comma-separated synthesizers to use (flite, festival, espeak-ng).")
    keep_wav: bool = option(False, help="Also write the audio as <split>/wav/<id>.wav (float32, 16 kHz).")
    progress: bool = progress_field()

    def engine_names(self) -> tuple[str, ...]:
        return tuple(e.strip() for e in self.engines.split(",") if e.strip())
