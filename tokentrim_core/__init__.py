"""Model-agnostic TokenTrim: drift scoring, the accept/prune controller and FlowMo guidance.

Imports torch only. This project's pipelines talk to it through `BlockHook`; any other block loop uses
`TokenTrimController` directly, with `ref_cache.CachePruner` for caches in the reference layout (DEVELOPERS.md,
docs/tokentrim.md, docs/integrations.md).
"""

from .detectors import Detector, PaperRule, TokenwiseRule
from .drift import consecutive_block_drift, latent_summary, num_unstable, token_drift, unstable_set
from .flowmo import FlowMoConfig, Guided, applies, flowmo_guidance, motion_variance
from .hook import BlockHook, BlockRecord, Verdict
from .options import Option, check_options, option, option_of, options
from .ref_cache import CachePruner, Pruned
from .stats import RunningStats
from .trim import TokenTrim, TokenTrimConfig, TokenTrimController

__all__ = [
    "BlockHook",
    "BlockRecord",
    "CachePruner",
    "Detector",
    "FlowMoConfig",
    "Guided",
    "Option",
    "PaperRule",
    "Pruned",
    "RunningStats",
    "TokenTrim",
    "TokenTrimConfig",
    "TokenTrimController",
    "TokenwiseRule",
    "Verdict",
    "applies",
    "check_options",
    "consecutive_block_drift",
    "flowmo_guidance",
    "latent_summary",
    "motion_variance",
    "num_unstable",
    "option",
    "option_of",
    "options",
    "token_drift",
    "unstable_set",
]
