"""`phonerec shards --verify`: re-read every shard and account for every input utterance."""

from __future__ import annotations

import csv
import tarfile
from collections import Counter
from pathlib import Path

from . import manifest as mf
from .layout import list_split
from .shardformat import FEATS, LABELS, load_npy
from .shards import sha256_file


def _read_rejected(shards_dir: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    p = shards_dir / "rejected.tsv"
    if p.is_file():
        with open(p, newline="", errors="replace") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                if row.get("split") is not None and row.get("utterance") is not None:
                    out.setdefault(row["split"], set()).add(row["utterance"])
    return out


def check_shards(m: mf.Manifest, *, full: bool = False) -> list[tuple[int, str]]:
    """(shard number, problem) for each shard that is missing or whose size differs from the
    manifest; with `full`, also each whose sha256 differs (reads every shard once). Shared by
    `--verify`, training (before step 1) and prediction."""
    problems = []
    for s, (info, path) in enumerate(zip(m.shards, m.shard_paths())):
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            problems.append((s, "missing shard"))
            continue
        except OSError as exc:
            problems.append((s, f"cannot access ({exc.strerror or exc})"))
            continue
        if info.sha256 and size != info.bytes:
            problems.append((s, f"{size} bytes, the manifest says {info.bytes} (truncated or replaced)"))
            continue
        if full and info.sha256:
            try:
                digest = sha256_file(path)
            except OSError as exc:
                problems.append((s, f"unreadable ({exc.strerror or exc})"))
                continue
            if digest != info.sha256:
                problems.append((s, "sha256 differs from the manifest (corrupted or replaced)"))
    return problems


def verify_split(shards_dir: Path, split: str, data: Path | None = None) -> list[str]:
    """Problems found in one split (empty = verified)."""
    problems: list[str] = []
    try:
        m = mf.load(shards_dir, split)
    except mf.ManifestError as exc:
        return [str(exc)]
    starts = m.shard_start
    damaged = dict(check_shards(m, full=True))
    for i, (info, path) in enumerate(zip(m.shards, m.shard_paths())):
        where = f"{split}/{info.name}"
        if i in damaged:
            problems.append(f"{where}: {damaged[i]}")
            continue
        expect = list(zip(m.keys[starts[i]:starts[i + 1]], m.frames[starts[i]:starts[i + 1]],
                          m.label_lens[starts[i]:starts[i + 1]]))
        try:
            with tarfile.open(path) as tar:
                members, at = {}, {}
                order = []
                for ti in tar:
                    key, _, ext = ti.name.partition(".")
                    if key not in members:
                        order.append(key)
                    members.setdefault(key, {})[ext] = tar.extractfile(ti).read()
                    at.setdefault(key, {})[ext] = ti.offset_data
        except (tarfile.TarError, OSError, EOFError) as exc:
            problems.append(f"{where}: unreadable tar ({exc})")
            continue
        if order != [k for k, _, _ in expect]:
            problems.append(f"{where}: holds {len(order)} utterances, manifest lists {len(expect)} "
                            "(or a different order)")
            continue
        for key, frames, llen in expect:
            sample = members[key]
            try:
                x = load_npy(sample[FEATS])
                if x.shape != (frames, m.feature_dim):
                    problems.append(f"{where}: {key} features {list(x.shape)}, manifest says [{frames}, {m.feature_dim}]")
                if m.labelled and len(load_npy(sample[LABELS])) != llen:
                    problems.append(f"{where}: {key} label length differs from the manifest")
            except (KeyError, ValueError) as exc:
                problems.append(f"{where}: {key} has a missing or unreadable member ({exc})")
        if m.feats_at is not None and m.labels_at is not None:
            rows = range(int(starts[i]), int(starts[i + 1]))
            wrong = [m.keys[r] for r in rows if at.get(m.keys[r], {}).get(FEATS) != m.feats_at[r]
                     or (m.labelled and at.get(m.keys[r], {}).get(LABELS) != m.labels_at[r])]
            if wrong:
                problems.append(f"{where}: {len(wrong)} member offset(s) differ from the manifest, e.g. {wrong[0]}")
    counts = Counter(m.ids)
    dups = [u for u, c in counts.items() if c > 1]
    if dups:
        problems.append(f"{split}: {len(dups)} utterance(s) appear more than once, e.g. {dups[0]}")
    rejected = _read_rejected(shards_dir).get(split, set())
    if m.num_utterances + m.rejected != m.inputs:
        problems.append(f"{split}: {m.num_utterances} kept + {m.rejected} rejected != {m.inputs} inputs")
    if data is not None and (Path(data) / split / "mfcc").is_dir():
        raw = set(list_split(data, split, labelled=m.labelled).ids)
        missing = raw - set(m.ids) - rejected
        if missing:
            problems.append(f"{split}: {len(missing)} input utterance(s) neither in a shard nor rejected, "
                            f"e.g. {sorted(missing)[0]}")
        extra = set(m.ids) - raw
        if extra:
            problems.append(f"{split}: {len(extra)} sharded utterance(s) no longer in {data}, "
                            f"e.g. {sorted(extra)[0]} (rebuild)")
    return problems


def cross_split_duplicates(shards_dir: Path, splits: list[str]) -> dict[str, list[str]]:
    """Utterance ids sharded in more than one labelled split (a build rejects all but the first
    copy; unlabelled test splits are never reduced, so they are not checked)."""
    first: dict[str, str] = {}
    out: dict[str, list[str]] = {}
    for split in splits:
        try:
            m = mf.load(shards_dir, split)
        except mf.ManifestError:
            continue
        if not m.labelled:
            continue
        ids = m.ids
        dups = []
        for uid in ids:
            if first.setdefault(uid, split) != split:
                dups.append(uid)
        if dups:
            out[split] = [f"{split}: {len(dups)} utterance id(s) also sharded in another split "
                          f"(e.g. {dups[0]} in {first[dups[0]]}); rebuild with `phonerec shards`"]
    return out


def verify(shards_dir: str | Path, splits: list[str] | None = None, data: str | Path | None = None) -> dict[str, list[str]]:
    shards_dir = Path(shards_dir)
    splits = splits or mf.available_splits(shards_dir)
    out = {s: verify_split(shards_dir, s, Path(data) if data else None) for s in splits}
    for split, problems in cross_split_duplicates(shards_dir, splits).items():
        out[split].extend(problems)
    return out
