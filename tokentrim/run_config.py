"""User-facing run configuration: the YAML files in `configs/` structured onto the dataclasses.

`load_run_config(path, overrides)` merges, in order: the dataclass defaults, the YAML file, `key=value`
overrides from the command line. Unknown keys and out-of-range values are errors that name the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tokentrim.errors import UserError
from tokentrim.pipelines import RollingForcingConfig, SelfForcingConfig
from tokentrim_core.flowmo import FlowMoConfig
from tokentrim_core.trim import TokenTrimConfig

PIPELINES = ("self_forcing", "rolling_forcing")
CONFIG_DIR = Path(__file__).parent / "configs"  # also reachable as ./configs in a checkout


def default_config_path(pipeline: str) -> Path:
    """The shipped run config of a pipeline (`configs/self_forcing.yaml`, `configs/rolling_forcing.yaml`)."""
    if pipeline not in PIPELINES:
        raise UserError(f"--pipeline must be one of {PIPELINES}, got {pipeline!r}")
    return CONFIG_DIR / f"{pipeline}.yaml"


@dataclass
class RunConfig:
    pipeline: str = "self_forcing"
    self_forcing: SelfForcingConfig = field(default_factory=SelfForcingConfig)
    rolling_forcing: RollingForcingConfig = field(default_factory=RollingForcingConfig)
    tokentrim: TokenTrimConfig = field(default_factory=TokenTrimConfig)
    flowmo: FlowMoConfig = field(default_factory=lambda: FlowMoConfig(mode="first_block"))

    def __post_init__(self) -> None:
        if self.pipeline not in PIPELINES:
            raise ValueError(f"pipeline must be one of {PIPELINES}, got {self.pipeline!r}")

    @property
    def sampler(self) -> SelfForcingConfig | RollingForcingConfig:
        return self.self_forcing if self.pipeline == "self_forcing" else self.rolling_forcing

    def to_dict(self) -> dict:
        return OmegaConf.to_container(OmegaConf.structured(self))


def _off_is_a_mode(cfg):
    """YAML 1.1 reads an unquoted `off` as false; `flowmo.mode: off` means the mode "off"."""
    if "flowmo" in cfg and cfg.flowmo.get("mode") is False:
        cfg.flowmo.mode = "off"
    return cfg


def load_run_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> RunConfig:
    """Defaults <- YAML file <- `key=value` overrides, validated by the dataclasses."""
    try:
        merged = OmegaConf.structured(RunConfig)
        if path is not None:
            if not Path(path).is_file():
                raise UserError(f"config file not found: {path}")
            merged = OmegaConf.merge(merged, _off_is_a_mode(OmegaConf.load(path)))
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise UserError(f"overrides must look like key=value (e.g. tokentrim.p=0.05), got {bad}")
        if overrides:
            merged = OmegaConf.merge(merged, _off_is_a_mode(OmegaConf.from_dotlist(list(overrides))))
        return OmegaConf.to_object(merged)
    except (OmegaConfBaseException, ValueError, TypeError) as err:
        if isinstance(err, UserError):
            raise
        message = str(err).splitlines()[0]
        raise UserError(f"bad configuration: {message}") from err
