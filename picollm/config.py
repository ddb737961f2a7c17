"""Configuration: one dataclass per concern, loaded from YAML, overridable with dotted keys.

Precedence: defaults < ``base:`` files < the experiment file < ``--set key=value``. Every value is checked before any
work, so a typo costs one line instead of a half-finished run.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from picollm.checks import at_least, one_of, problems, within
from picollm.errors import ConfigError
from picollm.fileio import atomic_write_text
from picollm.models.config import ModelConfig
from picollm.optim import OptimConfig

WANDB_MODES = ("auto", "online", "offline", "disabled")
TOKENIZERS = ("gpt2", "bytes")
T = TypeVar("T")
# Sections of an experiment file that belong to the sweep, not to the trainer.
SWEEP_SECTIONS = ("search", "study", "launcher", "confirm")


@dataclass
class DataConfig:
    """Where tokens come from and how they are split."""

    tinystories: str | None = "roneneldan/TinyStories"  # hub name or local folder; null skips it
    tinystories_weight: float = within(0, 1, 1.0, "[]")  # share of training windows drawn from TinyStories when mixing
    input_files: list[str] = field(default_factory=list)  # plain text, one example per line
    synthetic: int = at_least(0, 0)  # number of built-in counting/arithmetic sequences (0 = none)
    builtin_stories: int = at_least(0, 0)  # number of built-in template stories, the offline stand-in (0 = none)
    tokenizer: str = one_of(TOKENIZERS, "gpt2")  # gpt2 (tiktoken) | bytes (UTF-8 bytes + end-of-text, no download)
    compact_vocab: bool = False  # keep only token ids seen in training (+ end-of-text, + unknown)
    max_stories: int | None = at_least(1, None)  # cap on TinyStories training stories (streamed from the hub)
    max_val_stories: int | None = at_least(1, None)  # cap on TinyStories validation stories
    val_fraction: float = within(0, 1, 0.1, "()")  # held-out share for sources without a validation split
    val_tokens: int | None = at_least(1, None)  # cap on the validation tokens scored by val/epoch_loss
    test_tokens: int | None = at_least(1, None)  # a test set: validation documents outside that sample, scored last
    cache_dir: str = "results/cache"
    offline_fallback: bool = False  # hub/tokenizer unreachable -> built-in corpus + bytes tokenizer


@dataclass
class TrainConfig:
    """Budget, evaluation cadence and reproducibility."""

    batch_size: int = at_least(1, 16)
    epochs: int = at_least(1, 1)
    max_steps_per_epoch: int | None = at_least(1, None)
    max_tokens: int | None = at_least(1, None)  # total training tokens; trials with other block sizes stay comparable
    eval_every: int = at_least(1, 50)  # steps between val/loss evaluations on the fixed subset
    eval_every_tokens: int | None = at_least(1, None)  # or: evaluate each time this many more tokens are seen
    eval_tokens: int | None = at_least(1, 8192)  # that fixed sample of whole documents (null: the whole capped set)
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = at_least(1, None)  # torch CPU threads (None: picollm.threads decides)
    compile: bool = False  # torch.compile the model
    sample_every: int = at_least(0, 0)  # steps between text samples (0 = only at the end)
    sample_tokens: int = at_least(1, 40)
    prompt: str = "Once upon a time"
    progress: bool = True
    checkpoint_every_tokens: int | None = at_least(1, None)  # full-state checkpoints for --resume (null: a tenth)
    keep_checkpoints: int = at_least(1, 2)  # the latest full-state checkpoints kept (WSD: also its stable-phase end)
    anneal_at: list[int] = field(default_factory=list)  # wsd: budgets (tokens) scored by a decay branched there


@dataclass
class TrackingConfig:
    """Where metrics go: always a local run record, and W&B unless disabled."""

    wandb: str = one_of(WANDB_MODES, "auto")  # auto | online | offline | disabled
    project: str = "picollm"
    entity: str | None = None
    group: str | None = None
    job_type: str = "train"
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    out_dir: str = "results/runs"
    save_weights: bool = True


@dataclass
class Config:
    """A complete trainer config: what ``python -m picollm.train`` runs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def get(self, key: str) -> Any:
        """The value at a dotted key (``optim.lr``); None for a key no section declares, as in a YAML file."""
        section, _, name = key.partition(".")
        block = getattr(self, section, None) if section in SECTIONS else None
        return getattr(block, name, None) if block is not None and name in _hints(type(block)) else None

    def with_values(self, values: typing.Mapping[str, Any]) -> Config:
        """A new config with the dotted keys of ``values`` set, each changed section checked as if read from YAML
        (a sweep trial's parameters, a launcher's device): the config stays typed instead of going through a dict."""
        changed: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            section, _, name = key.partition(".")
            if section not in SECTIONS:
                raise ConfigError(f"unknown section '{section}' (known: {', '.join(SECTIONS)})")
            if not name or "." in name:
                raise ConfigError(f"{key}: not a config key (a section, then one of its fields)")
            changed.setdefault(section, {})[name] = value
        blocks = {
            name: from_block(SECTIONS[name], {**dataclasses.asdict(getattr(self, name)), **changed[name]}, name)
            if name in changed
            else copy.deepcopy(getattr(self, name))
            for name in SECTIONS
        }
        cfg = Config(**blocks)
        validate(cfg)
        return cfg

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# -- Parsing: dict -> typed dataclasses, with one clear line per problem ----------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _parse_number(text: str, key: str) -> float:
    try:
        return float(text.strip().replace("_", ""))
    except ValueError:
        raise ConfigError(f"{key}: expected a number, got {text!r}") from None


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are wanted."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str) and value.lstrip().startswith("["):  # a list with a typo, kept as text by --set
            raise ConfigError(f"{key}: expected a list, got {value!r}, which is not one in YAML (a bracket missing?)")
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            value = [value]  # a single path is a one-element list
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp in (int, float) and isinstance(value, str):
        value = _parse_number(value, key)  # YAML 1.1 reads 3e-4 (no dot) as a string
    if tp is int and isinstance(value, float) and value.is_integer():
        value = int(value)  # YAML reads 1e6 as a float; it is still a whole number
    if tp is float and _is_number(value):
        return float(value)
    if tp in (bool, int, str) and isinstance(value, tp) and (tp is bool or not isinstance(value, bool)):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """A block's field types, resolved once per class: resolving them is most of reading a block."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_block(cls: type[T], raw: Any, section: str) -> T:
    """The dataclass ``cls`` from a YAML block: unknown keys, wrong types, values that break a field's declared rule
    (:mod:`picollm.checks`) and what the block's own ``check()`` refuses are one :class:`ConfigError` line each."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{section}: expected a mapping of keys, got {raw!r}")
    hints = _hints(cls)
    known = hints.keys()
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown key {section}.{unknown[0]} (known keys in {section}: {', '.join(sorted(known))})")
    block = cls(**{name: _coerce(value, hints[name], f"{section}.{name}") for name, value in raw.items()})
    found = problems(block, section)
    if not found and hasattr(block, "check"):
        found = [line] if (line := block.check()) else []
    if found:
        raise ConfigError(found[0])
    return block


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "tracking": TrackingConfig,
}


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from a plain dict (as read from YAML)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section '{unknown[0]}' (known: {', '.join(SECTIONS)})")
    cfg = Config(**{name: from_block(cls, raw.get(name), name) for name, cls in SECTIONS.items()})
    validate(cfg)
    return cfg


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: Config) -> None:
    """What ties sections together (each section's own rules ran as it was read)."""
    _check_data_and_train(cfg.data, cfg.train)
    _check_anneal(cfg.train, cfg.optim)


