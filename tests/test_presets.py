"""The recipes' components (embedding blocks, locked dropout, pyramidal BiLSTM layers), the presets
built from them, and old checkpoints' compatibility: exact downsampled lengths, outputs that do
not depend on batch padding or on how the LSTM is run, parameter counts, training and resume."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline import manifest as mf
from pipeline.features import FEATURE_DIM
from pipeline.vocab import BLANK, NUM_CLASSES
from tests.helpers import (MAX_FRAMES, TRAIN, assert_same_run, cli, load_last, train_and_stop, train_args,
                           train_config)
from training.model import (PRESETS, Model, ModelConfig, build_model, count_parameters,
                            describe, preset_config, preset_parameters)
from training.plan import BatchOptions, plan_epoch
from training.recurrent import BiLSTMStack, LockedDropout

NEW = ("f22-best", "s24-pblstm", "f22-best-cpu", "s24-pblstm-cpu")
CAP = 20_000_000                  # the course's parameter cap


def _batch(lengths, seed=0, pad_value=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), FEATURE_DIM, generator=g)
    for i, n in enumerate(lengths):
        x[i, n:] = pad_value
    return x, torch.tensor(lengths, dtype=torch.long)


def narrow(preset: str, **overrides) -> dict:
    """Overrides that keep a preset's parts and depth at test widths (8-16 channels)."""
    cfg = PRESETS[preset]
    small = dict(conv_channels=[8 + 4 * i for i in range(len(cfg.conv_channels))], lstm_hidden=8,
                 classifier_hidden=[16] * len(cfg.classifier_hidden))
    return {**small, **overrides}


def small(preset: str, **overrides) -> Model:
    return build_model(preset, **narrow(preset, **overrides))


# (preset, overrides at test widths, expected downsampling): every factor reached through conv
# strides, pyramidal layers or both, and each new component switched on alone on top of `default`.
CASES = {
    "x1-resnet-locked": ("default", dict(conv_strides=[1, 1], embed_block="resnet", embed_blocks=2,
                                         locked_dropout=0.3), 1),
    "x2-pblstm-only": ("model2", dict(lstm_layers=2, pblstm_layers=1), 2),
    "x2-default-convnext": ("default", dict(embed_block="convnext", embed_blocks=2), 2),
    "x2-default-locked": ("default", dict(locked_dropout=0.3), 2),
    "x4-default-pblstm": ("default", dict(pblstm_layers=1), 4),
    "x4-f22-best": ("f22-best", {}, 4),
    "x4-s24-pblstm": ("s24-pblstm", {}, 4),
    "x8-f22-best-pblstm": ("f22-best", dict(pblstm_layers=1), 8),
    "x8-s24-strided": ("s24-pblstm", dict(conv_strides=[2, 1]), 8),
}
ODD_T = [1, 2, 3, 5, 8, 9, 16, 31, 33]          # T = 33: odd at every level
EVEN_T = [40, 1, 7, 12, 39, 17]                 # T = 40


def _warm_batch_norm(model: Model) -> Model:
    """One train-mode forward so that BatchNorm's running statistics are not the identity."""
    model.train()
    with torch.no_grad():
        model(*_batch([50, 41, 33], seed=5))
    return model.eval()


