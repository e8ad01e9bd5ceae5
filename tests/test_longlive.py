"""LongLive (docs/spec.md#longlive): LoRA merge, the sink cache against the spec's index arithmetic, slot RoPE,
the prompt-switch re-cache (the table of docs/spec.md#prompt-switches), TokenTrim across switches, timelines and
the commands."""

import json

import pytest
import torch

from tokentrim.app.cli import main
from tokentrim.errors import UserError
from tokentrim.pipelines import Request, get_pipeline
from tokentrim.pipelines.common import Rollout
from tokentrim.pipelines.longlive import LongLiveConfig, LongLivePipeline, SlotRopeCachePolicy
from tokentrim.pipelines.self_forcing import SinkCachePolicy
from tokentrim.wan import build_model
from tokentrim.wan.kv_cache import KVCache
from tokentrim.wan.lora import TARGETS, adapters_of, merge_lora
from tokentrim_core.trim import TokenTrim, TokenTrimConfig

# ---------------------------------------------------------------- LoRA


def peft_lora(state, rank, seed=0):
    """A PEFT-named adapter set for every target layer of a Wan state dict (the names of docs/spec.md#lora)."""
    g = torch.Generator().manual_seed(seed)
    layers = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    lora = {}
    for i in range(layers):
        for m in TARGETS:
            out, inp = state[f"blocks.{i}.{m}.weight"].shape
            lora[f"base_model.model.blocks.{i}.{m}.lora_A.weight"] = torch.randn(rank, inp, generator=g)
            lora[f"base_model.model.blocks.{i}.{m}.lora_B.weight"] = torch.randn(out, rank, generator=g)
    return lora


def test_merge_is_w_plus_scaled_ba_and_equals_the_unmerged_forward(tiny_config):
    state = build_model(tiny_config, seed=1).state_dict()
    lora = peft_lora(state, rank=4)
    merged = merge_lora(state, lora, alpha=8.0)  # scale alpha / r = 2
    adapted = 0
    for key, w in state.items():
        name = key.removesuffix(".weight")
        a = lora.get(f"base_model.model.{name}.lora_A.weight")
        if a is None:
            assert torch.equal(merged[key], w), key  # everything not adapted is untouched
            continue
        b = lora[f"base_model.model.{name}.lora_B.weight"]
        # the fp32 merge of docs/spec.md#lora
        assert torch.equal(merged[key], w.float() + 2.0 * (b.float() @ a.float())), key
        torch.testing.assert_close(
            merged[key].double(), w.double() + 2.0 * b.double() @ a.double(), rtol=1e-5, atol=1e-5
        )
        # the unmerged forward of the reference: x W^T + s (x A^T) B^T
        x = torch.randn(5, w.shape[1], dtype=torch.float64)
        unmerged = x @ w.double().T + 2.0 * (x @ a.double().T) @ b.double().T
        torch.testing.assert_close(x @ merged[key].double().T, unmerged, rtol=1e-5, atol=1e-4)
        adapted += 1
    assert adapted == tiny_config.num_layers * 10


def test_lora_errors_are_one_line_and_never_silent(tiny_config):
    state = build_model(tiny_config, seed=1).state_dict()
    lora = peft_lora(state, rank=4)
    missing = dict(lora)
    missing.pop("base_model.model.blocks.1.ffn.2.lora_B.weight")
    with pytest.raises(UserError, match=r"missing for 1 of 20 layers \(e.g. blocks.1.ffn.2\)"):
        merge_lora(state, missing)
    wrong = dict(lora)
    wrong["base_model.model.blocks.0.self_attn.q.lora_A.weight"] = torch.zeros(4, 7)
    with pytest.raises(UserError, match=r"blocks.0.self_attn.q: lora_A \(4, 7\)"):
        merge_lora(state, wrong)
    with pytest.raises(UserError, match="unexpected names"):
        merge_lora(state, {**lora, "base_model.model.head.lora_A.weight": torch.zeros(1)})
    with pytest.raises(UserError, match="missing for 20 of 20 layers"):  # nothing loaded is an error too
        merge_lora(state, {})
    with pytest.raises(UserError, match="no LoRA adapters"):
        adapters_of({"step": 3}, "lora.pt")


