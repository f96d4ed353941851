"""Stage 1's options (`phonerec shards`, `publish`), declared once each (pipeline/cli_options.py
turns them into flags); how every reader reads shards at a URL: pipeline/reading.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .limits import MAX_WORKERS
from .options import Options, Range, option
from .reading import FetchConfig, progress_field

DEFAULT_WORKERS = min(4, os.cpu_count() or 1)


@dataclass
class ShardsConfig(FetchConfig):
    """`phonerec shards`: raw corpus -> stores -> statistics -> length-sorted shards."""

    data: str = option("data", help="Raw corpus root: <data>/<split>/mfcc/*.npy and transcript/[raw/]*.npy.")
    shards: str = option("shards", help="Output folder for stores, statistics, shards and manifests (with --verify "
                                        "also a URL: http(s)://, s3://, gs://, file://).")
    train: str = option("train-clean-100", help="Comma-separated training splits (statistics come from these only).")
    dev: str = option("dev-clean", help="Comma-separated dev splits ('' for none).")
    test: str = option("test-clean", help="Comma-separated test splits ('' for none).")
    seed: int = option(0, range=Range(0), help="Seed of the tie-breaking order within equal lengths.")
    shard_size_mb: float = option(16.0, range=Range(0, open_low=True), help="Target shard size in MB.")
    min_shards: int = option(8, range=Range(1),
                             help="At least this many shards per split (fewer only if the split has fewer "
                                  "utterances), so ranks x workers all get data.")
    feature_dim: int = option(0, range=Range(0),
                              help="Features per frame (0 = the width nearly all training files share; files of "
                                   "another width are rejected, naming both).")
    inventory: str = option("f22", metavar="NAME|FILE.tsv",
                            help="The symbol inventory transcripts are encoded with and models output: f22 (43 "
                                 "outputs, [SOS]/[EOS] among them), s23 or s24 (41: the same without [SOS]/[EOS]), "
                                 "or a TSV file of `symbol<TAB>code` lines (README: Raw layout). Recorded in the "
                                 "manifests: train, predict and transcribe follow it.")
    cmn: bool = option(False, help="Subtract each utterance's own mean before global normalization.")
    workers: int = option(DEFAULT_WORKERS, range=Range(1, MAX_WORKERS),
                          help=f"Reader/writer processes (at most 4 x this machine's cores: {MAX_WORKERS}).")
    strict: bool = option(False, help="Fail on the first rejected utterance instead of reporting it.")
    verify: bool = option(False, help="Only verify existing shards: sha256, counts, members, every input "
                                      "accounted for.")
    progress: bool = progress_field()

    def splits(self) -> list[str]:
        return [n for n in ",".join([self.train, self.dev, self.test]).split(",") if n]


@dataclass
class PublishConfig(Options):
    """`phonerec publish`: copy built shards to a URL, manifests last."""

    shards: str = option("shards", path="existing-folder", help="The shards folder `phonerec shards` built.")
    to: str = option("", metavar="URL", required=True,
                     help="Where readers will stream from: s3://bucket/path, gs://bucket/path, file:///path or a "
                          "folder (served over HTTP by any web server).")
    split: tuple = option((), multiple=True, help="Only these splits (default: every split with a manifest).")
    progress: bool = progress_field()
