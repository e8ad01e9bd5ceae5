"""Model-agnostic TokenTrim: drift scoring, the accept/prune controller and FlowMo guidance.

Imports torch only; the pipelines talk to it through `BlockHook` (see DEVELOPERS.md and docs/tokentrim.md).
"""

from .drift import consecutive_block_drift, latent_summary, num_unstable, token_drift, unstable_set
from .flowmo import FlowMoConfig, Guided, applies, flowmo_guidance, motion_variance
from .hook import BlockHook, BlockRecord, Verdict
from .stats import RunningStats
from .trim import TokenTrim, TokenTrimConfig

__all__ = [
    "BlockHook",
    "BlockRecord",
    "FlowMoConfig",
    "Guided",
    "RunningStats",
    "TokenTrim",
    "TokenTrimConfig",
    "Verdict",
    "applies",
    "consecutive_block_drift",
    "flowmo_guidance",
    "latent_summary",
    "motion_variance",
    "num_unstable",
    "token_drift",
    "unstable_set",
]
