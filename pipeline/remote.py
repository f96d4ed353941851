"""Shards at a URL: reading with retries, a local cache of verified shards, and publishing.

`--shards` may be a local folder or a URL (http://, https://, s3://, gs://, file://; any
protocol fsspec knows). Everything here goes through fsspec: HTTP needs aiohttp (installed with
phonerec), s3:// and gs:// the optional extras `phonerec[s3]` / `phonerec[gcs]`.

The server is not trusted (README: Trust). Every read is bounded: a shard is streamed up to
the size its manifest records (a Content-Length that disagrees is refused before the body; a body
that runs on is cut at one byte over), anything else up to `FetchPolicy.max_manifest`, and every
fetch has an overall deadline of `timeout + size / min_rate` seconds besides the per-read timeout.
Transient failures (connection refused or reset, a body cut short, a stall, timeouts, HTTP 5xx,
408, 429) are retried with exponential backoff a bounded number of times and counted; only a
404/410 is a missing file, and a 403 or any other 4xx is not retried. What still fails raises
FetchError naming the URL. HTTP(S) is read with the standard library (one stream per fetch, every
status seen as it is); other protocols through fsspec.

Every path built from outside data (a manifest's shard names, a cache file's name, a publish
target's keys) goes through `confined`, which proves the result lies under its root.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import posixpath
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import atomic
from .errors import PhonerecError

URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
DOCUMENTED = ("http", "https", "s3", "gs", "file")
SHA256 = re.compile(r"[0-9a-f]{64}")    # a sha256 as manifests, indexes and cache names write it
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


class FetchError(PhonerecError):
    """A URL that could not be read after the retries (or at all: missing, refused)."""


class Oversized(FetchError):
    """A server that announces or sends more bytes than may be read (never retried)."""


class ConfinementError(PhonerecError, ValueError):
    """A path built from outside data that would leave its root (`../`, an absolute name)."""


def is_url(spec: str | os.PathLike) -> bool:
    return isinstance(spec, str) and URL.match(spec) is not None


# scheme://user:password@ (the userinfo: no '/', no space, before the first '@' of the authority)
_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]*@")
# the schemes of the locations phonerec reads and writes (shards, corpora): their URLs hold no credentials
_LOCATIONS = ("http", "https", "s3", "s3a", "gs", "gcs", "file", "ftp", "sftp", "hf", "memory")
CREDENTIALS_BELONG = {
    "s3": "for s3:// they belong in the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) "
          "or ~/.aws/credentials",
    "gs": "for gs:// they belong in the environment (GOOGLE_APPLICATION_CREDENTIALS) or `gcloud auth "
          "application-default login`",
}


def redact(text: str) -> str:
    """`text` with the user name and password of every URL in it replaced by ***: what every message
    and log line about a location goes through (the command line applies it to every error)."""
    return _USERINFO.sub(r"\1***@", text)


def refuse_credentials(spec: str | os.PathLike, option: str = "") -> None:
    """A URL that holds a user name or password is refused (FetchError, the URL redacted): they
    would be printed and logged, and an HTTP reader would take them for the host name. Where
    they belong instead: the environment or the provider's configuration."""
    if not is_url(spec) or _USERINFO.match(str(spec)) is None:
        return
    proto = URL.match(spec).group(1).lower()
    if proto not in _LOCATIONS:                 # not a place phonerec reads from (a database: `sweep --storage`)
        return
    key = "s3" if proto in ("s3", "s3a") else "gs" if proto in ("gs", "gcs") else proto
    where = CREDENTIALS_BELONG.get(key, f"{proto}:// is read without a login: serve the shards openly, or publish "
                                   "them to s3:// or gs://, whose credentials come from the environment")
    name = f"{option} " if option else ""
    raise FetchError(f"{name}{redact(str(spec))}: a URL may not hold a user name or password (they would show in "
                     f"messages and logs); {where}")


