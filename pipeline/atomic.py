"""Atomic file writes: readers only ever see a complete file under its final name."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from .errors import PhonerecError

# Errors that mean "the disk (or the user's quota) is full".
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class WriteError(OSError, PhonerecError):
    """A write failed (e.g. a full disk); the previous file under the final name is intact. A
    PhonerecError, so any `phonerec` command shows it as one line, whichever command it escapes from."""

    def __init__(self, code: int | None, message: str):
        OSError.__init__(self, code, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def disk_full_error(exc: OSError, what: str | os.PathLike) -> WriteError:
    """A full-disk OSError as a WriteError naming what was being written and what to do."""
    if isinstance(exc, WriteError):
        return exc
    return WriteError(exc.errno, f"no space left on device while writing {what} ({exc.strerror or exc}); "
                      "the previous version (if any) is intact: free some space and rerun")


def temp_name(final: Path) -> Path:
    """Where `atomic_path` writes before the rename."""
    return final.with_name(f".{final.name}.tmp{os.getpid()}")


_TEMP_NAME = re.compile(r"\..+\.tmp(\d+)")


def is_temp_name(name: str) -> bool:
    """A name `temp_name` makes (any pid): the only hidden files a cleanup may remove."""
    return _TEMP_NAME.fullmatch(name) is not None


def temp_writer(name: str) -> int | None:
    """The pid whose write a `temp_name` file is (None: not such a name)."""
    found = _TEMP_NAME.fullmatch(name)
    return int(found.group(1)) if found else None


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `final`; rename it over `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if disk_full(exc):
            raise disk_full_error(exc, final) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(final: str | os.PathLike, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_json(final: str | os.PathLike, obj) -> None:
    write_bytes(final, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())


def write_text(final: str | os.PathLike, text: str) -> None:
    write_bytes(final, text.encode())


def ensure_writable(folder: str | os.PathLike) -> Path:
    """Create `folder` (and its parents) if needed and prove a file can be written in it (a probe
    file with a temp name, created and deleted at once), so a command that writes there later
    fails now, with one line naming the folder, rather than after its work (decoding, training)."""
    import tempfile

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=f".tmp{os.getpid()}", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        why = exc.strerror or str(exc)
        if isinstance(exc, (FileExistsError, NotADirectoryError)):
            why = f"{why}: it or a folder above it is a file"
        raise WriteError(exc.errno, f"cannot write to the folder {folder} ({why}); choose a writable folder "
                         "or fix its permissions") from None
    return folder


LOCK_NAME = ".lock"
_HELD: dict[Path, int] = {}      # folders this process holds the lock of, and how many holders


class FolderBusy(PhonerecError):
    """Another process writes the folder now (its lock is held): one writer per folder."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, writer: str, hint: str) -> Iterator[None]:
    """One writer per folder: an advisory lock on FOLDER/.lock naming its holder (pid, host, start
    time), held for the block. The kernel releases it when the holder dies, so a lock left by a
    process that is gone (a crash, kill -9) never blocks a rerun. Re-entrant within a process
    (train holds its folders while it chooses the decoding). `writer` (e.g. "phonerec train") is
    written in the lock for the next one's FolderBusy, which also says `hint` (what to do)."""
    import fcntl
    import socket
    import time

    folder = Path(folder)
    key = folder.resolve()
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / LOCK_NAME, "a+")  # noqa: SIM115 - held open for the block: the lock
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            who = " ".join(fh.read().split())[:200] or "another process"
            raise FolderBusy(f"{folder} is in use by another command ({who}): one writer per folder; {hint}") \
                from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{writer}, pid {os.getpid()} on {socket.gethostname()}, started "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]
    finally:
        fh.close()           # releases the lock


@contextlib.contextmanager
def folder_locks(folders, writer: str, hint: str) -> Iterator[None]:
    """folder_lock on each folder (WEIGHTS and RESULTS may be one)."""
    with contextlib.ExitStack() as stack:
        for folder in folders:
            stack.enter_context(folder_lock(folder, writer, hint))     # a second name of one folder: re-entrant
        yield
