"""Typed stage configs: load YAML, apply `--key value` overrides, validate, save next to the outputs.

Each stage has one dataclass whose fields carry a help string (`field(metadata={"help": ...})`) and a
`validate()` that raises `ConfigError` naming the field and the fix. The same dataclass generates the
stage's command-line options, so a YAML key, a CLI flag and a Python attribute are the same name.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from rlhf.errors import ConfigError, UserError
from rlhf.io import atomic_write_text

C = TypeVar("C")

# Enumerated options shared by several stages. A `Literal[...]` field is checked when the config is built (YAML,
# command line or `build_config`): a value outside its choices is a one-line error naming the field, the value and
# the choices, with "did you mean" when one is close; `--help` lists the choices.
Dtype = Literal["fp32", "bf16", "fp16"]
Device = Literal["auto", "cpu", "cuda"]
LoadIn = Literal["", "4bit", "8bit"]
Schedule = Literal["cosine", "linear", "constant"]
Gold = Literal["", "demo"]


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A config field with a help string (the one way fields are declared)."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return dataclasses.field(default=default, metadata={"help": help, **kw})


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for `X | None` / `Optional[X]`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def choices_of(tp: Any) -> tuple[Any, ...] | None:
    """The allowed values of a `Literal[...]` field (also `Literal[...] | None`), else None."""
    inner, _ = _base_type(tp)
    return typing.get_args(inner) if typing.get_origin(inner) is Literal else None


def show_choice(value: Any) -> str:
    """A choice as the user types it ('' shown as '')."""
    return "''" if value == "" else str(value)


def _type_name(tp: Any) -> str:
    choices = choices_of(tp)
    if choices is not None:
        return "one of " + ", ".join(show_choice(c) for c in choices)
    return getattr(tp, "__name__", str(tp))


def _coerce_choice(cls: type, name: str, choices: tuple[Any, ...], value: Any, source: str) -> Any:
    for c in choices:  # YAML may give 8 for '8', or true for 'true': compare as the user typed it
        if value == c or (not isinstance(value, bool) and str(value) == str(c)):
            return c
    shown = [show_choice(c) for c in choices]
    close = difflib.get_close_matches(str(value).lower(), [str(c) for c in choices if c != ""], n=1, cutoff=0.75)
    hint = f" (did you mean {close[0]}?)" if close else ""
    where = f"config field '{name}'" if source == "config" else f"{source}: field '{name}' of {cls.__name__}"
    raise ConfigError(f"{where}: unknown value {value!r}{hint}; use one of {', '.join(shown)}")


def _coerce(cls: type, name: str, tp: Any, value: Any, source: str) -> Any:
    """Convert a YAML or CLI value to the field's type, or raise ConfigError naming the field."""
    inner, optional = _base_type(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise ConfigError(f"{source}: field '{name}' of {cls.__name__} cannot be empty (expected {_type_name(inner)})")
    choices = choices_of(inner)
    if choices is not None:
        return _coerce_choice(cls, name, choices, value, source)
    try:
        if inner is bool:
            if isinstance(value, bool):
                return value
            s = str(value).lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if inner is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if inner is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if inner is str:
            return str(value)
        if typing.get_origin(inner) is list:
            (item_tp,) = typing.get_args(inner) or (str,)
            if isinstance(value, str):
                value = [v for v in value.split(",") if v.strip()]
            return [_coerce(cls, name, item_tp, v, source) for v in value]
        if typing.get_origin(inner) is dict:
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, dict):
                raise ValueError(value)
            return dict(value)
    except (TypeError, ValueError):
        tname = getattr(inner, "__name__", str(inner))
        raise ConfigError(f"{source}: field '{name}' of {cls.__name__} expects {tname}, got {value!r}") from None
    return value


def _unknown_key_error(cls: type, key: str, source: str) -> ConfigError:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; valid keys: {', '.join(names)}"
    return ConfigError(f"{source}: unknown key '{key}' for {cls.__name__}{hint}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of key: value at the top level")
    return data


def build_config(cls: type[C], values: dict[str, Any], source: str = "config") -> C:
    """Make `cls(**values)` with type coercion; unknown keys raise a ConfigError naming the closest valid key."""
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key not in types_:
            raise _unknown_key_error(cls, key, source)
        kwargs[key] = _coerce(cls, key, types_[key], value, source)
    cfg = cls(**kwargs)
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        validate()
    return cfg


