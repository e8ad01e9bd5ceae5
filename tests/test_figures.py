"""Figures: drift curves and heatmaps are written as valid PNGs; the CLI sub-commands parse and run."""

import argparse
import dataclasses
import json

import numpy as np
import pytest
import torch

from tokentrim.app import figures
from tokentrim.errors import UserError
from tokentrim_core import TokenTrim, TokenTrimConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temp file left


def make_log(enabled, seed=0):
    tt = TokenTrim(TokenTrimConfig(enabled=enabled, p=0.25), (2, 2))
    g = torch.Generator().manual_seed(seed)
    for b in range(8):
        x = torch.randn(1, 3, 4, 4, 4, generator=g) * (6.0 if b == 5 else 1.0)
        if tt.propose(b, range(3 * b, 3 * b + 3), x).prune:
            tt.regenerated(b, torch.randn(1, 3, 4, 4, 4, generator=g), tokens_removed=4, regenerations=1)
    return {"config": dataclasses.asdict(tt.config), "blocks": [r.to_dict() for r in tt.records]}


def parser():
    p = argparse.ArgumentParser(prog="tokentrim")
    figures.register(p.add_subparsers(dest="command", required=True))
    return p


def test_plot_drift_single_and_overlaid(tmp_path):
    trim = make_log(True)
    assert any(r["action"] == "prune" for r in trim["blocks"])  # the figure shows a prune event
    figures.plot_drift(trim, tmp_path / "one.png")
    assert_png(tmp_path / "one.png")
    figures.plot_drift([make_log(False), trim], tmp_path / "both.png")
    assert_png(tmp_path / "both.png")
    with pytest.raises(UserError, match="'blocks'"):
        figures.plot_drift({"config": {}}, tmp_path / "bad.png")


def test_block_drift_maps_by_hand():
    # F = 6 (2 blocks of 3), C = 1, 2x2 grid with patch 1x1: block 1 differs from block 0 by 3 at (1, 0)
    lat = torch.zeros(7, 1, 2, 2)  # the 7th frame is an incomplete block and is ignored
    lat[3:6, 0, 1, 0] = 3.0
    maps = figures.block_drift_maps(lat, (1, 1))
    assert maps.shape == (1, 2, 2)
    assert maps.flatten().tolist() == pytest.approx([0.0, 0.0, 3.0, 0.0])
    with pytest.raises(UserError, match="at least 2 blocks"):
        figures.block_drift_maps(torch.zeros(5, 1, 2, 2), (1, 1))


def test_plot_heatmap_with_and_without_frames(tmp_path):
    lat = torch.randn(12, 4, 8, 12, generator=torch.Generator().manual_seed(0))
    figures.plot_heatmap(lat, (2, 2), tmp_path / "heat.png")
    assert_png(tmp_path / "heat.png")
    frames = np.random.default_rng(0).integers(0, 255, size=(45, 64, 96, 3), dtype=np.uint8)
    figures.plot_heatmap(lat[None], (2, 2), tmp_path / "overlay.png", frames=frames)
    assert_png(tmp_path / "overlay.png")


def test_cli_drift(tmp_path):
    a, b = tmp_path / "base.json", tmp_path / "trim.json"
    a.write_text(json.dumps(make_log(False)))
    b.write_text(json.dumps(make_log(True)))
    args = parser().parse_args(["figure", "drift", str(a), str(b), "-o", str(tmp_path / "out" / "d.png")])
    assert args.figure_kind == "drift" and len(args.logs) == 2
    assert args.func(args) == 0
    assert_png(tmp_path / "out" / "d.png")


def test_cli_drift_bad_inputs(tmp_path):
    p = parser()
    missing = p.parse_args(["figure", "drift", str(tmp_path / "nope.json"), "-o", str(tmp_path / "x.png")])
    with pytest.raises(UserError, match="not found"):
        missing.func(missing)
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "noblocks.json").write_text(json.dumps({"config": {}}))
    for name, message in (("bad.json", "not valid JSON"), ("noblocks.json", "'blocks' list")):
        args = p.parse_args(["figure", "drift", str(tmp_path / name), "-o", str(tmp_path / "x.png")])
        with pytest.raises(UserError, match=message):
            args.func(args)
    with pytest.raises(SystemExit):
        p.parse_args(["figure", "drift", "a.json"])  # -o is required


