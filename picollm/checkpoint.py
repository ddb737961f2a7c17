"""Model weights in a run record: tensors and plain values only, so ``torch.load(weights_only=True)`` runs no code."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from picollm import __version__
from picollm.config import load_config
from picollm.data import CompactTokenizer, cache_key
from picollm.errors import DataError
from picollm.fileio import atomic_torch_save
from picollm.models import build_model
from picollm.tokenizers import Tokenizer, get_tokenizer


def save_checkpoint(
    path: Path, model: nn.Module, settings: dict[str, Any], vocab_size: int, vocab_ids: Any = None
) -> None:
    """Write atomically; ``vocab_ids`` (compact vocabularies) maps model ids back to tokenizer ids."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload: dict[str, Any] = {"model": settings, "vocab_size": vocab_size, "state_dict": state}
    if vocab_ids is not None:
        payload["vocab_ids"] = torch.as_tensor(vocab_ids, dtype=torch.int64)
    atomic_torch_save(payload, path)


def load_run(run_dir: str | Path, which: str = "best", device: str = "cpu") -> tuple[nn.Module, Tokenizer]:
    """The model and tokenizer of a run record, ready for inference."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"run folder not found: {run_dir}")
    path = run_dir / f"{which}.pt"
    if not path.is_file():
        path = run_dir / "final.pt"
    if not path.is_file():
        raise DataError(f"{run_dir}: no saved weights (best.pt or final.pt); was tracking.save_weights false?")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
        model = build_model(payload["model"], payload["vocab_size"])
        model.load_state_dict(payload["state_dict"])
    except Exception as exc:
        raise DataError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    cfg = load_config(run_dir / "config.yaml")
    tokenizer: Tokenizer = get_tokenizer(cfg.data.tokenizer)
    if "vocab_ids" in payload:
        tokenizer = CompactTokenizer(tokenizer, payload["vocab_ids"].numpy())
    return model.to(device).eval(), tokenizer


# -- Full-state checkpoints: what --resume and --extend-to continue from ----------------------

STATE_FORMAT = 1
STATES = "checkpoints"  # the folder of a run record that holds them
STABLE = "stable.pt"  # a WSD run's state at the end of its stable phase, never pruned
# Keys whose value cannot change a loss: a run resumed with other values is still the same run.
RUNTIME_KEYS = {"train": ("progress", "threads", "device", "compile"), "tracking": None, "data": ("cache_dir",)}


def _comparable(cfg_dict: dict[str, Any], same_budget: bool) -> dict[str, Any]:
    out = {section: dict(values) for section, values in cfg_dict.items()}
    for section, keys in RUNTIME_KEYS.items():
        if keys is None:
            out.pop(section, None)
        else:
            for key in keys:
                out.get(section, {}).pop(key, None)
    if not same_budget:  # the budget: its tokens, and the epochs that must not end it first
        out["train"].pop("max_tokens", None)
        out["train"].pop("epochs", None)
    return out


@functools.cache
def code_version() -> str:
    """picollm's version and a hash of its source: a run continues bit for bit only under the code that began it."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def save_state(run_dir: Path, state: dict[str, Any], cfg: Any, stable: bool = False) -> Path:
    """Write a full-state checkpoint atomically (a kill mid-write leaves the previous ones whole)."""
    name = STABLE if stable else f"step-{state['step']:09d}.pt"
    path = Path(run_dir) / STATES / name
    payload = {
        "format": STATE_FORMAT,
        "picollm": code_version(),
        "data_key": cache_key(cfg.data),
        "config": cfg.to_dict(),
        **state,
    }
    atomic_torch_save(payload, path)
    return path


def prune_states(run_dir: Path, keep: int) -> None:
    """Keep the latest ``keep`` step checkpoints (the stable-phase one is not counted and always kept)."""
    for old in sorted((Path(run_dir) / STATES).glob("step-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)


def _states(run_dir: Path) -> list[Path]:
    return sorted((Path(run_dir) / STATES).glob("*.pt"))


def latest_state(run_dir: Path) -> Path:
    """The checkpoint furthest into the run (one line if there is none)."""
    found = [(load_step(p), p) for p in _states(run_dir)]
    if not found:
        raise DataError(f"{run_dir}: no checkpoint to resume from (nothing in {STATES}/)")
    return max(found)[1]


def stable_state(run_dir: Path) -> Path:
    path = Path(run_dir) / STATES / STABLE
    if not path.is_file():
        raise DataError(
            f"{run_dir}: no {STATES}/{STABLE}: the run ended before its decay began, so it cannot be extended"
        )
    return path


def load_step(path: Path) -> int:
    if path.name == STABLE:
        return int(_load(path)["step"])
    return int(path.stem.split("-", 1)[1])


def _load(path: Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(
            f"{path}: unreadable checkpoint (truncated or not a checkpoint: {type(exc).__name__})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise DataError(f"{path}: not a picollm full-state checkpoint")
    return payload


def load_state(path: Path, cfg: Any, same_budget: bool) -> dict[str, Any]:
    """A checkpoint's state, refused in one line when it is another picollm's, another model type's or another config's
    (``same_budget=False`` allows another ``train.max_tokens``)."""
    state = _load(path)
    if state["picollm"] != code_version():
        raise DataError(f"{path}: written by picollm {state['picollm']}, this is {code_version()}: start the run again")
    if state["data_key"] != cache_key(cfg.data):
        raise DataError(f"{path}: the run's data changed since it was written (its token cache key differs)")
    saved, now = state["config"], cfg.to_dict()
    if saved["model"]["type"] != now["model"]["type"]:
        raise DataError(
            f"{path}: a checkpoint of a {saved['model']['type']} model, this run is a {now['model']['type']}"
        )
    a, b = _comparable(saved, same_budget), _comparable(now, same_budget)
    if a != b:
        key = next(f"{s}.{k}" for s in b for k in b[s] if a.get(s, {}).get(k) != b[s][k])
        raise DataError(f"{path}: written by another config ({key} differs): it cannot continue this run")
    return state