def load_config(cls: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                section: str | None = None) -> C:
    """Defaults ← YAML file (its `section:` mapping if it has one) ← overrides; then validate()."""
    values: dict[str, Any] = {}
    source = "config"
    if path is not None:
        data = load_yaml(path)
        if section and isinstance(data.get(section), dict):
            data = data[section]
            source = f"{path} [{section}]"
        else:
            source = str(path)
        values.update(data)
    if overrides:
        values.update(overrides)
        source = f"{source} + command line" if path else "command line"
    return build_config(cls, values, source)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically) so the run can be reproduced from its folder."""
    return atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--field_name` option per dataclass field (also accepted as `--field-name`), help from metadata.
    A `Literal` field shows its choices ({a,b,c}); the value itself is checked by `build_config`, so the CLI, a YAML
    file and Python all get the same one-line error."""
    parser.add_argument("--config", default=None, help="YAML file with values for the options below")
    # the stage's own fields first, then one group per shared option class (RunOptions, LoRAOptions...) in the order
    # the stage lists its bases; a field a stage re-declares stays in the group of the class that declared it first
    groups: dict[type, list[dataclasses.Field]] = {}
    for f in dataclasses.fields(cls):
        groups.setdefault(_declared_by(cls, f.name), []).append(f)
    order = [cls] + [base for base in cls.__mro__[1:] if base in groups]
    types_ = _field_types(cls)
    for owner in order:
        title = f"{cls.__name__} options (override the YAML file)" if owner is cls else \
            (owner.__doc__ or owner.__name__).strip().splitlines()[0]
        if owner in groups:
            _add_fields(parser.add_argument_group(title), groups[owner], types_)


def _declared_by(cls: type, name: str) -> type:
    """The most basic class in cls's MRO that declares field `name` (its option group in --help)."""
    return next(base for base in reversed(cls.__mro__) if dataclasses.is_dataclass(base)
                and name in inspect.get_annotations(base))


def _add_fields(group: Any, fields: list[dataclasses.Field], types_: dict[str, Any]) -> None:
    for f in fields:
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        flags = [f"--{f.name}"]
        if "_" in f.name:
            flags.append(f"--{f.name.replace('_', '-')}")
        choices = choices_of(types_[f.name])
        metavar = "{" + ",".join(show_choice(c) for c in choices) + "}" if choices else "V"
        help_ = f"{f.metadata.get('help', '')} (default: {default!r})"
        # a bool option alone means true (`--json`); `--json false` still works
        flag_only = {"nargs": "?", "const": "true"} if _base_type(types_[f.name])[0] is bool else {}
        # argparse %-formats help strings ('%(default)s'): a literal % ("~30%% slower") must be doubled
        group.add_argument(*flags, dest=f"cfg_{f.name}", default=None, metavar=metavar,
                           help=help_.replace("%", "%%"), **flag_only)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}


def check_choices(cfg: Any) -> None:
    """`validate()` helper: every `Literal` field of a config made in Python (not through `build_config`, which
    checks them as it coerces) holds one of its choices; else ConfigError naming the field, value and choices."""
    for name, tp in _field_types(type(cfg)).items():
        choices = choices_of(tp)
        value = getattr(cfg, name)
        if choices is not None and not (value is None and _base_type(tp)[1]):
            _coerce_choice(type(cfg), name, choices, value, "config")


def check(condition: bool, field: str, problem: str, fix: str) -> None:
    """`validate()` helper: raise ConfigError('field: problem; fix') unless condition holds."""
    if not condition:
        raise ConfigError(f"config field '{field}': {problem}; {fix}")