@pytest.mark.parametrize("lengths", [ODD_T, EVEN_T], ids=["odd", "even"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_lengths_exact_and_each_utterance_alone_gives_the_same(case, lengths):
    preset, overrides, ds = CASES[case]
    torch.manual_seed(0)
    model = _warm_batch_norm(build_model(preset, **narrow(preset, conv_dropout=0.3, classifier_dropout=0.3,
                                                          **overrides)))
    assert model.downsampling == ds
    x, lens = _batch(lengths, seed=2, pad_value=7.5)           # garbage padding must not leak
    with torch.no_grad():
        lp, ol = model(x, lens)
    expected = [math.ceil(n / ds) for n in lengths]
    assert ol.tolist() == expected
    assert lp.shape == (len(lengths), math.ceil(max(lengths) / ds), NUM_CLASSES)
    assert model.output_lengths(lens).tolist() == expected
    assert [model.output_lengths(n) for n in lengths] == expected
    for i, n in enumerate(lengths):
        with torch.no_grad():
            lp1, ol1 = model(x[i : i + 1, :n], torch.tensor([n]))
        assert ol1.item() == expected[i] == lp1.shape[1]
        torch.testing.assert_close(lp[i, : expected[i]], lp1[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset", NEW)
def test_packed_and_masked_lstm_agree(preset):
    """The GPU path (packed) and the CPU path (masked) compute the same numbers, in eval mode and
    in train mode from the same seed (the locked dropout masks are drawn alike on both)."""
    torch.manual_seed(0)
    model = small(preset)
    x, lens = _batch([23, 9, 16, 1, 22], seed=3, pad_value=-4.0)
    outs = {}
    for mode in ("eval", "train"):
        for impl in ("packed", "masked"):
            model.lstm_impl = impl
            getattr(model, mode)()
            torch.manual_seed(11)
            with torch.no_grad():
                outs[mode, impl] = model(x, lens)
    for mode in ("eval", "train"):
        (a, la), (b, lb) = outs[mode, "packed"], outs[mode, "masked"]
        assert torch.equal(la, lb)
        for i, m in enumerate(la.tolist()):
            torch.testing.assert_close(a[i, :m], b[i, :m], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(outs["eval", "masked"][0], outs["train", "masked"][0])   # dropout was on


# ------------------------------------------------------------------------- locked dropout

def test_locked_dropout_mask_is_constant_over_time_and_differs_across_utterances():
    drop = LockedDropout(0.5).train()
    torch.manual_seed(0)
    y = drop(torch.ones(6, 40, 64))
    assert set(y.unique().tolist()) == {0.0, 2.0}                  # kept channels scaled by 1/(1-p)
    assert torch.equal(y, y[:, :1].expand_as(y))                   # the same mask at every frame
    masks = {tuple(row.tolist()) for row in y[:, 0]}
    assert len(masks) == 6                                         # its own mask per utterance
    assert 0.35 < (y == 0).float().mean().item() < 0.65
    torch.manual_seed(0)
    assert torch.equal(drop(torch.ones(6, 40, 64)), y)             # torch's RNG: a seed repeats it
    assert torch.equal(drop.eval()(y), y)


def test_locked_dropout_sits_between_the_bilstm_layers():
    """What the second BiLSTM layer gets is the first's output with whole channels of an
    utterance dropped for all its frames (nn.LSTM's own dropout drops frames independently)."""
    torch.manual_seed(0)
    model = small("f22-best", locked_dropout=0.5, lstm_hidden=16, conv_dropout=0.0).train()
    model.lstm_impl = "packed"          # so the per-layer nn.LSTM modules run (and their hooks fire)
    assert isinstance(model.lstm, BiLSTMStack) and len(model.lstm.layers) == 2
    seen = {}
    model.lstm.layers[0].register_forward_hook(lambda m, i, o: seen.__setitem__("out0", o[0]))
    model.lstm.layers[1].register_forward_pre_hook(lambda m, i: seen.__setitem__("in1", i[0]))
    x, lens = _batch([60, 44, 52, 60])
    model(x, lens)
    unpack = torch.nn.utils.rnn.pad_packed_sequence
    out0, _ = unpack(seen["out0"], batch_first=True)
    in1, n = unpack(seen["in1"], batch_first=True)
    dropped = [in1[i, : n[i]] == 0 for i in range(4)]
    for i, d in enumerate(dropped):
        assert torch.equal(d, d[:1].expand_as(d)), "mask changes over time"
        kept = ~d[0]
        torch.testing.assert_close(in1[i, : n[i], kept], 2 * out0[i, : n[i], kept])
    assert len({tuple(d[0].tolist()) for d in dropped}) == 4
    assert 0.3 < torch.stack([d[0] for d in dropped]).float().mean().item() < 0.7


# ---------------------------------------------------------------------------- parameters

# The presets' sizes when they were written (15 features and 43 classes; 28 and 41): a change of
# a preset's shape shows here. A new preset needs no entry: its count is computed.
KNOWN_PARAMETERS: dict[str, tuple[int, int]] = {
    "model1": (159_531, 172_329),
    "model2": (321_387, 325_033),
    "model3": (1_334_379, 1_338_281),
    "default": (4_843_307, 4_862_249),
    "large": (22_328_363, 22_413_353),
    "f22-best": (19_761_451, 19_769_897),
    "s24-pblstm": (19_042_731, 19_045_673),
    "f22-best-cpu": (2_537_771, 2_544_553),
    "s24-pblstm-cpu": (2_817_995, 2_820_969),
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_parameter_counts_are_computed_as_built(preset):
    """preset_parameters (the meta device, for --help) counts what the built model has."""
    counts = tuple(count_parameters(build_model(preset, input_dim=d, num_classes=c)) for d, c in ((15, 43), (28, 41)))
    assert counts == (preset_parameters(preset), preset_parameters(preset, 28, 41))
    assert counts == KNOWN_PARAMETERS.get(preset, counts)
    if preset in ("f22-best", "s24-pblstm"):
        assert max(counts) < CAP
    if preset.endswith("-cpu"):
        assert 2_000_000 < min(counts) and max(counts) < 3_000_000


def test_train_help_shows_each_preset_and_its_size():
    text = "".join(cli("train", "--help").output.split())      # click wraps (also at hyphens)
    for name in PRESETS:
        assert f"{name}{preset_parameters(name) / 1e6:.2f}M" in text, name


def test_describe_names_the_new_parts():
    text = describe(build_model("f22-best-cpu"))
    assert "2 convnext block(s) at 192" in text and "locked dropout 0.2" in text and "x4" in text
    text = describe(build_model("s24-pblstm-cpu"))
    assert "all pyramidal" in text and "x4" in text
    assert "last 1 pyramidal" in describe(build_model("default", pblstm_layers=1))


# ------------------------------------------------------------------------ configuration

def test_each_component_switches_on_alone_on_default():
    base = PRESETS["default"]
    assert build_model("default", locked_dropout=0.2).downsampling == 2
    assert build_model("default", pblstm_layers=1).downsampling == 4
    assert build_model("default", pblstm_layers=3).downsampling == 16
    for kind in ("convnext", "resnet"):
        model = build_model("default", embed_block=kind, embed_blocks=2)
        assert len(model.embed) == 2 and model.downsampling == base.downsampling
    # pyramidal layers are the last ones: the first keeps the stem's width as its input
    stack = build_model("default", pblstm_layers=1).lstm
    assert [lstm.input_size for lstm in stack.layers] == [256, 512, 1024]


@pytest.mark.parametrize("overrides, words", [
    (dict(embed_block="convnext"), "embed_blocks"),
    (dict(embed_blocks=2), "embed_block"),
    (dict(embed_block="dense", embed_blocks=1), "embed_block must be one of"),
    (dict(pblstm_layers=4), "pblstm_layers"),
    (dict(pblstm_layers=-1), "pblstm_layers"),
    (dict(locked_dropout=1.0), "locked_dropout"),
    (dict(locked_dropout=0.3, lstm_layers=1), "lstm_layers >= 2"),
])
def test_config_validation(overrides, words):
    with pytest.raises(ValueError, match=words):
        preset_config("default", **overrides)


@pytest.mark.parametrize("preset, strides, lstm_layers, skips", [
    ("default", [2, 1], 3, True), ("large", [2, 2], 2, False)])
def test_old_checkpoint_configs_build_todays_model(preset, strides, lstm_layers, skips):
    """A config saved before the new fields existed rebuilds the same modules under the same keys."""
    old = {k: v for k, v in PRESETS[preset].to_dict().items()
           if k not in ("embed_block", "embed_blocks", "locked_dropout", "pblstm_layers")}
    model = Model(ModelConfig.from_dict(old))
    conv = [f"conv.{i}.{k}" for i in range(len(strides)) for k in
            ["conv.weight", "norm.weight", "norm.bias", "norm.running_mean", "norm.running_var",
             *(["skip.weight", "skip.bias"] if skips and i == 0 else [])]]
    lstm = [f"lstm.{w}_l{layer}{d}" for layer in range(lstm_layers) for d in ("", "_reverse")
            for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    linears = [f"linears.{i}.{k}" for i in range(2) for k in ("weight", "bias")]
    assert list(model.state_dict()) == conv + lstm + linears
    assert isinstance(model.lstm, torch.nn.LSTM) and model.lstm.num_layers == lstm_layers
    assert count_parameters(model) == KNOWN_PARAMETERS[preset][0]
    assert model.downsampling == math.prod(strides)


def test_ctc_feasibility_counts_the_pyramidal_halvings():
    """Training leaves out what the model cannot align: at x8 (x4 stem, one pyramidal layer) a
    40-frame utterance has 5 output frames, too few for 6 labels; at x4 it would fit."""
    from training.train import ctc_infeasible
    m = SimpleNamespace(labelled=True, num_utterances=3, frames=np.array([80, 40, 17]),
                        ctc_lens=np.array([10, 6, 3]), label_lens=np.array([10, 6, 3]))
    x8 = small("f22-best", pblstm_layers=1)
    assert x8.downsampling == 8
    assert ctc_infeasible(x8, m).tolist() == [False, True, False]
    assert ctc_infeasible(small("f22-best"), m).tolist() == [False, False, False]


# ------------------------------------------------------------------------------ training

@pytest.mark.parametrize("preset", ["f22-best-cpu", "s24-pblstm-cpu"])
def test_adam_steps_learn_a_fixed_batch(preset):
    """60 Adam steps on one batch, dropout on: after a few steps the loss sits near 3.2 (what the
    output biases alone reach); the whole model learning the batch takes it well below that."""
    torch.manual_seed(0)
    model = build_model(preset).train()
    x, lens = _batch([160, 128, 144], seed=11)
    g = torch.Generator().manual_seed(12)
    targets = [torch.randint(1, NUM_CLASSES - 2, (n,), generator=g) for n in (12, 9, 10)]
    target_lengths = torch.tensor([len(t) for t in targets])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        lp, ol = model(x, lens)
        loss = F.ctc_loss(lp.transpose(0, 1), torch.cat(targets), ol, target_lengths, blank=BLANK)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    plateau = min(losses[:10])
    assert 2.5 < plateau < losses[0] and losses[-1] < 0.5 * plateau, losses


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("preset", ["f22-best-cpu", "s24-pblstm-cpu"])
def test_resume_with_a_new_preset_is_exact(fast, tmp_path, preset):
    """Stopped mid-epoch and resumed: bit-identical to the uninterrupted run, dropout masks
    (locked ones included) and all: they come from the RNG state the checkpoint restores."""
    _, shards = fast
    model = dict(conv_channels=[16, 16], lstm_hidden=16, classifier_hidden=[32] * len(PRESETS[preset].classifier_hidden))
    sets = [a for k, v in model.items() for a in ("--set", f"{k}={v}")]
    a, b = tmp_path / "a", tmp_path / "b"
    common = ("--epochs", "2", "--dev", "", *sets)
    cli(*train_args(shards, a, *common, preset=preset))
    steps = plan_epoch(mf.load(shards, TRAIN), seed=0, epoch=0, rank=0, world=1, workers=0,
                       opts=BatchOptions(max_frames=MAX_FRAMES)).steps
    k = steps // 2 + 1
    assert 0 < k < steps
    train_and_stop(train_config(shards, b, preset=preset, epochs=2, dev="", model=model), after=k)
    assert (load_last(b).epoch, load_last(b).step) == (0, k)
    res = cli(*train_args(shards, b, *common, "--resume", preset=preset))
    assert f"resumed at epoch 1, step {k}" in res.output
    assert load_last(b).model_config["locked_dropout"] > 0
    assert_same_run(a, b)
