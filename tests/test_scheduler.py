"""Flow-matching table and warped steps against the numbers of docs/spec.md#flow-matching-schedule."""

import pytest
import torch

from tokentrim.wan import FlowMatchSchedule


def test_table_endpoints():
    s = FlowMatchSchedule(shift=5.0)
    assert s.timesteps.shape == (1000,) and s.timesteps.dtype == torch.float32
    assert s.timesteps[0].item() == 1000.0
    assert s.sigmas[999].item() == pytest.approx(0.0049801, abs=1e-7)
    assert s.timesteps[999].item() == pytest.approx(4.98008, abs=1e-5)
    assert bool((s.timesteps[1:] < s.timesteps[:-1]).all())
    # entry 250: s = 0.75 -> sigma = 5*0.75/(1+4*0.75) = 0.9375
    assert s.sigmas[250].item() == 0.9375


def test_warped_steps_equal_the_spec():
    s = FlowMatchSchedule(shift=5.0)
    sf = s.warp([1000, 750, 500, 250]).tolist()
    rf = s.warp([1000, 800, 600, 400, 200]).tolist()
    assert sf == pytest.approx([1000.0, 937.5, 833.3333, 625.0], abs=1e-4)
    assert rf == pytest.approx([1000.0, 952.38104, 882.35291, 769.23077, 555.55560], abs=1e-4)
    assert s.warp([0]).tolist() == [0.0]


def test_x0_and_noise_conventions():
    s = FlowMatchSchedule(shift=5.0)
    x0 = torch.randn(1, 3, 2, 4, 4)
    eps = torch.randn(1, 3, 2, 4, 4)
    t = s.warp([750]).expand(1, 3)
    sigma = 0.9375
    xt = s.add_noise(x0, eps, t)
    torch.testing.assert_close(xt, (1 - sigma) * x0 + sigma * eps)
    # a perfect flow prediction v = eps - x0 recovers x0
    torch.testing.assert_close(s.to_x0(eps - x0, xt, t), x0, rtol=1e-5, atol=1e-5)


def test_noise_dtype_and_x0_precision():
    s = FlowMatchSchedule(shift=5.0)
    x0 = torch.randn(1, 1, 1, 2, 2).to(torch.bfloat16)
    eps = torch.randn(1, 1, 1, 2, 2).to(torch.bfloat16)
    t = torch.tensor([[937.5]])
    assert s.add_noise(x0, eps, t).dtype == torch.bfloat16
    flow = torch.randn(1, 1, 1, 2, 2).to(torch.bfloat16)
    expected = (eps.double() - 0.9375 * flow.double()).to(torch.bfloat16)
    assert torch.equal(s.to_x0(flow, eps, t), expected)


def test_bad_steps():
    with pytest.raises(ValueError, match="denoising steps"):
        FlowMatchSchedule().warp([1200])
