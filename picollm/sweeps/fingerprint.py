"""One study = one question: a fingerprint of everything a study does not search.

Trials are comparable only if all else is equal, so the fingerprint holds the data identity (token-cache hash,
tokenizer, offline fallback), the objective and budget, and the base config minus searched and :data:`HARMLESS` keys.
The first worker stores it; any later worker that differs is refused with the difference in words (:func:`explain`), not
two hashes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from picollm.config import config_from_dict
from picollm.errors import PicoError
from picollm.storage import mask_url
from picollm.sweeps.settings import Experiment

# Keys (or whole sections) that never change what a trial measures.
HARMLESS = (
    "tracking",
    "train.progress",
    "train.threads",
    "train.device",  # workers are placed on cuda:{rank % device_count}
    "train.compile",
    "data.cache_dir",
    "data.offline_fallback",  # the permission; whether the fallback was USED is in the data identity
)


class FingerprintMismatch(PicoError):
    """This sweep would add trials that answer another question than the study's."""


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _harmless(key: str) -> bool:
    return any(key == h or key.startswith(f"{h}.") for h in HARMLESS)


def fingerprint(exp: Experiment) -> dict[str, Any]:
    """The fingerprint of ``exp`` (after the offline fallback was resolved, so the data is what will run)."""
    from picollm.data import cache_key

    cfg = config_from_dict(exp.base)
    searched = {p.key for p in exp.space}
    s = exp.study
    out: dict[str, Any] = {
        "data_identity.cache_key": cache_key(cfg.data),
        "data_identity.tokenizer": cfg.data.tokenizer,
        "data_identity.offline_fallback_used": bool(exp.extra.get("offline_fallback")),
        "objective.metric": s.metric,
        "objective.budget_tokens": s.budget_tokens,
        "objective.reports": s.reports,
    }
    if s.target_tokens:  # only where set: a study without one keeps the fingerprint it was made with
        out["objective.target_tokens"] = s.target_tokens
    for key, value in _flatten(exp.base).items():
        if key not in searched and not _harmless(key):
            out[f"config.{key}"] = value
    return out


def _show(value: Any) -> str:
    return mask_url(repr(value))


def differing(stored: dict[str, Any], mine: dict[str, Any]) -> list[str]:
    """The keys whose values differ, in the stored order, then this run's new keys."""
    missing = object()
    keys = [*stored, *(k for k in mine if k not in stored)]
    return [k for k in keys if stored.get(k, missing) != mine.get(k, missing)]


# -- A refusal in words: what this study was made with, and what this run would change --------

# What the data words below describe: where the tokens come from, and whether the fallback replaced them.
SOURCE_KEYS = (
    "data_identity.cache_key",
    "data_identity.tokenizer",
    "data_identity.offline_fallback_used",
    *(f"config.data.{k}" for k in ("tinystories", "max_stories", "builtin_stories", "synthetic", "input_files")),
    "config.data.tokenizer",
)


def _sources(fp: dict[str, Any]) -> str:
    data = {key.removeprefix("config.data."): value for key, value in fp.items() if key.startswith("config.data.")}
    parts = []
    if data.get("tinystories"):
        cap = data.get("max_stories")
        parts.append(str(data["tinystories"]) + (f" (its first {cap:,} stories)" if cap else ""))
    if data.get("builtin_stories"):
        parts.append(f"the built-in stories ({data['builtin_stories']:,})")
    if data.get("synthetic"):
        parts.append(f"{data['synthetic']:,} synthetic sequences")
    parts += [str(name) for name in data.get("input_files") or []]
    return " + ".join(parts) or "no data"


def data_words(fp: dict[str, Any]) -> str:
    """``offline, on the built-in stories (2,000) with the bytes tokenizer``: what a fingerprint's data is."""
    offline = "offline, " if fp.get("data_identity.offline_fallback_used") else ""
    return f"{offline}on {_sources(fp)} with the {fp.get('data_identity.tokenizer')} tokenizer"


