"""One error boundary (the `phonerec` group) and one rule for the exit status, for every command:
0 done, 1 the work failed, 2 a usage error (an option or recipe value refused before any work),
130 interrupted (tested with each interruptible command: shards, train, sweep)."""

from __future__ import annotations

import pytest

from phonerec.cli import main
from pipeline.cli_options import FieldOption
from tests.helpers import assert_one_line_error, assert_usage_error, cli

COMMANDS = sorted(main.commands)
# A reading command's required arguments beside the option under test.
FILES = {"transcribe": ["missing.npy"]}


def out_of_range(command: str) -> tuple[str, str]:
    """The first option of `command` with a lower bound and a value below it; else an option it
    does not have (publish and summary have no bounded option)."""
    for p in main.commands[command].params:
        r = isinstance(p, FieldOption) and p.field.metadata.get("range")
        if r and r.low is not None:
            return p.opts[0], str(int(r.low) - 1)
    return "--no-such-option", "1"


def test_every_command_is_here():
    assert COMMANDS == sorted(["synth-corpus", "synth-speech", "shards", "publish", "train", "sweep", "predict",
                               "evaluate", "transcribe", "lm", "summary"])


@pytest.mark.parametrize("command", COMMANDS)
def test_a_value_out_of_range_is_a_usage_error(command, tmp_path):
    flag, value = out_of_range(command)
    (tmp_path / "missing.npy").write_bytes(b"")
    res = cli(command, flag, value, *[tmp_path / f for f in FILES.get(command, [])], ok=False)
    assert_usage_error(res, flag)


LOCATED = ["shards", "train", "sweep", "predict", "evaluate", "lm"]


@pytest.mark.parametrize("command", LOCATED)
def test_a_password_in_a_url_is_a_usage_error_for_every_reader(command, tmp_path):
    extra = ["--space", tmp_path / "s.yaml", "--study", "s"] if command == "sweep" else []
    (tmp_path / "s.yaml").write_text("lr: {type: float, low: 0.001, high: 0.01}\n")
    verify = ["--verify"] if command == "shards" else []
    res = cli(command, *verify, "--shards", "http://user:secret@127.0.0.1:9/shards", *extra, ok=False)
    line = assert_usage_error(res, "--shards")
    assert "secret" not in res.output and line


@pytest.mark.parametrize("command", ["train", "predict", "evaluate", "lm"])
def test_shards_that_are_not_there_are_the_work_failing(command, tmp_path):
    res = cli(command, "--shards", tmp_path / "none", "--weights", tmp_path / "w", *(
        ["--results", tmp_path / "r"] if command != "lm" else []), "--quiet", ok=False)
    assert_one_line_error(res, str(tmp_path / "none"))


def test_a_space_with_several_problems_lists_each_and_exits_1(tmp_path):
    """The boundary shows a PhonerecError's details above its message (sweep's space: one line per key)."""
    (tmp_path / "s.yaml").write_text("nope: {type: float, low: 0, high: 1}\nlr: {type: float, low: -1, high: 2}\n")
    res = cli("sweep", "--space", tmp_path / "s.yaml", "--study", "s", "--shards", tmp_path, "--dry-run", ok=False)
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert res.exit_code == 1 and len(errors) == 2 and "nope" in errors[0] and "lr" in errors[1], res.output
