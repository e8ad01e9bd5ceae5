"""The GPU acceptance check (`scripts/gpu_check.sh`): a verification tool beside the package, not part of it. It
runs the installed package through its public API (`tokentrim.load`, `Request`, `BlockPipeline.stream`, the bench's
`measure`) and counts host synchronisations with CUDA's sync debug mode and, without a GPU, with `DeviceReads`."""
