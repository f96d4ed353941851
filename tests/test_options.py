"""Every option declared once (pipeline/options.py): each command's flags come from a config
dataclass field, so a flag's default is the field's, its range is enforced on the command line and
in a recipe alike, and no command declares an option of its own beside the few listed here."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from phonerec.cli import main
from pipeline.cli_options import FieldOption
from pipeline.options import default_of, flag_of, from_dict
from training.config import TrainConfig, train_config

ROOT = Path(__file__).resolve().parents[1]
# The only parameters that are not config fields: a recipe file, model overrides, files to decode.
OWN = {("train", "config_file"), ("train", "model_set"), ("sweep", "config_file"), ("sweep", "model_set"),
       ("transcribe", "files")}
COMMANDS = sorted(main.commands)


def field_options():
    for name in COMMANDS:
        for p in main.commands[name].params:
            if isinstance(p, FieldOption):
                yield name, p


def test_every_parameter_is_a_config_field():
    stray = [(name, p.name) for name in COMMANDS for p in main.commands[name].params
             if not isinstance(p, FieldOption) and (name, p.name) not in OWN]
    assert not stray, stray
    assert len(list(field_options())) > 100


@pytest.mark.parametrize("command,param", [(c, p.name) for c, p in field_options()])
def test_default_is_the_fields(command, param):
    [p] = [q for q in main.commands[command].params if q.name == param]
    want = default_of(p.field)
    have = p.default
    if p.required:
        assert p.field.metadata["required"] and not isinstance(have, str)   # no default (left out: an error)
        return
    if p.field.metadata["path"]:
        have = have or ""                   # click is given None for '' (it would check that '' exists)
    assert have == (tuple(want) if p.multiple else want), (command, param)
    assert p.name == p.field.name and p.opts[0] == flag_of(p.field) or "/" in (p.field.metadata["flag"] or "")


def _outside(rng, integer: bool):
    """Values just outside a Range."""
    step = 1 if integer else 0.5
    out = []
    if rng.low is not None:
        out.append(rng.low if rng.open_low else rng.low - step)
    if rng.high is not None:
        out.append(rng.high + step)
    return [int(v) if integer else v for v in out]


RANGED = [(c, p.name, v) for c, p in field_options() if p.field.metadata["range"] is not None
          for v in _outside(p.field.metadata["range"], isinstance(default_of(p.field), int))]


@pytest.mark.parametrize("command,param,value", RANGED)
def test_range_is_enforced_on_the_command_line(tmp_path, command, param, value):
    [p] = [q for q in main.commands[command].params if q.name == param]
    extra = []
    if command == "transcribe":
        (tmp_path / "x.npy").write_bytes(b"")
        extra = [str(tmp_path / "x.npy")]
    if command == "sweep":              # its required options, so that the value is what is refused
        (tmp_path / "space.yaml").write_text("lr: {type: float, low: 0.001, high: 0.01}\n")
        extra = ["--space", str(tmp_path / "space.yaml"), "--study", "s", "--results", str(tmp_path / "r"),
                 "--weights", str(tmp_path / "w")]
    res = CliRunner().invoke(main, [command, p.opts[0], str(value), *extra], catch_exceptions=False)
    assert res.exit_code == 2, res.output
    assert "Invalid value" in res.output and p.opts[0] in res.output, res.output


@pytest.mark.parametrize("param,value", [(p, v) for c, p, v in RANGED if c == "train"])
def test_range_is_enforced_in_a_recipe(tmp_path, param, value):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"{param}: {value}\n")
    with pytest.raises(ValueError, match=f"^{recipe}: {param} \\(--{param.replace('_', '-')}\\)"):
        train_config(recipe, {}, set(), {})
    with pytest.raises(ValueError, match=param):
        from_dict(TrainConfig, {param: value})


@pytest.mark.parametrize("command,param", [(c, p.name) for c, p in field_options()
                                           if isinstance(p.type, click.Choice)])
def test_choices_are_enforced(tmp_path, command, param):
    [p] = [q for q in main.commands[command].params if q.name == param]
    assert p.type.choices
    res = CliRunner().invoke(main, [command, p.opts[0], "no-such-choice"])
    assert res.exit_code == 2 and "Invalid value" in res.output


def test_recipe_keys_are_the_fields_and_flags_override_it(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 3\nlr: 0.01\nmodel: {lstm_layers: 2, lstm_hidden: 64}\n")
    cfg = train_config(recipe, {"epochs": 7, "lr": 2e-3, "seed": 0}, {"epochs"}, {"lstm_hidden": 32})
    assert (cfg.epochs, cfg.lr, cfg.model) == (7, 0.01, {"lstm_layers": 2, "lstm_hidden": 32})
    recipe.write_text("epoch: 3\n")
    with pytest.raises(ValueError, match="unknown config key.*epoch"):
        train_config(recipe, {}, set(), {})


def test_every_recipe_key_has_a_flag_or_is_model():
    flags = {p.name for p in main.commands["train"].params}
    assert {f.name for f in dataclasses.fields(TrainConfig)} - flags == {"model"}


def test_help_renders_and_preset_sizes_are_generated():
    runner = CliRunner()
    for name in COMMANDS:
        res = runner.invoke(main, [name, "--help"])
        assert res.exit_code == 0 and "Usage:" in res.output, name
    from training.model import PRESETS, preset_help, preset_parameters
    text = preset_help()
    for name in PRESETS:
        assert f"{name} {preset_parameters(name) / 1e6:.2f} M" in text


def test_no_command_module_declares_an_option_by_hand():
    """click.option appears only for the parameters that are not config fields (OWN)."""
    found = []
    for path in [*ROOT.glob("*/commands.py"), ROOT / "phonerec" / "summary.py", ROOT / "pipeline" / "cli_options.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "option" \
                    and isinstance(node.args[0], ast.Constant):          # not click_options' *decls of a field
                found.append((path.parent.name, node.args[0].value))
    assert sorted(found) == [("pipeline", "--config"), ("pipeline", "--set")], found      # recipe_options


def test_a_required_option_left_out_is_a_usage_error(tmp_path):
    (tmp_path / "shards").mkdir()
    required = [(c, p) for c, p in field_options() if p.required]
    assert ("publish", "to") in [(c, p.name) for c, p in required]
    res = CliRunner().invoke(main, ["publish", "--shards", str(tmp_path / "shards")])
    assert res.exit_code == 2 and "Missing option '--to'" in res.output, res.output
    from pipeline.config import PublishConfig
    with pytest.raises(ValueError, match=r"^to \(--to\): is required"):
        PublishConfig(shards=str(tmp_path / "shards"))


def test_choices_are_enforced_in_a_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    for text, key in (("scheduler: cosin\n", "scheduler"), ("preset: nope\n", "preset")):
        recipe.write_text(text)
        with pytest.raises(ValueError, match=f"^{recipe}: {key} \\(--{key}\\): '(nope|cosin)' is not one of"):
            train_config(recipe, {}, set(), {})


def test_a_checkpoints_config_is_read_unchecked():
    """Trained where 4 x the cores allowed 64 workers: a resume on a smaller machine still reads it
    (the plan is pinned to the checkpoint's workers)."""
    cfg = TrainConfig.from_checkpoint({"workers": 64, "seed": 3, "retired_option": 1})
    assert (cfg.workers, cfg.seed, cfg.epochs) == (64, 3, TrainConfig().epochs)
    with pytest.raises(ValueError, match="workers"):
        TrainConfig(workers=10_000)


@pytest.mark.parametrize("args", [["transcribe", "--plot", "{dir}", "{npy}"], ["synth-corpus", "--data", "{npy}"],
                                  ["publish", "--shards", "{npy}", "--to", "{dir}/x"]])
def test_path_options_are_checked_before_any_work(tmp_path, args):
    (tmp_path / "x.npy").write_bytes(b"")
    argv = [a.format(dir=tmp_path, npy=tmp_path / "x.npy") for a in args]
    res = CliRunner().invoke(main, argv)
    assert res.exit_code == 2 and "Invalid value" in res.output, res.output


FLOATS = [(c, p.name) for c, p in field_options() if p.field.metadata["range"] is not None
          and not isinstance(default_of(p.field), int)]


@pytest.mark.parametrize("command,param", FLOATS)
def test_nan_is_out_of_every_range(tmp_path, command, param):
    """NaN compares false with both bounds, so a range check alone let it through (--alpha nan decoded);
    a usage error (exit 2) on every command, train's too, as is inf."""
    [p] = [q for q in main.commands[command].params if q.name == param]
    extra = []
    if command == "transcribe":
        (tmp_path / "x.npy").write_bytes(b"")
        extra = [str(tmp_path / "x.npy")]
    if command == "sweep":              # its required options, so that the value is what is refused
        (tmp_path / "space.yaml").write_text("lr: {type: float, low: 0.001, high: 0.01}\n")
        extra = ["--space", str(tmp_path / "space.yaml"), "--study", "s", "--results", str(tmp_path / "r"),
                 "--weights", str(tmp_path / "w")]
    res = CliRunner().invoke(main, [command, p.opts[0], "nan", *extra], catch_exceptions=False)
    assert res.exit_code == 2 and "nan is not a number" in res.output, res.output
    res = CliRunner().invoke(main, [command, p.opts[0], "inf", *extra], catch_exceptions=False)
    assert res.exit_code == 2 and f"'{p.opts[0]}': inf is not" in res.output, res.output
