"""Golden rollouts recorded before refactors (tests/golden_cases.py) are reproduced bit for bit on the platform
each was recorded on (elsewhere to 1e-4: other CPU kernels round differently in the last bits)."""

import pytest
import torch
from golden_cases import GOLDEN, RECORD_THREADS, platform_key, run_cases

RECORDED = torch.load(GOLDEN, weights_only=True)


@pytest.fixture(scope="module")
def fresh():
    """The cases run once: those recorded on this platform with their recording's thread count (compared bit for
    bit), the others with the suite's one thread (a tolerance covers rounding; threads only slow shared cores)."""
    previous, groups = torch.get_num_threads(), {}
    for name, case in RECORDED["cases"].items():
        here = case.get("platform", RECORDED["platform"]) == platform_key()
        groups.setdefault(case.get("threads", RECORD_THREADS) if here else previous, []).append(name)
    results = {}
    try:
        for threads, names in groups.items():
            torch.set_num_threads(threads)
            results |= run_cases(names)
    finally:
        torch.set_num_threads(previous)
    return results


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