# ---------------------------------------------------------------------------------------------------------------
# Shared option classes. A stage config inherits the groups it uses (`class SFTConfig(ModelOptions, LoopOptions,
# ...)`) and declares only its own fields; every field keeps the name it has always had (the YAML key and the CLI
# flag). A stage that needs another default or help text for an inherited field re-declares it: the field keeps the
# group it belongs to in `--help`, with the stage's default and help. Each group validates its own fields in
# `validate()`, and the groups chain through super(): a stage's `validate()` calls `super().validate()` first, then
# checks its own fields. `Options.validate` (the root) checks every Literal field's choices (check_choices).
#
#   Options                 the root: check_choices
#   RunOptions              out, seed, device                                        (every stage)
#   ModelOptions            model, tokenizer                                         (stages that load one model)
#   PrecisionOptions        dtype                                                    (inference and training)
#   TrainPrecisionOptions   dtype, gradient_checkpointing, load_in                   (training stages)
#   LoRAOptions             lora_r, lora_alpha, lora_dropout, lora_target
#   OptimOptions            lr, weight_decay, adam_eps, max_grad_norm
#   CheckpointOptions       save_every, resume
#   LoopOptions             epochs, max_steps, batch_size, grad_accum, schedule, warmup_steps, eval_every,
#                           log_every (+ CheckpointOptions)                           (rlhf.train.loop's stages)
#   EarlyStoppingOptions    early_stopping, early_stopping_patience                  (held-out early stopping)
#   PreferenceDataOptions   data, eval_data, eval_fraction, max_length, strict       (reward, DPO: rlhf.train.pairs)


@dataclasses.dataclass
class Options:
    """stage options"""

    def validate(self) -> None:
        check_choices(self)  # every Literal field holds one of its choices (also for a config made in Python)


@dataclasses.dataclass
class RunOptions(Options):
    """run options"""

    out: str = opt("", "output folder")
    seed: int = opt(0, "random seed")
    device: Device = opt("auto", "auto, cpu or cuda")


@dataclasses.dataclass
class ModelOptions(Options):
    """model options"""

    model: str = opt("", "hub id or local folder of a causal LM")
    tokenizer: str = opt("", "tokenizer folder or hub id; empty = the model's own")

    def validate(self) -> None:
        super().validate()
        check(bool(self.model), "model", "no model given", "pass --model FOLDER_OR_HUB_ID")


@dataclasses.dataclass
class PrecisionOptions(Options):
    """precision options"""

    dtype: Dtype = opt("fp32", "weights dtype: fp32, bf16 or fp16 (fp16: CUDA only)")


@dataclasses.dataclass
class TrainPrecisionOptions(Options):
    """precision and memory options (training)"""

    dtype: Dtype = opt("fp32", "precision: fp32; bf16/fp16 = autocast over fp32 master weights (fp16: CUDA only, with "
                       "loss scaling); frozen weights (LoRA/4-bit base) are stored in it; the saved model is in it")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass (less memory, ~30% slower)")
    load_in: LoadIn = opt("", "'' (full precision), 4bit (QLoRA) or 8bit base weights via bitsandbytes: CUDA only, "
                          "needs lora_r > 0")


@dataclasses.dataclass
class LoRAOptions(Options):
    """LoRA options (peft)"""

    lora_r: int = opt(0, "LoRA rank (peft); 0 = train all weights. Adapters are merged before saving")
    lora_alpha: float = opt(16.0, "LoRA alpha (scale = alpha / r)")
    lora_dropout: float = opt(0.0, "LoRA dropout")
    lora_target: str = opt("all-linear", "LoRA target modules: all-linear or a comma-separated list of module names")

    def validate(self) -> None:
        super().validate()
        check(self.lora_r >= 0, "lora_r", "must be >= 0", "use 0 (off) or a rank like 16")
        check(self.lora_alpha > 0, "lora_alpha", "must be > 0", "use e.g. 16")
        check(0 <= self.lora_dropout < 1, "lora_dropout", f"{self.lora_dropout} is outside [0, 1)", "use e.g. 0.05")
        check(bool(self.lora_target.strip()), "lora_target", "is empty", "use all-linear or module names like q_proj,v_proj")


