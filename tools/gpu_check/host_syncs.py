"""Host synchronisations of a block loop on CUDA, for the GPU check.

CUDA's sync debug mode (`torch.cuda.set_sync_debug_mode("warn")`) warns at every synchronising call: a
device-to-host copy, `.item()`, a host-to-device copy from pageable memory. Each warning is attributed to the
function that made it, named as `tools.gpu_check.device_reads` names host reads on the meta device (which counts
them on any machine: tests/test_fast_path.py). The documented ones are `DOCUMENTED`; anything else is "other".
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from collections.abc import Iterator

import torch

from tokentrim.app.api import Pipeline
from tokentrim.pipelines import GenerationOutput
from tools.gpu_check.device_reads import caller_site

# Per block: TokenTrim's decision, once per judgement (block 0 is not judged; a pruned block is judged again
# after its regeneration); the finished block's copy into the CPU output; FlowMo's loss, once per evaluation.
DOCUMENTED = {
    "tokentrim_core.trim:_decision_to_host": "decision",
    "tokentrim.pipelines.common:finished": "output",
    "tokentrim_core.flowmo:keep": "flowmo",
}
SYNC_WARNING = "synchroniz"  # in CUDA's warning text: "called a synchronizing CUDA operation"


@contextlib.contextmanager
def sync_sites(device: torch.device) -> Iterator[list[str] | None]:
    """Inside the block, the sites of the synchronising CUDA calls, in call order; None on another device (the
    debug mode needs CUDA)."""
    if device.type != "cuda":
        yield None
        return
    sites: list[str] = []
    with warnings.catch_warnings():  # restores showwarning and the filters on exit
        warnings.simplefilter("always")
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if SYNC_WARNING in str(message):
                sites.append(caller_site(__file__, warnings.__file__))
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield sites
        finally:
            torch.cuda.set_sync_debug_mode("default")


def count_syncs(sites: list[str], first_block_end: int) -> dict:
    """Counts by site and by kind (`DOCUMENTED`, else "other"); `other_after_first_block`: the undocumented ones
    after the first `first_block_end` sites (block 0 copies the timestep tables to the device, once a video)."""
    kinds = Counter(DOCUMENTED.get(s, "other") for s in sites)
    later = sum(s not in DOCUMENTED for s in sites[first_block_end:])
    return {
        "syncs": dict(Counter(sites)),
        **{k: kinds[k] for k in (*DOCUMENTED.values(), "other")},
        "other_after_first_block": later,
    }


def cuda_syncs(pipe: Pipeline, embeds: torch.Tensor, frames: int, device: torch.device) -> dict:
    """A video of `pipe` once to warm up, then again under the sync debug mode; its blocks, judgements and syncs
    (on a device other than CUDA: nothing observed)."""
    request = pipe.request(embeds, latent_frames=frames, seed=0, decode=False)
    GenerationOutput.collect(pipe.loop.stream(request))  # kernels loaded
    ends, records = [], []
    with sync_sites(device) as sites:
        for event in pipe.loop.stream(request):
            ends.append(len(sites or ()))
            if event.record is not None:
                records.append(event.record)
    judgements = sum(1 + r.regenerations for r in records[1:])
    found = {"observed": sites is not None, "blocks": len(records), "judgements": judgements}
    return found if sites is None else {**found, **count_syncs(sites, ends[0])}
