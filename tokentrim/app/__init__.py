"""The application layer: the `tokentrim` command line, run configs, model backends, running a video in memory
and writing its files, benchmarks, the reproduction grid and figures. It imports the libraries
(`tokentrim.pipelines`, `tokentrim.wan`, `tokentrim_core`, `tokentrim.eval`, `tokentrim.toy`); they never
import it."""
