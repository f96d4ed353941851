"""How one utterance is laid out inside a WebDataset tar, and byte-reproducible tar writing.

Members per utterance: ``<key>.feats.npy`` (float16 [T, 15], normalized) and, for labelled
splits, ``<key>.labels.npy`` (uint8 [L], vocabulary indices without [SOS]/[EOS]).

The manifest also records where each member's bytes start inside its tar (``member_offsets``),
so a reader holding a shard whose sha256 it has checked can slice every sample straight out of
the bytes (``slice_member``) instead of parsing tar and npy headers per member, the bulk of a
loader's per-utterance cost. Any other tar reader still sees a plain WebDataset shard.
"""

from __future__ import annotations

import functools
import io
import math
import re
import tarfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from . import atomic
from .features import STORAGE_DTYPE, STORAGE_MAX

FEATS = "feats.npy"
LABELS = "labels.npy"
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


def make_keys(ids: list[str]) -> list[str]:
    """WebDataset splits keys at the first dot, so map ids to unique, dot-free, ASCII keys."""
    keys, seen = [], set()
    for i, uid in enumerate(ids):
        base = _UNSAFE.sub("_", uid) or "utt"
        key, n = base, i
        while key in seen:            # the suffixed key may itself be taken (ids "a_b_2", "a_b", "a.b")
            key = f"{base}_{n}"
            n += len(ids)
        seen.add(key)
        keys.append(key)
    return keys


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def write_tar(path: str | Path, members: Iterable[tuple[str, bytes]]) -> dict[str, int]:
    """Write a tar atomically with fixed metadata, so equal inputs give byte-identical files.
    Returns where each member's data starts (as `member_offsets` would read them back)."""
    offsets = {}
    with atomic.atomic_path(path) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = 0
                info.mode = 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
                # after the header(s) come the data, padded to whole 512-byte blocks
                offsets[name] = tar.offset - -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    return offsets




def sample_members(key: str, feats: np.ndarray, labels: np.ndarray | None) -> list[tuple[str, bytes]]:
    # Clip, so a finite value beyond the storage dtype's range (an outlier far from the training statistics)
    # is stored as its largest value rather than as infinity.
    out = [(f"{key}.{FEATS}", npy_bytes(np.clip(feats, -STORAGE_MAX, STORAGE_MAX).astype(STORAGE_DTYPE)))]
    if labels is not None:
        out.append((f"{key}.{LABELS}", npy_bytes(labels.astype(np.uint8, copy=False))))
    return out


def decode_sample(sample: dict) -> tuple[str, np.ndarray, np.ndarray | None]:
    """A WebDataset sample dict (raw bytes per extension) -> (key, feats float16, labels or None)."""
    key = sample["__key__"]
    if FEATS not in sample:
        raise KeyError(f"sample {key!r} in {sample.get('__url__', '?')} has no {FEATS} member")
    feats = load_npy(sample[FEATS])
    labels = load_npy(sample[LABELS]) if LABELS in sample else None
    return key, feats, labels


def member_offsets(path: str | Path) -> dict[str, int]:
    """Member name -> offset of its data in the tar (where its .npy file begins), read back from
    a tar written earlier (a shard finished by an interrupted build)."""
    with tarfile.open(path, "r:") as tar:
        return {ti.name: ti.offset_data for ti in tar}


@functools.lru_cache(maxsize=8192)
def npy_header(shape: tuple[int, ...], descr: str) -> bytes:
    """The exact header np.save writes for a C-ordered array of this shape and dtype."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def slice_member(data: bytes | memoryview, at: int, name: str, shape: tuple[int, ...],
                 dtype: np.dtype) -> np.ndarray | None:
    """The array member `name` whose data starts at byte `at` of a tar held in memory, as a
    zero-copy view; None unless the tar header there names it and its npy header is exactly the
    one for this shape and dtype (then the caller parses the tar the slow way)."""
    head = npy_header(shape, dtype.str)
    if at < 512 or at + len(head) > len(data):
        return None
    if bytes(data[at - 512: at - 412]).rstrip(b"\0") != name.encode():
        return None
    if bytes(data[at: at + len(head)]) != head:
        return None
    count = math.prod(shape)            # np.prod costs 9 us a call: a third of this function
    if at + len(head) + count * dtype.itemsize > len(data):
        return None
    return np.frombuffer(data, dtype=dtype, count=count, offset=at + len(head)).reshape(shape)
