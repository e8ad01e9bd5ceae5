"""Golden rollouts recorded before refactors (tests/golden_cases.py) are reproduced bit for bit on the platform
each was recorded on (elsewhere to 1e-4: other CPU kernels round differently in the last bits)."""

import pytest
import torch
from golden_cases import GOLDEN, RECORD_THREADS, platform_key, run_cases

RECORDED = torch.load(GOLDEN, weights_only=True)


@pytest.fixture(scope="module")
def fresh():
    """The cases run once; with the recording's thread count where the comparison is bit for bit (elsewhere the
    suite's one thread: a tolerance covers rounding, and threads only slow shared cores down)."""
    previous = torch.get_num_threads()
    if RECORDED["platform"] == platform_key():
        torch.set_num_threads(RECORD_THREADS)
    try:
        return run_cases()
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("name", sorted(RECORDED["cases"]))
def test_golden_rollout_is_reproduced(fresh, name):
    want, got = RECORDED["cases"][name], fresh[name]
    assert got["records"] == want["records"]
    assert len(got["flowmo_losses"]) == len(want["flowmo_losses"])
    if want.get("platform", RECORDED["platform"]) == platform_key():
        assert torch.equal(got["latents"], want["latents"]), "latents differ from the recorded golden run"
        assert got["flowmo_losses"] == want["flowmo_losses"]
    else:  # another torch build or CPU kernel family: rounding may differ in the last bits
        torch.testing.assert_close(got["latents"], want["latents"], rtol=1e-4, atol=1e-4)