def join(base: str, *parts: str) -> str:
    """base/part/part for a URL or a local path (as a string)."""
    if not is_url(base):
        return str(Path(base).joinpath(*parts))
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def confined(root: str | os.PathLike, *parts: str) -> str:
    """root/part/part, proven to lie strictly under root: a local path (symlinks resolved) or a URL
    (its path normalized: an s3/gs key prefix, a folder on a server). ConfinementError otherwise."""
    for part in parts:
        if not isinstance(part, str) or not part or "\\" in part or "\0" in part or part.startswith("/") or \
                any(c in part for c in "\r\n"):
            raise ConfinementError(f"{part!r} is not a relative path under {root}")
    if not is_url(str(root)):
        base = Path(root).resolve()
        out = base.joinpath(*parts).resolve()
        if out == base or not out.is_relative_to(base):
            raise ConfinementError(f"{'/'.join(parts)!r} leaves {root}")
        return str(Path(root).joinpath(*parts))
    root = str(root)
    cut = root.index("://") + 3
    head, _, path = root[cut:].partition("/")
    base = posixpath.normpath("/" + path) if path else "/"
    out = posixpath.normpath(posixpath.join(base, *parts))
    if out == base or not out.startswith(base.rstrip("/") + "/"):
        raise ConfinementError(f"{'/'.join(parts)!r} leaves {root}")
    return join(root, *parts)


PIN = re.compile(r"#sha256=([0-9a-fA-F]{64})$")


def unpin(spec: str | os.PathLike, policy: FetchPolicy | None = None) -> tuple[str | os.PathLike, str | None]:
    """(location without a `#sha256=<digest>` suffix, the digest to require: the suffix's or the
    policy's expect_digest). FetchError when both are given and differ."""
    found = PIN.search(str(spec)) if isinstance(spec, str) else None
    given = policy.expect_digest.lower() if policy is not None and policy.expect_digest else None
    if found is None:
        return spec, given
    digest = found.group(1).lower()
    if given is not None and given != digest:
        raise FetchError(f"{spec}: its #sha256= digest and --expect-digest differ; give one")
    return spec[:found.start()], digest


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


SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """'20G', '500M', '1.5T', '0' -> bytes (powers of 1024)."""
    if isinstance(text, int):
        return text
    found = SIZE.match(str(text))
    if not found:
        raise ValueError(f"{text!r} is not a size (e.g. 20G, 500M, 0 for no limit)")
    return int(float(found.group(1)) * 1024 ** "_kmgt".index(found.group(2).lower() or "_"))


# The defaults of --fetch-min-rate and --max-manifest-size as the options write them.
MIN_RATE = "64K"
MAX_MANIFEST = "64M"


@dataclass(frozen=True)
class FetchPolicy:
    """How URLs are read: tries, backoff, timeout, and where verified shards are cached."""

    retries: int = 4              # tries after the first one, for transient failures
    backoff: float = 0.5          # seconds before the first retry; doubled each time, at most 8 s
    timeout: float = 60.0         # seconds to connect, and between two reads of a body
    cache: str | None = None      # folder for verified shards (None: no cache)
    cache_bytes: int = 0          # evict least recently used shards above this size (0: no limit)
    # A fetch slower than this on average (after `timeout` seconds of grace) is stalled: retried.
    min_rate: int = parse_size(MIN_RATE)          # bytes/s
    # A manifest, index.json or report larger than this is refused (the largest real manifest,
    # train-clean-360's, is about 15 MB).
    max_manifest: int = parse_size(MAX_MANIFEST)
    # sha256 of the index.json `phonerec publish` printed (--expect-digest, or URL#sha256=...): every
    # manifest read must then be the one that index lists, and every shard its sha256.
    expect_digest: str | None = None

    def delay(self, attempt: int) -> float:
        return min(self.backoff * 2 ** attempt, 8.0)

    def deadline(self, nbytes: int) -> float:
        """Seconds one fetch of `nbytes` may take in all (a stalled server cannot hang a run)."""
        return self.timeout + nbytes / self.min_rate


# What a read counts: files fetched, transient failures retried, shards fetched again after a
# failed checksum, cache hits, and bytes fetched. A reader passes count(name, n).
COUNTERS = ("fetched", "retries", "refetched", "cache_hits", "bytes")
Count = Callable[[str, int], None]


def _no_count(name: str, n: int = 1) -> None:
    pass