@dataclasses.dataclass
class OptimOptions(Options):
    """optimiser options"""

    lr: float = opt(1e-3, "peak learning rate (AdamW)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    adam_eps: float = opt(1e-8, "AdamW epsilon")
    max_grad_norm: float = opt(1.0, "clip the global gradient norm to this (0 = no clipping)")

    def validate(self) -> None:
        super().validate()
        check(self.lr > 0, "lr", "must be > 0", "set a positive learning rate")
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0", "use 0 (off) or e.g. 0.01")
        check(self.adam_eps > 0, "adam_eps", "must be > 0", "use e.g. 1e-8")
        check(self.max_grad_norm >= 0, "max_grad_norm", "must be >= 0", "use 0 (no clipping) or e.g. 1.0")


@dataclasses.dataclass
class CheckpointOptions(Options):
    """checkpoint options"""

    save_every: int = opt(100, "write checkpoint/ every N optimiser steps (0 = only at the end)")
    resume: bool = opt(False, "continue from out/checkpoint if it exists")

    def validate(self) -> None:
        super().validate()
        check(self.save_every >= 0, "save_every", "must be >= 0", "use 0 (only at the end) or a number of steps")


@dataclasses.dataclass
class LoopOptions(CheckpointOptions):
    """training loop options"""

    epochs: float = opt(1.0, "passes over the training data (fractions allowed)")
    max_steps: int = opt(0, "optimiser steps; 0 = from epochs")
    batch_size: int = opt(32, "examples per micro-batch per process")
    grad_accum: int = opt(1, "micro-batches per optimiser step")
    schedule: Schedule = opt("cosine", "learning-rate schedule after warm-up: cosine, linear or constant")
    warmup_steps: int = opt(10, "linear warm-up steps")
    eval_every: int = opt(50, "evaluate every N optimiser steps (and at the start and the end)")
    log_every: int = opt(10, "log training metrics every N optimiser steps")

    def validate(self) -> None:
        super().validate()
        check(self.batch_size >= 1, "batch_size", "must be >= 1", "set --batch_size 1 or more")
        check(self.grad_accum >= 1, "grad_accum", "must be >= 1", "set --grad_accum 1 or more")
        check(self.epochs > 0 or self.max_steps > 0, "epochs", "no training length", "set epochs > 0 or max_steps")
        check(self.epochs >= 0 and self.max_steps >= 0, "max_steps", "epochs and max_steps must be >= 0",
              "use 0 for 'from the other one'")
        check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0", "use 0 (no warm-up) or a number of steps")
        check(self.eval_every >= 1 and self.log_every >= 1, "eval_every", "eval_every and log_every must be >= 1",
              "use 1 or more")


@dataclasses.dataclass
class EarlyStoppingOptions(Options):
    """early stopping options"""

    early_stopping: bool = opt(False, "keep the weights of the held-out evaluation with the lowest held-out loss and "
                               "restore them before the model is saved; needs held-out data")
    early_stopping_patience: int = opt(3, "with early_stopping: stop training after this many evaluations in a row "
                                       "without a new lowest held-out loss (0 = train to the end, then restore the best)")

    def validate(self) -> None:
        super().validate()
        check(self.early_stopping_patience >= 0, "early_stopping_patience", "must be >= 0",
              "use 0 (never stop early) or a number of evaluations like 3")


@dataclasses.dataclass
class PreferenceDataOptions(Options):
    """preference data options (rlhf.train.pairs)"""

    data: str = opt("", "preference JSONL: {prompt, chosen, rejected, margin?, agreement?, group_id?, split?, tie?} "
                    "rows (rlhf label export) or HH rows {chosen, rejected} with full transcripts")
    eval_data: str = opt("", "held-out preference JSONL; only when `data` has no split=heldout rows")
    eval_fraction: float = opt(0.1, "without split=heldout rows or eval_data: hold out this seeded fraction of groups "
                               "(a ranking's pairs stay together); 0 = no evaluation")
    max_length: int = opt(0, "longest prompt+response in tokens; 0 = the model's context. Longer pairs are skipped "
                          "and counted (never cut: a cut response would be scored on the wrong text)")
    strict: bool = opt(False, "stop with an error if any row would be skipped, instead of counting and reporting skips")

    def validate(self) -> None:
        super().validate()
        check(bool(self.data), "data", "no preference data given", "pass --data preferences.jsonl")
        check(0 <= self.eval_fraction < 1, "eval_fraction", f"{self.eval_fraction} is outside [0, 1)",
              "use e.g. 0.1, or 0 for no held-out set")
        check(self.max_length >= 0, "max_length", "must be >= 0", "use 0 for the model's context")
