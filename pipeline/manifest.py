"""Per-split shard manifest: everything the trainer needs to plan batches without opening a tar.

Utterances are listed in shard order: shard ``i`` holds utterances
``[shard_start[i], shard_start[i+1])`` of the columns below, in tar member order.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import atomic, remote
from .errors import PhonerecError
from .features import FEATURE_DIM, STORAGE_DTYPE
from .vocab import F22, Inventory, InventoryError

MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.json"       # a published folder's list of splits (a URL cannot be listed)
FORMAT_VERSION = 1


class ManifestError(PhonerecError):
    """A manifest that is missing, unreadable or inconsistent."""


@dataclass
class Stats:
    """Per-dimension feature statistics of the training splits: every stage normalizes with them,
    and two stages agree on the features exactly when their fingerprints are equal."""

    count: int
    mean: np.ndarray        # float64 [D]
    std: np.ndarray         # float64 [D]
    cmn: bool               # per-utterance mean subtracted before the global statistics
    splits: list[str]
    fingerprint: str

    def to_json(self) -> dict:
        return {"count": int(self.count), "mean": [float(v) for v in self.mean],
                "std": [float(v) for v in self.std], "cmn": self.cmn, "splits": list(self.splits),
                "fingerprint": self.fingerprint}

    @classmethod
    def from_json(cls, d: dict) -> Stats:
        return cls(count=int(d["count"]), mean=np.asarray(d["mean"], dtype=np.float64),
                   std=np.asarray(d["std"], dtype=np.float64), cmn=bool(d["cmn"]),
                   splits=list(d["splits"]), fingerprint=d["fingerprint"])

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """One utterance [T, 15] -> standardized float32 (after per-utterance CMN if enabled)."""
        x = np.asarray(x, dtype=np.float64)
        if self.cmn:
            x = x - x.mean(axis=0, keepdims=True)
        return ((x - self.mean) / self.std).astype(np.float32)

    def __eq__(self, other) -> bool:
        return isinstance(other, Stats) and self.to_json() == other.to_json()


@dataclass
class ShardInfo:
    name: str          # file name inside the split folder
    sha256: str
    utterances: int
    frames: int
    min_frames: int
    max_frames: int
    bytes: int
    # zlib.crc32 of the file: what the loader checks on every read (4x cheaper than sha256, which
    # `--verify` and rebuilds use); None in manifests written before it existed (sha256 then).
    crc32: int | None = None


@dataclass
class Manifest:
    split: str
    labelled: bool
    seed: int
    stats: Stats                     # the training statistics the features were normalized with
    shards: list[ShardInfo]
    ids: list[str]                   # utterance ids (raw file stems)
    keys: list[str]                  # WebDataset keys (ids made dot-free and unique)
    frames: np.ndarray               # int64 [N]
    label_lens: np.ndarray           # int64 [N]; 0 for an unlabelled split
    index: np.ndarray                # int64 [N]: position in sorted-file-name order of the raw split
    inputs: int = 0                  # raw utterances seen (kept + rejected)
    rejected: int = 0
    inventory: Inventory = F22       # the symbol inventory of its labels (manifests without one: F22's)
    fingerprint: str = ""            # hash of everything the shards depend on
    directory: Path | None = None    # folder holding the shards (set on load from a local folder)
    url: str | None = None           # the same, when loaded from a URL (pipeline/remote.py)
    # Where each utterance's members start inside its tar (shardformat.slice_member); None in
    # manifests written before they were recorded (readers then parse the tar).
    feats_at: np.ndarray | None = None   # int64 [N]
    labels_at: np.ndarray | None = None  # int64 [N]; -1 for an unlabelled split
    # Fewest frames CTC needs per utterance (labels + adjacent repeats, vocab.ctc_min_frames); 0 for
    # an unlabelled split. None in manifests written before it was recorded: readers then fall back
    # to label_lens, a lower bound (it misses the repeats).
    ctc_lens: np.ndarray | None = None   # int64 [N]
    feature_dim: int = FEATURE_DIM       # features per frame (manifests without one are F22's 15)
    template: dict | None = None         # a test split's submission template: {"file", "header", "rows"}

    @property
    def num_utterances(self) -> int:
        return len(self.ids)

    @property
    def vocab(self) -> list[str]:
        """The model outputs' symbols (index 0 = the CTC blank)."""
        return list(self.inventory.symbols)

    @property
    def total_frames(self) -> int:
        return int(self.frames.sum())

    @property
    def shard_start(self) -> np.ndarray:
        """Offsets of each shard's first utterance, plus the total (length = shards + 1)."""
        return np.concatenate([[0], np.cumsum([s.utterances for s in self.shards])]).astype(np.int64)

    @property
    def remote(self) -> bool:
        return self.url is not None

    @property
    def location(self) -> str:
        """The folder (or URL) holding the shards, for messages."""
        return self.url if self.url is not None else str(self.directory)

    def shard_problem(self, s: int, data: bytes) -> str | None:
        """What is wrong with shard s's bytes, checked against the recorded size and crc32 (sha256
        where the manifest has no crc32); None when they are what it says. crc32 catches the accidents
        this guards against (truncation, bit rot, a byte changed in transit, another build's file) and
        costs a quarter of sha256, which was over half of the loader's CPU time."""
        info = self.shards[s]
        if not info.sha256:
            return None
        if len(data) != info.bytes:
            return f"has {len(data)} bytes, the manifest says {info.bytes} (truncated or replaced)"
        if info.crc32 is not None:
            kind, same = "crc32", zlib.crc32(data) == info.crc32
        else:
            kind, same = "sha256", hashlib.sha256(data).hexdigest() == info.sha256
        return None if same else f"{kind} differs from the manifest (corrupted or replaced)"

    def shard_paths(self) -> list[Path]:
        assert self.directory is not None and self.url is None, "shards at a URL: use shard_locations()"
        return [self.directory / s.name for s in self.shards]

    def shard_location(self, s: int) -> str:
        """Shard s's path (as a string) or URL."""
        return remote.join(self.location, self.shards[s].name)

    def shard_locations(self) -> list[str]:
        return [self.shard_location(s) for s in range(len(self.shards))]

    def to_json(self) -> dict:
        return {
            "format": FORMAT_VERSION,
            "split": self.split,
            "labelled": self.labelled,
            "seed": self.seed,
            "fingerprint": self.fingerprint,
            "num_utterances": self.num_utterances,
            "total_frames": self.total_frames,
            "inputs": self.inputs,
            "rejected": self.rejected,
            "feature_dtype": STORAGE_DTYPE.name,
            "feature_dim": int(self.feature_dim),
            **({"template": self.template} if self.template else {}),
            **self.inventory.to_json(),          # "inventory" (name), "vocab" (symbols), "codes", "framing"
            "stats": self.stats.to_json(),
            "shards": [asdict(s) for s in self.shards],
            "utterances": {
                "id": list(self.ids),
                "key": list(self.keys),
                "frames": [int(x) for x in self.frames],
                "label_len": [int(x) for x in self.label_lens],
                "index": [int(x) for x in self.index],
                **({"feats_at": [int(x) for x in self.feats_at], "labels_at": [int(x) for x in self.labels_at]}
                   if self.feats_at is not None and self.labels_at is not None else {}),
                **({"ctc_len": [int(x) for x in self.ctc_lens]} if self.ctc_lens is not None else {}),
            },
        }


