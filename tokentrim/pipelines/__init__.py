"""The autoregressive sampling loops, each with a TokenTrim hook point, and the registry that names them."""

from tokentrim.pipelines.causal_forcing import CausalForcingFramewiseConfig, CausalForcingFramewisePipeline
from tokentrim.pipelines.common import BlockPipeline, CachePolicy, GenerationOutput, Rollout
from tokentrim.pipelines.longlive import LongLiveConfig, LongLivePipeline
from tokentrim.pipelines.registry import (
    REGISTRY,
    PipelineEntry,
    get_pipeline,
    pipeline_names,
    register,
    unregister,
)
from tokentrim.pipelines.rolling_forcing import RollingForcingConfig, RollingForcingPipeline
from tokentrim.pipelines.self_forcing import SelfForcingConfig, SelfForcingPipeline

__all__ = [
    "REGISTRY", "BlockPipeline", "CausalForcingFramewiseConfig", "CausalForcingFramewisePipeline", "CachePolicy", "GenerationOutput", "LongLiveConfig", "LongLivePipeline", "PipelineEntry", "Rollout",
    "RollingForcingConfig", "RollingForcingPipeline", "SelfForcingConfig", "SelfForcingPipeline", "get_pipeline",
    "pipeline_names", "register", "unregister",
]  # fmt: skip