def test_merge_lora_command_and_lora_flag_give_the_same_weights(tmp_path, tiny_config, capsys):
    from safetensors.torch import load_file

    from tokentrim.app import backends

    base = build_model(tiny_config, seed=1).state_dict()
    (tmp_path / "models").mkdir()
    torch.save(
        {"generator": base}, tmp_path / "models" / "longlive_base.pt"
    )  # LongLive's layout: `generator`
    torch.save({"generator_lora": peft_lora(base, 4), "critic_lora": {}, "step": 3000}, tmp_path / "lora.pt")
    out = tmp_path / "merged.safetensors"
    assert main(["merge-lora", str(tmp_path / "models" / "longlive_base.pt"), str(tmp_path / "lora.pt"),
                 "-o", str(out)]) == 0  # fmt: skip
    assert "20 layers merged" in capsys.readouterr().out
    written = load_file(str(out))
    expected = merge_lora(base, peft_lora(base, 4))
    assert written.keys() == expected.keys() and all(torch.equal(written[k], expected[k]) for k in expected)
    # --lora on the tiny preset merges the same adapters into the preset's weights at load
    tiny = backends.load_backend(preset="tiny", model_dir=None, checkpoint=None, device="cpu",
                                 dtype=torch.float32, decoder=False, text_encoder=False)  # fmt: skip
    torch.save(peft_lora(tiny.model.state_dict(), 2, seed=4), tmp_path / "tiny_lora.pt")
    merged = backends.load_backend(preset="tiny", model_dir=None, checkpoint=None, device="cpu", dtype=torch.float32,
                                   decoder=False, text_encoder=False, lora=tmp_path / "tiny_lora.pt")  # fmt: skip
    want = merge_lora(tiny.model.state_dict(), peft_lora(tiny.model.state_dict(), 2, seed=4))
    assert all(torch.equal(v, want[k]) for k, v in merged.model.state_dict().items())
    bad = peft_lora(base, 4)
    bad["base_model.model.blocks.0.ffn.0.lora_A.weight"] = torch.zeros(4, 3)
    torch.save(bad, tmp_path / "bad_lora.pt")
    # bad inputs: one line, exit 2, nothing written
    for argv, message in [
        (["merge-lora", str(tmp_path / "nope.pt"), str(tmp_path / "lora.pt"), "-o", str(tmp_path / "m.safetensors")],
         "BASE"),
        ([ "merge-lora", str(tmp_path / "models" / "longlive_base.pt"), str(tmp_path / "lora.pt"), "-o",
          str(tmp_path / "m.pt")], ".safetensors"),
        (["merge-lora", str(tmp_path / "models" / "longlive_base.pt"), str(tmp_path / "bad_lora.pt"), "-o",
          str(tmp_path / "m.safetensors")], "do not fit"),
    ]:  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "m.safetensors").exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "bad_lora.pt", "lora.pt", "merged.safetensors", "models", "tiny_lora.pt"]  # fmt: skip


# ------------------------------------------- the cache against the arithmetic of docs/spec.md#longlive-cache


