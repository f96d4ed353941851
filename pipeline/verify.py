"""`phonerec shards --verify`: re-read every shard and account for every input utterance."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import tarfile
from collections import Counter
from pathlib import Path

from . import manifest as mf
from . import remote
from .config import ShardsConfig
from .errors import PhonerecError
from .layout import list_split
from .reading import ShardReader, check_shards
from .shardformat import FEATS, LABELS, load_npy


def _read_rejected(shards_dir: str | Path, policy: remote.FetchPolicy | None = None) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    try:
        text = remote.read_location(remote.join(str(shards_dir), "rejected.tsv"), policy).decode(errors="replace")
    except (FileNotFoundError, IsADirectoryError):
        return out
    for row in csv.DictReader(io.StringIO(text, newline=""), delimiter="\t"):
        if row.get("split") is not None and row.get("utterance") is not None:
            out.setdefault(row["split"], set()).add(row["utterance"])
    return out


def _tar_members(data: bytes) -> tuple[list[str], dict[str, dict[str, bytes]], dict[str, dict[str, int]]]:
    """(keys in member order, {key: {ext: bytes}}, {key: {ext: data offset}}) of a tar's bytes."""
    members: dict[str, dict[str, bytes]] = {}
    at: dict[str, dict[str, int]] = {}
    order: list[str] = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for ti in tar:
            key, _, ext = ti.name.partition(".")
            if key not in members:
                order.append(key)
            members.setdefault(key, {})[ext] = tar.extractfile(ti).read()
            at.setdefault(key, {})[ext] = ti.offset_data
    return order, members, at


def _shard_problems(m: mf.Manifest, i: int, data: bytes, where: str) -> list[str]:
    """What differs between shard i's bytes and the manifest: checksum, members, shapes, offsets."""
    info, starts = m.shards[i], m.shard_start
    if info.sha256 and hashlib.sha256(data).hexdigest() != info.sha256:
        return [f"{where}: sha256 differs from the manifest (corrupted or replaced)"]
    rows = range(int(starts[i]), int(starts[i + 1]))
    try:
        order, members, at = _tar_members(data)
    except (tarfile.TarError, OSError, EOFError) as exc:
        return [f"{where}: unreadable tar ({exc})"]
    if order != [m.keys[r] for r in rows]:
        return [f"{where}: holds {len(order)} utterances, manifest lists {len(rows)} (or a different order)"]
    problems = []
    for r in rows:
        key, frames = m.keys[r], int(m.frames[r])
        try:
            x = load_npy(members[key][FEATS])
            if x.shape != (frames, m.feature_dim):
                problems.append(f"{where}: {key} features {list(x.shape)}, manifest says [{frames}, {m.feature_dim}]")
            if m.labelled and len(load_npy(members[key][LABELS])) != m.label_lens[r]:
                problems.append(f"{where}: {key} label length differs from the manifest")
        except (KeyError, ValueError) as exc:
            problems.append(f"{where}: {key} has a missing or unreadable member ({exc})")
    if m.feats_at is not None and m.labels_at is not None:
        wrong = [m.keys[r] for r in rows if at.get(m.keys[r], {}).get(FEATS) != m.feats_at[r]
                 or (m.labelled and at.get(m.keys[r], {}).get(LABELS) != m.labels_at[r])]
        if wrong:
            problems.append(f"{where}: {len(wrong)} member offset(s) differ from the manifest, e.g. {wrong[0]}")
    return problems


