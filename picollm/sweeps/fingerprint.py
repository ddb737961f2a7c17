"""One study = one question: a fingerprint of everything a study does not search.

A study's trials are comparable only if everything but the searched keys is the same for all of them.
The fingerprint is a flat, ordered mapping of:

1. the data identity: the token-cache hash (:func:`picollm.data.cache_key`: every data setting and the
   input files' contents), the tokenizer, and whether the offline fallback replaced the data;
2. the objective and budget: metric, training tokens per trial, reports to the pruner;
3. the resolved base trainer config, minus the searched keys and minus keys that cannot change a loss
   (:data:`HARMLESS`: tracking, progress bars, threads, device placement, cache location).

The first worker stores it with the study; every later worker, resume or machine compares its own and
refuses, naming the first differing key, before it adds anything to the study.
"""

from __future__ import annotations

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
    for key, value in _flatten(exp.base).items():
        if key not in searched and not _harmless(key):
            out[f"config.{key}"] = value
    return out


def _show(value: Any) -> str:
    return mask_url(repr(value))


def first_difference(stored: dict[str, Any], mine: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """The first key (in the stored order, then this run's) whose values differ; None when equal."""
    missing = object()
    for key in [*stored, *(k for k in mine if k not in stored)]:
        a, b = stored.get(key, missing), mine.get(key, missing)
        if a != b:
            return key, (None if a is missing else a), (None if b is missing else b)
    return None


def check(study: Any, exp: Experiment, storage_url: str) -> None:
    """Store the fingerprint with a new study, or refuse a sweep whose fingerprint differs (one line)."""
    if exp.fingerprint is None:
        return
    stored = study.user_attrs.get("fingerprint")
    if stored is None:
        study.set_user_attr("fingerprint", exp.fingerprint)
        return
    diff = first_difference(stored, exp.fingerprint)
    if diff is not None:
        key, theirs, ours = diff
        raise FingerprintMismatch(
            f"study {exp.study.name!r} in {mask_url(storage_url)} answers another question: {key} is "
            f"{_show(theirs)} in the study but {_show(ours)} here; nothing was added (use --study-name for a "
            "new study, or run with the study's settings)"
        )
