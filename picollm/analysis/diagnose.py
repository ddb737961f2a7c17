"""What does the model see and predict? Top-k next tokens against plain counting, to catch a unigram-only model."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from picollm.checkpoint import load_run
from picollm.config import load_config
from picollm.corpora import call_with_timeout
from picollm.data import load_token_data, unigram_baseline
from picollm.errors import DataError
from picollm.tokenizers import tiktoken_available

SAME_GUESS_WARNING = 0.9  # share of positions with one top guess that triggers the warning
TOKENIZER_PROBE_S = 10.0  # offline, tiktoken fails fast; a firewalled network may hang instead


def tiktoken_folders(run_dir: Path | None = None) -> list[Path]:
    """Folders that may hold GPT-2's tiktoken files: tiktoken's own, then the one ``meta.json`` names."""
    named = [os.environ.get(key) for key in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR")]
    candidates = [*(Path(value) for value in named if value), Path(tempfile.gettempdir(), "data-gym-cache")]
    if run_dir is not None:
        try:
            recorded = json.loads((Path(run_dir) / "meta.json").read_text()).get("tokenizer_files")
        except (OSError, ValueError):
            recorded = None
        candidates += [Path(recorded)] if recorded else []
    return [path for path in dict.fromkeys(p.resolve() for p in candidates) if path.is_dir()]


def _loads() -> bool:
    return call_with_timeout(tiktoken_available, TOKENIZER_PROBE_S, False)


def ensure_tokenizer(name: str, run_dir: Path | None = None) -> None:
    """Make a run's tokenizer load offline when its files are here, else say in one line how to.

    The first :func:`tiktoken_folders` entry that loads becomes ``TIKTOKEN_CACHE_DIR``, for the token data too.
    """
    if name != "gpt2" or _loads():
        return
    configured = os.environ.get("TIKTOKEN_CACHE_DIR")
    folders = tiktoken_folders(run_dir)
    for folder in folders:
        os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)
        if _loads():
            return
    if configured is None:
        os.environ.pop("TIKTOKEN_CACHE_DIR", None)
    else:
        os.environ["TIKTOKEN_CACHE_DIR"] = configured
    looked = ", ".join(map(str, folders)) or "no cache folder exists"
    raise DataError(
        f"this run's GPT-2 tokenizer files are not on this machine (looked in: {looked}): set TIKTOKEN_CACHE_DIR "
        "to a folder with GPT-2's tiktoken files and run again"
    )


def _show(tokenizer: Any, token_id: int) -> str:
    return repr(tokenizer.decode([int(token_id)]))


def _position(position: int | None, block: int) -> tuple[int, str | None]:
    """The window's last position by default; past the window, the last one and a note saying so."""
    if position is None:
        return block - 1, None
    if position < 0:
        raise DataError(f"--position must be in [0, {block - 1}], got {position}")
    if position >= block:
        return block - 1, f"position {position} is past this run's block size {block}: showing the last, {block - 1}"
    return position, None


@torch.no_grad()
def inspect_run(
    run_dir: str | Path, batch: int = 0, position: int | None = None, top: int = 10, which: str = "best"
) -> dict[str, Any]:
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    ensure_tokenizer(cfg.data.tokenizer, run_dir)
    model, tokenizer = load_run(run_dir, which)
    data = load_token_data(cfg.data, progress=False)
    block = cfg.model.block_size
    n_windows = (len(data.val) - 1) // block
    if not 0 <= batch < n_windows:
        raise DataError(f"--batch must be in [0, {n_windows - 1}] for this run's validation split")
    window = np.asarray(data.val[batch * block : batch * block + block + 1], dtype=np.int64)
    x, y = torch.from_numpy(window[:-1])[None], torch.from_numpy(window[1:])
    position, note = _position(position, block)
    logits = model.head(model(x))[0].float()
    log_probs = logits.log_softmax(-1)
    probs = log_probs[position].exp()
    top_p, top_ids = probs.topk(min(top, probs.numel()))
    guesses = logits.argmax(-1).numpy()
    values, counts = np.unique(guesses, return_counts=True)
    common_guess, common_share = int(values[counts.argmax()]), float(counts.max() / len(guesses))
    freq = np.bincount(np.asarray(data.train), minlength=data.vocab_size)
    order = np.argsort(freq)[::-1][:30]
    baseline = unigram_baseline(data)
    result = {
        "run_dir": str(run_dir),
        "batch": batch,
        "position": position,
        "context": tokenizer.decode(window[: position + 1].tolist()),
        "target": _show(tokenizer, window[position + 1]),
        "top": [
            {"token": _show(tokenizer, i), "id": int(i), "prob": float(p)} for p, i in zip(top_p, top_ids, strict=True)
        ],
        "window_loss": float(-log_probs[torch.arange(block), y].mean()),
        "unigram_entropy": baseline["unigram_entropy"],
        "unigram_val_loss": baseline["unigram_val_loss"],
        "token_frequencies": [
            {"token": _show(tokenizer, i), "id": int(i), "share": float(freq[i] / freq.sum())} for i in order
        ],
        "most_common_guess": _show(tokenizer, common_guess),
        "most_common_guess_share": common_share,
        "warning": None,
        "note": note,
    }
    if common_share >= SAME_GUESS_WARNING:
        result["warning"] = (
            f"the model's top guess is {result['most_common_guess']} at {100 * common_share:.0f}% of positions: "
            "it predicts token frequencies, not the text (compare its loss with the unigram baseline)"
        )
    return result


def inspect_lines(r: dict[str, Any]) -> list[str]:
    lines = [f"note: {r['note']}"] if r.get("note") else []
    lines += [
        f"input (validation window {r['batch']}, up to position {r['position']}):",
        f"  {r['context']!r}",
        f"next token: {r['target']}; the model's top {len(r['top'])}:",
    ]
    lines += [f"  {t['prob']:7.2%}  {t['token']}" for t in r["top"]]
    lines.append(
        f"loss on this window {r['window_loss']:.3f} nats; unigram baseline {r['unigram_val_loss']:.3f} "
        f"(entropy {r['unigram_entropy']:.3f})"
    )
    if r["warning"]:
        lines.append(f"WARNING: {r['warning']}")
    return lines
