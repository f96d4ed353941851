"""`phonerec publish`: copy a built shards folder to a URL (or another folder) that readers stream from.

Order is what makes it safe: the manifests (and index.json) already there are removed first, then
the shards are copied, and the manifests go last, so a reader never sees a manifest whose shards
are not all there (a reader that started before gets a missing shard: the damaged-shard path,
with a checkpoint). The zarr stores stay behind: readers need only shards and manifests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from . import manifest as mf
from . import remote
from .atomic import ensure_writable, write_bytes
from .errors import PhonerecError
from .reading import check_shards

EXTRA_FILES = ("rejected.tsv", "stats.json")     # beside the splits: read by --verify and the reports


class PublishError(PhonerecError):
    """A publish target that would overwrite or remove what is published, or cannot be written."""


@dataclass
class Published:
    url: str
    splits: list[str]
    files: int
    bytes: int
    digest: str = ""      # sha256 of the index.json written: what a reader pins (--expect-digest)


class Target:
    """Where files go: a local folder (written atomically) or an fsspec URL (objects appear whole)."""

    def __init__(self, url: str, policy: remote.FetchPolicy):
        self.url, self.policy = url.rstrip("/"), policy
        if remote.is_url(url) and remote.URL.match(url).group(1).lower() in ("http", "https"):
            raise remote.FetchError(f"cannot publish to {url}: HTTP is read-only here; publish to the folder your "
                                    "web server serves (a path or file://), or to s3:// or gs://")
        self.fs, self.root = remote.filesystem(url, policy.timeout) if remote.is_url(url) else (None, url)
        self.local = self.fs is None

    def _dst(self, rel: str) -> str:
        """Where `rel` goes, proven to lie under the target (a folder, or the key prefix of s3/gs)."""
        remote.confined(self.root if self.local else self.url, *rel.split("/"))
        return f"{self.root.rstrip('/')}/{rel}"

    def put(self, data: bytes, rel: str) -> None:
        dst = self._dst(rel)
        if self.local:
            write_bytes(dst, data)
            return
        remote.with_retries(f"{self.url}/{rel}", lambda: self.fs.pipe_file(dst, data), self.policy)

    def remove(self, rel: str) -> None:
        dst = self._dst(rel)
        if self.local:
            Path(dst).unlink(missing_ok=True)
        elif remote.with_retries(f"{self.url}/{rel}", lambda: self.fs.exists(dst), self.policy):
            remote.with_retries(f"{self.url}/{rel}", lambda: self.fs.rm_file(dst), self.policy)

    def read_index(self) -> list[str]:
        """The splits the target's index lists (none when it has no index or a damaged one: this
        publish writes a new one)."""
        try:
            return mf.read_index(json.loads(self._read(mf.INDEX_NAME)), f"{self.url}/{mf.INDEX_NAME}")[0]
        except (FileNotFoundError, ValueError, RecursionError, mf.ManifestError):
            return []

    def digest(self, rel: str) -> str | None:
        """sha256 of a file already at the target (None: not there)."""
        try:
            return hashlib.sha256(self._read(rel)).hexdigest()
        except FileNotFoundError:
            return None

    def _read(self, rel: str) -> bytes:
        self._dst(rel)
        return remote.read_location(f"{self.url}/{rel}", self.policy)


def _checked(m: mf.Manifest, s: int, path: Path) -> bytes:
    """Shard s's bytes, refused unless they are what the manifest says: never publish what is
    already damaged here."""
    data = path.read_bytes()
    problem = m.shard_problem(s, data)
    if problem:
        raise mf.ManifestError(f"{m.split}/{m.shards[s].name}: {problem}; run `phonerec shards --verify --shards "
                               f"{path.parent.parent}` and rebuild before publishing")
    return data


def _local_path(spec: str) -> str:
    """file:///x -> /x: a local target is written with atomic renames."""
    return spec[len("file://"):] if spec.startswith("file://") else spec


def _check_local_target(shards_dir: Path, root: Path, url: str) -> None:
    """A folder target, checked before anything there is removed or written: not the shards folder,
    nor inside it, nor around it (publishing removes the target's manifests first: they would be
    the source's), and a folder that can be written."""
    src, dst = shards_dir.resolve(), root.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        where = "is" if dst == src else "is inside" if src in dst.parents else "contains"
        raise PublishError(f"--to {url} {where} the shards folder {shards_dir}: publish to a folder outside it "
                           "(the manifests there are removed first)")
    if root.exists() and not root.is_dir():
        raise PublishError(f"--to {url} is a file: give a folder (or a URL) to publish to")
    ensure_writable(root)


def publish(shards_dir: str | Path, url: str, splits: list[str] | None = None, *,
            policy: remote.FetchPolicy = remote.FetchPolicy(), progress: bool = True,
            log: Callable[[str], None] = print) -> Published:
    """Copy the splits' shards, then their manifests, then index.json, to `url`."""
    shards_dir = Path(shards_dir)
    have = mf.available_splits(shards_dir)
    splits = splits or have
    missing = [s for s in splits if s not in have]
    if missing or not splits:
        raise mf.ManifestError(f"no manifest for {', '.join(missing) or 'any split'} under {shards_dir}: run "
                               "`phonerec shards` first")
    manifests = [mf.load(shards_dir, s) for s in splits]
    for m in manifests:                 # damaged here: refused before anything there is removed or copied
        problems = check_shards(m)
        if problems:
            s, why = problems[0]
            raise mf.ManifestError(f"{m.split}/{m.shards[s].name}: {why}; run `phonerec shards --verify --shards "
                                   f"{shards_dir}` and rebuild before publishing")
        for s, path in enumerate(m.shard_paths()):
            _checked(m, s, path)
    target = Target(_local_path(url), policy)
    if target.local:
        _check_local_target(shards_dir, Path(target.root), url)
    texts = {m.split: mf.manifest_path(shards_dir, m.split).read_bytes() for m in manifests}
    digests = {split: hashlib.sha256(text).hexdigest() for split, text in texts.items()}
    for split in sorted(set(target.read_index()) - set(splits)):   # published before: still listed
        digest = target.digest(f"{split}/{mf.MANIFEST_NAME}")
        if digest is not None:
            digests[split] = digest
    index = mf.index_bytes(list(digests), digests)
    target.remove(mf.INDEX_NAME)                     # first: no reader starts from an old manifest
    for m in manifests:
        target.remove(f"{m.split}/{mf.MANIFEST_NAME}")
    files = [(m, s, p) for m in manifests for s, p in enumerate(m.shard_paths())]
    extra = [name for name in EXTRA_FILES if (shards_dir / name).is_file()]
    total = sum(info.bytes for m in manifests for info in m.shards)
    with tqdm(total=total, unit="B", unit_scale=True, desc="publish", disable=not progress) as bar:
        for m, s, path in files:
            target.put(_checked(m, s, path), f"{m.split}/{m.shards[s].name}")
            bar.update(m.shards[s].bytes)
    for name in extra:
        target.put((shards_dir / name).read_bytes(), name)
    for m in manifests:                              # last: every shard they list is there
        target.put(texts[m.split], f"{m.split}/{mf.MANIFEST_NAME}")
    target.put(index, mf.INDEX_NAME)
    log(f"published {len(splits)} split(s) ({', '.join(splits)}): {len(files)} shards, {total / 1e6:.1f} MB, "
        f"then the manifests, to {url}")
    return Published(url=url, splits=splits, files=len(files) + len(extra) + len(manifests) + 1, bytes=total,
                     digest=hashlib.sha256(index).hexdigest())