def verify_split(shards_dir: str | Path, split: str, data: Path | None = None,
                 policy: remote.FetchPolicy | None = None) -> list[str]:
    """Problems found in one split (empty = verified); the shards may be at a URL."""
    problems: list[str] = []
    try:
        m = mf.load(shards_dir, split, policy)
    except (mf.ManifestError, remote.FetchError) as exc:
        return [str(exc)]
    damaged = dict(check_shards(m, policy=policy))
    reader = ShardReader(policy or remote.FetchPolicy())       # the loaders' reader, its bytes as stored
    for i, info in enumerate(m.shards):
        where = f"{split}/{info.name}"
        if i in damaged:
            problems.append(f"{where}: {damaged[i]}")
            continue
        try:
            blob = reader.raw(m, i)
        except (OSError, remote.FetchError) as exc:
            problems.append(f"{where}: unreadable ({getattr(exc, 'strerror', None) or exc})")
            continue
        problems.extend(_shard_problems(m, i, blob, where))
    counts = Counter(m.ids)
    dups = [u for u, c in counts.items() if c > 1]
    if dups:
        problems.append(f"{split}: {len(dups)} utterance(s) appear more than once, e.g. {dups[0]}")
    if m.num_utterances + m.rejected != m.inputs:
        problems.append(f"{split}: {m.num_utterances} kept + {m.rejected} rejected != {m.inputs} inputs")
    if data is not None and (Path(data) / split / "mfcc").is_dir():
        problems.extend(_accounted(m, Path(data), _read_rejected(shards_dir, policy).get(split, set())))
    return problems


def _accounted(m: mf.Manifest, data: Path, rejected: set[str]) -> list[str]:
    """Every raw utterance is sharded or rejected, and every sharded one is still there."""
    problems = []
    raw = set(list_split(data, m.split, labelled=m.labelled).ids)
    missing = raw - set(m.ids) - rejected
    if missing:
        problems.append(f"{m.split}: {len(missing)} input utterance(s) neither in a shard nor rejected, "
                        f"e.g. {sorted(missing)[0]}")
    extra = set(m.ids) - raw
    if extra:
        problems.append(f"{m.split}: {len(extra)} sharded utterance(s) no longer in {data}, "
                        f"e.g. {sorted(extra)[0]} (rebuild)")
    return problems


def cross_split_duplicates(shards_dir: str | Path, splits: list[str],
                           policy: remote.FetchPolicy | None = None) -> dict[str, list[str]]:
    """Utterance ids sharded in more than one labelled split (a build rejects all but the first
    copy; unlabelled test splits are never reduced, so they are not checked)."""
    first: dict[str, str] = {}
    out: dict[str, list[str]] = {}
    for split in splits:
        try:
            m = mf.load(shards_dir, split, policy)
        except (mf.ManifestError, remote.FetchError):
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


def verify(shards_dir: str | Path, splits: list[str] | None = None, data: str | Path | None = None,
           policy: remote.FetchPolicy | None = None) -> dict[str, list[str]]:
    """Problems per split of a shards folder or URL (empty lists: verified); a pinned digest
    (URL#sha256=... or the policy's) is required of the index, the manifests and every shard."""
    shards_dir, pin = remote.unpin(str(shards_dir), policy)
    if pin:
        policy = dataclasses.replace(policy or remote.FetchPolicy(), expect_digest=pin)
    shards_dir = str(shards_dir) if remote.is_url(str(shards_dir)) else Path(shards_dir)
    splits = splits or mf.available_splits(shards_dir, policy)
    out = {s: verify_split(shards_dir, s, Path(data) if data else None, policy) for s in splits}
    for split, problems in cross_split_duplicates(shards_dir, splits, policy).items():
        out[split].extend(problems)
    return out


def verify_shards(cfg: ShardsConfig) -> dict[str, list[str]]:
    """`phonerec shards --verify`: verify() of the configured splits that have manifests (all of
    them when none of those has), with the raw corpus when --data is a folder."""
    policy = cfg.fetch_policy()
    shards_dir = cfg.shards if remote.is_url(cfg.shards) else Path(cfg.shards)
    have = mf.available_splits(shards_dir, policy)   # at a URL: its index.json (`phonerec publish`)
    if not have:
        raise PhonerecError(f"no manifests under {cfg.shards}: run `phonerec shards` first")
    data = Path(cfg.data)
    return verify(shards_dir, [n for n in cfg.splits() if n in have] or have, data if data.is_dir() else None, policy)


def problems_report(results: dict[str, list[str]]) -> tuple[str, int]:
    """The per-split lines `shards --verify` prints, and the number of problems."""
    lines = []
    for split, problems in results.items():
        lines.append(f"{split}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
        lines.extend(f"  - {p}" for p in problems)
    return "\n".join(lines), sum(map(len, results.values()))
