"""The error classes a user can cause and fix. The `phonerec` group (phonerec/cli.py), the one
error boundary, shows each as one line instead of a traceback, with one rule for the exit status:

    0    done
    1    the work failed (`Error: ...`: a damaged or missing file, a server, a full disk)
    2    a usage error: an option or recipe value refused before any work
    130  interrupted (Ctrl-C, SIGTERM): what was finished is kept (and said)
"""

from __future__ import annotations


class PhonerecError(Exception):
    """A problem with the user's data, files or options; its message says what and what to do.
    `details`: lines shown before it (e.g. every problem of a search space, the last one the message)."""

    exit_code = 1
    details: tuple[str, ...] = ()
    damaged_input = False          # a damaged or missing input file (a shard): a decoding command then wrote nothing


class UsageProblem(PhonerecError, ValueError):
    """An option or recipe value refused before any work (exit status 2)."""

    exit_code = 2


class Interrupted(PhonerecError):
    """Ctrl-C or SIGTERM stopped the command; the message (possibly empty) says what it keeps
    (exit status 130, which scripts tell from a finished run)."""

    exit_code = 130
