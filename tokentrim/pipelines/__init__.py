"""The autoregressive sampling loops (one request in, a stream of blocks out), and the registry that names them."""

from tokentrim.pipelines.causal_forcing import CausalForcingFramewiseConfig, CausalForcingFramewisePipeline
from tokentrim.pipelines.common import BlockPipeline, CachePolicy, Rollout, SamplerConfig
from tokentrim.pipelines.longlive import LongLiveConfig, LongLivePipeline
from tokentrim.pipelines.registry import (
    REGISTRY,
    PipelineEntry,
    get_pipeline,
    pipeline_names,
    register,
    unregister,
)
from tokentrim.pipelines.request import BlockEvent, GenerationOutput, Request, Start
from tokentrim.pipelines.rolling_forcing import RollingForcingConfig, RollingForcingPipeline
from tokentrim.pipelines.self_forcing import SelfForcingConfig, SelfForcingPipeline, SinkCacheConfig

__all__ = [
    "REGISTRY",
    "BlockEvent",
    "BlockPipeline",
    "CachePolicy",
    "CausalForcingFramewiseConfig",
    "CausalForcingFramewisePipeline",
    "GenerationOutput",
    "LongLiveConfig",
    "LongLivePipeline",
    "PipelineEntry",
    "Request",
    "RollingForcingConfig",
    "RollingForcingPipeline",
    "Rollout",
    "SamplerConfig",
    "SelfForcingConfig",
    "SelfForcingPipeline",
    "SinkCacheConfig",
    "Start",
    "get_pipeline",
    "pipeline_names",
    "register",
    "unregister",
]