def simulate_longlive(num_blocks, block=3, window=12, sink=3, steps=4):
    """The reference's per-call index arithmetic (docs/spec.md#longlive-cache with docs/spec.md#self-forcing-cache's eviction), in frame units: for every
    call (s, the frames attended in row order, the query's first slot `ls`, the buffer after the call)."""
    buf, G, Lc, calls = [None] * window, 0, 0, []
    for b in range(num_blocks):
        s = b * block
        for _ in range(steps + 1):  # the denoising steps, then the clean pass
            end = s + block
            recompute = end <= G and s > 0
            if end > G and block + Lc > window:
                evict = block + Lc - window
                keep = Lc - evict - sink
                buf[sink : sink + keep] = buf[sink + evict : sink + evict + keep]
                le = Lc + (end - G) - evict
            else:
                le = Lc + (end - G)
            ls = le - block
            ws = max(ls, sink) if recompute else ls
            for row in range(ws, le):
                buf[row] = s + row - ls
            rows = list(range(sink)) + list(range(max(sink, le - (window - sink)), le))
            calls.append((s, [buf[r] for r in rows if r < le], ls, list(buf[:le])))
            if not recompute:
                G, Lc = end, le
    return calls


def drive(policy, num_blocks, block=3, steps=4):
    """Our policy through the same calls (plans only); the frames each call attends to, in row order."""
    cache, T, calls = policy.cache, policy.cache.tokens_per_frame, []
    for b in range(num_blocks):
        s = b * block
        policy.make_room(block)
        for i in range(steps + 1):
            plan = policy.plan(s, block, commit=i == steps)
            labels = [f.index for f in cache.frames for _ in range(f.rows)]
            labels += [s + k for k in range(block) for _ in range(T)]
            attended = [labels[r] for seg in plan.reads for r in range(seg.start, seg.end)]
            frames = [attended[k] for k in range(0, len(attended), T)]
            calls.append((s, frames, plan))
            cache.finish(plan)
    return calls


@pytest.mark.parametrize("rope", ["absolute", "slot"])
def test_cache_policy_matches_the_spec_arithmetic(tiny_config, rope):
    model = build_model(tiny_config, device="meta")
    pipe = LongLivePipeline(model, LongLiveConfig(rope=rope))
    policy = pipe.make_cache(1, torch.device("cpu"), torch.float32)
    assert isinstance(policy, SlotRopeCachePolicy if rope == "slot" else SinkCachePolicy)
    sim, ours = simulate_longlive(9), drive(policy, 9)
    T = tiny_config.tokens_per_frame
    for (s, frames, ls, buf), (s2, got, plan) in zip(sim, ours, strict=True):
        assert s == s2 and got == frames, (s, got, frames)
        if rope == "slot":  # queries at their slot; keys rotated at the slot of their row
            assert plan.rope_frame == ls
            slots = torch.arange(len(buf)).repeat_interleave(T)
            expected = model.rope.token_freqs(slots, torch.arange(T).repeat(len(buf)))
            assert torch.equal(plan.reads[0].rope_freqs, expected) and plan.write_raw
        else:
            assert plan.rope_frame is None and not plan.write_raw
    # steady state (docs/spec.md#longlive-cache): [sink | 6 previous | current block]
    assert sim[-1][1] == [0, 1, 2, 18, 19, 20, 21, 22, 23, 24, 25, 26]
    assert policy.cache.frame_indices == [0, 1, 2, *range(18, 27)] and [
        f.index for f in policy.cache.pinned
    ] == [0, 1, 2]


def test_slot_rope_equals_absolute_inside_the_window_and_longlive_is_self_forcing_on_12_frames(model, embeds):
    absolute, slot = (LongLivePipeline(model, LongLiveConfig(rope=r)) for r in ("absolute", "slot"))
    short = [p(Request(embeds, 12, seed=2)).latents for p in (absolute, slot)]
    assert torch.equal(*short)  # slots are the absolute frames until the first eviction
    long = [p(Request(embeds, 18, seed=2)).latents for p in (absolute, slot)]
    assert torch.equal(long[0][:, :12], long[1][:, :12]) and not torch.equal(long[0], long[1])
    sf = get_pipeline("self_forcing")
    same = sf.pipeline(model, sf.config(cache_frames=12))(Request(embeds, 18, seed=2)).latents
    assert torch.equal(same, long[0])


# ---------------------------------------------------------------- prompt switches


