"""`make train NGPU=N` / `make predict NGPU=N`: torchrun, with the failing rank's one-line error
repeated as the last line.

When a rank fails, torchrun follows the rank's `Error: ...` line with some thirty lines of its
own (`ChildFailedError` and a traceback of the launcher): the line that says what to fix scrolls
away. This runs torchrun unchanged (`python -m phonerec.launch TORCHRUN_ARGS -m phonerec ...`),
passes its output through as it comes, and on failure prints the first rank error again at the
end. Its exit status is torchrun's; signals reach torchrun, which stops its ranks.
"""

from __future__ import annotations

import signal
import subprocess
import sys


def main(argv: list[str]) -> int:
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *argv], stderr=subprocess.PIPE,
                            text=True, errors="replace", bufsize=1)
    for sig in (signal.SIGINT, signal.SIGTERM):         # torchrun stops (and checkpoints) its ranks itself
        signal.signal(sig, lambda s, _f: proc.send_signal(s))
    first = None
    for line in proc.stderr:
        sys.stderr.write(line)
        if first is None and line.startswith("Error: "):
            first = line
    rc = proc.wait()
    if rc != 0 and first is not None:
        sys.stderr.write(f"\n{first}")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
