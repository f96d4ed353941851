"""`phonerec shards` end to end: list -> ingest (zarr) -> statistics -> shards -> report."""

from __future__ import annotations

import csv
import io
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import atomic, manifest as mf, stats as st
from .config import ShardsConfig
from .features import FEATURE_DIM, corpus_width, hours
from .layout import LayoutError, SplitFiles, discover_splits, list_split, read_template, safe_text
from .shards import ShardOptions, build_split
from .store import CorpusStore, StrictError, ingest, recorded_width, store_fingerprint, store_path, store_state
from .npyfile import npy_shape
from .validate import Rejection
from .vocab import F22, Inventory, load_inventory

REJECTED_TSV = "rejected.tsv"


@dataclass
class SplitSummary:
    split: str
    role: str
    inputs: int
    kept: int
    rejected: int
    shards: int
    frames: int
    reused_store: bool


@dataclass
class BuildSummary:
    splits: list[SplitSummary] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    stats: st.Stats | None = None
    seconds: float = 0.0

    def table(self) -> str:
        rows = [f"{'split':<18}{'role':<6}{'inputs':>8}{'kept':>8}{'rejected':>9}{'shards':>7}{'hours':>8}"]
        for s in self.splits:
            rows.append(f"{s.split:<18}{s.role:<6}{s.inputs:>8}{s.kept:>8}{s.rejected:>9}{s.shards:>7}"
                        f"{hours(s.frames):>8.2f}")
        return "\n".join(rows)

    def report(self, shards_dir: str | Path) -> tuple[str, list[str]]:
        """What `phonerec shards` prints: the table and totals, and the first rejections (for stderr)."""
        n_rej = len(self.rejections)
        text = (f"{self.table()}\n{sum(s.kept for s in self.splits)} utterances kept, {n_rej} rejected "
                f"(see {Path(shards_dir) / REJECTED_TSV}) in {self.seconds:.1f} s")
        notes = [f"  rejected {r.path}: {r.reason}" for r in self.rejections[:5]]
        if n_rej > 5:
            notes.append(f"  ... and {n_rej - 5} more")
        return text, notes


def _parse(names: str | None) -> list[str]:
    return [n.strip() for n in (names or "").split(",") if n.strip()]


