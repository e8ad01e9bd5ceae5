import os
import resource
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENTRIM_CACHE", os.path.join(os.path.dirname(__file__), ".cache-tests"))
# One thread per test process, and in every subprocess a test starts (they inherit this environment): the suite's
# models are tiny, and on shared cores torch's default of a thread per core makes a process's threads wait on each
# other (the golden rollouts: 14 s with one thread, 250 s with two beside a load of 8-13 on 2 cores). Tests about
# threading set their own count and put this one back.
os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
torch.set_num_threads(1)

# The fast tier's guard: a test outside the slow tiers whose body used more than FAST_BUDGET_S seconds of CPU (this
# process and the subprocesses it waited for: CPU time, which a busy machine inflates far less than wall time) is
# named at the end of the run, to be made cheaper or marked slow. A warning, never a failure. Tests over ~3 s on an
# idle machine are slow; the guard allows 4 s for a loaded machine. A test that imported over FIRST_IMPORTS modules
# (the first to build a VAE or start the CLI: someone pays for diffusers once) is not named.
FAST_BUDGET_S = 4.0
FIRST_IMPORTS = 200
SLOW_TIERS = ("slow", "browser", "gpu")
_over_budget: list[tuple[float, str]] = []


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    start, modules = _cpu_seconds(), len(sys.modules)
    yield
    used, imported = _cpu_seconds() - start, len(sys.modules) - modules
    fast = not any(item.get_closest_marker(tier) for tier in SLOW_TIERS)
    if fast and used > FAST_BUDGET_S and imported < FIRST_IMPORTS:
        # as a report property, which reaches the main process under pytest-xdist
        item.user_properties.append(("cpu_over_budget_s", used))


def pytest_runtest_logreport(report):
    for name, used in report.user_properties:
        if name == "cpu_over_budget_s" and report.when == "call":
            _over_budget.append((used, report.nodeid))


def pytest_terminal_summary(terminalreporter):
    if _over_budget:
        terminalreporter.write_sep("=", f"fast-tier tests over {FAST_BUDGET_S:g} s of CPU", yellow=True)
        for used, nodeid in sorted(_over_budget, reverse=True):
            terminalreporter.write_line(f"{used:6.1f} s  {nodeid}")
        terminalreporter.write_line("make them cheaper or mark them @pytest.mark.slow (README.md#tests)")


@pytest.fixture
def tiny_config():
    from tokentrim.wan import get_preset

    return get_preset("tiny")


@pytest.fixture
def captured_caches(monkeypatch):
    """Every KVCache constructed during the test, in order (to inspect a pipeline's cache afterwards)."""
    from tokentrim.wan import kv_cache

    made, original = [], kv_cache.KVCache.__init__

    def remember(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(kv_cache.KVCache, "__init__", remember)
    return made


@pytest.fixture
def model(tiny_config):
    """A 2-layer random-weight DiT on the tiny 8x12 latent grid (tests may override with their own seed)."""
    from tokentrim.wan import build_model

    return build_model(tiny_config, seed=3)


@pytest.fixture
def embeds(tiny_config):
    """Random prompt embeddings, 9 of the tiny preset's 16 text rows."""
    return torch.randn(1, 9, tiny_config.text_dim, generator=torch.Generator().manual_seed(5))
