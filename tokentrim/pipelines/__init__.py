"""The two autoregressive sampling loops, each with a TokenTrim hook point."""

from tokentrim.pipelines.common import GenerationOutput
from tokentrim.pipelines.rolling_forcing import RollingForcingConfig, RollingForcingPipeline
from tokentrim.pipelines.self_forcing import SelfForcingConfig, SelfForcingPipeline

__all__ = [
    "GenerationOutput", "RollingForcingConfig", "RollingForcingPipeline", "SelfForcingConfig",
    "SelfForcingPipeline",
]  # fmt: skip
