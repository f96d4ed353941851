"""How every stage reads built shards (the contract's side of it): the options for shards at a URL
and the local cache, declared once, which build their FetchPolicy (pipeline/remote.py); `--quiet`;
the check that a split's shards are all there at the sizes (and digests) its manifest records;
and the one reader of a shard's bytes (ShardReader), which `shards --verify`, the loaders and the
decoding commands share."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import manifest as mf
from . import remote
from .errors import PhonerecError
from .options import Options, Range, option
from .remote import MAX_MANIFEST, MIN_RATE, SHA256, FetchPolicy, parse_size

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
        """The FetchPolicy of these options (their ranges are the fields'; a bad size or digest is a
        ValueError naming the option)."""
        rate, cap = _size_of("--fetch-min-rate", self.fetch_min_rate), _size_of("--max-manifest-size",
                                                                                self.max_manifest_size)
        if rate <= 0 or cap <= 0:
            raise ValueError("--fetch-min-rate and --max-manifest-size must be above 0")
        digest = self.expect_digest.lower() or None
        if digest and not SHA256.fullmatch(digest):
            raise ValueError(f"--expect-digest {self.expect_digest[:80]!r}: not a sha256 (64 hex digits)")
        return FetchPolicy(retries=self.fetch_retries, backoff=self.fetch_backoff, timeout=self.fetch_timeout,
                           min_rate=rate, max_manifest=cap, expect_digest=digest)


@dataclass
class CacheConfig(FetchConfig):
    """FetchConfig plus a local cache of verified shards (stage 2's readers, which read them again)."""

    SECTION = "Shards at a URL"

    shard_cache: str = option("", metavar="DIR",
                              help="Keep verified shards fetched from a URL here; later epochs read them from disk.")
    shard_cache_size: str = option("0", metavar="SIZE",
                                   help="Evict the least recently used cached shards above this size, e.g. 20G "
                                        "(0 = no limit).")

    def fetch_policy(self) -> FetchPolicy:
        return dataclasses.replace(super().fetch_policy(), cache=self.shard_cache or None,
                                   cache_bytes=_size_of("--shard-cache-size", self.shard_cache_size))


def _size_of(option: str, value) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise ValueError(f"{option}: {exc}") from None


def sha256_file(path: Path) -> str:
    """A local file's sha256 (as manifests record it)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _size(location: str, policy: remote.FetchPolicy | None) -> int | None:
    """A shard's size (None: missing); OSError or FetchError when it cannot be asked."""
    if remote.is_url(location):
        return remote.size(location, policy or remote.FetchPolicy())
    try:
        return Path(location).stat().st_size
    except FileNotFoundError:
        return None


def _sizes(locations: list[str], policy: remote.FetchPolicy | None) -> list:
    """Each location's size, None (missing) or the error; at a URL 16 are asked at a time (one
    round trip each: thousands of shards in an object store would otherwise take minutes)."""
    def one(location: str):
        try:
            return _size(location, policy)
        except (OSError, remote.FetchError) as exc:
            return exc
    if locations and remote.is_url(locations[0]):
        with ThreadPoolExecutor(max_workers=16) as pool:
            return list(pool.map(one, locations))
    return [one(loc) for loc in locations]


def _sha256_problem(location: str, expected: str, policy, nbytes: int) -> str | None:
    try:
        digest = sha256_file(Path(location)) if not remote.is_url(location) else \
            hashlib.sha256(remote.read_location(location, policy, size=nbytes)).hexdigest()
    except (OSError, remote.FetchError) as exc:
        return f"unreadable ({getattr(exc, 'strerror', None) or exc})"
    return None if digest == expected else "sha256 differs from the manifest (corrupted or replaced)"


def check_shards(m: mf.Manifest, *, full: bool = False,
                 policy: remote.FetchPolicy | None = None) -> list[tuple[int, str]]:
    """(shard number, problem) for each shard that is missing or whose size differs from the
    manifest; with `full`, also each whose sha256 differs (reads every shard once). Shared by
    `--verify`, training (before step 1) and prediction; shards may be at a URL."""
    problems = []
    locations = m.shard_locations()
    for s, (info, location, size) in enumerate(zip(m.shards, locations, _sizes(locations, policy))):
        if isinstance(size, Exception):
            problems.append((s, f"cannot access ({getattr(size, 'strerror', None) or size})"))
            continue
        if size is None:
            problems.append((s, "missing shard"))
            continue
        if info.sha256 and size != info.bytes:
            problems.append((s, f"{size} bytes, the manifest says {info.bytes} (truncated or replaced)"))
            continue
        if full and info.sha256:
            problem = _sha256_problem(location, info.sha256, policy, info.bytes)
            if problem:
                problems.append((s, problem))
    return problems


# ------------------------------------------------------------------ reading a shard's bytes

class ShardReadError(PhonerecError):
    """A shard that does not hold what its manifest says (missing, truncated, corrupted, replaced).
    Its text is one line also when a DataLoader worker raised it (see error_message)."""

    damaged_input = True

    def __str__(self) -> str:
        return _one_line(super().__str__())


_WORKER_ERROR = re.compile(r"ShardReadError: (.+)$")


def error_message(exc: BaseException) -> str:
    """The one-line message of a ShardReadError, also when a DataLoader worker raised it (the
    DataLoader re-raises it with the worker's whole traceback as its message)."""
    return _one_line(str(exc))


def _one_line(text: str) -> str:
    if "Traceback" in text:
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        found = _WORKER_ERROR.search(lines[-1]) if lines else None
        if found:
            return found.group(1)
    return text


def repair_hint(location: str | Path) -> str:
    """What to do about a damaged shard at this path or URL."""
    root = remote.parent(str(location), 2)
    if remote.is_url(str(location)):
        return (f"run `phonerec shards --verify --shards {root}` to list every damaged shard; rebuild them where the "
                "shards were built and publish them again (`phonerec publish`)")
    return (f"run `phonerec shards --verify --shards {root}` to list every damaged shard, delete them "
            "and rerun `phonerec shards` with the same options to rewrite them")


def _shard_error(location: str, problem: str, after: str = "") -> ShardReadError:
    sep = " " if problem.startswith("has ") else ": "
    return ShardReadError(f"shard {location}{sep}{problem}{after}; {repair_hint(location)}")


def _read_local(m: mf.Manifest, s: int, path: Path) -> bytes:
    """A local shard's bytes, checked against the manifest (Manifest.shard_problem)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ShardReadError(f"missing shard {path}; {repair_hint(path)}") from None
    except OSError as exc:
        raise ShardReadError(f"cannot read shard {path} ({exc.strerror or exc}); {repair_hint(path)}") from None
    problem = m.shard_problem(s, data)
    if problem:
        raise _shard_error(str(path), problem)
    return data


@dataclass
class ShardReader:
    """The one reader of a shard's bytes, beside the cache it keeps them in (remote.ShardCache): a
    local file as it is; a URL with the policy's retries, one more download after a failed
    checksum, and the cache. `read` checks the bytes against the manifest (what the loaders and
    the decoding commands read); `raw` gives them as stored, uncached (what `shards --verify`
    checks itself). `count(name, n)` hears what the reads did (training counts it per process)."""

    policy: FetchPolicy = field(default_factory=FetchPolicy)

    def count(self, name: str, n: int = 1) -> None:
        """Told what each read did (remote.COUNTERS); this reader keeps no count."""

    def raw(self, m: mf.Manifest, s: int) -> bytes:
        """Shard s's bytes as stored, at most its manifest's size + 1 (OSError or FetchError when
        they cannot be read)."""
        return remote.read_location(m.shard_location(s), self.policy, self.count, size=m.shards[s].bytes)

    def read(self, m: mf.Manifest, s: int) -> bytes:
        """Shard s's checked bytes (ShardReadError naming the path or URL when they cannot be had)."""
        location = m.shard_location(s)
        if not m.remote:
            return _read_local(m, s, Path(location))
        info = m.shards[s]
        cache = remote.ShardCache(self.policy.cache, self.policy.cache_bytes) \
            if self.policy.cache and info.sha256 else None
        if cache is not None:
            data = cache.get(info.sha256, info.bytes)
            if data is not None and m.shard_problem(s, data) is None:
                self.count("cache_hits")
                return data
            cache.drop(info.sha256)
        return self._download(m, s, location, cache)

    def _download(self, m: mf.Manifest, s: int, location: str, cache: remote.ShardCache | None) -> bytes:
        """Fetch (with retries); a failed checksum is fetched once more before it is an error."""
        for attempt in (1, 2):
            try:
                data = remote.read_bytes(location, self.policy, self.count, size=m.shards[s].bytes)
            except FileNotFoundError:
                raise ShardReadError(f"missing shard {location}; {repair_hint(location)}") from None
            except remote.FetchError as exc:
                raise ShardReadError(f"{exc}; the shard could not be fetched: check the server and the URL") from None
            problem = m.shard_problem(s, data)
            if problem is None:
                if cache is not None:
                    cache.put(m.shards[s].sha256, data)
                return data
            if attempt == 1:
                self.count("refetched")
        raise _shard_error(location, problem, " (fetched twice)")