def _check_anneal(t: TrainConfig, o: OptimConfig) -> None:
    """A branched decay needs a stable phase (wsd) and budgets the run passes through on its way."""
    if not t.anneal_at:
        return
    _require(o.schedule == "wsd", f"train.anneal_at needs optim.schedule=wsd (a {o.schedule} run has no stable phase)")
    _require(t.max_tokens is not None, "train.anneal_at needs train.max_tokens (the run's own budget)")
    for tokens in t.anneal_at:
        _require(
            0 < tokens < t.max_tokens,
            f"train.anneal_at: {tokens} is not between 0 and the run's budget train.max_tokens={t.max_tokens}",
        )


def _check_data_and_train(d: DataConfig, t: TrainConfig) -> None:
    _require(
        bool(d.tinystories) or bool(d.input_files) or d.synthetic > 0 or d.builtin_stories > 0,
        "no data: set data.tinystories, data.input_files, data.synthetic or data.builtin_stories",
    )
    _require(
        t.device in ("auto", "cpu", "cuda", "mps") or t.device.startswith("cuda:"),
        f"train.device: unknown value {t.device!r} (choose from auto, cpu, cuda, cuda:N)",
    )


# -- Files and overrides ----------------------------------------------------------------------


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping safely; missing, empty or malformed files are one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    if data is None:
        raise ConfigError(f"{path}: the config file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated by ``override``, recursing into nested mappings. A sampler or pruner of another name
    (``sampler: {name: sobol, ...}`` over ``{name: tpe, ...}``) replaces its base's whole: options belong to their
    name."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if _merges(key, out.get(key), value):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


NAMED_WITH_OPTIONS = ("sampler", "pruner")


def _merges(key: str, base: Any, override: Any) -> bool:
    if not (isinstance(override, dict) and isinstance(base, dict)):
        return False
    return key not in NAMED_WITH_OPTIONS or override.get("name", base.get("name")) == base.get("name")


def load_raw(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read an experiment file, resolving ``base:`` (a path relative to the file, or a list)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: 'base:' chain loops back to itself")
    data = read_yaml(path)
    bases = data.pop("base", None) or []
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = deep_merge(merged, load_raw(path.parent / base, (*_seen, path)))
    return deep_merge(merged, data)


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``a.b=value``; the value is typed like YAML (``3e-4``, ``[a, b]``, ``null``)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects key=value with a dotted key, got {item!r}")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text  # not YAML: keep it as a plain string
    return key.split("."), value


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of ``raw`` with the dotted ``key`` set to ``value`` as it is (no YAML round trip)."""
    out = copy.deepcopy(raw)
    *path, last = key.split(".")
    node = out
    for part in path:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: '{part}' is not a section")
        node = child
    node[last] = value
    return out


def apply_overrides(raw: dict[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to a raw config dict (unknown keys are caught when building)."""
    out = raw
    for item in overrides:
        path, value = parse_override(item)
        try:
            out = set_dotted(_renaming(out, path, value), ".".join(path), value)
        except ConfigError as exc:
            raise ConfigError(f"--set {item}: {str(exc).split(': ', 1)[1]}") from None
    return copy.deepcopy(out) if out is raw else out


def _renaming(raw: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    """``--set study.sampler.name=random`` drops the old sampler's options with its name, as a file's block of another
    name does (:func:`deep_merge`): ``n_startup_trials`` means nothing to a random sampler."""
    if len(path) < 2 or path[-1] != "name" or path[-2] not in NAMED_WITH_OPTIONS:
        return raw
    parent: Any = raw
    for part in path[:-2]:
        parent = parent.get(part) if isinstance(parent, dict) else None
    if not isinstance(parent, dict) or path[-2] not in parent:
        return raw
    renamed = not _merges(path[-2], parent[path[-2]], {"name": value})  # the block: a mapping, a bare name or null
    return set_dotted(raw, ".".join(path[:-1]), {}) if renamed else raw


def split_experiment(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate the trainer config from the sweep's ``search:``/``study:`` sections."""
    trainer = {k: v for k, v in raw.items() if k not in SWEEP_SECTIONS}
    sweep = {k: raw[k] for k in SWEEP_SECTIONS if k in raw}
    return trainer, sweep


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> Config:
    """Load a trainer config from a file (or defaults when ``path`` is None) plus overrides."""
    raw = load_raw(path) if path is not None else {}
    trainer, _ = split_experiment(raw)
    return config_from_dict(apply_overrides(trainer, overrides))


def add_override_argument(parser: Any, help_text: str) -> None:
    """``--set KEY=VALUE`` (repeatable), the same for every command that takes a config."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help_text)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config atomically (a crash leaves no half file); it is itself a valid config."""
    atomic_write_text(path, cfg.to_yaml())
