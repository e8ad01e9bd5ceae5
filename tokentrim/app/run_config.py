"""User-facing run configuration: the YAML files in `configs/` structured onto the dataclasses.

A run config has a `pipeline:` name, one sampler section per registered pipeline (`self_forcing:`,
`rolling_forcing:`, ...; only the chosen one is used, the others are still validated), `tokentrim:` and
`flowmo:`. `load_run_config(path, overrides, updates)` merges, in order: the dataclass defaults (`RUN_DEFAULTS`
for the sections whose run default differs), the YAML file, `key=value` overrides from the command line, then
`updates` (typed values, e.g. from command-line flags). Unknown keys and out-of-range values are errors that
name the key. The shipped YAML files hold only what differs from the defaults.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from tokentrim.errors import UserError
from tokentrim.pipelines import (
    REGISTRY,
    BlockPipeline,
    PipelineEntry,
    Request,
    SamplerConfig,
    SinkCacheConfig,
    get_pipeline,
)
from tokentrim.wan import WanConfig, build_model
from tokentrim_core.flowmo import FlowMoConfig
from tokentrim_core.trim import TokenTrimConfig

logger = logging.getLogger(__name__)

# The run's sections besides the samplers, with their run defaults: FlowMo guides the first block, TokenTrim's
# initialisation (paper Sec. 4.1); the library's FlowMoConfig() is off.
RUN_DEFAULTS: dict[str, Any] = {"tokentrim": TokenTrimConfig(), "flowmo": FlowMoConfig(mode="first_block")}
# The baseline of the paper's comparisons (and of bench --compare, compare, stress, the demo's side by side):
# TokenTrim off (blocks still scored and logged, nothing pruned) and FlowMo off.
BASELINE = {"tokentrim": {"enabled": False}, "flowmo": {"mode": "off"}}
# Keys that moved to the samplers of the loops that read them: old key -> the field of `<pipeline>:`.
MOVED = {"tokentrim.regen_noise": "regen_noise", "tokentrim.switch_pruning": "switch_pruning"}


def default_config_path(pipeline: str, preset: str | None = None) -> Path:
    """The shipped run config of a pipeline: `configs/<pipeline>.yaml` (Wan2.1 and the tiny preset), or
    `configs/toy/<pipeline>.yaml` for the toy world model (its own sampler noise levels, docs/toy.md)."""
    return get_pipeline(pipeline).default_config_path(preset)


@dataclass(frozen=True)
class RunConfig:
    pipeline: str
    samplers: dict[str, SamplerConfig]  # every registered pipeline's sampler config, by name
    tokentrim: TokenTrimConfig
    flowmo: FlowMoConfig

    def __post_init__(self) -> None:
        get_pipeline(self.pipeline)

    @property
    def entry(self) -> PipelineEntry:
        return get_pipeline(self.pipeline)

    @property
    def sampler(self) -> SamplerConfig:
        return self.samplers[self.pipeline]

    def loop(self, model, vae=None) -> BlockPipeline:
        """The chosen pipeline's loop on `model` with this sampler (a meta-device model: for checks only)."""
        return self.entry.pipeline(model, self.sampler, vae)

    def checker(self, config: WanConfig) -> BlockPipeline:
        """The loop on a meta-device model of `config`: checks requests before any weights load."""
        return self.loop(build_model(config, device="meta"))

    def request(self, prompt: str | torch.Tensor, latent_frames: int, **inputs) -> Request:
        """A `Request` with this run's TokenTrim and FlowMo settings; `inputs` are its other fields (a `hook` takes
        the place of the run's TokenTrim settings)."""
        tokentrim = None if inputs.get("hook") is not None else self.tokentrim
        return Request(prompt, latent_frames, **{"tokentrim": tokentrim, "flowmo": self.flowmo, **inputs})

    def baseline(self) -> RunConfig:
        """The same run with TokenTrim and FlowMo off (`BASELINE`)."""
        return dataclasses.replace(
            self,
            tokentrim=dataclasses.replace(self.tokentrim, **BASELINE["tokentrim"]),
            flowmo=dataclasses.replace(self.flowmo, **BASELINE["flowmo"]),
        )

    def to_dict(self) -> dict:
        return {
            "pipeline": self.pipeline,
            **{name: dataclasses.asdict(cfg) for name, cfg in self.samplers.items()},
            "tokentrim": dataclasses.asdict(self.tokentrim),
            "flowmo": dataclasses.asdict(self.flowmo),
        }


