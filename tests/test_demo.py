"""`tokentrim demo` without a browser: the run function behind the page (`DemoRunner.stream`) streams one update
per decoded block, runs the baseline and TokenTrim from one seed side by side, stops cleanly when cancelled or
dropped, and answers bad input with a message instead of an exception; plus the page's session bookkeeping and
the command's argument checks."""

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from tokentrim.app import backends
from tokentrim.app.api import Pipeline
from tokentrim.app.demo import Sessions, check_port, port_number, remove_stale_folders
from tokentrim.app.demo_run import DISPLAY_SIZE, PRUNE_RED, DemoRunner, mark_pruned, upscale
from tokentrim.app.run_config import default_config_path, load_run_config
from tokentrim.errors import UserError
from tokentrim.pipelines import pipeline_names
from tokentrim.toy import HELD_OUT_SCENES, observed_start

SCENE = HELD_OUT_SCENES  # a held-out scene
TOY_SIZE = 32  # pixels of a toy frame (tokentrim.toy.world.FRAME_SIZE)


@pytest.fixture(scope="module")
def toy():
    return backends.load_backend(preset="toy", model_dir=None, checkpoint=None, device=torch.device("cpu"),
                                 dtype=torch.float32)  # fmt: skip


@pytest.fixture
def runner(toy, tmp_path):
    return DemoRunner(toy, "toy", max_latent_frames=60, embed_cache=tmp_path / "embeddings")


# The page's keys of the declared options (`tokentrim.app.demo_run.PAGE_OPTIONS`), by short names
KEYS = {"p": "tokentrim.p", "lam": "tokentrim.lam", "flowmo": "flowmo.mode", "tokentrim": "tokentrim.enabled"}


def toy_request(**changes) -> dict:
    """The page's values: a scene, 12 latent frames, seed 0, the rest at the page's defaults."""
    values = {"pipeline": "self_forcing", "latent_frames": 12, "seed": 0, "scene": SCENE}
    return values | {KEYS.get(k, k): v for k, v in changes.items()}


def direct_run(backend, *, enabled: bool, flowmo: str, frames: int, seed: int, lam: float = 2.0):
    """The same rollout through the Python API directly (what the CLI does), for comparison."""
    prompt, prefix = observed_start(SCENE)
    updates = {
        "pipeline": "self_forcing",
        "tokentrim": {"enabled": enabled, "lam": lam},
        "flowmo": {"mode": flowmo},
    }
    run = load_run_config(default_config_path("self_forcing", "toy"), [], updates)
    return Pipeline(backend, run).generate(prompt, latent_frames=frames, seed=seed, start=prefix)


def demo_threads() -> list[threading.Thread]:
    """Threads started since the test began: the demo's runs are streams read in the caller's thread, none start
    (tqdm's monitor, which a progress bar may start, is not the demo's)."""
    return [
        t
        for t in threading.enumerate()
        if t not in STARTING_THREADS and t.is_alive() and t.name != "tqdm_monitor"
    ]


STARTING_THREADS: set[threading.Thread] = set()


@pytest.fixture(autouse=True)
def threads_before_the_test():
    """Earlier tests in the same process may leave pools running (inductor's compile workers): not the demo's."""
    STARTING_THREADS.clear()
    STARTING_THREADS.update(threading.enumerate())


