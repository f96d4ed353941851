"""Shards at a URL: reading with retries, a local cache of verified shards, and publishing.

`--shards` may be a local folder or a URL (http://, https://, s3://, gs://, file://; any
protocol fsspec knows). Everything here goes through fsspec: HTTP needs aiohttp (installed with
phonerec), s3:// and gs:// the optional extras `phonerec[s3]` / `phonerec[gcs]`.

Transient failures (connection refused or reset, a body cut short, timeouts, HTTP 5xx, 408, 429)
are retried with exponential backoff a bounded number of times and counted; a missing file (404)
or a refused one (403) is not retried. What still fails raises FetchError naming the URL.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import PhonerecError

URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
DOCUMENTED = ("http", "https", "s3", "gs", "file")
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


class FetchError(PhonerecError):
    """A URL that could not be read after the retries (or at all: missing, refused)."""


def is_url(spec: str | os.PathLike) -> bool:
    return isinstance(spec, str) and URL.match(spec) is not None


def join(base: str, *parts: str) -> str:
    """base/part/part for a URL or a local path (as a string)."""
    if not is_url(base):
        return str(Path(base).joinpath(*parts))
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def parent(location: str, levels: int = 1) -> str:
    """The folder `levels` up from a URL or a local path."""
    if not is_url(location):
        p = Path(location)
        for _ in range(levels):
            p = p.parent
        return str(p)
    cut = location.index("://") + 3
    parts = location[cut:].rstrip("/").split("/")
    return location[:cut] + "/".join(parts[:max(len(parts) - levels, 1)])


@dataclass(frozen=True)
class FetchPolicy:
    """How URLs are read: tries, backoff, timeout, and where verified shards are cached."""

    retries: int = 4              # tries after the first one, for transient failures
    backoff: float = 0.5          # seconds before the first retry; doubled each time, at most 8 s
    timeout: float = 60.0         # seconds to connect, and between two reads of a body
    cache: str | None = None      # folder for verified shards (None: no cache)
    cache_bytes: int = 0          # evict least recently used shards above this size (0: no limit)

    def delay(self, attempt: int) -> float:
        return min(self.backoff * 2 ** attempt, 8.0)


# What a read counts: files fetched, transient failures retried, shards fetched again after a
# failed checksum, cache hits, and bytes fetched. A reader passes count(name, n).
COUNTERS = ("fetched", "retries", "refetched", "cache_hits", "bytes")
Count = Callable[[str, int], None]


def _no_count(name: str, n: int = 1) -> None:
    pass


def filesystem(url: str, timeout: float = 60.0):
    """(fsspec filesystem, path inside it) for a URL; a one-line error names the missing extra."""
    import fsspec
    proto = URL.match(url).group(1).lower()
    kwargs = {}
    if proto in ("http", "https"):
        import aiohttp
        kwargs["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=timeout,
                                                                     sock_read=timeout)}
    try:
        return fsspec.core.url_to_fs(url, **kwargs)
    except ImportError as exc:
        extra = EXTRAS.get(proto)
        hint = f"pip install 'phonerec[{extra}]'" if extra else f"install fsspec's back-end for {proto}://"
        raise FetchError(f"cannot read {url}: {proto}:// needs a package that is not installed ({exc}); {hint}") \
            from None
    except ValueError as exc:
        raise FetchError(f"cannot read {url}: {exc}") from None


def transient(exc: BaseException) -> bool:
    """A failure worth another try: network trouble and server-side errors, not a missing file."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FetchError)):
        return False
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status >= 500 or status in (408, 429)
    if isinstance(exc, (OSError, TimeoutError, asyncio.TimeoutError, ConnectionError, EOFError)):
        return True
    return type(exc).__module__.split(".")[0] in ("aiohttp", "botocore", "google")


