"""FlowMo loss on hand-made videos and the latent-only Adam guidance on a tiny frozen predictor."""

import math

import pytest
import torch

from tokentrim_core import FlowMoConfig, applies, flowmo_guidance, motion_variance


def video(frames_at_00, shape=(1, 4, 1, 2, 2)):
    """A video that is 0 everywhere except pixel (0, 0) of channel 0, which takes the given values."""
    x = torch.zeros(shape)
    x[0, :, 0, 0, 0] = torch.tensor(frames_at_00)
    return x


def test_static_and_constant_velocity_give_zero():
    static = torch.randn(2, 1, 3, 4, 4).repeat(1, 5, 1, 1, 1)
    assert float(motion_variance(static, (2, 2))) == 0.0
    base, velocity = torch.randn(1, 1, 3, 4, 4), torch.randn(1, 1, 3, 4, 4)
    moving = base + torch.arange(5.0).view(1, 5, 1, 1, 1) * velocity  # |x[f+1]-x[f]| = |v| for every f
    assert float(motion_variance(moving, (2, 2))) == pytest.approx(0.0, abs=1e-5)


def test_jump_has_known_variance():
    # pixel (0,0): 0, 0, 0, 3 -> changes 0, 0, 3 -> mean 1, population variance (1 + 1 + 4) / 3 = 2
    x = video([0.0, 0.0, 0.0, 3.0])
    assert float(motion_variance(x, (1, 1))) == pytest.approx(2.0)  # tokens [2, 0, 0, 0], max 2
    assert float(motion_variance(x, (2, 2))) == pytest.approx(2.0 / 4)  # one token, mean over the 2x2 patch
    two_channels = video([0.0, 0.0, 0.0, 3.0], shape=(1, 4, 2, 2, 2))
    assert float(motion_variance(two_channels, (1, 1))) == pytest.approx(1.0)  # mean over channels
    batch = torch.cat([x, torch.zeros_like(x)])
    assert float(motion_variance(batch, (1, 1))) == pytest.approx(1.0)  # mean over the batch
    for temperature in (0.5, 1.0, 4.0):
        e = math.exp(2.0 / temperature)
        expected = 2.0 * e / (e + 3.0)  # softmax weights over tokens [2, 0, 0, 0]
        got = motion_variance(x, (1, 1), reduce="softmax", temperature=temperature)
        assert float(got) == pytest.approx(expected)


def test_too_few_frames_and_bad_grid():
    with pytest.raises(ValueError, match="at least 3 frames"):
        motion_variance(torch.zeros(1, 2, 1, 2, 2), (1, 1))
    with pytest.raises(ValueError, match="not divisible"):
        motion_variance(torch.zeros(1, 3, 1, 3, 2), (2, 2))


def frozen_predictor(dtype=torch.float32):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(4, 4, kernel_size=(3, 1, 1), padding=(1, 0, 0)).to(dtype)
    conv.requires_grad_(False)

    def predict_x0(x, grad):  # [B, F, C, H, W] -> [B, F, C, H, W]; grad: whether autograd must see it
        assert torch.is_grad_enabled() or not grad
        return conv(x.transpose(1, 2)).transpose(1, 2)

    return conv, predict_x0


def test_guidance_lowers_loss_and_leaves_weights_alone():
    conv, predict = frozen_predictor()
    before = {k: v.clone() for k, v in conv.state_dict().items()}
    x_t = torch.randn(1, 3, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    x_copy = x_t.clone()
    cfg = FlowMoConfig(mode="first_block", iterations=10, lr=0.05)
    with torch.no_grad():  # how the pipelines call it
        guided = flowmo_guidance(x_t, predict, cfg, (2, 2))
    x_new, losses = guided.latent, guided.losses
    assert len(losses) == cfg.iterations + 1
    assert losses[-1] < losses[0]
    assert min(losses) < losses[0]
    assert torch.equal(x_t, x_copy)  # input untouched
    assert x_new.shape == x_t.shape and not x_new.requires_grad
    for k, v in conv.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in conv.parameters())
    # keep_best: the returned latent is the lowest-loss one
    assert float(motion_variance(predict(x_new, False), (2, 2))) == pytest.approx(min(losses), rel=1e-5)


