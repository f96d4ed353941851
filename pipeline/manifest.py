"""Per-split shard manifest: everything the trainer needs to plan batches without opening a tar.

Utterances are listed in shard order: shard ``i`` holds utterances
``[shard_start[i], shard_start[i+1])`` of the columns below, in tar member order.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
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


# ---------------------------------------------------------------- what a manifest may hold
# A manifest (or index.json) may come from a server nobody vouches for: every field is checked
# here, before anything reads it, and a failure is one ManifestError naming the file and field.

SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SHA256 = remote.SHA256
MAX_FEATURE_DIM = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
UTTERANCE_ID = re.compile(r"[^\x00]{1,4096}")     # a raw file's stem (shown safely: layout.safe_text)
SAMPLE_KEY = re.compile(r"[A-Za-z0-9_-]{1,4096}")  # shardformat.make_keys


def valid_split_name(name) -> bool:
    """A split name usable as one folder: letters, digits, '.', '_', '-' (no '/', not '..')."""
    return isinstance(name, str) and SPLIT_NAME.fullmatch(name) is not None and ".." not in name


def shard_name_pattern(split: str) -> re.Pattern:
    """The file names `phonerec shards` gives a split's shards: <split>-NNNNNN.tar."""
    return re.compile(re.escape(split) + r"-\d{6}\.tar")