def _data_phrases(stored: dict[str, Any], mine: dict[str, Any], keys: list[str]) -> list[str]:
    """The data in words when its sources, tokenizer or fallback differ; else changed files."""
    theirs, ours = data_words(stored), data_words(mine)
    if theirs != ours:
        return [f"this study was made {theirs}; this run would train {ours}"]
    data_settings = [key for key in keys if key.startswith("config.data.")]
    if "data_identity.cache_key" in keys and not data_settings:
        return [f"the data files changed since this study was made {theirs} (same settings, other contents)"]
    return []


def _tokens(value: Any) -> str:
    return f"{value:,} tokens" if value else "whole epochs (no token budget)"


# Phrases for the study's own settings; every other key is a trainer setting the study does not search.
PHRASES: dict[str, Callable[[Any, Any], str]] = {
    "objective.budget_tokens": lambda a, b: (
        f"each trial trains on {_tokens(a)} in this study but on {_tokens(b)} here (study.budget_tokens)"
    ),
    "objective.metric": lambda a, b: f"trials are ranked by {a} in this study but by {b} here (study.metric)",
    "objective.reports": lambda a, b: (
        f"the pruner sees {a} validation losses per trial in this study but {b} here (study.reports)"
    ),
    "objective.target_tokens": lambda a, b: (
        f"the answer is for a budget of {_tokens(a)} in this study but {_tokens(b)} here (study.target_tokens)"
    ),
}
# Trainer settings that follow from a study setting (picollm.sweeps.settings.trial_base): said once, as that setting.
DERIVED = {
    "objective.budget_tokens": ("config.train.max_tokens", "config.train.epochs", "config.train.eval_every_tokens"),
    "objective.reports": ("config.train.eval_every_tokens",),
    "objective.target_tokens": (
        "config.train.max_tokens",
        "config.train.eval_every_tokens",
        "config.train.anneal_at",
        "config.train.checkpoint_every_tokens",
    ),
}
SHOWN = 3  # phrases in one refusal; the rest are counted


def _setting_phrase(key: str, theirs: Any, ours: Any) -> str:
    return f"{key.removeprefix('config.')} is {_show(theirs)} in this study but {_show(ours)} here"


def explain(stored: dict[str, Any], mine: dict[str, Any]) -> list[str]:
    """What differs from the study's fingerprint, in words: data, then study settings, then trainer settings."""
    keys = differing(stored, mine)
    phrases = _data_phrases(stored, mine, keys)
    hidden = {derived for key in keys for derived in DERIVED.get(key, ())}
    settings = []
    for key in keys:
        if key in SOURCE_KEYS or key in hidden:
            continue
        theirs, ours = stored.get(key), mine.get(key)
        if key in PHRASES:
            phrases.append(PHRASES[key](theirs, ours))
        else:
            settings.append(_setting_phrase(key, theirs, ours))
    if settings:
        settings[0] += " (not searched, so all the study's trials share it)"
    return phrases + settings


def start_over_hint(name: str) -> str:
    """How to get past a refusal about study ``name``: every such refusal says it."""
    return f"start a new study with --study-name NEW, or start this one over: 'python sweep.py delete --study {name}'"


def refusal(name: str, storage_url: str, phrases: list[str]) -> str:
    shown = "; ".join(phrases[:SHOWN]) + (f"; and {len(phrases) - SHOWN} more" if len(phrases) > SHOWN else "")
    return (
        f"study {name!r} in {mask_url(storage_url)} answers another question: {shown}. Nothing was added: resume it "
        f"with its settings, {start_over_hint(name)}"
    )


def refuse_mix(stored: dict[str, Any] | None, exp: Experiment, storage_url: str) -> None:
    """Refuse, in one line of words, a run whose fingerprint differs from the study's stored one (None: no study)."""
    if stored is None or exp.fingerprint is None:
        return
    phrases = explain(stored, exp.fingerprint)
    if phrases:
        raise FingerprintMismatch(refusal(exp.study.name, storage_url, phrases))


def check(study: Any, exp: Experiment, storage_url: str) -> None:
    """Store the fingerprint with a new study, or refuse a sweep whose fingerprint differs (one line)."""
    if exp.fingerprint is None:
        return
    stored = study.user_attrs.get("fingerprint")
    if stored is None:
        study.set_user_attr("fingerprint", exp.fingerprint)
        return
    refuse_mix(stored, exp, storage_url)
