"""Stage 1's options (`phonerec shards`, `publish`) and how every reader reads shards at a URL,
declared once each (pipeline/options.py turns them into flags).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .limits import MAX_WORKERS
from .options import Options, Range, option
from .remote import MAX_MANIFEST, MIN_RATE, POLICY_OPTIONS, FetchPolicy, make_policy

DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
QUIET_HELP = "No progress bars."


def progress_field():
    """`--quiet`: every long-running command's switch for its progress bars."""
    return option(True, flag="--quiet", help=QUIET_HELP)


@dataclass
class FetchConfig(Options):
    """How shards at a URL are read (pipeline/remote.py): `shards --verify` and stage 2's readers."""

    SECTION = "Shards at a URL"          # their heading in --help (pipeline.cli_options.FieldCommand)

    fetch_retries: int = option(FetchPolicy.retries, range=Range(0),
                                help="Shards at a URL: tries after the first on a transient error (5xx, reset, "
                                     "timeout).")
    fetch_backoff: float = option(FetchPolicy.backoff, range=Range(0),
                                  help="Seconds before the first retry; doubled each time (at most 8 s).")
    fetch_timeout: float = option(FetchPolicy.timeout, range=Range(0, open_low=True),
                                  help="Seconds to connect and between reads.")
    fetch_min_rate: str = option(MIN_RATE, metavar="SIZE",
                                 help="Bytes per second: a fetch that takes longer than --fetch-timeout + size / "
                                      "this is stalled, and retried like a 5xx.")
    max_manifest_size: str = option(MAX_MANIFEST, metavar="SIZE",
                                    help="Refuse a manifest or index.json larger than this (the largest real one is "
                                         "about 15 MB).")
    expect_digest: str = option("", metavar="SHA256",
                                help="Require the published index.json to have this sha256 (what `phonerec publish` "
                                     "printed; also --shards URL#sha256=...): then every manifest and shard must be "
                                     "what was published.")

    def fetch_policy(self) -> FetchPolicy:
        """The FetchPolicy of these options (ValueError naming the option for a bad size or digest)."""
        return make_policy(**{k: getattr(self, k) for k in POLICY_OPTIONS if hasattr(self, k)})


@dataclass
class CacheConfig(FetchConfig):
    """FetchConfig plus a local cache of verified shards (stage 2's readers, which read them again)."""

    SECTION = "Shards at a URL"

    shard_cache: str = option("", metavar="DIR",
                              help="Keep verified shards fetched from a URL here; later epochs read them from disk.")
    shard_cache_size: str = option("0", metavar="SIZE",
                                   help="Evict the least recently used cached shards above this size, e.g. 20G "
                                        "(0 = no limit).")


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
