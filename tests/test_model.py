"""Model shapes, padding invariance, CTC trainability, and augmentation guarantees."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from pipeline.features import FEATURE_DIM
from pipeline.vocab import BLANK, NUM_CLASSES
from tests.helpers import intermediate_shapes
from training.augment import AugmentConfig, add_noise, spec_augment, speed_perturb
from training.model import (
    PRESETS,
    Model,
    ModelConfig,
    build_model,
    conv_output_length,
    count_parameters,
    describe,
    utterance_normalize,
)

LENGTHS = [1117, 1498, 1520, 1075]
TOTAL = sum(LENGTHS)  # 5210
T_MAX = max(LENGTHS)


def _batch(lengths, seed=0, feat=FEATURE_DIM, pad_value=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), feat, generator=g)
    for i, n in enumerate(lengths):
        x[i, n:] = pad_value
    return x, torch.tensor(lengths, dtype=torch.long)


def _run(model, x, lengths):
    """(log_probs, out_lengths, intermediate shapes) of model(x, lengths), collected with hooks."""
    shapes = intermediate_shapes(model, x, lengths)
    return shapes.pop("log_probs"), shapes.pop("out_lengths"), shapes


# ----------------------------------------------------------------------------- exact shapes

EXPECTED = {
    "model1": dict(emb=[], packed=15, lstm=256, linear=[43]),
    "model2": dict(emb=[64, 128], packed=128, lstm=256, linear=[43]),
    "model3": dict(emb=[64, 128, 256], packed=256, lstm=512, linear=[128, 43]),
}


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_reference_preset_shapes(preset):
    torch.manual_seed(0)
    model = build_model(preset).eval()
    x, lengths = _batch(LENGTHS)
    log_probs, out_lengths, inter = _run(model, x, lengths)
    exp = EXPECTED[preset]
    assert x.shape == (4, 1520, 15)
    assert inter["embeddings"] == [(4, 1520, c) for c in exp["emb"]]
    assert inter["packed"] == (TOTAL, exp["packed"])
    assert inter["lstm_packed"] == (TOTAL, exp["lstm"])
    assert inter["unpacked"] == (4, 1520, exp["lstm"])
    assert inter["linear"] == [(4, 1520, w) for w in exp["linear"]]
    assert log_probs.shape == (4, 1520, NUM_CLASSES) and log_probs.dtype == torch.float32
    assert out_lengths.tolist() == LENGTHS
    assert model.downsampling == 1


def test_default_preset_shapes_and_size():
    torch.manual_seed(0)
    model = build_model("default").eval()
    assert 3_000_000 <= count_parameters(model) <= 6_000_000
    x, lengths = _batch(LENGTHS)
    log_probs, out_lengths, inter = _run(model, x, lengths)
    ds = model.downsampling
    assert ds == 2
    t_out = (T_MAX - 1) // ds + 1  # odd kernels, padding k//2: ceil(T / stride)
    expected_lengths = [(n - 1) // ds + 1 for n in LENGTHS]
    assert out_lengths.tolist() == expected_lengths
    assert inter["embeddings"] == [(4, t_out, 256), (4, t_out, 256)]
    assert inter["packed"] == (sum(expected_lengths), 256)
    assert inter["lstm_packed"] == (sum(expected_lengths), 512)
    assert inter["unpacked"] == (4, t_out, 512)
    assert inter["linear"] == [(4, t_out, 512), (4, t_out, 43)]
    assert log_probs.shape == (4, t_out, NUM_CLASSES)


def test_large_preset_structure():
    """Full size is GPU-only territory; check its config and a shrunken copy's shapes."""
    cfg = PRESETS["large"]
    assert cfg.conv_channels == [1024, 1024] and cfg.conv_kernels == [7, 5] and cfg.conv_strides == [2, 2]
    assert cfg.lstm_hidden == 512 and cfg.lstm_layers == 2 and cfg.classifier_hidden == [4096]
    assert cfg.downsampling == 4
    torch.manual_seed(0)
    model = build_model("large", conv_channels=[16, 16], lstm_hidden=8, classifier_hidden=[32]).eval()
    x, lengths = _batch([37, 40, 1, 2])
    log_probs, out_lengths, inter = _run(model, x, lengths)
    assert out_lengths.tolist() == [10, 10, 1, 1]
    assert inter["embeddings"] == [(4, 20, 16), (4, 10, 16)]
    assert inter["packed"] == (22, 16)
    assert log_probs.shape == (4, 10, NUM_CLASSES)


