"""The one error base class: anything the user can cause and fix ends as a PhonerecError, which
the command line shows as one line (`Error: ...`, exit status 1) instead of a traceback."""

from __future__ import annotations


class PhonerecError(Exception):
    """A problem with the user's data, files or options; its message says what and what to do."""