def _schema():
    schema = OmegaConf.create({"pipeline": "self_forcing"})
    for name, entry in REGISTRY.items():
        schema[name] = OmegaConf.structured(entry.config)
    for name, default in RUN_DEFAULTS.items():
        schema[name] = OmegaConf.structured(default)
    OmegaConf.set_struct(schema, True)  # a key the schema does not know is an error
    return schema


# What a config value must be, by the kind of node that holds it (or the type a conversion was aiming at).
_KINDS = {"FloatNode": "a number", "IntegerNode": "an integer", "BooleanNode": "true or false",
          "StringNode": "a string", "EnumNode": "one of its names", "ListConfig": "a list",
          "DictConfig": "a mapping", "Float": "a number", "Integer": "an integer", "Boolean": "true or false",
          "String": "a string"}  # fmt: skip


def _wrong_type(err: ValidationError, key: str | None = None, text: str | None = None) -> str:
    """`KEY must be KIND, got VALUE` for a value of the wrong type (omegaconf's own text names neither the key
    nor, for list entries, the value)."""
    key = key or (str(err.full_key) if getattr(err, "full_key", None) else None)
    target = re.search(r"converted to (\w+)|is not a (\w+)Config", str(err))
    node = type(getattr(err, "child_node", None)).__name__
    kind = _KINDS.get(node) or _KINDS.get(next((g for g in target.groups() if g), "") if target else "")
    if target and target.group(2):
        kind, node = "a list", "ListConfig"  # a single value where a list belongs
    if kind is None or key is None:
        return " ".join(str(err).splitlines()[0].split())
    entry = node not in _KINDS  # the list entries were converted, not the list
    value = text if text is not None else getattr(err, "value", None)
    kind = f"a list of {kind.split(' ', 1)[-1]}s" if entry and kind not in ("true or false",) else kind
    return f"{key} must be {kind}, got {value if isinstance(value, str) and text else repr(value)}"