def test_stream_shows_every_block_as_it_is_decoded(runner, toy, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    updates = list(runner.stream(toy_request(latent_frames=12), out, threading.Event()))
    running, last = updates[:-1], updates[-1]
    assert [u.state for u in running] == ["running"] * 4 and last.state == "done", last.status
    # One update per block: the toy codec gives one frame per latent frame, the decisions grow by one each time.
    assert [u.panels[0].frames for u in running] == [3, 6, 9, 12]
    assert [len(u.panels[0].records) for u in running] == [1, 2, 3, 4]
    # Each preview is the newest decoded frame, upscaled nearest-neighbour to the display size.
    video = direct_run(toy, enabled=True, flowmo="first_block", frames=12, seed=0).frames
    reference = [video[i : i + 3] for i in range(0, 12, 3)]
    factor = DISPLAY_SIZE // TOY_SIZE
    for update, block in zip(running, reference, strict=True):
        preview = update.panels[0].preview
        assert preview.shape == (DISPLAY_SIZE, DISPLAY_SIZE, 3)
        np.testing.assert_array_equal(
            preview[8:-8, 8:-8], block[-1].repeat(factor, 0).repeat(factor, 1)[8:-8, 8:-8]
        )
    # The files behind the downloads: the mp4 at the model's size, an upscaled one to show, the decision log.
    panel = last.panels[0]
    assert panel.video == out / "tokentrim.mp4" and panel.display_video == out / "tokentrim_display.mp4"
    log = json.loads(panel.log.read_text())
    assert [b["block"] for b in log["blocks"]] == [0, 1, 2, 3] and log["config"]["scene"] == SCENE
    assert sorted(p.name for p in out.iterdir()) == [
        "tokentrim.json",
        "tokentrim.mp4",
        "tokentrim_display.mp4",
    ]
    from tokentrim.video import read_video

    assert read_video(panel.video)[0].shape == (12, TOY_SIZE, TOY_SIZE, 3)
    assert read_video(panel.display_video)[0].shape == (12, DISPLAY_SIZE, DISPLAY_SIZE, 3)


def test_side_by_side_runs_baseline_and_tokentrim_from_one_seed(runner, toy, tmp_path):
    updates = list(
        runner.stream(toy_request(latent_frames=9, seed=7, side_by_side=True), tmp_path, threading.Event())
    )
    assert updates[-1].state == "done", updates[-1].status
    # The runs alternate block by block: baseline, TokenTrim, baseline, ...
    counts = [tuple(len(p.records) for p in u.panels) for u in updates[:-1]]
    assert counts == [(1, 0), (1, 1), (2, 1), (2, 2), (3, 2), (3, 3)]
    baseline, trimmed = updates[-1].panels
    assert (baseline.label, trimmed.label) == ("baseline", "TokenTrim")
    logs = [json.loads(p.log.read_text())["config"] for p in (baseline, trimmed)]
    assert logs[0]["seed"] == logs[1]["seed"] == 7
    assert logs[0]["run"]["tokentrim"]["enabled"] is False and logs[0]["run"]["flowmo"]["mode"] == "off"
    assert logs[1]["run"]["tokentrim"]["enabled"] is True
    # Each panel is the run the CLI would make with that seed (compared decision by decision).
    for panel, enabled, flowmo in ((baseline, False, "off"), (trimmed, True, "first_block")):
        direct = direct_run(toy, enabled=enabled, flowmo=flowmo, frames=9, seed=7)
        assert [r.to_dict() | {"score_ms": 0} for r in panel.records] == [
            r.to_dict() | {"score_ms": 0} for r in direct.records
        ]
    assert all(r.action == "off" for r in baseline.records) and not baseline.pruned


def test_pruned_blocks_are_marked_in_the_preview(runner, tmp_path):
    # lam = 0: the threshold is the running mean of the accepted blocks, which some of 7 armed blocks exceed
    updates = list(runner.stream(toy_request(latent_frames=30, lam=0.0), tmp_path, threading.Event()))
    assert updates[-1].panels[0].pruned
    for update in updates[:-1]:
        newest = update.panels[0].records[-1]
        corner = tuple(update.panels[0].preview[0, 0])
        assert (corner == PRUNE_RED) == (newest.action == "prune"), newest


def test_cancel_stops_the_run_cleanly(runner, tmp_path):
    cancel = threading.Event()
    updates = []
    for update in runner.stream(toy_request(latent_frames=60), tmp_path, cancel):
        updates.append(update)
        if len(updates) == 2:
            cancel.set()
    assert [u.state for u in updates] == ["running", "running", "cancelled"]
    assert "Cancelled" in updates[-1].status and "2 blocks" in updates[-1].status
    assert list(tmp_path.iterdir()) == [tmp_path / "embeddings"]  # no video, no temporary file left
    assert not demo_threads()
    # The runner is free again.
    assert list(runner.stream(toy_request(latent_frames=6), tmp_path, threading.Event()))[-1].state == "done"


def test_a_dropped_stream_stops_its_run(runner, tmp_path):
    """The page was closed mid-run: gradio drops the generator, which stops the worker and removes temporaries."""
    stream = runner.stream(toy_request(latent_frames=60, side_by_side=True), tmp_path, threading.Event())
    next(stream)
    stream.close()
    assert not demo_threads()
    assert list(tmp_path.iterdir()) == [tmp_path / "embeddings"]
    assert list(runner.stream(toy_request(latent_frames=6), tmp_path, threading.Event()))[-1].state == "done"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"latent_frames": 10}, "Latent frames must be a positive multiple of 3 for Self Forcing, got 10"),
        ({"latent_frames": None}, "Latent frames is empty: enter an int >= 1"),
        ({"latent_frames": 10.5}, "Latent frames must be an int >= 1, got 10.5"),
        ({"latent_frames": 63}, "Latent frames must be at most 60 on this server, got 63"),
        ({"latent_frames": 3}, "needs at least 6 latent frames"),  # the observed block plus one
        ({"pipeline": "rolling_forcing", "latent_frames": 9}, "Rolling Forcing"),
        ({"seed": -1}, "Seed must be an int >= 0 and <= 9223372036854775807, got -1"),
        ({"seed": "x"}, "Seed must be an int >= 0 and <= 9223372036854775807, got x"),
        ({"p": 0.0}, "p must be a finite number > 0 and < 1, got 0.0"),
        ({"lam": float("nan")}, "λ must be a finite number >= 0"),
        ({"lam": None}, "λ is empty: enter a finite number >= 0"),
        ({"pipeline": "nope"}, f"Pipeline must be one of {', '.join(pipeline_names())}, got 'nope'"),
        ({"flowmo": "always"}, "FlowMo must be one of ('off', 'first_block', 'every_block')"),
        ({"scene": None}, "Toy scene is empty"),
    ],
)  # fmt: skip
def test_bad_input_gives_one_message(runner, tmp_path, changes, message):
    updates = list(runner.stream(toy_request(**changes), tmp_path, threading.Event()))
    assert [u.state for u in updates] == ["error"]
    assert message in updates[0].status and "`" not in updates[0].status
    assert not demo_threads()