class _Check:
    """Typed reads of one JSON object, each failure a ManifestError naming `where` and the field."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, field: str, why: str) -> ManifestError:
        return ManifestError(f"{self.where}: field {field!r} {why}; rebuild with `phonerec shards` (and publish "
                             "again if it came from a URL)")

    def get(self, d: dict, key: str, kind, field: str, required: bool = True, default=None):
        if key not in d:
            if required:
                raise self.fail(field, "is missing")
            return default
        value = d[key]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)) or \
                kind is not int and not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.fail(field, f"is {type(value).__name__}, expected {names}")
        return value

    def count(self, d: dict, key: str, field: str, required: bool = True, low: int = 0, high: int = 2**62):
        value = self.get(d, key, int, field, required, default=None)
        if value is not None and not low <= value <= high:
            raise self.fail(field, f"is {value}, outside {low}..{high}")
        return value

    def ints(self, d: dict, key: str, field: str, n: int, low: int = 0, required: bool = True):
        col = self.get(d, key, list, field, required)
        if col is None:
            return None
        if len(col) != n:
            raise self.fail(field, f"has {len(col)} entries, expected {n}")
        if not all(type(v) is int and v >= low for v in col):
            raise self.fail(field, f"holds something other than integers >= {low}")
        return np.asarray(col, dtype=np.int64)

    def names(self, d: dict, key: str, field: str, n: int, pattern: re.Pattern, what: str) -> list[str]:
        col = self.get(d, key, list, field)
        if len(col) != n:
            raise self.fail(field, f"has {len(col)} entries, expected {n}")
        if not all(isinstance(v, str) and pattern.fullmatch(v) for v in col):
            raise self.fail(field, f"holds an entry that is not {what}")
        return list(col)

    def floats(self, d: dict, key: str, field: str, n: int, positive: bool = False) -> np.ndarray:
        col = self.get(d, key, list, field)
        if len(col) != n or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in col):
            raise self.fail(field, f"is not a list of {n} numbers")
        arr = np.asarray(col, dtype=np.float64)
        if not np.isfinite(arr).all() or (positive and not (arr > 0).all()):
            raise self.fail(field, "holds a value that is not finite" + (" and > 0" if positive else ""))
        return arr


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
    pinned: bool = False                 # read through a pinned index (remote.unpin): shards checked by sha256

    @property
    def num_utterances(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        """One line (the dataclass's would print every id: ~200 KB for a real split in a notebook)."""
        return (f"Manifest(split={self.split!r}, utterances={self.num_utterances}, shards={len(self.shards)}, "
                f"frames={self.total_frames}, feature_dim={self.feature_dim}, labelled={self.labelled}, "
                f"rejected={self.rejected}, location={str(self.url or self.directory)!r})")

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
        costs a quarter of sha256, which was over half of the loader's CPU time. A pinned manifest's
        shards are checked by sha256: a server can forge a crc32, not a sha256."""
        info = self.shards[s]
        if not info.sha256:
            return None
        if len(data) != info.bytes:
            return f"has {len(data)} bytes, the manifest says {info.bytes} (truncated or replaced)"
        if info.crc32 is not None and not self.pinned:
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
    shards_dir, pin = remote.unpin(shards_dir, policy)
    if pin:
        return sorted(_pinned_digests(shards_dir, pin, policy))
    if remote.is_url(shards_dir):
        return _remote_splits(str(shards_dir), policy or remote.FetchPolicy())
    root = Path(shards_dir)
    return sorted(p.parent.name for p in root.glob(f"*/{MANIFEST_NAME}")) if root.is_dir() else []


def _remote_splits(url: str, policy: remote.FetchPolicy) -> list[str]:
    where = remote.join(url, INDEX_NAME)
    try:
        index = _json(remote.read_bytes(where, policy), where)
    except FileNotFoundError:
        index = None
    if index is not None:
        return read_index(index, where)[0]
    fs, path = remote.filesystem(url, policy.timeout)
    try:
        found = fs.glob(f"{path.rstrip('/')}/*/{MANIFEST_NAME}")
    except Exception:  # noqa: BLE001 - a store that cannot be listed (plain HTTP)
        return []
    return sorted(name for name in (p.rstrip("/").split("/")[-2] for p in found) if valid_split_name(name))


def read_index(index, where: str) -> tuple[list[str], dict[str, str]]:
    """(split names, {split: sha256 of its manifest file}) of an index.json: {"splits": [...],
    "manifests": {...}} (indexes written before pinning have no "manifests")."""
    c = _Check(where)
    if not isinstance(index, dict):
        raise ManifestError(f"{where}: not a JSON object; publish the shards again (`phonerec publish`)")
    splits = c.get(index, "splits", list, "splits")
    bad = [s for s in splits if not valid_split_name(s)]
    if bad:
        raise c.fail("splits", f"holds {str(bad[0])[:80]!r}, not a split name (letters, digits, '.', '_', '-')")
    digests = c.get(index, "manifests", dict, "manifests", required=False, default={})
    for split, digest in digests.items():
        if split not in splits or not isinstance(digest, str) or not SHA256.fullmatch(digest):
            raise c.fail(f"manifests.{split[:80]}", "is not the sha256 of a listed split's manifest")
    return sorted(splits), dict(digests)


def index_bytes(splits: list[str], digests: dict[str, str]) -> bytes:
    """The index.json `phonerec publish` writes; its sha256 is what a reader pins."""
    return (json.dumps({"splits": sorted(splits), "manifests": {k: digests[k] for k in sorted(digests)}},
                       separators=(",", ":")) + "\n").encode()


def _pinned_digests(base: str, pin: str, policy: remote.FetchPolicy | None) -> dict[str, str]:
    """The manifests' sha256s of the index.json whose own sha256 is `pin` (ManifestError if not)."""
    where = remote.join(str(base), INDEX_NAME)
    try:
        data = remote.read_location(where, policy)
    except FileNotFoundError:
        raise ManifestError(f"no {INDEX_NAME} at {where}: a pinned digest (--expect-digest, #sha256=) needs "
                            "shards published by `phonerec publish`") from None
    got = hashlib.sha256(data).hexdigest()
    if got != pin:
        raise ManifestError(f"{where} has sha256 {got}, not the expected {pin}: it is not the index that was "
                            "published (or the shards were published again since); ask for the current digest")
    return read_index(_json(data, where), where)[1]


def _json(data: bytes, where: str):
    """Parsed JSON; a damaged or hostile file (bad syntax, nesting deep enough to exhaust the
    parser) is one ManifestError."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else " ".join(str(exc).split())[:160]
        raise ManifestError(f"cannot read {where}: not valid JSON ({why}); rebuild with `phonerec shards`") from None


def _read_raw(shards_dir: str | Path, split: str, policy: remote.FetchPolicy | None,
              digests: dict[str, str] | None = None) -> tuple[dict, str]:
    """A manifest's JSON and where it was read (a path or a URL); with a pinned index's `digests`,
    its bytes must have the sha256 listed there."""
    url = remote.is_url(shards_dir)
    if not valid_split_name(split):
        raise ManifestError(f"{split!r} is not a split name (letters, digits, '.', '_', '-')")
    where = remote.join(str(shards_dir), split, MANIFEST_NAME) if url else str(manifest_path(shards_dir, split))
    try:
        text = remote.read_location(where, policy)
    except FileNotFoundError:
        splits = available_splits(shards_dir, policy)
        close = difflib.get_close_matches(split, splits, n=1, cutoff=0.6)
        if close:
            raise ManifestError(f"no split {split!r} in {shards_dir}: did you mean {close[0]!r}? (splits with "
                                f"manifests: {', '.join(splits)})") from None
        raise ManifestError(f"no manifest for split {split!r} at {where} (splits with manifests: "
                            f"{', '.join(splits) or 'none'}); run `phonerec shards`"
                            f"{' and publish the shards' if url else ''} first") from None
    except remote.FetchError:
        raise
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {where}: {exc}; rebuild with `phonerec shards`") from exc
    if digests is not None and hashlib.sha256(text).hexdigest() != digests.get(split):
        why = "is not in the pinned index" if split not in digests else "differs from what the pinned index lists"
        raise ManifestError(f"{where}: {why}: not what was published (or published again since)")
    return _json(text, where), where


def load(shards_dir: str | Path, split: str, policy: remote.FetchPolicy | None = None) -> Manifest:
    """A split's manifest from a shards folder or a URL, checked against its digest and then field
    by field (parse): nothing in it is used before it is known to be what a build writes. With a
    pinned digest (remote.unpin) the manifest must be the one the published index lists, and its
    shards are then checked by sha256, not crc32."""
    base, pin = remote.unpin(shards_dir, policy)
    digests = _pinned_digests(base, pin, policy) if pin else None
    raw, path = _read_raw(base, split, policy, digests)
    if not isinstance(raw, dict):
        raise ManifestError(f"cannot read manifest {path}: not a JSON object; rebuild with `phonerec shards`")
    if "digest" in raw and raw["digest"] != _digest(raw):      # manifests before the digest have none
        raise ManifestError(f"{path} was edited or damaged (its content no longer matches its digest); "
                            "rebuild it with `phonerec shards`")
    if raw.get("format") != FORMAT_VERSION:
        raise ManifestError(f"{path}: manifest format {str(raw.get('format'))[:40]!r}, expected {FORMAT_VERSION}; "
                            "rebuild with `phonerec shards`")
    m = parse(raw, path, split)
    m.pinned = pin is not None
    return m


def parse(raw: dict, where: str, split: str) -> Manifest:
    """A Manifest from a manifest's JSON read at `where` (a path or URL) for folder `split`: the
    schema (types, required fields, ranges), shard names of the split's own pattern, sha256 fields
    of 64 lowercase hex digits, columns of one length. ManifestError naming the field otherwise."""
    c = _Check(where)
    name = c.get(raw, "split", str, "split")
    if name != split:
        raise c.fail("split", f"is {name[:80]!r} but the manifest was read from the folder {split!r}")
    dim = c.count(raw, "feature_dim", "feature_dim", required=False, low=1, high=MAX_FEATURE_DIM) or FEATURE_DIM
    u = c.get(raw, "utterances", dict, "utterances")
    n = len(c.get(u, "id", list, "utterances.id"))
    shards = _shards(c, c.get(raw, "shards", list, "shards"), split)
    m = Manifest(
        split=split, labelled=c.get(raw, "labelled", bool, "labelled"), seed=c.count(raw, "seed", "seed"),
        stats=_stats(c, c.get(raw, "stats", dict, "stats"), dim), shards=shards,
        ids=c.names(u, "id", "utterances.id", n, UTTERANCE_ID, "a file stem"),
        keys=c.names(u, "key", "utterances.key", n, SAMPLE_KEY, "a sample key ([A-Za-z0-9_-])"),
        frames=c.ints(u, "frames", "utterances.frames", n, low=1),
        label_lens=c.ints(u, "label_len", "utterances.label_len", n),
        index=c.ints(u, "index", "utterances.index", n),
        feature_dim=dim, template=_template(c, raw), inputs=c.count(raw, "inputs", "inputs", required=False) or 0,
        rejected=c.count(raw, "rejected", "rejected", required=False) or 0, inventory=_inventory(raw, where),
        fingerprint=c.get(raw, "fingerprint", str, "fingerprint", required=False, default=""),
        directory=None if remote.is_url(where) else Path(where).parent,
        url=remote.parent(where) if remote.is_url(where) else None,
        feats_at=c.ints(u, "feats_at", "utterances.feats_at", n, required=False),
        labels_at=c.ints(u, "labels_at", "utterances.labels_at", n, low=-1, required=False),
        ctc_lens=c.ints(u, "ctc_len", "utterances.ctc_len", n, required=False),   # None: see Manifest
    )
    if (m.feats_at is None) != (m.labels_at is None) or int(m.shard_start[-1]) != n:
        raise ManifestError(f"{where}: utterance columns and shard counts disagree; rebuild with `phonerec shards`")
    return m


def _shards(c: _Check, rows: list, split: str) -> list[ShardInfo]:
    pattern, out = shard_name_pattern(split), []
    for i, row in enumerate(rows):
        f = f"shards[{i}]"
        if not isinstance(row, dict):
            raise c.fail(f, "is not an object")
        name = c.get(row, "name", str, f"{f}.name")
        if not pattern.fullmatch(name):
            raise c.fail(f"{f}.name", f"is {name[:80]!r}, not a shard file name of split {split} "
                                      f"({split}-NNNNNN.tar)")
        sha = c.get(row, "sha256", str, f"{f}.sha256")
        if not SHA256.fullmatch(sha):
            raise c.fail(f"{f}.sha256", "is not 64 lowercase hex digits")
        crc = row.get("crc32")
        if crc is not None:
            crc = c.count(row, "crc32", f"{f}.crc32", high=2**32 - 1)
        out.append(ShardInfo(name=name, sha256=sha, crc32=crc,
                             **{k: c.count(row, k, f"{f}.{k}") for k in
                                ("utterances", "frames", "min_frames", "max_frames", "bytes")}))
    return out


def _stats(c: _Check, d: dict, dim: int) -> Stats:
    splits = c.get(d, "splits", list, "stats.splits")
    if not all(isinstance(x, str) for x in splits):
        raise c.fail("stats.splits", "holds something other than split names")
    return Stats(count=c.count(d, "count", "stats.count"), mean=c.floats(d, "mean", "stats.mean", dim),
                 std=c.floats(d, "std", "stats.std", dim, positive=True), cmn=c.get(d, "cmn", bool, "stats.cmn"),
                 splits=list(splits), fingerprint=c.get(d, "fingerprint", str, "stats.fingerprint"))


def _template(c: _Check, raw: dict) -> dict | None:
    """A test split's submission template: {"file": str, "header": [str, ...], "rows": int}."""
    t = c.get(raw, "template", dict, "template", required=False)
    if t is None:
        return None
    header = c.get(t, "header", list, "template.header")
    if not header or not all(isinstance(h, str) and h and not _CONTROL.search(h) for h in header):
        raise c.fail("template.header", "is not a list of printable column names")
    return {"file": c.get(t, "file", str, "template.file"), "header": list(header),
            "rows": c.count(t, "rows", "template.rows")}


def _inventory(raw: dict, path: str) -> Inventory:
    """The inventory a manifest records; one without "codes" is F22's."""
    if "vocab" not in raw:
        raise ManifestError(f"{path}: no vocabulary; rebuild with `phonerec shards`")
    try:
        return Inventory.from_json(raw)
    except (InventoryError, TypeError, ValueError) as exc:
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
        feature_dim=first.feature_dim, pinned=all(m.pinned for m in manifests),
    )


def load_many(shards_dir: str | Path, splits: str | list[str], policy: remote.FetchPolicy | None = None) -> Manifest:
    names = [s.strip() for s in splits.split(",")] if isinstance(splits, str) else list(splits)
    return merge([load(shards_dir, s, policy) for s in names if s], remote.unpin(shards_dir)[0])