@pytest.fixture
def switch_spy(monkeypatch):
    """Per switch: the cache buffers and frames before and after `Rollout.switch`."""
    seen, original = [], Rollout.switch

    def spy(self, start):
        cache = self.cache.cache
        before = (
            cache.k.clone(),
            cache.v.clone(),
            [(f.index, f.pinned, f.spatial.clone()) for f in cache.frames],
        )
        due = bool(self.switches) and self.switches[0][0] <= start
        original(self, start)
        if due:
            after = (
                cache.k.clone(),
                cache.v.clone(),
                [(f.index, f.pinned, f.spatial.clone()) for f in cache.frames],
            )
            seen.append((start, before, after))

    monkeypatch.setattr(Rollout, "switch", spy)
    return seen


def other_prompt(embeds):
    return torch.randn(embeds.shape, generator=torch.Generator().manual_seed(11))


@pytest.mark.parametrize(
    "s, global_sink, rows, frames, pinned",
    [
        (9, True, (0, 9), list(range(9)), [0, 1, 2]),  # s <= 12: everything from row 0, sink re-encoded
        (9, False, (0, 9), list(range(9)), [0, 1, 2]),
        (
            18,
            True,
            (3, 12),
            [0, 1, 2, *range(9, 18)],
            [0, 1, 2],
        ),  # the old sink kept, rs + 3 .. s - 1 after it
        (18, False, (0, 12), list(range(6, 18)), [6, 7, 8]),  # all 12 rebuilt, rs .. rs + 2 the new sink
    ],
)
def test_recache_writes_the_rows_of_the_spec_table(
    model, embeds, switch_spy, s, global_sink, rows, frames, pinned
):
    pipe = LongLivePipeline(model, LongLiveConfig(global_sink=global_sink))
    pipe(Request(embeds, s + 3, seed=1, switches=[(s, other_prompt(embeds))]))
    [(start, (k0, v0, _), (k1, v1, after))] = switch_spy
    T = model.config.tokens_per_frame
    changed = [
        (k0[:, :, f * T : (f + 1) * T] != k1[:, :, f * T : (f + 1) * T]).any().item() for f in range(12)
    ]
    assert changed == [rows[0] <= f < rows[1] for f in range(12)]
    assert ((v0 != v1).flatten(0, 1).any(-1).any(-1).any(0).nonzero().flatten() // T).unique().tolist() == list(
        range(*rows))  # fmt: skip
    assert [f for f, _, _ in after] == frames and [f for f, p, _ in after if p] == pinned
    # the sink is written, never zeros (docs/spec.md#upstream-bugs-avoided)
    assert k1[:, :, : 3 * T].abs().sum(-1).gt(0).all()


def test_a_switch_draws_no_random_numbers_and_uses_the_new_prompt(model, embeds):
    pipe = LongLivePipeline(model, LongLiveConfig())
    runs = []
    for switches in ([], [(9, other_prompt(embeds))]):
        g = torch.Generator().manual_seed(4)
        out = pipe(Request(embeds, 15, generator=g, switches=switches))
        runs.append((out.latents, g.get_state()))
    assert torch.equal(runs[0][1], runs[1][1])  # the same number of draws
    assert torch.equal(runs[0][0][:, :9], runs[1][0][:, :9]) and not torch.equal(
        runs[0][0][:, 9:], runs[1][0][:, 9:]
    )