def filesystem(url: str, timeout: float = 60.0):
    """(fsspec filesystem, path inside it) for a URL; a one-line error names the missing extra."""
    import fsspec
    refuse_credentials(url)
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
    if isinstance(exc, (OSError, TimeoutError, asyncio.TimeoutError, ConnectionError, EOFError,
                        http.client.HTTPException)):
        return True
    return type(exc).__module__.split(".")[0] in ("aiohttp", "botocore", "google")


def describe(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    text = redact(" ".join(str(exc).split()))[:200]
    return f"HTTP {status}" if isinstance(status, int) else f"{type(exc).__name__}: {text}" if text else \
        type(exc).__name__


def with_retries(what: str, fn: Callable, policy: FetchPolicy, count: Count = _no_count):
    """fn() with the policy's retries on transient failures; FetchError naming `what` otherwise."""
    attempt = 0
    while True:
        try:
            return fn()
        except (FileNotFoundError, FetchError):
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


CHUNK = 1 << 20


def _is_http(url: str) -> bool:
    return URL.match(url).group(1).lower() in ("http", "https")


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only (urllib would also follow one to ftp://), and never to a URL
    with a user name or password (they would go to the resolver as a host name)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not newurl.lower().startswith(("http://", "https://")) or redact(newurl) != newurl:
            raise urllib.error.HTTPError(redact(newurl), code, f"redirect to {redact(newurl)[:100]} refused", headers,
                                         fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


# No proxies from the environment (as aiohttp, which read http(s):// before, ignored them too).
_OPENER = urllib.request.build_opener(_Redirects(), urllib.request.ProxyHandler({}))


def _http_open(url: str, policy: FetchPolicy, method: str = "GET"):
    """The response to one request; 404/410 raise FileNotFoundError, other statuses the HTTPError
    (its .status says whether it is transient)."""
    req = urllib.request.Request(url, method=method, headers={"Accept-Encoding": "identity",
                                                              "User-Agent": "phonerec"})
    try:
        return _OPENER.open(req, timeout=policy.timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code in (404, 410):
            raise FileNotFoundError(f"HTTP {exc.code}: {url}") from None
        raise


def _declared(n, limit: int, exact: bool, url: str) -> None:
    """Refuse before the body when the announced size is not what may be read."""
    if n is None:
        return
    if exact and n != limit:
        raise Oversized(f"cannot read {url}: the server announces {n} bytes, the manifest says {limit} "
                        "(replaced, or another build's file)")
    if not exact and n > limit:
        raise Oversized(f"cannot read {url}: {n} bytes, over the {limit / 2**20:.0f} MiB limit on manifests and "
                        "indexes (--max-manifest-size)")


def _drain(read1, url: str, limit: int, exact: bool, policy: FetchPolicy, started: float) -> bytes:
    """Read with read1(n) up to limit + 1 bytes, within the fetch's deadline."""
    buf = bytearray()
    deadline = started + policy.deadline(limit)
    while True:
        chunk = read1(min(CHUNK, limit + 1 - len(buf)))
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit:
            what = "the size its manifest records" if exact else "the limit on manifests and indexes, " \
                "--max-manifest-size"
            raise Oversized(f"cannot read {url}: the server sent more than {limit} bytes ({what})")
        if time.monotonic() > deadline:
            raise TimeoutError(f"stalled: {len(buf)} of {limit if exact else '?'} bytes in "
                               f"{time.monotonic() - started:.0f} s, slower than --fetch-min-rate")
    if exact and len(buf) != limit:
        raise EOFError(f"body cut short: {len(buf)} of {limit} bytes")
    return bytes(buf)


def _http_get(url: str, limit: int, exact: bool, policy: FetchPolicy) -> bytes:
    started = time.monotonic()
    with _http_open(url, policy) as resp:
        length = resp.headers.get("Content-Length")
        try:
            _declared(None if length is None else int(length), limit, exact, url)
        except ValueError:
            raise FetchError(f"cannot read {url}: Content-Length {length[:40]!r} is not a number") from None
        return _drain(resp.read1, url, limit, exact, policy, started)


def _fs_get(fs, path: str, url: str, limit: int, exact: bool, policy: FetchPolicy) -> bytes:
    started = time.monotonic()
    with fs.open(path, "rb") as f:
        size = getattr(f, "size", None)
        _declared(None if size is None else int(size), limit, exact, url)
        return _drain(f.read, url, limit, exact, policy, started)


def read_bytes(url: str, policy: FetchPolicy = FetchPolicy(), count: Count = _no_count,
               size: int | None = None) -> bytes:
    """The file at a URL, exactly `size` bytes (a shard: its manifest's size) or at most the policy's
    manifest limit; FileNotFoundError when it does not exist (404/410), FetchError otherwise."""
    refuse_credentials(url)             # never sent anywhere: not to a resolver, not to a server
    limit, exact = (int(size), True) if size is not None else (policy.max_manifest, False)
    if _is_http(url):
        fn = lambda: _http_get(url, limit, exact, policy)  # noqa: E731
    else:
        fs, path = filesystem(url, policy.timeout)
        fn = lambda: _fs_get(fs, path, url, limit, exact, policy)  # noqa: E731
    data = with_retries(url, fn, policy, count)
    count("fetched", 1)
    count("bytes", len(data))
    return data


def read_location(location: str, policy: FetchPolicy | None = None, count: Count = _no_count,
                  size: int | None = None) -> bytes:
    """A file from a local path or a URL, bounded as read_bytes bounds it (FileNotFoundError when
    it does not exist)."""
    policy = policy or FetchPolicy()
    if is_url(location):
        return read_bytes(location, policy, count, size)
    limit = size if size is not None else policy.max_manifest
    with open(location, "rb") as f:
        found = os.fstat(f.fileno()).st_size
        if size is None and found > limit:
            raise Oversized(f"cannot read {location}: {found} bytes, over the {limit / 2**20:.0f} MiB limit on "
                            "manifests and indexes (--max-manifest-size)")
        return f.read(limit + 1)


def _http_size(url: str, policy: FetchPolicy) -> int | None:
    with _http_open(url, policy, "HEAD") as resp:
        length = resp.headers.get("Content-Length")
        return int(length) if length is not None and length.isdigit() else None


def size(url: str, policy: FetchPolicy = FetchPolicy(), count: Count = _no_count) -> int | None:
    """The size of the file at a URL; None when it does not exist (404/410). A server error is
    retried as any other read."""
    refuse_credentials(url)
    if _is_http(url):
        try:
            return with_retries(url, lambda: _http_size(url, policy), policy, count)
        except FileNotFoundError:
            return None
    fs, path = filesystem(url, policy.timeout)
    try:
        info = with_retries(url, lambda: fs.info(path), policy, count)
    except FileNotFoundError:
        return None
    return None if info.get("size") is None else int(info["size"])


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:             # another user's process
        return True
    return True


class ShardCache:
    """A folder of verified shards named by their sha256, shared by every process of a machine:
    later epochs read them from disk. Above `max_bytes` the least recently used are evicted."""

    def __init__(self, folder: str | os.PathLike, max_bytes: int = 0):
        self.folder, self.max_bytes = Path(folder), int(max_bytes)
        self.remove_orphans()

    def remove_orphans(self) -> list[Path]:
        """Temp files of writers that died mid-put (a loader worker is killed when a run stops):
        those of a process still running are another rank's writes in progress and stay."""
        removed = []
        for p in self.folder.glob(".*.tar.tmp*"):
            pid = atomic.temp_writer(p.name)
            if pid is not None and not _running(pid):
                p.unlink(missing_ok=True)
                removed.append(p)
        return removed

    def path(self, sha256: str) -> Path:
        """The cached file of a shard: its name is a sha256 (64 lowercase hex digits, nothing else)
        and the path is proven to lie in the cache folder."""
        if not isinstance(sha256, str) or not SHA256.fullmatch(sha256):
            raise ConfinementError(f"{str(sha256)[:80]!r} is not a sha256: no cache file is named after it")
        return Path(confined(self.folder, f"{sha256}.tar"))

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
        tmp = atomic.temp_name(final)
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