def _locate(schema, loaded) -> str | None:
    """The wrong-type message of the first key of `loaded` that does not merge into `schema` on its own."""

    def leaves(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    for key, value in leaves(OmegaConf.to_container(loaded)):
        try:
            OmegaConf.merge(schema, OmegaConf.from_dotlist([f"{key}={json.dumps(value)}"]))
        except ValidationError as err:
            return _wrong_type(err, key, json.dumps(value))
        except OmegaConfBaseException:
            continue
    return None


def _off_is_a_mode(cfg):
    """YAML 1.1 reads an unquoted `off` as false; `flowmo.mode: off` means the mode "off"."""
    if "flowmo" in cfg and cfg.flowmo.get("mode") is False:
        cfg.flowmo.mode = "off"
    return cfg


def _read_yaml(path: str | os.PathLike):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        loaded = OmegaConf.create(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not a text (YAML) file") from None
    except yaml.YAMLError as err:
        raise UserError(
            f"config file {path} is not valid YAML ({' '.join(str(err).split())[:120]})"
        ) from None
    if not isinstance(loaded, DictConfig):
        raise UserError(f"config file {path} must hold a mapping (pipeline:, tokentrim:, ...), not a list")
    return loaded


def _take_moved(cfg: DictConfig, moved: dict) -> DictConfig:
    """Pull the keys of `MOVED` out of a YAML file's or overrides' config (into `moved`, to be set on the chosen
    pipeline's section once it is known)."""
    for old, new in MOVED.items():
        section, key = old.split(".")
        if section in cfg and isinstance(cfg[section], DictConfig) and key in cfg[section]:
            moved[new] = cfg[section].pop(key)
    return cfg


def _moved_to(pipeline: str, section: DictConfig, moved: dict) -> dict:
    """The moved keys for the chosen pipeline's section. A loop without the field takes it only at the value
    it already behaves by (say `regen_noise: same` for Rolling Forcing, which regenerates from the same input)."""
    kept = {}
    for key, value in moved.items():
        if key in section:
            kept[key] = value
        elif value != getattr(SinkCacheConfig(), key):
            known = ", ".join(map(str, section.keys()))
            raise UserError(
                f"{key}={value} is not available for {pipeline} (its sampler has {known})",
                field=f"{pipeline}.{key}",
            )
    for key in moved:  # warned only once the configuration holds
        logger.warning("`tokentrim.%s` is now `%s.%s`; please rename it", key, pipeline, key)
    return kept


def _check_keys(overrides: list[str], updates: dict) -> None:
    """Overrides that name no setting: an empty key, a whole section (`tokentrim=5`), or `pipeline=` when the
    command chooses the pipeline itself (`--pipeline`, which would win silently)."""
    schema = _schema()
    for override in overrides:
        key = override.split("=", 1)[0].strip()
        if not key:
            raise UserError(f"override {override!r} has no key: write KEY=VALUE, e.g. tokentrim.p=0.05")
        if key in schema and key != "pipeline":
            names = ", ".join(map(str, schema[key].keys()))
            raise UserError(f"{key} is a section: set one of its keys, {key}.KEY=VALUE ({key} has {names})")
        if key == "pipeline" and "pipeline" in updates:
            raise UserError(
                f"{override}: choose the pipeline with --pipeline {override.split('=', 1)[1].strip()}"
            )


def _check_sections(overrides: list[str], runs: list[str]) -> None:
    """A `key=value` override for the sampler of a pipeline the command does not run would be read by nothing:
    say which section to write instead."""
    for override in overrides:
        section, _, key = override.split("=", 1)[0].strip().partition(".")
        if section in REGISTRY and section not in runs:
            fields = {run: [f.name for f in dataclasses.fields(get_pipeline(run).config)] for run in runs}
            same = [f"{run}.{key}" for run in runs if key in fields[run]]
            instead = (
                f"write {' or '.join(same)}"
                if same
                else "; ".join(f"{run}'s sampler has {', '.join(names)}" for run, names in fields.items())
            )
            raise UserError(
                f"{override} sets the {section} sampler, but this command runs {' and '.join(runs)}: {instead}",
                field=override.split("=", 1)[0].strip(),
            )


def load_run_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] = (),
    updates: dict | None = None,
    runs: list[str] | None = None,
) -> RunConfig:
    """Defaults <- YAML file <- `key=value` overrides <- `updates`, validated by the dataclasses. `runs`: the
    pipelines the command runs with these overrides (default: the chosen one); an override of another pipeline's
    sampler is refused (a YAML file may hold every pipeline's section)."""
    try:
        merged, moved = _schema(), {}
        if path is not None:
            loaded = _take_moved(_off_is_a_mode(_read_yaml(path)), moved)
            try:
                merged = OmegaConf.merge(merged, loaded)
            except ValidationError as err:
                if getattr(err, "full_key", None):
                    raise
                raise UserError(f"bad configuration in {path}: {_locate(merged, loaded) or err}") from None
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise UserError(f"overrides must look like key=value (e.g. tokentrim.p=0.05), got {bad}")
        _check_keys(list(overrides), updates or {})
        chosen = (updates or {}).get("pipeline", merged.pipeline)  # `updates` are merged last
        if chosen in REGISTRY:
            _check_sections(list(overrides), list(runs or [chosen]))
        for override in overrides:  # one at a time, so that a wrong value's error can name its key
            key = override.split("=", 1)[0].strip()
            try:
                dotlist = _off_is_a_mode(OmegaConf.from_dotlist([override]))
                merged = OmegaConf.merge(merged, _take_moved(dotlist, moved))
            except ValidationError as err:
                raise UserError(
                    f"bad configuration: {_wrong_type(err, key, override.split('=', 1)[1])}"
                ) from None
        if updates:
            merged = OmegaConf.merge(merged, updates)
        pipeline = merged.pipeline
        if not isinstance(pipeline, str):
            raise UserError(f"pipeline must be a pipeline name, one of {sorted(REGISTRY)}, got {pipeline!r}")
        if moved and pipeline in REGISTRY:
            merged = OmegaConf.merge(merged, {pipeline: _moved_to(pipeline, merged[pipeline], moved)})
        return RunConfig(
            pipeline=pipeline,
            samplers={name: OmegaConf.to_object(merged[name]) for name in REGISTRY},
            tokentrim=OmegaConf.to_object(merged.tokentrim),
            flowmo=OmegaConf.to_object(merged.flowmo),
        )
    except (OmegaConfBaseException, ValueError, TypeError) as err:
        if isinstance(err, UserError):
            raise
        message = str(err).splitlines()[0]
        key = getattr(err, "full_key", None)
        if isinstance(err, ValidationError):
            message = _wrong_type(err, str(key) if key else None)
        if isinstance(err, ConfigKeyError) and key:  # an unknown key: name the section's valid keys
            section, _, name = str(key).rpartition(".")
            known = (
                list(_schema()[section].keys())
                if section and section in _schema()
                else list(_schema().keys())
            )
            message = f"unknown key {key!r}; {section or 'the config'} has {', '.join(map(str, known))}"
        raise UserError(f"bad configuration: {message}") from None
