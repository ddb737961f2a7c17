"""Opening a study: storage, sampler and pruner, the stored search space, the baseline trial, counts.

A study is resumable by construction: ``n_trials`` is its total of finished (complete or pruned)
trials, so opening it again and running continues until that total is reached.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict
from typing import Any

from picollm.errors import PicoError
from picollm.search import baseline_params
from picollm.storage import mask_url, open_storage
from picollm.sweeps.registry import make_pruner, make_sampler
from picollm.sweeps.settings import Experiment


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our one line per trial says what failed and why
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def open_study(exp: Experiment, storage_url: str, create: bool) -> Any:
    """Create or load the study; refuse a stored study whose search space differs."""
    import optuna

    quiet_optuna()
    s = exp.study
    storage = open_storage(storage_url, s.heartbeat_interval, s.grace_period, s.max_retry)
    space = exp.space
    kwargs = dict(
        study_name=s.name,
        storage=storage,
        sampler=make_sampler(s.sampler, space, s.seed, s.sampler_options),
        pruner=make_pruner(s.pruner, s.pruner_options),
    )
    try:
        if create:
            study = optuna.create_study(direction="minimize", load_if_exists=True, **kwargs)
        else:
            study = optuna.load_study(**kwargs)
    except KeyError:
        raise PicoError(f"no study named {s.name!r} in {mask_url(storage_url)}") from None
    except Exception as exc:
        raise PicoError(
            f"cannot open study {s.name!r} in {mask_url(storage_url)}: {mask_url(str(exc))[:200]}"
        ) from None
    described = [p.describe() | {"key": p.key} for p in space]
    stored = study.user_attrs.get("space")
    if stored is None:
        study.set_user_attr("space", described)
        study.set_user_attr("base", exp.base)
        study.set_user_attr("settings", asdict(s))
    elif stored != described:
        raise PicoError(
            f"study {s.name!r} in {mask_url(storage_url)} was created with another search space; "
            "use --study-name to start a new study (or restore the old space to resume it)"
        )
    return study


def enqueue_baseline(study: Any, exp: Experiment) -> None:
    """Trial 0 is the base config itself, so every study shows its gain over the default."""
    if not study.trials:
        study.enqueue_trial(baseline_params(exp.space, exp.base), user_attrs={"baseline": True}, skip_if_exists=True)


def counts(study: Any) -> dict[str, int]:
    from optuna.trial import TrialState

    out = {state.name: 0 for state in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] += 1
    return out


def finished(study: Any) -> int:
    c = counts(study)
    return c["COMPLETE"] + c["PRUNED"]
