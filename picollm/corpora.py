"""Where documents come from: TinyStories, text files, and two seeded built-in generators (a fixed validation set)."""

from __future__ import annotations

import itertools
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from picollm import bounded
from picollm.errors import DataError

T = TypeVar("T")

HUB_HOST = "huggingface.co"
HUB_PROBE_TIMEOUT_S = 3.0


# -- Built-in generators (no network, no files) -----------------------------------------------


def synthetic_sequences(n: int, seed: int = 0) -> list[str]:
    """Counting and arithmetic sequences ("3 4 5 6", "10 13 16", "9 8 7"): learnable, like 3seqs.txt."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        family = i % 3
        length = int(rng.integers(8, 21))
        start = int(rng.integers(0, 40))
        if family == 0:  # count up by one
            seq = range(start, start + length)
        elif family == 1:  # count up by a fixed step
            step = int(rng.choice([2, 3, 5]))
            seq = range(start, start + step * length, step)
        else:  # count down to zero or stop
            top = start + length
            seq = range(top, max(top - length, -1), -1)
        docs.append(" ".join(str(v) for v in seq))
    return docs


_NAMES = ["Lily", "Tom", "Mia", "Ben", "Sue", "Max", "Anna", "Sam", "Lucy", "Tim", "Zoe", "Jack"]
_ANIMALS = ["cat", "dog", "bird", "bunny", "fox", "frog", "duck", "bear", "mouse", "fish"]
_THINGS = ["ball", "kite", "box", "hat", "book", "boat", "cake", "flower", "toy car", "red shoe"]
_PLACES = ["park", "garden", "forest", "beach", "yard", "house", "lake", "hill"]
_FEELINGS = ["happy", "sad", "scared", "excited", "tired", "proud", "curious", "angry"]
_TEMPLATES = [
    "Once upon a time, there was a little {animal} named {name}. {name} liked to play in the {place}. "
    "One day, {name} found a {thing}. {name} was very {feeling}. {name} showed the {thing} to a friend, "
    "and they played together all day. The end.",
    "{name} and {name2} went to the {place}. They saw a big {animal}. The {animal} had a {thing}. "
    '"Can we play with it?" asked {name}. The {animal} said yes. {name} and {name2} were {feeling}.',
    "One day, {name} lost a {thing} in the {place}. {name} felt {feeling}. A kind {animal} helped look "
    "for it. They found the {thing} under a tree. {name} said thank you to the {animal}.",
    "There was a {feeling} {animal} who lived near the {place}. Every day it looked for a {thing}. "
    "One morning, {name} gave the {animal} a {thing}. From that day on, they were best friends.",
]


def builtin_stories(n: int, seed: int = 0) -> list[str]:
    """Template-made children's stories: the offline stand-in for TinyStories (clearly not the real thing)."""
    rng = np.random.default_rng(seed)

    def pick(words: list[str]) -> str:
        return words[int(rng.integers(len(words)))]

    docs = []
    for i in range(n):
        name, name2 = rng.choice(_NAMES, size=2, replace=False)
        fields = dict(
            name=name,
            name2=name2,
            animal=pick(_ANIMALS),
            thing=pick(_THINGS),
            place=pick(_PLACES),
            feeling=pick(_FEELINGS),
        )
        docs.append(_TEMPLATES[i % len(_TEMPLATES)].format(**fields))
    return docs


# -- Plain-text files -------------------------------------------------------------------------


def read_text_file(path: str | Path) -> list[str]:
    """One example per non-blank line. Missing, empty, binary and non-UTF-8 files are clear errors."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"data.input_files: file not found: {path}")
    raw = path.read_bytes()
    if b"\x00" in raw[:65536]:
        raise DataError(f"data.input_files: {path} looks binary (it contains NUL bytes), not text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"data.input_files: {path} is not UTF-8 text (bad byte at offset {exc.start})") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise DataError(f"data.input_files: {path} is empty")
    return lines


# -- TinyStories through `datasets` -----------------------------------------------------------


def is_local_path(spec: str) -> bool:
    """A dataset spec is local when it exists on disk or is written like a path."""
    return Path(spec).expanduser().exists() or spec.startswith((".", "/", "~"))


def local_dataset_files(spec: str) -> list[Path]:
    """The files of a local dataset folder (used to key the token cache on their size and date)."""
    root = Path(spec).expanduser()
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def _quiet_datasets() -> Any:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    return datasets


def load_tinystories(spec: str, max_train: int | None, max_val: int | None) -> tuple[list[str], list[str] | None]:
    """Train and validation stories (None: no such split); a missing local path is an error, not a hub fallback."""
    local = is_local_path(spec)
    if local and not Path(spec).expanduser().exists():
        raise DataError(f"data.tinystories: local dataset folder not found: {spec}")
    datasets = _quiet_datasets()
    stream = not local and (max_train is not None)
    try:
        splits = datasets.load_dataset(str(Path(spec).expanduser()) if local else spec, streaming=stream)
        if "train" not in splits:
            raise DataError(f"data.tinystories: {spec} has no 'train' split (found: {', '.join(splits)})")
        train = _take_texts(splits["train"], max_train, spec)
        val = _take_texts(splits["validation"], max_val, spec) if "validation" in splits else None
    except DataError:
        raise
    except Exception as exc:  # the hub client raises many kinds; the user needs one line
        where = "local copy" if local else "hub"
        raise DataError(
            f"could not load TinyStories from the {where} ({spec}): {type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160] if str(exc) else ''}; offline, point data.tinystories at a local "
            "copy (e.g. path/to/tinystories)"
        ) from None
    if not train:
        raise DataError(f"data.tinystories: {spec} has no stories in its 'train' split")
    return train, val


def _take_texts(split: Any, cap: int | None, spec: str) -> list[str]:
    if "text" not in (split.column_names or ["text"]):
        raise DataError(f"data.tinystories: {spec} has no 'text' column (found: {', '.join(split.column_names)})")
    rows = itertools.islice(split, cap) if cap is not None else split
    texts = (row["text"] for row in rows)
    return [t.strip() for t in texts if t and t.strip()]


# -- Reachability, bounded in time ------------------------------------------------------------


def call_with_timeout(fn: Callable[[], T], seconds: float, default: T) -> T:
    """``fn()``, or ``default`` when it fails or has not answered within ``seconds``."""
    try:
        return bounded.call_with_timeout(fn, seconds)
    except Exception:
        return default


def hub_reachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """One short probe instead of the hub client's ~25 s of retries. Honours HF_HUB_OFFLINE."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False

    def probe() -> bool:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout_s):
            return True

    return call_with_timeout(probe, timeout_s + 0.5, False)
