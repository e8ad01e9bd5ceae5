"""The layering rules of DEVELOPERS.md, read from the source: who may import whom, and no import cycles; and the
plug-in promise: a pipeline defined here, in a test module, registers itself and runs through the CLI."""

import ast
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("tokentrim", "tokentrim_core")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module a file imports (module level and inside functions): project modules resolved to the module
    (not the attribute), others by their top-level name."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
            found.update(subs or [target])
    return found


@pytest.fixture(scope="module")
def graph():
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_import_rules_can_see_the_imports(graph):
    """Guard for the checks below: the parser does find known edges."""
    assert "tokentrim.wan.model" in graph["tokentrim.pipelines.common"]
    assert "tokentrim_core.hook" in graph["tokentrim_core.trim"]  # a relative import, resolved
    assert (
        "tokentrim.app.bench" in graph["tokentrim.app.cli"]
    )  # a function-level `from package import module`


def test_core_imports_only_torch(graph):
    allowed = set(sys.stdlib_module_names) | {"torch"}
    for name, deps in graph.items():
        if name.startswith("tokentrim_core"):
            bad = {d for d in deps if not d.startswith("tokentrim_core") and d.split(".")[0] not in allowed}
            assert not bad, f"{name} imports {bad}"


@pytest.mark.parametrize(
    "layer, forbidden",
    [
        ("tokentrim.wan", ("tokentrim.pipelines", "tokentrim_core", "tokentrim.app", "tokentrim.toy", "tokentrim.eval")),
        ("tokentrim.pipelines", ("tokentrim.app", "tokentrim.eval", "tokentrim.toy")),
        ("tokentrim.toy", ("tokentrim.app", "tokentrim.pipelines", "tokentrim.eval")),
        ("tokentrim.eval", ("tokentrim.app", "tokentrim.pipelines", "tokentrim.wan", "tokentrim.toy")),
        ("tokentrim.integrations", ("tokentrim.app", "tokentrim.pipelines", "tokentrim.wan", "tokentrim.toy",
                                    "tokentrim.eval")),
    ],
)  # fmt: skip
def test_libraries_never_import_upwards(graph, layer, forbidden):
    for name, deps in graph.items():
        if name == layer or name.startswith(layer + "."):
            bad = {d for d in deps if any(d == f or d.startswith(f + ".") for f in forbidden)}
            assert not bad, f"{name} imports {bad}"


def test_no_import_cycles(graph):
    internal = {n: {d for d in deps if d in graph and d != n} for n, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for dep in sorted(internal[node]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(dep) :], dep]))
            if dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for node in sorted(internal):
        if node not in state:
            visit(node, [node])


# The loops' interface: one request in, a stream of blocks out; the package leaves torch alone ------------------
def loop_classes():
    from tokentrim.pipelines import REGISTRY, BlockPipeline

    return [BlockPipeline, *(entry.pipeline for entry in REGISTRY.values())]


CALLBACKS = ("on_block", "alter", "progress", "callback", "on_run")


@pytest.mark.parametrize("method", ["stream", "__call__"])
def test_loop_entries_take_a_request_and_no_callbacks(method):
    import inspect
    import typing

    from tokentrim.pipelines import Request

    for cls in loop_classes():
        entry = getattr(cls, method)
        params = list(inspect.signature(entry).parameters)
        assert params == ["self", "request"], f"{cls.__name__}.{method}{params}"
        assert typing.get_type_hints(entry)["request"] is Request, f"{cls.__name__}.{method}"


