"""Model weights in a run record: a state dict plus the settings to rebuild the model.

Only tensors and plain Python values are saved (never a pickled ``nn.Module``), so loading uses
``torch.load(weights_only=True)`` and a checkpoint cannot run code on the machine that reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from picollm.config import load_config
from picollm.data import CompactTokenizer
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
