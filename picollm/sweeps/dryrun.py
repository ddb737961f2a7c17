"""A trial without training, for measuring what the sweep machinery itself costs.

:func:`dry_train` stands in for :func:`picollm.train.train` (``--dry-run``): it reports the same
number of validation losses to the pruning hook and returns a summary with the same keys, so the
objective makes every storage call a real trial makes (slot claim, parameters, user attributes,
intermediate values, pruning checks, the result) while no model is built and no data is read.
The losses are a fixed function of the trial's config, so a sampler still has something to rank.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from picollm.config import Config

DRY_LOSS_BASE = 4.0  # nats: the scale of a real trial's loss, so reports and exports look alike


def _config_loss(cfg: Config) -> float:
    """A loss in [4, 5) that depends only on the config: same parameters, same value."""
    # JSON, not YAML: a dry trial measures the harness, not a serializer
    digest = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode()).digest()
    return DRY_LOSS_BASE + int.from_bytes(digest[:4], "big") / 2**32


def _eval_points(cfg: Config) -> list[int]:
    """The token counts at which a real run with this budget would report a validation loss."""
    total = cfg.train.max_tokens or cfg.train.batch_size * cfg.model.block_size
    every = cfg.train.eval_every_tokens or total
    return [min(total, every * i) for i in range(1, -(-total // every) + 1)]


def dry_train(
    cfg: Config,
    *,
    run_id: str,
    on_eval: Any = None,
    extra: dict[str, Any] | None = None,
    clock: Any = None,
) -> dict[str, Any]:
    """Call ``on_eval`` as a run with this budget would and return a run summary; nothing is trained.

    Same signature as :func:`picollm.train.train`; ``clock`` is accepted and left to the objective, which times
    the storage calls this trial makes.
    """
    from picollm.train import StopRun

    final = _config_loss(cfg)
    status, reason, losses, tokens = "finished", "", [], 0
    try:
        for i, tokens in enumerate(_eval_points(cfg), start=1):
            losses.append(final + 1.0 / i)
            if on_eval is not None:
                on_eval(tokens, losses[-1])
    except StopRun as stop:
        status, reason = stop.status, stop.reason
    last = losses[-1]
    return {
        "status": status,
        "reason": reason,
        "best_val_loss": min(losses),
        "final_val_loss": last,
        "best_val_loss_stderr": 0.0,
        "final_val_loss_stderr": 0.0,
        "last_val_loss": last,
        "last_val_loss_stderr": 0.0,
        "tokens": tokens,
        "steps": 0,
        "epochs": 0,
        "wall_time_s": 0.0,
        "wandb_run_id": None,
        "run_id": run_id,
        "run_dir": None,
        "dry_run": True,
    }
