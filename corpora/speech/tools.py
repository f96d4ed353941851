"""What the speech corpus needs installed, and the one error that says what is missing and how to get it.

Its own module so that the sentence source and the synthesizers (sentences, engines) can both raise
it without importing each other.
"""

from __future__ import annotations

from pipeline.errors import PhonerecError

INSTALL_SCRIPT = "scripts/install-speech-tools.sh"
APT_PACKAGES = ("flite", "espeak-ng", "festival", "festvox-kallpc16k", "festvox-kdlpc16k", "festvox-us-slt-hts",
                "fortunes-min", "fortunes")


class MissingToolError(PhonerecError):
    """A synthesizer or the sentence source is not installed."""


def _missing(what: str, package: str) -> MissingToolError:
    return MissingToolError(
        f"{what} not found: install the speech tools with `bash {INSTALL_SCRIPT}` "
        f"(as root; on Debian/Ubuntu: apt-get install -y {' '.join(APT_PACKAGES)}; needed here: {package})")