def test_an_internal_error_is_one_line_and_the_runner_goes_on(runner, tmp_path, monkeypatch):
    from tokentrim.app import demo_run

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    with monkeypatch.context() as patch:
        patch.setattr(demo_run.Pipeline, "run", broken)
        updates = list(runner.stream(toy_request(), tmp_path, threading.Event()))
    assert [u.state for u in updates] == ["error"]
    assert updates[0].status.startswith("Internal error (RuntimeError: boom)")
    assert list(runner.stream(toy_request(latent_frames=6), tmp_path, threading.Event()))[-1].state == "done"


def test_a_model_that_reads_text_streams_its_vae_frames(tmp_path):
    """The tiny preset: a prompt instead of a scene, and the Wan VAE's frame counts (1 + 4 (f - 1), then 4 f)."""
    tiny = backends.load_backend(preset="tiny", model_dir=None, checkpoint=None, device=torch.device("cpu"),
                                 dtype=torch.float32)  # fmt: skip
    runner = DemoRunner(tiny, "tiny", max_latent_frames=60, embed_cache=tmp_path / "embeddings")
    ask = {"pipeline": "self_forcing", "latent_frames": 6, "seed": 0, "prompt": "a red car on a street"}
    updates = list(runner.stream(ask, tmp_path, threading.Event()))
    assert updates[-1].state == "done", updates[-1].status
    block = tiny.model.config.frames_per_block
    assert [u.panels[0].frames for u in updates[:-1]] == [1 + 4 * (block - 1), 1 + 4 * (2 * block - 1)]
    empty = list(runner.stream(ask | {"prompt": "  "}, tmp_path, threading.Event()))
    assert [u.state for u in empty] == ["error"] and "Prompt is empty" in empty[0].status


def test_a_stream_runs_only_while_it_is_read(toy, monkeypatch):
    """A run is a generator: nothing happens before the first read, each read runs one block, and closing it
    ends the run (no thread, no callback)."""
    from tokentrim.wan.model import CausalWanModel

    calls, forward = [], CausalWanModel.forward
    monkeypatch.setattr(
        CausalWanModel, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k)
    )
    prompt, prefix = observed_start(SCENE)
    run = load_run_config(default_config_path("self_forcing", "toy"), ["flowmo.mode=off"])
    stream = Pipeline(toy, run).stream(prompt, latent_frames=12, seed=0, start=prefix)
    assert calls == []  # nothing before the first read
    assert next(stream).observed and len(calls) == 1  # the observed block: its clean pass
    assert next(stream).block == 1 and len(calls) == 1 + 5  # a generated block: 4 steps and the clean pass
    stream.close()
    assert next(stream, None) is None and len(calls) == 6 and not demo_threads()