def test_guidance_default_settings_take_small_steps():
    _, predict = frozen_predictor()
    x_t = torch.randn(1, 3, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    guided = flowmo_guidance(x_t, predict, FlowMoConfig(mode="first_block"), (2, 2))
    assert len(guided.losses) == 2  # FlowMo's inference setting: one Adam step, then the stepped latent
    # Adam's first step moves each entry by lr (its bias-corrected update is lr * sign(grad))
    assert float((guided.latent - x_t).abs().max()) <= 1e-3 + 1e-6
    assert guided.losses[1] < guided.losses[0]  # the step lowered the loss and was kept
    assert not torch.equal(guided.latent, x_t)


def test_keep_last_and_dtype():
    _, predict = frozen_predictor(torch.float64)
    x_t = torch.randn(1, 3, 4, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    cfg = FlowMoConfig(mode="every_block", iterations=4, lr=0.5, keep_best=False)
    guided = flowmo_guidance(x_t, predict, cfg, (2, 2))
    assert guided.latent.dtype == torch.float64
    x0 = predict(guided.latent, False)
    assert float(motion_variance(x0, (2, 2))) == pytest.approx(guided.losses[-1], rel=1e-5)
    assert torch.equal(guided.x0, x0)


def test_inference_mode_is_refused():
    _, predict = frozen_predictor()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="no_grad"):
        flowmo_guidance(torch.zeros(1, 3, 4, 4, 4), predict, FlowMoConfig(mode="first_block"), (2, 2))


def test_applies():
    assert not any(applies(FlowMoConfig(), b) for b in range(3))
    assert [applies(FlowMoConfig(mode="first_block"), b) for b in range(3)] == [True, False, False]
    assert all(applies(FlowMoConfig(mode="every_block"), b) for b in range(3))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("mode", "always", "mode must be one of"),
        ("steps", [0], "steps must be a tuple"),
        ("steps", (0, -1), "steps must be a tuple"),
        ("steps", (1, 1), "must not repeat"),
        ("iterations", 0, "iterations must be an int >= 1"),
        ("lr", 0.0, "lr must be"),
        ("reduce", "mean", "reduce must be one of"),
        ("temperature", 0.0, "temperature must be"),
        ("keep_best", "yes", "keep_best must be a bool"),
        ("scope", "frames", "scope must be one of"),
        ("checkpointing", "on", "checkpointing must be a bool, got 'on'"),
    ],
)
def test_config_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        FlowMoConfig(**{field: value})


def test_config_needs_a_step_when_on():
    assert FlowMoConfig(steps=()).mode == "off"
    with pytest.raises(ValueError, match="at least one step"):
        FlowMoConfig(mode="first_block", steps=())


def test_keep_best_returns_an_earlier_latent_when_steps_overshoot():
    _, predict = frozen_predictor()
    x_t = torch.randn(1, 3, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    # lr far too large: the loss oscillates, so the best latent is not the last one
    guided = flowmo_guidance(x_t, predict, FlowMoConfig(mode="first_block", iterations=6, lr=0.5), (2, 2))
    losses = guided.losses
    assert min(losses) < losses[-1]
    assert float(motion_variance(predict(guided.latent, False), (2, 2))) == pytest.approx(
        min(losses), rel=1e-5
    )
    assert torch.equal(
        guided.x0, predict(guided.latent, False)
    )  # the kept latent's own x0, not the last one's
    guided = flowmo_guidance(x_t, predict, FlowMoConfig(mode="first_block", iterations=6, lr=3.0), (2, 2))
    assert min(guided.losses) == guided.losses[0]  # every step made it worse: the input comes back unchanged
    assert torch.equal(guided.latent, x_t)
    assert torch.equal(guided.x0, predict(x_t, False))


def test_only_the_chosen_rows_move_and_the_loss_sees_the_scored_rows():
    _, predict = frozen_predictor()
    x_t = torch.randn(1, 9, 4, 4, 4, generator=torch.Generator().manual_seed(4))
    cfg = FlowMoConfig(mode="every_block", iterations=3, lr=0.05)
    guided = flowmo_guidance(x_t, predict, cfg, (2, 2), frames=range(3, 6), scored=range(3, 6))
    assert torch.equal(guided.latent[:, :3], x_t[:, :3]) and torch.equal(guided.latent[:, 6:], x_t[:, 6:])
    assert not torch.equal(guided.latent[:, 3:6], x_t[:, 3:6])
    x0 = predict(guided.latent, False)
    assert torch.equal(guided.x0, x0)  # the whole prediction, for the caller's denoising step
    assert float(motion_variance(x0[:, 3:6], (2, 2))) == pytest.approx(min(guided.losses), rel=1e-5)
    assert guided.losses[0] == pytest.approx(float(motion_variance(predict(x_t, False)[:, 3:6], (2, 2))))
    # scored on every row (a Rolling Forcing window's joint optimisation): the first loss is the whole video's
    joint = flowmo_guidance(x_t, predict, cfg, (2, 2), frames=[3, 4, 5, 6, 7, 8])
    assert joint.losses[0] == pytest.approx(float(motion_variance(predict(x_t, False), (2, 2))))
    assert torch.equal(joint.latent[:, :3], x_t[:, :3])


def test_legacy_is_the_named_setting_before_issue_22():
    cfg = FlowMoConfig.legacy(mode="every_block", steps=(0, 1))
    assert (cfg.iterations, cfg.scope, cfg.checkpointing) == (3, "block", True)
    assert (cfg.mode, cfg.steps, cfg.lr) == ("every_block", (0, 1), 1e-3)
    assert FlowMoConfig.legacy(iterations=2).iterations == 2  # a field given explicitly wins
    default = FlowMoConfig()
    assert (default.iterations, default.scope, default.checkpointing) == (1, "window", None)
