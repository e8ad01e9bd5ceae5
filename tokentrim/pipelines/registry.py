"""The one list of pipelines: a name maps to its loop class, its sampler config class and its default run config.

The CLI's `--pipeline` choices, the run configs, `reproduce` and `bench` all read it. Adding a pipeline = its
loop file (a `BlockPipeline` subclass with its cache policy), its config dataclass, a YAML file in `configs/`,
and one `register(...)` line below (see DEVELOPERS.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokentrim.errors import UserError
from tokentrim.pipelines.causal_forcing import CausalForcingFramewiseConfig, CausalForcingFramewisePipeline
from tokentrim.pipelines.common import BlockPipeline
from tokentrim.pipelines.longlive import LongLiveConfig, LongLivePipeline
from tokentrim.pipelines.rolling_forcing import RollingForcingConfig, RollingForcingPipeline
from tokentrim.pipelines.self_forcing import SelfForcingConfig, SelfForcingPipeline

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"  # also reachable as ./configs in a checkout


@dataclass(frozen=True)
class PipelineEntry:
    name: str  # the --pipeline value and the run config's section name
    pipeline: type[BlockPipeline]
    config: type  # its frozen `SamplerConfig` subclass (the YAML section `<name>:` is structured onto it)
    config_file: Path  # default run config; a file of the same name under configs/toy/ serves the toy preset
    paper: bool = False  # part of the paper's comparison grid (`tokentrim reproduce`)

    def default_config_path(self, preset: str | None = None) -> Path:
        toy = self.config_file.parent / "toy" / self.config_file.name
        return toy if preset == "toy" and toy.is_file() else self.config_file


REGISTRY: dict[str, PipelineEntry] = {}


def register(
    name: str, pipeline: type[BlockPipeline], config: type, config_file: str | Path, paper: bool = False
) -> PipelineEntry:
    """Add a pipeline; `config_file` relative to `configs/` or absolute."""
    if name in REGISTRY:
        raise ValueError(f"a pipeline named {name!r} is already registered")
    if name in ("pipeline", "tokentrim", "flowmo"):
        raise ValueError(f"{name!r} is a run-config section, not a pipeline name")
    path = Path(config_file)
    entry = PipelineEntry(name, pipeline, config, path if path.is_absolute() else CONFIG_DIR / path, paper)
    REGISTRY[name] = entry
    return entry


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def get_pipeline(name: str) -> PipelineEntry:
    if name not in REGISTRY:
        raise UserError(f"`pipeline` must be one of {sorted(REGISTRY)}, got {name!r}", field="pipeline")
    return REGISTRY[name]


def pipeline_names(paper_only: bool = False) -> list[str]:
    return [name for name, entry in REGISTRY.items() if entry.paper or not paper_only]


register("self_forcing", SelfForcingPipeline, SelfForcingConfig, "self_forcing.yaml", paper=True)
register("rolling_forcing", RollingForcingPipeline, RollingForcingConfig, "rolling_forcing.yaml", paper=True)
register(
    "causal_forcing_framewise",
    CausalForcingFramewisePipeline,
    CausalForcingFramewiseConfig,
    "causal_forcing/framewise.yaml",
)
register("longlive", LongLivePipeline, LongLiveConfig, "longlive.yaml")