def test_a_stream_hands_its_error_to_the_reader(toy):
    from tokentrim.pipelines.common import NoHook

    class Failing(NoHook):
        def propose(self, block, frames, x0):
            raise FloatingPointError("bad latents")

    prompt, prefix = observed_start(SCENE)
    run = load_run_config(default_config_path("self_forcing", "toy"), ["flowmo.mode=off"])
    stream = Pipeline(toy, run).stream(prompt, latent_frames=12, seed=0, start=prefix, hook=Failing())
    with pytest.raises(FloatingPointError, match="bad latents"):
        next(stream)


def test_the_drift_plot_is_redrawn_once_both_runs_reached_a_block(runner, tmp_path):
    from matplotlib.figure import Figure

    from tokentrim.app.demo import drift_plot

    updates = list(
        runner.stream(toy_request(latent_frames=6, side_by_side=True), tmp_path, threading.Event())
    )
    drawn = [drift_plot(u) is not None for u in updates]
    assert drawn == [False, True, False, True, True]  # (1, 0), (1, 1), (2, 1), (2, 2) blocks, done
    figure = drift_plot(updates[-1])
    assert isinstance(figure, Figure)
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()][1:3] == ["baseline", "TokenTrim"]


def test_upscale_and_mark_pruned_by_hand():
    frame = np.array([[[1, 1, 1], [2, 2, 2]], [[3, 3, 3], [4, 4, 4]]], dtype=np.uint8)  # 2x2
    big = upscale(frame, 2)
    assert big[..., 0].tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    assert upscale(frame, 1) is frame
    marked = mark_pruned(np.zeros((16, 16, 3), np.uint8))
    assert tuple(marked[0, 8]) == tuple(marked[15, 8]) == tuple(marked[8, 0]) == PRUNE_RED
    assert tuple(marked[8, 8]) == (0, 0, 0)


def test_sessions_keep_their_runs_apart(tmp_path):
    sessions = Sessions(tmp_path / "runs")
    a, cancel_a = sessions.start("alice")
    b, cancel_b = sessions.start("bob")
    assert a != b and a.is_dir() and b.is_dir()
    (a / "tokentrim.mp4").write_bytes(b"old")
    sessions.cancel("bob")
    assert cancel_b.is_set() and not cancel_a.is_set()
    again, cancel_again = sessions.start("alice")  # a new run: fresh flag, the previous files gone
    assert again == a and list(a.iterdir()) == [] and not cancel_again.is_set()
    sessions.end("alice")
    assert not a.exists() and cancel_again.is_set() and b.is_dir()
    sessions.cancel("nobody")  # a tab that never ran anything


def test_folders_of_killed_servers_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"tokentrim-demo-{dead.pid}-abc"
    (stale / "runs").mkdir(parents=True)
    alive = tmp_path / f"tokentrim-demo-{os.getpid()}-xyz"
    alive.mkdir()
    other = tmp_path / "tokentrim-demo-notapid-1"
    other.mkdir()
    assert remove_stale_folders(tmp_path) == [stale]
    assert not stale.exists() and alive.is_dir() and other.is_dir()


def test_port_checks():
    assert port_number("7860") == 7860
    import argparse

    for bad in ("0", "65536", "http"):
        with pytest.raises(argparse.ArgumentTypeError):
            port_number(bad)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(UserError, match="choose another --port"):
            check_port("127.0.0.1", busy.getsockname()[1])
    with pytest.raises(UserError, match="not an address"):
        check_port("no-such-host.invalid", 7860)


def test_cli_rejects_bad_options_in_one_line(capsys):
    from tokentrim.app.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--port", "99999"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the port must be from 1 to 65535" in err
    assert main(["demo", "--preset", "toy", "--checkpoint", str(Path("x.pt"))]) == 2
    assert "drop" in capsys.readouterr().err