def write_rejections(shards_dir: Path, rejections: list[Rejection]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(["split", "utterance", "file", "reason"])
    for r in rejections:
        w.writerow(list(r))
    path = shards_dir / REJECTED_TSV
    atomic.write_text(path, buf.getvalue())
    return path


def remove_stale_temps(shards_dir: Path) -> None:
    """Temp files a killed run left behind (atomic writes, half-built stores); a finished run leaves
    none. Only names of our temp pattern are removed."""
    for p in [*shards_dir.glob(".*.tmp*"), *shards_dir.glob("*/.*.tmp*")]:
        if atomic.is_temp_name(p.name) and p.is_file():
            p.unlink(missing_ok=True)
    store_dir = shards_dir / "store"
    for p in [*store_dir.glob("*.zarr.tmp*"), *store_dir.glob("*.zarr.old")]:
        shutil.rmtree(p, ignore_errors=True)


def duplicate_ids(listings: dict[str, SplitFiles], roles: dict[str, str]) -> tuple[dict[str, dict[str, str]],
                                                                                 dict[str, list[str]]]:
    """Utterance ids that occur in more than one split.

    Among the labelled splits (--train, then --dev, each in the order given) the first split keeps
    the utterance and every later copy is rejected, naming the split that keeps it: training data is
    never reduced by a dev copy, and dev never scores an utterance that was trained on. Test splits
    are never reduced (a submission needs a row for every test file): a test id that also occurs in
    another split is kept and only reported. Returns ({split: {id: reason}} to reject,
    {test split: [ids also elsewhere]})."""
    owner: dict[str, str] = {}
    reject: dict[str, dict[str, str]] = {}
    for name, files in listings.items():
        if roles[name] == "test":
            continue
        for uid in files.ids:
            first = owner.setdefault(uid, name)
            if first != name:
                reject.setdefault(name, {})[uid] = (f"duplicate utterance id: also in split {first}, which keeps it "
                                                    "(an utterance id must be in one split only)")
    seen = set(owner)
    report: dict[str, list[str]] = {}
    for name, files in listings.items():
        if roles[name] == "test":
            shared = [u for u in files.ids if u in seen]
            if shared:
                report[name] = shared
            seen.update(files.ids)
    return reject, report


def check_output_folder(data: Path, shards_dir: Path, names: list[str]) -> None:
    """The output folder is never the data folder, above it, or inside one of its splits: the
    build writes, replaces and cleans up files there."""
    d, s = Path(data).resolve(), Path(shards_dir).resolve()
    if s == d or s in d.parents:
        where = "is" if s == d else "contains"
        raise LayoutError(f"--shards {shards_dir} {where} the data folder {data}: the build writes and cleans up "
                          "files there; choose a folder of its own (e.g. --shards shards)")
    for name in sorted(set(names) | set(discover_splits(d))):
        split = (d / name).resolve()
        if s == split or split in s.parents:
            raise LayoutError(f"--shards {shards_dir} is inside the split folder {d / name}: choose a folder "
                              "outside the data's split folders")


def _list(data, name: str, role: str) -> SplitFiles:
    try:
        return list_split(data, name, labelled=role != "test")
    except OSError as exc:             # e.g. an mfcc/ or transcript/ folder without read permission
        raise LayoutError(f"cannot list split {name!r} under {data}: {exc.strerror or exc} "
                          f"({exc.filename or data})") from exc


def build(data: str | Path, shards_dir: str | Path, *, train: str, dev: str = "", test: str = "",
          options: ShardOptions = ShardOptions(), workers: int = 2, cmn: bool = False, strict: bool = False,
          progress: bool = True, log=print, feature_dim: int | None = None,
          inventory: Inventory | str = F22) -> BuildSummary:
    """Run stage 1. A full disk raises atomic.WriteError (a one-line `phonerec` error); every file
    already under its final name stays complete, and a rerun finishes the job. `feature_dim`: the
    corpus's width (None: the width nearly all training files share). `inventory`: the symbol
    inventory transcripts are encoded with (an Inventory, a built-in's name or a TSV file)."""
    inventory = load_inventory(inventory)
    try:
        return _build(data, shards_dir, train=train, dev=dev, test=test, options=options, workers=workers,
                      cmn=cmn, strict=strict, progress=progress, log=log, feature_dim=feature_dim,
                      inventory=inventory)
    except OSError as exc:
        if atomic.disk_full(exc):
            raise atomic.disk_full_error(exc, f"shards under {shards_dir}") from exc
        raise


def build_shards(cfg: ShardsConfig, log=print) -> BuildSummary:
    """`phonerec shards` (without --verify): build() with a ShardsConfig's options."""
    from .errors import PhonerecError
    from .remote import is_url
    if is_url(cfg.shards):
        raise PhonerecError(f"--shards {cfg.shards}: shards are built in a local folder; copy them to a URL with "
                            "`phonerec publish` (a URL works for --verify, train, predict and evaluate)")
    inventory = load_inventory(cfg.inventory)       # before any work: a bad TSV is one line
    return build(Path(cfg.data), Path(cfg.shards), train=cfg.train, dev=cfg.dev, test=cfg.test,
                 options=ShardOptions(seed=cfg.seed, target_mb=cfg.shard_size_mb, min_shards=cfg.min_shards),
                 workers=cfg.workers, cmn=cfg.cmn, strict=cfg.strict, progress=cfg.progress, log=log,
                 feature_dim=cfg.feature_dim or None, inventory=inventory)


def _build(data, shards_dir, *, train, dev, test, options, workers, cmn, strict, progress, log,
           feature_dim, inventory) -> BuildSummary:
    t0 = time.perf_counter()
    shards_dir = Path(shards_dir)
    roles = [(n, "train") for n in _parse(train)] + [(n, "dev") for n in _parse(dev)] + \
            [(n, "test") for n in _parse(test)]
    if not _parse(train):
        raise LayoutError("no training split given (--train): statistics come from training data only")
    names = [n for n, _ in roles]
    bad = [n for n in names if not mf.valid_split_name(n)]
    if bad:          # a split is a folder under --data and under --shards: never a path that leaves them
        raise LayoutError(f"{bad[0]!r} is not a split name (letters, digits, '.', '_', '-'; no '/' or '..')")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise LayoutError(f"split(s) {', '.join(dup)} named more than once across --train/--dev/--test")
    listings = {n: _list(data, n, role) for n, role in roles}  # fails early, before any work, on a missing split
    check_output_folder(Path(data), shards_dir, names)
    with atomic.folder_lock(shards_dir, "phonerec shards",
                            "wait for it to finish or use another --shards folder"):
        return _build_locked(shards_dir, roles, listings, options=options, workers=workers, cmn=cmn,
                             strict=strict, progress=progress, log=log, t0=t0, feature_dim=feature_dim,
                             inventory=inventory)


def _report_listing(files: SplitFiles, role: str, log) -> None:
    """Say what was not taken as an utterance, and warn about a test split without any."""
    hidden = [p for p in files.ignored if p.name.startswith(".")]
    if hidden:
        log(f"{files.name}: ignored {len(hidden)} hidden file(s), e.g. {safe_text(hidden[0].name)}: names "
            "starting with '.' (macOS '._' files and the like) are not utterances")
    if role == "test" and any(p.name == "transcript" for p in files.ignored):
        log(f"{files.name}: its transcript/ folder is ignored: a --test split is never labelled")
    if files.template is not None:
        info, why = read_template(files.template)
        log(f"{files.name}: submission template {safe_text(str(files.template))}: " +
            (f"header {','.join(info['header'])}, {info['rows']} rows" if info else f"not used: {why}"))
    if role == "test" and not files.ids:
        log(f"warning: test split {files.name} has no utterances: a submission for it has 0 rows")


def _width(roles, listings, given: int | None, log) -> tuple[int, dict[str, list]]:
    """The corpus's width from the training files' headers (or `given`), and those headers' shapes
    (read once: ingest sorts by them too)."""
    shapes = {n: [npy_shape(p) for p in listings[n].mfcc] for n, role in roles if role == "train"}
    train = ", ".join(shapes)
    dim = corpus_width((s[1] if s and len(s) == 2 else None for v in shapes.values() for s in v), train, given)
    if dim != FEATURE_DIM or given:
        log(f"feature width: {dim} per frame ({'--feature-dim' if given else 'from the files of ' + train})")
    return dim, shapes


def _reused_width(shards_dir, roles, listings, duplicates, given, inventory) -> int | None:
    """The width the training stores were built with when every one of them is current for it, so a
    rerun with unchanged inputs reads no header; else None (the width comes from the headers)."""
    train = [n for n, role in roles if role == "train"]
    dims = {recorded_width(store_path(shards_dir, n)) for n in train}
    if len(dims) != 1 or None in dims or (given and dims != {given}):
        return None
    dim = dims.pop()
    current = all(store_state(store_path(shards_dir, n), store_fingerprint(listings[n], duplicates.get(n, {}), dim,
                                                                          inventory)) == "current" for n in train)
    return dim if current else None


def _ingest_all(shards_dir, roles, listings, *, workers, strict, progress, log, feature_dim=None,
                inventory: Inventory = F22):
    """Each split's corpus store, reused when its inputs are unchanged and it is complete."""
    duplicates, _ = duplicate_ids(listings, dict(roles))
    reused_dim = _reused_width(shards_dir, roles, listings, duplicates, feature_dim, inventory)
    dim, shapes = (reused_dim, {}) if reused_dim else _width(roles, listings, feature_dim, log)
    if not inventory.matches(F22):
        log(f"symbol inventory: {inventory.describe()}")
    duplicates, shared_test = duplicate_ids(listings, dict(roles))
    for name, ids in shared_test.items():
        log(f"warning: {name}: {len(ids)} test utterance id(s) also occur in another split, e.g. {ids[0]}; "
            "kept (the submission needs every test utterance)")
    stores: dict[str, CorpusStore] = {}
    reused: dict[str, bool] = {}
    for name, role in roles:
        files = listings[name]
        _report_listing(files, role, log)
        path = store_path(shards_dir, name)
        exclude = duplicates.get(name, {})
        state = store_state(path, store_fingerprint(files, exclude, dim, inventory))
        reused[name] = state == "current"
        if reused[name]:
            stores[name] = CorpusStore.open(path)
            log(f"{name}: inputs unchanged, reusing {path}")
        else:
            if state == "damaged":
                log(f"{name}: the store {path} is incomplete or damaged: rebuilding it from the inputs")
            stores[name] = ingest(files, path, workers=workers, strict=strict, progress=progress, exclude=exclude,
                                  dim=dim, shapes=shapes.get(name), inventory=inventory)
        if strict and stores[name].rejections:     # a reused store may hold rejections from a lax run
            r = stores[name].rejections[0]
            raise StrictError(f"{r.path}: {r.reason} (split {r.split}, utterance {r.uid})")
    return stores, reused


def _statistics(shards_dir, train_stores, *, cmn, workers, progress, log) -> st.Stats:
    """The training statistics, recomputed unless stats.json matches the training stores."""
    fp = st.fingerprint([s.fingerprint for s in train_stores], cmn)
    try:
        stats = st.load(shards_dir)
    except st.StatsError as exc:
        log(f"{exc}: recomputing it from the training stores")
        stats = None
    if stats is None or stats.fingerprint != fp:
        stats = st.compute(train_stores, cmn=cmn, workers=workers, progress=progress)
        st.save(stats, shards_dir)
    return stats


def _build_locked(shards_dir, roles, listings, *, options, workers, cmn, strict, progress, log, t0,
                  feature_dim, inventory) -> BuildSummary:
    remove_stale_temps(shards_dir)
    stores, reused = _ingest_all(shards_dir, roles, listings, workers=workers, strict=strict,
                                 progress=progress, log=log, feature_dim=feature_dim, inventory=inventory)
    summary = BuildSummary(rejections=[r for n, _ in roles for r in stores[n].rejections])
    tsv = write_rejections(shards_dir, summary.rejections)
    train_stores = [stores[n] for n, role in roles if role == "train"]
    if not any(s.ids for s in train_stores):
        n_in = sum(s.inputs for s in train_stores)
        raise LayoutError(f"no usable training utterances: all {n_in} input(s) of "
                          f"{', '.join(s.split for s in train_stores)} were rejected; the reasons are in {tsv}")
    for name, role in roles:
        if role == "dev" and not stores[name].ids:
            log(f"warning: dev split {name} has no usable utterances ({stores[name].inputs} inputs; see {tsv}): "
                "training with it stops; fix it or train with --dev ''")
    summary.stats = _statistics(shards_dir, train_stores, cmn=cmn, workers=workers, progress=progress, log=log)
    for name, role in roles:
        s = stores[name]
        m = build_split(s, summary.stats, shards_dir, options, workers=workers, progress=progress)
        summary.splits.append(SplitSummary(split=name, role=role, inputs=s.inputs, kept=m.num_utterances,
                                           rejected=len(s.rejections), shards=len(m.shards),
                                           frames=m.total_frames, reused_store=reused[name]))
    summary.seconds = time.perf_counter() - t0
    return summary