@pytest.mark.parametrize("pruning", ["keep", "reset"])
def test_pruned_positions_after_a_recache(model, embeds, switch_spy, pruning):
    pipe = LongLivePipeline(model, LongLiveConfig(switch_pruning=pruning))
    trim = TokenTrimConfig(lam=0.0, warmup=1)
    out = pipe(Request(embeds, 21, seed=1, tokentrim=trim, switches=[(18, other_prompt(embeds))]))
    assert any(r.action == "prune" for r in out.records[:6])
    [(_, (_, _, before), (_, _, after))] = switch_spy
    T = model.config.tokens_per_frame
    pruned_before = {f: sp for f, p, sp in before if not p and len(sp) < T}
    assert pruned_before, "no pruned frame in the window before the switch"
    rebuilt = {f: sp for f, p, sp in after}
    for f, sp in pruned_before.items():
        if pruning == "keep":
            assert torch.equal(rebuilt[f], sp), f
        else:
            assert torch.equal(rebuilt[f], torch.arange(T)), f
    assert out.records[6].prompt_switch and out.records[6].action == "switch"


def test_recache_masks_the_removed_positions_inside_the_call(model):
    cache = KVCache(model.config, 1, 12)
    policy = SinkCachePolicy(cache, 3)
    for s in range(0, 18, 3):
        policy.make_room(3)
        cache.finish(policy.plan(s, 3, commit=True))
    cache.remove_positions(torch.tensor([0, 5]), frames=[12, 13])
    T = cache.tokens_per_frame
    rs, plan, kept = policy.recache_plan(18, keep_pruning=True)
    assert rs == 6 and plan.write_row == 3 * T and plan.skip_frames == 3
    assert sorted(kept) == [12, 13] and all(len(v) == T - 2 for v in kept.values())
    index = plan.reads[0].index.tolist()
    expected = list(
        range(3 * T)
    )  # the sink, then frames 9..17 with positions 0 and 5 of frames 12, 13 masked
    for i, f in enumerate(range(9, 18)):
        expected += [3 * T + i * T + p for p in range(T) if not (f in (12, 13) and p in (0, 5))]
    assert index == expected


def test_switch_statistics_and_exemption():
    """Block severities 1, 0.5, 7.5 (the switch), 0.5, 1.0 with lam = 0, one warm-up block: hand-derived."""
    expected = {
        (True, "reset"): ["warmup", "warmup", "accept", "switch", "warmup", "prune"],  # the defaults
        (True, "keep"): ["warmup", "warmup", "accept", "switch", "accept", "prune"],  # mean 0.75, then 0.67
        (False, "keep"): [
            "warmup",
            "warmup",
            "accept",
            "prune",
            "accept",
            "accept",
        ],  # the switch block pruned
    }
    for (exempt, stats), expect in expected.items():
        hook = TokenTrim(TokenTrimConfig(lam=0.0, warmup=1, switch_exempt=exempt, switch_stats=stats), (1, 1))
        actions = []
        for j, v in enumerate((0.0, 1.0, 1.5, 9.0, 9.5, 10.5)):
            if j == 3:
                hook.switched(j)
            x = torch.full((1, 1, 1, 2, 2), v)
            if hook.propose(j, range(j, j + 1), x).prune:
                hook.regenerated(j, x, 1, 1)
            actions.append(hook.records[-1].action)
        assert actions == expect, (exempt, stats, actions)
        assert [r.prompt_switch for r in hook.records] == [j == 3 for j in range(6)]


# ---------------------------------------------------------------- timelines and the command


def write(path, text):
    path.write_text(text)
    return path