def test_no_function_of_the_loops_takes_a_callback():
    for path in sorted((ROOT / "tokentrim" / "pipelines").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names = [a.arg for a in (*node.args.args, *node.args.kwonlyargs)]
                bad = [n for n in names if n in CALLBACKS]
                assert not bad, f"{path.name}:{node.name} takes {bad}"


def torch_patches(source: str) -> list[str]:
    """Assignments to (or setattr / delattr on) an attribute of torch, `torch.Tensor` or anything bound to them in
    the module (`import torch as t`, `from torch import Tensor`, `cls = torch.Tensor`)."""
    tree = ast.parse(source)
    roots = {"torch"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.asname or a.name for a in node.names if a.name.split(".")[0] == "torch"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
            roots |= {a.asname or a.name for a in node.names}

    def rooted(expr) -> bool:
        while isinstance(expr, ast.Attribute | ast.Subscript):
            expr = expr.value
        return isinstance(expr, ast.Name) and expr.id in roots

    for node in ast.walk(tree):  # aliases: `cls = torch.Tensor`
        if isinstance(node, ast.Assign) and rooted(node.value) and isinstance(node.value, ast.Attribute):
            roots |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        for target in targets:
            for t in target.elts if isinstance(target, ast.Tuple) else [target]:
                if isinstance(t, ast.Attribute) and rooted(t):
                    found.append(f"line {t.lineno}: {ast.unparse(t)}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("setattr", "delattr")
        ):
            if node.args and rooted(node.args[0]):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_patch_finder_finds_patches():
    """Guard for the check below: what the GPU check's tools did before they left the package is found."""
    source = ("import torch\nimport torch as t\nfrom torch import Tensor\ntorch.randn = f\nt.Tensor.item = g\n"
              "cls = torch.Tensor\nsetattr(cls, 'cpu', h)\ndelattr(Tensor, 'to')\n"
              "torch.backends.cudnn.allow_tf32 = False\nmodel.gradient_checkpointing = True\nx = torch.zeros(1)\n")  # fmt: skip
    assert len(torch_patches(source)) == 5
    assert len(torch_patches((ROOT / "tools" / "gpu_check" / "device_reads.py").read_text())) > 0


def test_nothing_in_the_package_assigns_to_torch():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            assert not torch_patches(path.read_text()), (
                f"{path.relative_to(ROOT)}: {torch_patches(path.read_text())}"
            )


# A third pipeline, defined here -----------------------------------------------------------------------------
from tokentrim.pipelines import BlockPipeline, Rollout, SamplerConfig, register, unregister  # noqa: E402
from tokentrim.pipelines.self_forcing import SinkCachePolicy  # noqa: E402
from tokentrim.wan.kv_cache import KVCache  # noqa: E402
from tokentrim_core.options import check_options, option  # noqa: E402


@dataclass(frozen=True)
class TwoStepConfig(SamplerConfig):
    denoising_steps: tuple[float, ...] = (1000, 500)
    # a sliding cache, no sink; declared once, it is also a command-line option (and a checked config key)
    window_frames: int = option(
        6, "the sliding cache's length in latent frames", low=3, flag="--window-frames"
    )

    def __post_init__(self) -> None:
        check_options(self)


class TwoStepPipeline(BlockPipeline):
    """Two denoising steps per block on a two-block sliding cache."""

    title = "Two-step test loop"
    config_class = TwoStepConfig

    def make_cache(self, batch, device, dtype):
        cache = KVCache(self.model.config, batch, self.config.window_frames, device=device, dtype=dtype)
        return SinkCachePolicy(cache, sink_frames=0)

    def generate(self, r: Rollout):
        for j in range(r.observed, r.num_blocks):
            s = j * r.block
            r.cache.make_room(r.block)

            def denoise(s=s):
                x = r.noise[:, s : s + r.block]
                t = r.steps[0].expand(x.shape[:2])
                x0 = r.predict_x0(x, t, s)
                x = r.schedule.add_noise(x0, r.noise[:, s : s + r.block], r.steps[1].expand(x.shape[:2]))
                return r.predict_x0(x, r.steps[1].expand(x.shape[:2]), s)

            x0, _ = r.judge(j, denoise(), denoise)
            r.commit(x0, s)
            yield r.finished(j, x0)


@pytest.fixture
def two_step(tmp_path):
    config = tmp_path / "two_step.yaml"
    config.write_text("pipeline: two_step\ntwo_step:\n  denoising_steps: [1000, 500]\n  window_frames: 6\n"
                      "tokentrim:\n  lam: 0.0\n  warmup: 1\nflowmo:\n  mode: 'off'\n")  # fmt: skip
    register("two_step", TwoStepPipeline, TwoStepConfig, config)
    yield config
    unregister("two_step")


def test_a_pipeline_defined_in_a_test_runs_through_the_cli(two_step, tmp_path, capsys, monkeypatch):
    from tokentrim.app.cli import main
    from tokentrim.wan.model import CausalWanModel

    calls, forward = [], CausalWanModel.forward

    def counting(self, x, t, context, cache=None, plan=None, start_frame=0, attn_mask=None):
        calls.append(plan.commit)
        return forward(
            self, x, t, context, cache=cache, plan=plan, start_frame=start_frame, attn_mask=attn_mask
        )

    monkeypatch.setattr(CausalWanModel, "forward", counting)
    video = tmp_path / "two.mp4"
    argv = ["generate", "--preset", "toy", "--pipeline", "two_step", "--prompt", "a red circle", "--latent-frames",
            "12", "--seed", "1", "--out", str(video), "--window-frames", "6"]  # fmt: skip
    assert main(argv) == 0
    log = json.loads(video.with_suffix(".json").read_text())
    assert (
        log["config"]["run"]["pipeline"] == "two_step"
        and log["config"]["run"]["two_step"]["window_frames"] == 6
    )
    actions = [b["action"] for b in log["blocks"]]
    assert len(actions) == 4 and "prune" in actions  # lam 0: TokenTrim fires through the plug-in's judge
    prunes = actions.count("prune")
    assert calls.count(True) == 4 and calls.count(False) == 2 * (4 + prunes)  # 2 steps per attempt, 1 commit
    assert video.is_file() and "wrote" in capsys.readouterr().out
    assert main(["bench", "--preset", "tiny", "--pipeline", "two_step", "--latent-frames", "12", "--repeats", "1",
                 "--warmup-runs", "0"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report["pipeline"] == "two_step" and report["kv_cache_mb"] > 0
    with pytest.raises(SystemExit):  # its declared range, checked by the command line
        main(argv[:-2] + ["--window-frames", "2"])
    assert "window_frames must be an int >= 3, got 2" in capsys.readouterr().err


def test_unknown_pipeline_names_the_registered_ones():
    from tokentrim.app.run_config import load_run_config
    from tokentrim.errors import UserError

    with pytest.raises(UserError, match="rolling_forcing"):
        load_run_config(updates={"pipeline": "nope"})