def test_cli_heatmap(tmp_path, monkeypatch):
    lat = torch.randn(1, 9, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    torch.save(lat, tmp_path / "lat.pt")
    p = parser()
    args = p.parse_args(["figure", "heatmap", str(tmp_path / "lat.pt"), "-o", str(tmp_path / "h.png")])
    assert args.patch == [2, 2] and args.video is None
    assert args.func(args) == 0
    assert_png(tmp_path / "h.png")

    import tokentrim.video

    frames = np.zeros((33, 32, 32, 3), dtype=np.uint8)
    monkeypatch.setattr(tokentrim.video, "read_video", lambda path: (frames, 16.0))
    args = p.parse_args(
        [
            "figure",
            "heatmap",
            str(tmp_path / "lat.pt"),
            "-o",
            str(tmp_path / "v.png"),
            "--video",
            "v.mp4",
            "--patch",
            "4",
            "4",
        ]
    )
    assert args.patch == [4, 4]
    assert args.func(args) == 0
    assert_png(tmp_path / "v.png")

    (tmp_path / "obj.pt").write_bytes(b"garbage")
    for name, message in (("missing.pt", "not found"), ("obj.pt", "cannot load")):
        args = p.parse_args(["figure", "heatmap", str(tmp_path / name), "-o", str(tmp_path / "x.png")])
        with pytest.raises(UserError, match=message):
            args.func(args)


def _legend_covers_every_line(ax):
    """Every drawn line style is in the legend, or (the dotted D_t -> D* link) named by a legend entry."""
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    styles = {
        (ln.get_marker(), ln.get_linestyle(), ln.get_color())
        for ln in ax.lines
        if not ln.get_label().startswith("_")
    }
    for ln in ax.lines:
        key = (ln.get_marker(), ln.get_linestyle(), ln.get_color())
        if key not in styles:
            assert ln.get_linestyle() == ":" and any("dotted" in t for t in labels), key
    return labels


def test_drift_legend_explains_every_marker():
    trim = make_log(True)
    trim["config"]["fault"] = {"kind": "blob", "block": 4, "tokens": [0]}
    fig = figures.drift_figure([make_log(False), trim], labels=["baseline", "TokenTrim"])
    labels = _legend_covers_every_line(fig.axes[0])
    assert set(labels) == {"warm-up", "baseline", "TokenTrim", "TokenTrim: mean μ .. threshold (shaded)",
                           "TokenTrim: threshold (dashed)", "pruned candidate (D_t above the threshold)",
                           "regenerated block (D*), dotted from its candidate", "injected fault"}  # fmt: skip
    assert fig.axes[0].get_ylabel() == "drift severity D_t"


def test_drift_legend_of_the_tokenwise_rule_has_no_mean_band():
    tt = TokenTrim(TokenTrimConfig(p=0.25, detector="tokenwise", tokenwise_level=1.0), (2, 2))
    g = torch.Generator().manual_seed(0)
    for b in range(8):
        x = torch.randn(1, 3, 4, 4, 4, generator=g) * (6.0 if b == 5 else 1.0)
        if tt.propose(b, range(3 * b, 3 * b + 3), x).prune:
            tt.regenerated(b, torch.randn(1, 3, 4, 4, 4, generator=g), tokens_removed=4, regenerations=1)
    log = {"config": dataclasses.asdict(tt.config), "blocks": [r.to_dict() for r in tt.records]}
    assert any(r["action"] == "prune" for r in log["blocks"]) and all(
        r["mean"] is None for r in log["blocks"]
    )
    fig = figures.drift_figure(log)
    labels = _legend_covers_every_line(fig.axes[0])
    assert "TokenTrim: threshold (dashed)" in labels and not any("shaded" in t for t in labels)
    assert not fig.axes[0].collections[1:]  # the warm-up span only: no band
    assert fig.axes[0].get_ylabel() == "drift severity D_t (token-wise rule: mean score)"
