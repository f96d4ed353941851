"""Finding splits and pairing feature files with transcripts in the standard raw layout.

``<root>/<split>/mfcc/<id>.npy`` pairs with ``<root>/<split>/transcript/<id>.npy``, as in the
published F22 archive ``<root>/<split>/transcript/raw/<id>.npy``, or (another edition's
write-up) ``<root>/<split>/transcripts/<id>.npy``. Whether a split is labelled
follows its role (the caller says so: a test split never is), not the presence of a folder: the
published archive ships its submission template in ``test-clean/transcript/``.

Every name that looks like an utterance (``*.npy``, any case, not hidden) becomes one: a name
that cannot be read as a file (a folder, a dangling link) is listed with the reason, so it is
rejected and, in a test split, still keeps its row. Hidden names (``.*``, such as macOS's
``._<id>.npy``) are not utterances; they are listed as ignored so the build can say so.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PhonerecError


class LayoutError(PhonerecError):
    """The raw corpus does not have the expected folders."""


def safe_text(text: str) -> str:
    """`text` with undecodable bytes of a file name (surrogate escapes) shown as `\\xNN`, so it
    can be written to UTF-8 files and terminals; valid names are returned unchanged."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


@dataclass
class SplitFiles:
    name: str
    ids: list[str]                       # utterance ids (file stems) in sorted-file-name order: the split's order
    mfcc: list[Path]
    transcripts: list[Path | None]       # parallel to ids; None when unlabelled or missing
    labelled: bool
    orphans: list[tuple[str, Path]] = field(default_factory=list)  # transcripts without features
    problems: dict[str, str] = field(default_factory=dict)         # id -> why it cannot be read
    ignored: list[Path] = field(default_factory=list)              # hidden names, test transcripts
    template: Path | None = None         # a test split's submission template (random_submission.csv, ...)
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    def fingerprint(self) -> str:
        """Hash of names, sizes and mtimes: changes whenever an input file changes (computed once:
        it stats every file)."""
        if self._fingerprint is None:
            self._fingerprint = self._hash_files()
        return self._fingerprint

    def _hash_files(self) -> str:
        h = hashlib.sha256(f"{self.name}|{int(self.labelled)}".encode())
        extra = [self.template] if self.template is not None else []      # no template: as before templates
        for paths in (self.mfcc, self.transcripts, [p for _, p in self.orphans], extra):
            for p in paths:
                if p is None:
                    h.update(b"-\n")
                    continue
                name = os.fsencode(p.name)
                try:
                    st = p.stat()
                    h.update(name + f"|{st.st_size}|{st.st_mtime_ns}|{st.st_mode}\n".encode())
                except OSError:
                    h.update(name + b"|unreadable\n")
        return h.hexdigest()


def discover_splits(root: str | Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"data folder {root} does not exist")
    return sorted(p.name for p in root.iterdir() if (p / "mfcc").is_dir())


def _why_not_a_file(entry: os.DirEntry) -> str | None:
    """None for a readable regular file (or a link to one), else the reason it is no utterance."""
    if entry.is_file():
        return None
    if entry.is_dir():
        return "is a folder, not a .npy file"
    if entry.is_symlink():
        try:
            target = os.readlink(entry.path)
        except OSError:
            target = "?"
        return f"is a symbolic link to a missing file ({safe_text(target)})"
    return "is not a regular file"


@dataclass
class _Listing:
    files: dict[str, Path] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    ignored: list[Path] = field(default_factory=list)


def _npy_entries(folder: Path) -> _Listing:
    """id -> path of every `*.npy`/`*.NPY` name in `folder`, with the ones that are no file."""
    out = _Listing()
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: (e.name.lower() != e.name, e.name))  # `a.npy` before `a.NPY`
    for e in entries:
        if e.name.startswith("."):
            out.ignored.append(Path(e.path))
            continue
        if not e.name.lower().endswith(".npy"):
            continue
        uid = safe_text(e.name[:-4])
        if uid in out.files:        # `a.npy` and `a.NPY`, or two names equal once made valid UTF-8
            first, uid, n = out.files[uid], safe_text(e.name), 2
            while uid in out.files:
                uid, n = f"{safe_text(e.name)}#{n}", n + 1
            out.problems[uid] = f"same utterance id as {safe_text(first.name)}"
        why = _why_not_a_file(e)
        if why:
            out.problems[uid] = why
        out.files[uid] = Path(e.path)
    return out


TRANSCRIPT_FOLDERS = ("transcript", "transcripts")     # editions name it either way
TEMPLATE_NAMES = ("random_submission.csv", "sample_submission.csv")


def find_template(split_dir: Path) -> Path | None:
    """The submission template an edition ships anywhere under its test split (F22 keeps it in
    `test-clean/transcript/`), or None."""
    found = sorted(p for name in TEMPLATE_NAMES for p in split_dir.rglob(name) if p.is_file())
    return found[0] if found else None


def read_template(path: Path) -> tuple[dict | None, str | None]:
    """({"file", "header", "rows"}, None) of a submission template, or (None, why it is unusable)."""
    import csv
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            rows = sum(1 for row in reader if row)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return None, f"unreadable ({exc})"
    if not header or not all(h.strip() for h in header):
        return None, "no header row"
    return {"file": safe_text(str(path)), "header": [h.strip() for h in header], "rows": rows}, None


def transcript_dir(split_dir: Path) -> Path | None:
    """`transcript/raw/`, `transcript/` or `transcripts/` (the first that exists), or None."""
    for name in TRANSCRIPT_FOLDERS:
        t = split_dir / name
        if t.is_dir():
            raw = t / "raw"
            return raw if raw.is_dir() else t
    return None


def list_split(root: str | Path, name: str, *, labelled: bool) -> SplitFiles:
    """The split's utterances; `labelled` is its role's (train and dev yes, test never)."""
    split_dir = Path(root) / name
    mfcc_dir = split_dir / "mfcc"
    if not mfcc_dir.is_dir():
        if (Path(root) / "mfcc").is_dir():
            raise LayoutError(f"{root} is a split folder (it holds mfcc/): pass its parent, "
                              f"--data {Path(root).resolve().parent}")
        splits = discover_splits(root)
        close = difflib.get_close_matches(name, splits, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise LayoutError(f"split {name!r} not found: {mfcc_dir} is not a folder (splits under {root}: "
                          f"{', '.join(splits) or 'none'}){hint}")
    feats = _npy_entries(mfcc_dir)
    tdir = transcript_dir(split_dir)
    trans = _Listing()
    ignored = list(feats.ignored)
    if tdir is not None and labelled:
        trans = _npy_entries(tdir)
        ignored += trans.ignored
    elif tdir is not None:
        ignored.append(split_dir / "transcript")      # (whichever name it has: reported as one folder)
    # The split's order is its files' names sorted as the course's starter sorts them
    # (`sorted(os.listdir(mfcc))`), not the ids: 'a b.npy' < 'a.npy' though 'a' < 'a b'.
    ids = sorted(feats.files, key=lambda i: feats.files[i].name)
    return SplitFiles(
        name=name, ids=ids, mfcc=[feats.files[i] for i in ids],
        transcripts=[trans.files.get(i) for i in ids] if labelled else [None] * len(ids), labelled=labelled,
        orphans=sorted((i, p) for i, p in trans.files.items() if i not in feats.files),
        problems=feats.problems, ignored=ignored, template=None if labelled else find_template(split_dir),
    )
