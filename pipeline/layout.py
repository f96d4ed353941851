"""Finding splits and pairing feature files with transcripts in the standard raw layout.

``<root>/<split>/mfcc/<id>.npy`` pairs with ``<root>/<split>/transcript/<id>.npy`` or, as in
the published archive, ``<root>/<split>/transcript/raw/<id>.npy``. No transcript folder means
an unlabelled split (the test split).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path


class LayoutError(RuntimeError):
    """The raw corpus does not have the expected folders."""


@dataclass
class SplitFiles:
    name: str
    ids: list[str]                       # sorted file stems of mfcc/*.npy: the split's original order
    mfcc: list[Path]
    transcripts: list[Path | None]       # parallel to ids; None when unlabelled or missing
    labelled: bool
    orphans: list[tuple[str, Path]] = field(default_factory=list)  # transcripts without features

    def fingerprint(self) -> str:
        """Hash of names, sizes and mtimes: changes whenever an input file changes."""
        h = hashlib.sha256(f"{self.name}|{int(self.labelled)}".encode())
        for paths in (self.mfcc, self.transcripts, [p for _, p in self.orphans]):
            for p in paths:
                if p is None:
                    h.update(b"-\n")
                    continue
                try:
                    st = p.stat()
                    h.update(f"{p.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
                except OSError:
                    h.update(f"{p.name}|unreadable\n".encode())
        return h.hexdigest()


def discover_splits(root: str | Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"data folder {root} does not exist")
    return sorted(p.name for p in root.iterdir() if (p / "mfcc").is_dir())


def _npy_stems(folder: Path) -> dict[str, Path]:
    with os.scandir(folder) as it:
        return {e.name[:-4]: Path(e.path) for e in it if e.name.endswith(".npy") and e.is_file()}


def transcript_dir(split_dir: Path) -> Path | None:
    t = split_dir / "transcript"
    if not t.is_dir():
        return None
    raw = t / "raw"
    return raw if raw.is_dir() else t


def list_split(root: str | Path, name: str) -> SplitFiles:
    split_dir = Path(root) / name
    mfcc_dir = split_dir / "mfcc"
    if not mfcc_dir.is_dir():
        have = ", ".join(discover_splits(root)) or "none"
        raise LayoutError(f"split {name!r} not found: {mfcc_dir} is not a folder (splits under {root}: {have})")
    feats = _npy_stems(mfcc_dir)
    tdir = transcript_dir(split_dir)
    trans = _npy_stems(tdir) if tdir is not None else {}
    ids = sorted(feats)
    return SplitFiles(
        name=name, ids=ids, mfcc=[feats[i] for i in ids],
        transcripts=[trans.get(i) for i in ids], labelled=tdir is not None,
        orphans=sorted((i, p) for i, p in trans.items() if i not in feats),
    )