def test_timeline_formats_and_block_boundaries(tmp_path):
    from tokentrim.app.timeline import read_timeline

    ll = read_timeline(write(tmp_path / "a.jsonl", json.dumps(
        {"prompts": ["a", "b", "c"], "switch_frame_indices": "40, 80"}) + "\n"))  # fmt: skip
    # docs/spec.md#prompt-switches: 40, 80 -> 42, 81
    assert ll.prompts == ("a", "b", "c") and ll.switch_frames(3, 0, 240) == [42, 81]
    yml = read_timeline(write(tmp_path / "b.yaml", "- prompt: a\n- prompt: b\n  start: 7\n"))
    assert yml.switch_frames(3, 0, 21) == [9] and yml.switch_frames(1, 0, 21) == [7]
    lines = read_timeline(write(tmp_path / "c.jsonl", '{"prompt": "a"}\n{"prompt": "b", "start": 3}\n'))
    assert lines.starts == (0, 3) and lines.settings([3]) == [{"prompt": "a", "start": 0, "frame": 0},
                                                               {"prompt": "b", "start": 3, "frame": 3}]  # fmt: skip


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("u.yaml", "- prompt: a\n- prompt: b\n  start: 12\n- prompt: c\n  start: 6\n", "must increase"),
        ("m.jsonl", '{"prompts": ["a", "b"], "switch_frame_indices": [3, 6]}\n', "2 prompts need 1"),
        ("e.yaml", "- prompt: a\n- prompt: b\n  start: 30\n", "not before the video's end"),
        ("s.yaml", "- prompt: a\n- prompt: b\n  start: 4\n- prompt: c\n  start: 5\n", "same 3-frame block"),
        ("o.yaml", "- prompt: a\n", "at least two prompts"),
        ("k.yaml", "- prompt: a\n- prompt: b\n  begin: 3\n", "entry 2 must be"),
        ("n.yaml", "- prompt: a\n- prompt: b\n  start: -3\n", "latent frame number"),
        ("b.yaml", "- prompt: [a\n", "not valid YAML"),
        ("l.jsonl", '{"prompts": ["a", "b"], "switch_frame_indices": 3}\n' * 2, "2 LongLive timelines"),
    ],
)
def test_bad_timelines_give_one_line(tmp_path, capsys, name, text, message):
    path = write(tmp_path / name, text)
    out = tmp_path / "v.mp4"
    assert main(["generate", "--preset", "tiny", "--pipeline", "longlive", "--timeline", str(path),
                 "--latent-frames", "21", "--out", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_bad_switch_and_lora_arguments_give_one_line(tmp_path, capsys):
    timeline = write(tmp_path / "t.yaml", "- prompt: a\n- prompt: b\n  start: 3\n")
    for extra, message in [
        (["--timeline", str(timeline), "--prompt", "a cat"], "--timeline brings its own prompts"),
        (["--timeline", str(tmp_path / "none.yaml")], "not found"),
        (["--timeline", str(tmp_path)], "is a folder"),
        (["--prompt", "a cat", "--lora", str(tmp_path / "none.pt")], "--lora"),
        (["--timeline", str(timeline), "tokentrim.switch_stats=sometimes"], "switch_stats"),
    ]:
        argv = ["generate", "--preset", "tiny", "--pipeline", "longlive", "--latent-frames", "9", "--out",
                str(tmp_path / "v.mp4"), *extra]  # fmt: skip
        assert main(argv) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (extra, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.yaml"]


def test_generate_longlive_with_a_timeline_on_tiny(tmp_path, capsys):
    timeline = write(tmp_path / "t.jsonl", json.dumps(
        {"prompts": ["a cat", "a dog", "a bird"], "switch_frame_indices": [2, 5]}) + "\n")  # fmt: skip
    log = tmp_path / "v.json"
    assert main(["generate", "--preset", "tiny", "--pipeline", "longlive", "--timeline", str(timeline),
                 "--latent-frames", "9", "--out", str(tmp_path / "v.mp4")]) == 0  # fmt: skip
    data = json.loads(log.read_text())
    assert [e["frame"] for e in data["config"]["timeline"]] == [0, 3, 6]  # the next block boundaries
    assert [r["block"] for r in data["blocks"] if r["prompt_switch"]] == [1, 2]
    assert all(r["action"] == "switch" for r in data["blocks"] if r["prompt_switch"])
    # Rolling Forcing cannot re-cache: one line before anything loads
    capsys.readouterr()
    assert main(["generate", "--preset", "tiny", "--pipeline", "rolling_forcing", "--timeline", str(timeline),
                 "--latent-frames", "15", "--out", str(tmp_path / "r.mp4")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot switch prompts" in err, err


@pytest.mark.parametrize("pipeline", ["self_forcing", "causal_forcing_framewise"])
def test_other_loops_switch_prompts_too(model, embeds, switch_spy, pipeline):
    entry = get_pipeline(pipeline)
    out = entry.pipeline(model, entry.config())(
        Request(embeds, 9, seed=1, switches=[(6, other_prompt(embeds))])
    )
    assert len(switch_spy) == 1 and switch_spy[0][0] == 6 and out.latents.shape[1] == 9


def test_toy_switch_in_the_log_and_the_drift_figure(tmp_path):
    """The README's toy command (examples/toy_timeline.yaml: a switch at frame 18), shortened to 24 frames."""
    from pathlib import Path

    from tokentrim.app.figures import drift_figure

    timeline = Path(__file__).resolve().parent.parent / "examples" / "toy_timeline.yaml"
    log = tmp_path / "v.json"
    assert main(["generate", "--preset", "toy", "--pipeline", "longlive", "--timeline", str(timeline),
                 "--latent-frames", "24", "--out", str(tmp_path / "v.mp4")]) == 0  # fmt: skip
    data = json.loads(log.read_text())
    assert [r["block"] for r in data["blocks"] if r["prompt_switch"]] == [6]
    assert [e["frame"] for e in data["config"]["timeline"]] == [0, 18]
    fig = drift_figure(data)
    lines = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "prompt switch"]
    assert len(lines) == 1 and list(lines[0].get_xdata()) == [5.5, 5.5]


def test_shipped_configs_hold_the_spec_values():
    from pathlib import Path

    from tokentrim.app.run_config import load_run_config

    configs = Path(__file__).resolve().parent.parent / "tokentrim" / "configs"
    for name, shift, rope in (("longlive.yaml", 5.0, "absolute"), ("longlive_infinite.yaml", 5.0, "slot"),
                              ("toy/longlive.yaml", 1.0, "absolute")):  # fmt: skip
        run = load_run_config(configs / name)
        c = run.sampler
        assert run.pipeline == "longlive" and isinstance(c, LongLiveConfig), name
        assert (c.cache_frames, c.sink_frames, c.global_sink, c.rope) == (12, 3, True, rope), (
            name
        )  # docs/spec.md#longlive-cache, docs/spec.md#prompt-switches
        assert (
            c.denoising_steps == (1000, 750, 500, 250) and c.timestep_shift == shift and c.context_noise == 0
        )
        t = run.tokentrim
        assert (t.switch_exempt, t.switch_stats, c.switch_pruning) == (True, "reset", "keep"), name


def test_run_script_merges_once_and_passes_the_setup(tmp_path):
    """scripts/run_longlive.sh with a stand-in `tokentrim` that records its arguments."""
    import os
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "run_longlive.sh"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    fake = bin_dir / "tokentrim"
    fake.write_text(
        f'#!/usr/bin/env bash\necho "$*" >> {calls}\nif [[ $1 == merge-lora ]]; then touch "$5"; fi\n'
    )
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LL_DIR": str(tmp_path / "ll")}
    (tmp_path / "ll" / "models").mkdir(parents=True)
    for mode, what in (("interactive", "story.yaml"), ("infinite", "a fox")):
        subprocess.run(["bash", str(script), mode, what, "--no-tokentrim"], env=env, check=True, cwd=tmp_path)
    bad = subprocess.run(
        ["bash", str(script), "sometimes", "x"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    merge, interactive, infinite = calls.read_text().splitlines()
    assert merge.startswith("merge-lora ") and merge.endswith("longlive_merged.safetensors")
    assert "--timeline story.yaml" in interactive and "--latent-frames 240 --seed 1" in interactive
    assert "configs/longlive.yaml" in interactive and "--no-tokentrim" in interactive
    assert "configs/longlive_infinite.yaml" in infinite and "--latent-frames 1050 --seed 0" in infinite