def test_every_preset_counts_and_describes():
    for name in PRESETS:
        model = build_model(name)
        n = count_parameters(model)
        text = describe(model)
        assert n > 0
        assert f"{n / 1e6:.2f} M parameters" in text
        assert f"x{model.downsampling}" in text
    assert count_parameters(build_model("model1")) < count_parameters(build_model("model3"))


# ------------------------------------------------------------------- lengths and padding

SMALL_STRIDED = dict(
    conv_channels=[12, 16, 16], conv_kernels=[7, 5, 3], conv_strides=[2, 1, 2],
    conv_residual=True, lstm_hidden=8, lstm_layers=2, classifier_hidden=[16],
)


@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
def test_output_lengths_match_each_utterance_alone(norm):
    torch.manual_seed(0)
    model = build_model("default", norm=norm, **SMALL_STRIDED).eval()
    lengths = [1, 2, 3, 4, 5, 8, 9, 31, 64, 65]
    x, lens = _batch(lengths)
    _, out_lengths = model(x, lens)
    for i, n in enumerate(lengths):
        lp_alone, ol_alone = model(x[i : i + 1, :n], torch.tensor([n]))
        assert lp_alone.shape[1] == ol_alone.item() == out_lengths[i].item()
    # and the formula agrees with what nn.Conv1d itself produces
    probe = model.output_lengths(torch.tensor(lengths))
    for n, m in zip(lengths, probe.tolist()):
        t = n
        for k, s in zip(SMALL_STRIDED["conv_kernels"], SMALL_STRIDED["conv_strides"]):
            t = torch.nn.Conv1d(1, 1, k, stride=s, padding=k // 2)(torch.zeros(1, 1, t)).shape[-1]
        assert m == t == model.output_lengths(n)
    assert conv_output_length(10, 5, 2, 2) == 5


@pytest.mark.parametrize("norm", ["layer", "none", "batch"])
def test_batched_equals_alone_in_eval(norm):
    torch.manual_seed(1)
    model = build_model("default", norm=norm, conv_dropout=0.3, lstm_dropout=0.3,
                        classifier_dropout=0.3, **SMALL_STRIDED)
    # Give BatchNorm non-trivial running statistics first.
    x, lens = _batch([50, 41, 33], seed=5)
    model.train()
    with torch.no_grad():
        model(x, lens)
    model.eval()
    lengths = [61, 17, 40, 3]
    x, lens = _batch(lengths, seed=2, pad_value=7.5)  # garbage padding must not leak
    lp, ol = model(x, lens)
    for i, n in enumerate(lengths):
        lp1, ol1 = model(x[i : i + 1, :n], torch.tensor([n]))
        m = ol1.item()
        assert ol[i].item() == m
        torch.testing.assert_close(lp[i, :m], lp1[0], rtol=1e-5, atol=1e-5)


def test_batch_norm_statistics_ignore_padding_in_train_mode():
    """Extra padding must not change train-mode outputs (masked BatchNorm statistics)."""
    torch.manual_seed(3)
    cfg = dict(SMALL_STRIDED, conv_dropout=0.0, lstm_dropout=0.0, classifier_dropout=0.0)
    model = build_model("default", **cfg).train()
    lengths = [30, 21, 25]
    x, lens = _batch(lengths, seed=4)
    padded = torch.cat([x, torch.full((3, 23, FEATURE_DIM), 3.0)], dim=1)
    lp_a, ol_a = model(x, lens)
    mean_a = model.conv[0].norm.running_mean.clone()
    lp_b, ol_b = model(padded, lens)
    assert torch.equal(ol_a, ol_b)
    for i, m in enumerate(ol_a.tolist()):
        torch.testing.assert_close(lp_a[i, :m], lp_b[i, :m], rtol=1e-5, atol=1e-5)
    # second update moved the running mean by the same batch statistic again
    assert not torch.equal(mean_a, model.conv[0].norm.running_mean)


def test_log_probs_are_normalised():
    torch.manual_seed(0)
    model = build_model("default", **SMALL_STRIDED).train()
    x, lens = _batch([20, 13])
    lp, _ = model(x, lens)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(lp.shape[:2]), rtol=1e-5, atol=1e-5)
    assert (lp <= 0).all()


