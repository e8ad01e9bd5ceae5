"""TokenTrim: long videos from autoregressive Wan2.1 video diffusion, with inference-time KV-cache pruning against
long-horizon drift.

`tokentrim.load(pipeline, preset=... | model_dir=..., checkpoint=...)` gives a `Pipeline` with `generate` and
`stream` (`tokentrim.app.api`); `tokentrim.Request` and `tokentrim.BlockEvent` are the loops' own interface
(`tokentrim.pipelines`). Imported on first use: `import tokentrim` loads nothing heavy.
"""

_LAZY = {"load": "tokentrim.app.api", "Pipeline": "tokentrim.app.api", "Video": "tokentrim.app.api",
         "Request": "tokentrim.pipelines", "BlockEvent": "tokentrim.pipelines", "Start": "tokentrim.pipelines",
         "GenerationOutput": "tokentrim.pipelines"}  # fmt: skip
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'tokentrim' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