def manifest_path(shards_dir: str | Path, split: str) -> Path:
    return Path(shards_dir) / split / MANIFEST_NAME


def _digest(raw: dict) -> str:
    """sha256 of a manifest's content without its own digest: a hand-edited or damaged manifest
    no longer matches, so a build rewrites it and readers refuse it."""
    body = {k: v for k, v in raw.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save(m: Manifest, shards_dir: str | Path) -> Path:
    path = manifest_path(shards_dir, m.split)
    raw = m.to_json()
    raw["digest"] = _digest(raw)
    atomic.write_json(path, raw)
    return path


def available_splits(shards_dir: str | Path, policy: remote.FetchPolicy | None = None) -> list[str]:
    """The splits with a manifest: a folder's subfolders; at a URL, its index.json (`phonerec publish`
    writes it), else what the store lists (s3, gs, file)."""
    if remote.is_url(shards_dir):
        return _remote_splits(str(shards_dir), policy or remote.FetchPolicy())
    root = Path(shards_dir)
    return sorted(p.parent.name for p in root.glob(f"*/{MANIFEST_NAME}")) if root.is_dir() else []


def _remote_splits(url: str, policy: remote.FetchPolicy) -> list[str]:
    try:
        index = json.loads(remote.read_bytes(remote.join(url, INDEX_NAME), policy))
        return sorted(str(s) for s in index["splits"])
    except FileNotFoundError:
        pass
    except (ValueError, KeyError, TypeError) as exc:
        raise ManifestError(f"cannot read {remote.join(url, INDEX_NAME)}: {exc}; publish the shards again "
                            "(`phonerec publish`)") from None
    fs, path = remote.filesystem(url, policy.timeout)
    try:
        found = fs.glob(f"{path.rstrip('/')}/*/{MANIFEST_NAME}")
    except Exception:  # noqa: BLE001 - a store that cannot be listed (plain HTTP)
        return []
    return sorted(p.rstrip("/").split("/")[-2] for p in found)


def _read_raw(shards_dir: str | Path, split: str, policy: remote.FetchPolicy | None) -> tuple[dict, str]:
    """A manifest's JSON and where it was read (a path or a URL)."""
    url = remote.is_url(shards_dir)
    where = remote.join(str(shards_dir), split, MANIFEST_NAME) if url else str(manifest_path(shards_dir, split))
    try:
        text = remote.read_location(where, policy)
    except FileNotFoundError:
        have = ", ".join(available_splits(shards_dir, policy)) or "none"
        raise ManifestError(f"no manifest for split {split!r} at {where} (splits with manifests: {have}); "
                            f"run `phonerec shards`{' and publish the shards' if url else ''} first") from None
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {where}: {exc}; rebuild with `phonerec shards`") from exc
    try:
        return json.loads(text), where
    except ValueError as exc:
        raise ManifestError(f"cannot read manifest {where}: {exc}; rebuild with `phonerec shards`") from exc


def load(shards_dir: str | Path, split: str, policy: remote.FetchPolicy | None = None) -> Manifest:
    """A split's manifest from a shards folder or a URL, checked against its digest."""
    raw, path = _read_raw(shards_dir, split, policy)
    if not isinstance(raw, dict):
        raise ManifestError(f"cannot read manifest {path}: not a JSON object; rebuild with `phonerec shards`")
    if "digest" in raw and raw["digest"] != _digest(raw):      # manifests before the digest have none
        raise ManifestError(f"{path} was edited or damaged (its content no longer matches its digest); "
                            "rebuild it with `phonerec shards`")
    if raw.get("format") != FORMAT_VERSION:
        raise ManifestError(f"{path}: manifest format {raw.get('format')!r}, expected {FORMAT_VERSION}; "
                            "rebuild with `phonerec shards`")
    u = raw["utterances"]
    m = Manifest(
        split=raw["split"], labelled=raw["labelled"], seed=raw["seed"], stats=Stats.from_json(raw["stats"]),
        shards=[ShardInfo(**s) for s in raw["shards"]],
        ids=u["id"], keys=u["key"],
        frames=np.asarray(u["frames"], dtype=np.int64),
        label_lens=np.asarray(u["label_len"], dtype=np.int64),
        index=np.asarray(u["index"], dtype=np.int64),
        feature_dim=int(raw.get("feature_dim", FEATURE_DIM)), template=raw.get("template"),
        inputs=raw.get("inputs", 0), rejected=raw.get("rejected", 0), inventory=_inventory(raw, path),
        fingerprint=raw.get("fingerprint", ""),
        directory=None if remote.is_url(path) else Path(path).parent,
        url=remote.parent(path) if remote.is_url(path) else None,
        feats_at=np.asarray(u["feats_at"], dtype=np.int64) if "feats_at" in u else None,
        labels_at=np.asarray(u["labels_at"], dtype=np.int64) if "labels_at" in u else None,
        ctc_lens=np.asarray(u["ctc_len"], dtype=np.int64) if "ctc_len" in u else None,   # None: see Manifest
    )
    n = len(m.ids)
    offsets_ok = (m.feats_at is None) == (m.labels_at is None) and (
        m.feats_at is None or len(m.feats_at) == len(m.labels_at) == n)
    if not (len(m.keys) == len(m.frames) == len(m.label_lens) == len(m.index) == n) or \
            int(m.shard_start[-1]) != n or not offsets_ok or (m.ctc_lens is not None and len(m.ctc_lens) != n):
        raise ManifestError(f"{path}: utterance columns and shard counts disagree; rebuild with `phonerec shards`")
    return m


def _inventory(raw: dict, path: Path) -> Inventory:
    """The inventory a manifest records; one without "codes" is F22's."""
    if "vocab" not in raw:
        raise ManifestError(f"{path}: no vocabulary; rebuild with `phonerec shards`")
    try:
        return Inventory.from_json(raw)
    except InventoryError as exc:
        raise ManifestError(f"{path}: {exc}; rebuild with `phonerec shards`") from None


def merge(manifests: list[Manifest], root: str | Path) -> Manifest:
    """Several splits as one (e.g. train-clean-100 + train-clean-360); shard names become
    relative to the common shards root. Their statistics must be the same."""
    if len(manifests) == 1:
        return manifests[0]
    first = manifests[0]
    for m in manifests[1:]:
        if not m.inventory.matches(first.inventory):
            raise ManifestError(f"splits {first.split} and {m.split} were built with different symbol inventories "
                                f"({first.inventory.describe()} and {m.inventory.describe()}); build them in one "
                                "`phonerec shards` run")
        if m.stats.fingerprint != first.stats.fingerprint or m.feature_dim != first.feature_dim:
            raise ManifestError(f"splits {first.split} and {m.split} were normalized with different statistics; "
                                "build them in one `phonerec shards` run")
    shards = [ShardInfo(**{**asdict(s), "name": f"{m.split}/{s.name}"}) for m in manifests for s in m.shards]
    cat = lambda attr: np.concatenate([getattr(m, attr) for m in manifests])  # noqa: E731
    offsets = all(m.feats_at is not None and m.labels_at is not None for m in manifests)
    return Manifest(
        split="+".join(m.split for m in manifests), labelled=all(m.labelled for m in manifests), seed=first.seed,
        stats=first.stats, shards=shards, ids=[i for m in manifests for i in m.ids],
        keys=[k for m in manifests for k in m.keys], frames=cat("frames"), label_lens=cat("label_lens"),
        index=cat("index"), inputs=sum(m.inputs for m in manifests),
        rejected=sum(m.rejected for m in manifests), inventory=first.inventory,
        fingerprint="+".join(m.fingerprint for m in manifests),
        directory=None if remote.is_url(root) else Path(root), url=str(root) if remote.is_url(root) else None,
        feats_at=cat("feats_at") if offsets else None, labels_at=cat("labels_at") if offsets else None,
        ctc_lens=cat("ctc_lens") if all(m.ctc_lens is not None for m in manifests) else None,
        feature_dim=first.feature_dim,
    )


def load_many(shards_dir: str | Path, splits: str | list[str], policy: remote.FetchPolicy | None = None) -> Manifest:
    names = [s.strip() for s in splits.split(",")] if isinstance(splits, str) else list(splits)
    return merge([load(shards_dir, s, policy) for s in names if s], shards_dir)
