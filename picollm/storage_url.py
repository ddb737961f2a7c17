"""Which Optuna storage a command, a notebook or a job means: the one given, else ``$PICOLLM_STORAGE``, else SQLite
under results/. It imports neither optuna nor torch, so a command's ``--help`` stays quick."""

from __future__ import annotations

import os
from typing import Any

STORAGE_ENV = "PICOLLM_STORAGE"  # keeps a password out of shell history; Slurm jobs read their storage from it
DEFAULT_STORAGE = "sqlite:///results/optuna.db"


def storage_url(given: str | None = None) -> str:
    """The storage given, else ``$PICOLLM_STORAGE``, else :data:`DEFAULT_STORAGE`."""
    return given or os.environ.get(STORAGE_ENV, DEFAULT_STORAGE)


def add_storage_argument(parser: Any) -> None:
    """``--storage URL``, defaulting to :func:`storage_url`."""
    parser.add_argument(
        "--storage",
        default=storage_url(),
        help="sqlite:///path.db | postgresql://user@host/db | journal:path.log "
        f"(default: ${STORAGE_ENV} or {DEFAULT_STORAGE})",
    )