def test_autocast_still_gives_float32_log_probs():
    torch.manual_seed(0)
    model = build_model("model2", lstm_hidden=8).eval()
    x, lens = _batch([20, 13])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp, _ = model(x, lens)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(lp.shape[:2]), rtol=1e-4, atol=1e-4)


def test_accepts_int32_lengths_and_rejects_bad_ones():
    model = build_model("model1", lstm_hidden=4).eval()
    x, _ = _batch([5, 3])
    lp, ol = model(x, torch.tensor([5, 3], dtype=torch.int32))
    assert ol.tolist() == [5, 3] and lp.shape == (2, 5, NUM_CLASSES)
    with pytest.raises(ValueError):
        model(x, torch.tensor([6, 3]))
    with pytest.raises(ValueError):
        model(x, torch.tensor([5, 0]))
    with pytest.raises(ValueError):
        model(x[..., :10], torch.tensor([5, 3]))


def test_forward_returns_log_probs_and_lengths():
    model = build_model("model1", lstm_hidden=4)
    out = model(*_batch([4, 2]))
    assert isinstance(out, tuple) and len(out) == 2


# ------------------------------------------------------------------------------ training

def test_ctc_loss_decreases_when_overfitting_small_default():
    torch.manual_seed(0)
    model = build_model(
        "default", conv_channels=[32, 32], lstm_hidden=32, lstm_layers=2,
        classifier_hidden=[64], conv_dropout=0.0, lstm_dropout=0.0, classifier_dropout=0.0,
    ).train()
    lengths = [80, 64, 72]
    x, lens = _batch(lengths, seed=11)
    g = torch.Generator().manual_seed(12)
    targets = [torch.randint(1, 41, (n,), generator=g) for n in (12, 9, 10)]
    target_lengths = torch.tensor([len(t) for t in targets])
    flat = torch.cat(targets)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        lp, ol = model(x, lens)
        loss = F.ctc_loss(lp.transpose(0, 1), flat, ol, target_lengths, blank=BLANK,
                          reduction="mean", zero_infinity=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses


# ------------------------------------------------------------------------ config / presets

def test_unknown_preset_lists_available():
    with pytest.raises(ValueError) as info:
        build_model("nope")
    for name in PRESETS:
        assert name in str(info.value)
    with pytest.raises(ValueError):
        build_model("model1", not_a_field=3)


def test_config_validation():
    with pytest.raises(ValueError):
        ModelConfig(conv_channels=[8], conv_kernels=[3, 3], conv_strides=[1])
    with pytest.raises(ValueError):
        ModelConfig(conv_channels=[8], conv_kernels=[3], conv_strides=[3])
    with pytest.raises(ValueError):
        ModelConfig(conv_channels=[8], conv_kernels=[4], conv_strides=[1])
    with pytest.raises(ValueError):
        ModelConfig(norm="group")
    with pytest.raises(ValueError):
        ModelConfig(activation="tanh")
    with pytest.raises(ValueError, match="input_norm"):
        ModelConfig(input_norm="global")


def test_utterance_normalization_removes_each_utterance_offset_and_scale():
    """input_norm="utterance": a per-utterance, per-feature affine change of the input (what a
    channel or a speaker's spectral tilt does to MFCCs) does not change the output, and padding
    stays out of the statistics."""
    lengths = [40, 23, 31]
    x, lens = _batch(lengths, seed=3, pad_value=9.0)
    z = utterance_normalize(x, lens)
    for i, n in enumerate(lengths):
        torch.testing.assert_close(z[i, :n].mean(0), torch.zeros(FEATURE_DIM), atol=1e-5, rtol=0)
        torch.testing.assert_close(z[i, :n].var(0, unbiased=False), torch.ones(FEATURE_DIM), atol=1e-3, rtol=0)
        assert torch.all(z[i, n:] == 0)
    torch.manual_seed(0)
    model = build_model("default", input_norm="utterance", **SMALL_STRIDED).eval()
    scale = torch.rand(3, 1, FEATURE_DIM) * 3 + 0.2
    shift = torch.randn(3, 1, FEATURE_DIM) * 5
    with torch.no_grad():
        a, _ = model(x, lens)
        b, _ = model(x * scale + shift, lens)
        plain = build_model("default", **SMALL_STRIDED).eval()
        plain.load_state_dict(model.state_dict())
        c, _ = plain(x * scale + shift, lens)
    for i, n in enumerate(lengths):
        m = model.output_lengths(n)
        torch.testing.assert_close(a[i, :m], b[i, :m], atol=1e-4, rtol=1e-4)
        assert not torch.allclose(a[i, :m], c[i, :m], atol=1e-2)      # without it the shift matters
    assert "per-utterance feature normalization" in describe(model)


def test_config_json_round_trip_and_presets_not_mutated():
    model = build_model("default", lstm_hidden=16)
    blob = json.dumps(dataclasses.asdict(model.config))
    again = Model(ModelConfig.from_dict(json.loads(blob)))
    assert count_parameters(again) == count_parameters(model)
    assert again.config == model.config
    model.config.conv_channels.append(999)
    assert PRESETS["default"].conv_channels == [256, 256]
    with pytest.raises(ValueError):
        ModelConfig.from_dict({"bogus": 1})


def test_residual_projection_and_identity():
    model = build_model("default", conv_channels=[8, 8, 12], conv_kernels=[3, 3, 3],
                        conv_strides=[1, 1, 2], conv_residual=True, lstm_hidden=4)
    skips = [type(b.skip).__name__ for b in model.conv]
    assert skips == ["Conv1d", "Identity", "Conv1d"]
    assert model.conv[2].skip.stride == (2,) and model.conv[2].skip.kernel_size == (1,)
    lp, ol = model(*_batch([9, 4]))
    assert ol.tolist() == [5, 2] and lp.shape[1] == 5


# --------------------------------------------------------------------------- augmentation

def _aug_batch(lengths=(200, 120, 57, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), FEATURE_DIM, generator=g)  # padding is non-zero on purpose
    return x, torch.tensor(lengths)


def test_spec_augment_is_deterministic_and_pure():
    x, lens = _aug_batch()
    before = x.clone()
    a = spec_augment(x, lens, torch.Generator().manual_seed(7))
    b = spec_augment(x, lens, torch.Generator().manual_seed(7))
    c = spec_augment(x, lens, torch.Generator().manual_seed(8))
    assert torch.equal(x, before)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.data_ptr() != x.data_ptr()


def test_spec_augment_masks_stay_inside_lengths_and_budget():
    x, lens = _aug_batch()
    for seed in range(40):
        out = spec_augment(x, lens, torch.Generator().manual_seed(seed), time_masks=2,
                           time_width=1000, freq_masks=2, freq_width=4)
        changed = out != x
        assert torch.all(out[changed] == 0)
        for i, n in enumerate(lens.tolist()):
            assert torch.equal(out[i, n:], x[i, n:]), "padding touched"
            frames_zeroed = (out[i, :n] == 0).all(dim=-1)
            assert frames_zeroed.sum().item() <= int(0.2 * n)
            cols_zeroed = (out[i, :n] == 0).all(dim=0)
            assert cols_zeroed.sum().item() <= 2 * 4


def test_spec_augment_actually_masks_time_and_frequency():
    x, lens = _aug_batch(lengths=(400, 400))
    out = spec_augment(x, lens, torch.Generator().manual_seed(0), time_masks=2, time_width=40,
                       freq_masks=2, freq_width=4)
    hits_t = hits_f = 0
    for seed in range(20):
        out = spec_augment(x, lens, torch.Generator().manual_seed(seed))
        hits_t += int((out[0] == 0).all(dim=-1).any())
        hits_f += int((out[0] == 0).all(dim=0).any())
    assert hits_t > 10 and hits_f > 10


def test_add_noise_only_on_real_frames():
    x, lens = _aug_batch()
    before = x.clone()
    a = add_noise(x, lens, torch.Generator().manual_seed(3), std=0.1)
    b = add_noise(x, lens, torch.Generator().manual_seed(3), std=0.1)
    assert torch.equal(x, before) and torch.equal(a, b)
    for i, n in enumerate(lens.tolist()):
        assert torch.equal(a[i, n:], x[i, n:])
    diff = (a - x)[0, :200]
    assert diff.abs().min() > 0
    assert 0.08 < diff.std().item() < 0.12


def test_augment_config_takes_the_run_config():
    from training.config import TrainConfig
    cfg = TrainConfig(time_masks=5, time_width=7, freq_masks=1, freq_width=2, noise_std=0.2, spec_augment=False)
    aug = AugmentConfig.from_train(cfg)
    assert (aug.spec_augment, aug.time_masks, aug.time_width, aug.freq_masks, aug.freq_width) == (False, 5, 7, 1, 2)
    assert aug.noise and aug.noise_std == 0.2 and aug.active
    quiet = AugmentConfig.from_train(TrainConfig(spec_augment=False))
    assert not quiet.noise and not quiet.active
    # no second set of defaults: a bare AugmentConfig is the default run's
    assert AugmentConfig() == AugmentConfig.from_train(TrainConfig())


def test_speed_perturb_resamples_each_utterance_within_its_range():
    gen = lambda: torch.Generator().manual_seed(3)    # noqa: E731
    lens = torch.tensor([100, 37, 1, 80])
    x = torch.randn(4, 100, 5)
    x[1, 37:] = x[2, 1:] = x[3, 80:] = 0
    y, new = speed_perturb(x, lens, gen(), change=0.1)
    y2, new2 = speed_perturb(x, lens, gen(), change=0.1)
    assert torch.equal(y, y2) and torch.equal(new, new2)            # seeded
    assert y.shape == (4, int(new.max()), 5) and new.dtype == lens.dtype
    for i, (n, m) in enumerate(zip(lens.tolist(), new.tolist())):
        assert round(n / 1.1) <= m <= round(n / 0.9)
        assert torch.allclose(y[i, 0], x[i, 0]) and torch.allclose(y[i, m - 1], x[i, n - 1], atol=1e-6)
        assert (y[i, m:] == 0).all()                                 # padding stays zero
        lo, hi = x[i, :n].min(0).values, x[i, :n].max(0).values     # interpolation: within the frames' range
        assert ((y[i, :m] >= lo - 1e-6) & (y[i, :m] <= hi + 1e-6)).all()
    assert new.tolist() != lens.tolist()
    # a constant utterance stays constant; change 0 is the identity
    c, nc = speed_perturb(torch.ones(1, 50, 2), torch.tensor([50]), gen(), change=0.5)
    assert torch.allclose(c[0, : int(nc[0])], torch.ones(1, 2))
    same, n0 = speed_perturb(x, lens, gen(), change=0.0)
    assert torch.equal(same, x) and torch.equal(n0, lens)
    aug = AugmentConfig(spec_augment=False, speed_perturb=0.1)
    assert aug.active and aug.resample(x, lens, gen())[1].tolist() == new.tolist()


def test_augment_config_apply():
    x, lens = _aug_batch()
    before = x.clone()
    cfg = AugmentConfig(spec_augment=True, noise=True, noise_std=0.05)
    json.dumps(dataclasses.asdict(cfg))
    a = cfg.apply(x, lens, torch.Generator().manual_seed(1))
    b = cfg.apply(x, lens, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(x, before)
    for i, n in enumerate(lens.tolist()):
        assert torch.equal(a[i, n:], x[i, n:])
    off = AugmentConfig(spec_augment=False, noise=False)
    assert not off.active
    same = off.apply(x, lens, torch.Generator().manual_seed(1))
    assert torch.equal(same, x) and same.data_ptr() != x.data_ptr()


def test_cpu_dropout_keeps_the_distribution_and_the_gradient():
    """training.blocks.dropout (the cheaper CPU masks): each element kept with probability 1 - p and
    scaled by 1 / (1 - p), the gradient through the same mask, identity in eval mode, and the
    same masks again from the same seed."""
    from training.blocks import Dropout, dropout
    p = 0.3
    torch.manual_seed(0)
    x = torch.ones(400, 500, requires_grad=True)
    y = dropout(x, p, True)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())                        # d(sum)/dx is the scaled mask
    torch.manual_seed(0)
    assert torch.equal(dropout(x, p, True), y)
    assert torch.equal(dropout(x, p, False), x) and torch.equal(dropout(x, 0.0, True), x)
    layer = Dropout(p).eval()
    assert torch.equal(layer(x), x) and layer.state_dict() == {}