def describe(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    text = " ".join(str(exc).split())[:200]
    return f"HTTP {status}" if isinstance(status, int) else f"{type(exc).__name__}: {text}" if text else \
        type(exc).__name__


def with_retries(what: str, fn: Callable, policy: FetchPolicy, count: Count = _no_count):
    """fn() with the policy's retries on transient failures; FetchError naming `what` otherwise."""
    attempt = 0
    while True:
        try:
            return fn()
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified by transient()
            if not transient(exc):
                raise FetchError(f"cannot read {what} ({describe(exc)})") from None
            if attempt >= policy.retries:
                tries = f"{attempt + 1} tries" if attempt else "1 try"
                raise FetchError(f"cannot read {what} after {tries} ({describe(exc)})") from None
            count("retries", 1)
            time.sleep(policy.delay(attempt))
            attempt += 1


def read_bytes(url: str, policy: FetchPolicy = FetchPolicy(), count: Count = _no_count) -> bytes:
    """The whole file at a URL (FileNotFoundError when it does not exist)."""
    fs, path = filesystem(url, policy.timeout)
    data = with_retries(url, lambda: fs.cat_file(path), policy, count)
    count("fetched", 1)
    count("bytes", len(data))
    return data


def read_location(location: str, policy: FetchPolicy | None = None, count: Count = _no_count) -> bytes:
    """A whole file from a local path or a URL (FileNotFoundError when it does not exist)."""
    if is_url(location):
        return read_bytes(location, policy or FetchPolicy(), count)
    return Path(location).read_bytes()


def size(url: str, policy: FetchPolicy = FetchPolicy(), count: Count = _no_count) -> int | None:
    """The size of the file at a URL; None when it does not exist."""
    fs, path = filesystem(url, policy.timeout)
    try:
        info = with_retries(url, lambda: fs.info(path), policy, count)
    except FileNotFoundError:
        return None
    return None if info.get("size") is None else int(info["size"])


class ShardCache:
    """A folder of verified shards named by their sha256, shared by every process of a machine:
    later epochs read them from disk. Above `max_bytes` the least recently used are evicted."""

    def __init__(self, folder: str | os.PathLike, max_bytes: int = 0):
        self.folder, self.max_bytes = Path(folder), int(max_bytes)

    def path(self, sha256: str) -> Path:
        return self.folder / f"{sha256}.tar"

    def get(self, sha256: str, nbytes: int) -> bytes | None:
        """The cached shard (the caller checks its checksum), or None."""
        p = self.path(sha256)
        try:
            data = p.read_bytes()
            os.utime(p)                 # recently used: evicted last
        except OSError:
            return None
        return data if len(data) == nbytes else None

    def drop(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def put(self, sha256: str, data: bytes) -> None:
        """Store a verified shard (temp file + rename: other processes never see half of it), then
        evict. A shard larger than the limit is not kept."""
        if self.max_bytes and len(data) > self.max_bytes:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.path(sha256)
        tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, final)
        except OSError:                 # a full cache disk costs a download, not the run
            tmp.unlink(missing_ok=True)
            return
        self.evict(keep=final)

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Remove the least recently used shards until the folder fits max_bytes."""
        if not self.max_bytes:
            return []
        files = []
        for p in self.folder.glob("*.tar"):
            try:
                st = p.stat()
            except OSError:
                continue
            files.append((st.st_mtime_ns, st.st_size, p))
        total = sum(f[1] for f in files)
        removed = []
        for _, nbytes, p in sorted(files):
            if total <= self.max_bytes:
                break
            if p == keep:
                continue
            p.unlink(missing_ok=True)
            total -= nbytes
            removed.append(p)
        return removed


SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """'20G', '500M', '1.5T', '0' -> bytes (powers of 1024)."""
    if isinstance(text, int):
        return text
    found = SIZE.match(str(text))
    if not found:
        raise ValueError(f"{text!r} is not a size (e.g. 20G, 500M, 0 for no limit)")
    return int(float(found.group(1)) * 1024 ** "_kmgt".index(found.group(2).lower() or "_"))
