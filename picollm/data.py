"""Token data: tokenize once, cache per split as uint16 on disk, memory-map, cut into windows.

The cache key hashes everything that decides the tokens, so a repeat run starts at once and a changed file is never
served stale. Validation sets are seeded samples of whole documents, independent of the model and ``block_size``, and
every token after the first is scored once with real left context (:func:`scoring_policy`; docs/run-record.md).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from picollm import corpora
from picollm.config import Config, DataConfig
from picollm.errors import DataError
from picollm.tokenizers import Tokenizer, get_tokenizer, tiktoken_available

CACHE_FORMAT = 2
VAL_SEED = 0  # seed of the validation samples: the same documents for every run on the same data
TEST_SEED = 1  # seed of the test sample, drawn from the documents the validation sample leaves
STORIES = "tinystories"  # TinyStories and its offline stand-in
OTHER = "other"  # input files and synthetic sequences
FALLBACK_STORIES = 2000


@dataclass
class TokenData:
    """Train and validation token streams plus what is needed to read them."""

    tokenizer: Tokenizer
    train: np.ndarray  # all training groups back to back (memory-mapped uint16)
    val: np.ndarray  # the validation tokens every epoch-end evaluation scores (capped by data.val_tokens)
    groups: dict[str, tuple[int, int]]  # group -> (offset, length) inside `train`
    weights: dict[str, float]  # group -> share of training windows
    cache_path: Path
    val_split: np.ndarray | None = None  # the whole validation split (memory-mapped), before any cap
    val_cap: int | None = None  # data.val_tokens
    notes: list[str] = field(default_factory=list)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size


def loads_tinystories(d: DataConfig) -> bool:
    """TinyStories is read only when named with a share of the windows (``--tinystories_weight 0.0``: not loaded)."""
    return bool(d.tinystories) and d.tinystories_weight > 0


# -- Offline fallback: rewrite the config honestly instead of failing or pretending -----------


def apply_offline_fallback(cfg: Config) -> tuple[Config, str | None]:
    """Offline data when allowed and the hub or tokenizer is out of reach: the config that will run, and a note."""
    d = cfg.data
    if not d.offline_fallback:
        return cfg, None
    missing = []
    if loads_tinystories(d) and not corpora.is_local_path(d.tinystories) and not corpora.hub_reachable():
        missing.append(f"the Hugging Face hub ({d.tinystories})")
    if d.tokenizer == "gpt2" and not corpora.call_with_timeout(tiktoken_available, 5.0, False):
        missing.append("tiktoken's gpt2 files (set TIKTOKEN_CACHE_DIR)")
    if not missing:
        return cfg, None
    new = copy.deepcopy(cfg)
    new.data.offline_fallback = False
    if any("hub" in m for m in missing):
        new.data.tinystories = None
        new.data.builtin_stories = d.max_stories or FALLBACK_STORIES
    new.data.tokenizer = "bytes"
    note = (
        f"offline: cannot reach {' or '.join(missing)}; using the built-in corpus "
        f"({new.data.builtin_stories or 0} template stories) and the bytes tokenizer instead"
        if new.data.tinystories is None
        else f"offline: cannot reach {' or '.join(missing)}; using the bytes tokenizer instead"
    )
    return new, note


# -- Building the cache -----------------------------------------------------------------------


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(d: DataConfig) -> str:
    """Hash of every setting that changes the tokens (not those applied after loading)."""
    spec: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "tokenizer": d.tokenizer,
        "compact_vocab": d.compact_vocab,
        "val_fraction": d.val_fraction,
        "synthetic": d.synthetic,
        "builtin_stories": d.builtin_stories,
        "input_files": [],
    }
    for name in d.input_files:
        path = Path(name).expanduser()
        if not path.is_file():
            raise DataError(f"data.input_files: file not found: {name}")
        spec["input_files"].append(_file_sha256(path))
    if loads_tinystories(d):
        spec["tinystories"] = {"spec": d.tinystories, "max": d.max_stories, "max_val": d.max_val_stories}
        if corpora.is_local_path(d.tinystories):
            files = corpora.local_dataset_files(d.tinystories)
            spec["tinystories"]["files"] = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def _holdout(docs: list[str], fraction: float, what: str) -> tuple[list[str], list[str]]:
    """Deterministic held-out share of documents (fixed seed: it never moves between runs)."""
    if len(docs) < 2:
        raise DataError(f"{what}: needs at least 2 examples to hold some out for validation")
    order = np.random.default_rng(0).permutation(len(docs))
    n_val = min(len(docs) - 1, max(1, round(fraction * len(docs))))
    val_idx = set(order[:n_val].tolist())
    train = [doc for i, doc in enumerate(docs) if i not in val_idx]
    val = [doc for i, doc in enumerate(docs) if i in val_idx]
    return train, val


def collect_documents(d: DataConfig) -> tuple[dict[str, list[str]], list[str]]:
    """Training documents per group and the validation documents, from every configured source."""
    stories: list[str] = []
    val: list[str] = []
    if loads_tinystories(d):
        train, ts_val = corpora.load_tinystories(d.tinystories, d.max_stories, d.max_val_stories)
        if ts_val is None:
            train, ts_val = _holdout(train, d.val_fraction, "data.tinystories")
        stories += train
        val += ts_val
    if d.builtin_stories:
        built_train, built_val = _holdout(corpora.builtin_stories(d.builtin_stories), d.val_fraction, "builtin")
        stories += built_train
        val += built_val
    other: list[str] = []
    for name in d.input_files:
        train, file_val = _holdout(corpora.read_text_file(name), d.val_fraction, f"data.input_files: {name}")
        other += train
        val += file_val
    if d.synthetic:
        train, syn_val = _holdout(corpora.synthetic_sequences(d.synthetic), d.val_fraction, "data.synthetic")
        other += train
        val += syn_val
    groups = {name: docs for name, docs in ((STORIES, stories), (OTHER, other)) if docs}
    if not groups:
        raise DataError(
            "no training data: data.tinystories_weight is 0, so TinyStories is not loaded; set data.input_files, "
            "data.synthetic or data.builtin_stories"
        )
    return groups, val


def remap_to_vocab(tokens: np.ndarray, used: np.ndarray) -> np.ndarray:
    """Tokenizer ids -> compact ids (the position in ``used``); ids not in ``used`` -> the OOV id."""
    used = np.asarray(used, dtype=np.int64)
    tokens = np.asarray(tokens, dtype=np.int64)
    remap = np.full(int(max(used.max(), tokens.max() if tokens.size else 0)) + 1, len(used), dtype=np.uint16)
    remap[used] = np.arange(len(used), dtype=np.uint16)
    return remap[tokens]


def _compact(train: np.ndarray, val: np.ndarray, eot: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renumber to the ids seen in training (+ end-of-text); unseen validation ids map to one OOV id."""
    used = np.union1d(np.unique(train), [eot]).astype(np.uint16)
    return remap_to_vocab(train, used), remap_to_vocab(val, used), used


def make_cache_dir(folder: Path) -> None:
    """Create ``data.cache_dir``; a file where a folder must be, or no permission, is one line, not a traceback."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise DataError(f"data.cache_dir: cannot create {folder}: a file stands in its path") from None
    except OSError as exc:
        raise DataError(f"data.cache_dir: cannot create {folder}: {exc.strerror or exc}") from None


def _write_array(folder: Path, name: str, array: np.ndarray) -> str:
    array.astype(np.uint16).tofile(folder / f"{name}.bin")
    return _file_sha256(folder / f"{name}.bin")


def build_cache(d: DataConfig, tokenizer: Tokenizer, target: Path, progress: bool = False) -> None:
    """Tokenize every source and write the cache folder atomically (temp folder + rename)."""
    groups, val_docs = collect_documents(d)  # first: a misspelled path is its one line, after nothing else
    if not val_docs:
        raise DataError("the data has no validation documents")
    if progress:
        print(f"tokenizing ({d.tokenizer}) into {target} ...", file=sys.stderr)
    streams = {name: tokenizer.encode_docs(docs) for name, docs in groups.items()}
    train = np.concatenate(list(streams.values()))
    val = tokenizer.encode_docs(val_docs)
    meta: dict[str, Any] = {"format": CACHE_FORMAT, "tokenizer": tokenizer.name, "groups": {}, "sha256": {}}
    offset = 0
    for name, stream in streams.items():
        meta["groups"][name] = [offset, len(stream)]
        offset += len(stream)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        if d.compact_vocab:
            train, val, used = _compact(train, val, tokenizer.eot_id)
            meta["sha256"]["vocab"] = _write_array(tmp, "vocab", used)
        meta["sha256"]["train"] = _write_array(tmp, "train", train)
        meta["sha256"]["val"] = _write_array(tmp, "val", val)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, target)
        except OSError:  # another worker finished the same cache first: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_cache(folder: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """A cache folder, or None when it must be rebuilt; any other OSError is a :class:`DataError` (never deleted)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        arrays = {}
        for name, digest in meta["sha256"].items():
            path = folder / f"{name}.bin"
            if _file_sha256(path) != digest:
                return None
            arrays[name] = np.memmap(path, dtype=np.uint16, mode="r") if path.stat().st_size else np.zeros(0, np.uint16)
        return meta, arrays
    except (FileNotFoundError, NotADirectoryError, ValueError, KeyError, TypeError, AttributeError):
        return None  # missing, partial or malformed: rebuilt by the caller
    except OSError as exc:
        raise DataError(f"token cache {folder}: cannot read it ({exc.strerror or exc}); fix or remove it") from None


class CompactTokenizer:
    """A tokenizer restricted to the ids seen in training; everything else is one OOV id."""

    def __init__(self, base: Tokenizer, used: np.ndarray) -> None:
        self.base = base
        self.used = np.asarray(used, dtype=np.int64)
        self.lookup = {int(orig): i for i, orig in enumerate(self.used)}
        self.name = f"{base.name}+compact"
        self.oov_id = len(self.used)
        self.vocab_size = len(self.used) + 1
        self.eot_id = self.lookup[base.eot_id]

    def encode(self, text: str) -> list[int]:
        return [self.lookup.get(i, self.oov_id) for i in self.base.encode(text)]

    def encode_docs(self, docs: list[str]) -> np.ndarray:
        raise NotImplementedError("compact vocabularies are built by the cache, not re-encoded")

    def decode(self, ids: list[int]) -> str:
        return self.base.decode([int(self.used[i]) for i in ids if i < self.oov_id])


def load_token_data(d: DataConfig, progress: bool = True) -> TokenData:
    """Return the cached token data for these settings, building the cache when needed."""
    make_cache_dir(Path(d.cache_dir))  # before any tokenizing: a bad path costs one line, not minutes of work
    tokenizer: Tokenizer = get_tokenizer(d.tokenizer)
    folder = Path(d.cache_dir) / cache_key(d)
    opened = _read_cache(folder)
    if opened is None:
        if folder.exists():  # corrupt or partial: rebuild rather than trust it
            print(f"token cache {folder} failed its check; rebuilding", file=sys.stderr)
            shutil.rmtree(folder, ignore_errors=True)
        build_cache(d, tokenizer, folder, progress)
        opened = _read_cache(folder)
        if opened is None:
            raise DataError(f"could not read back the token cache at {folder}")
    meta, arrays = opened
    if "vocab" in arrays:
        tokenizer = CompactTokenizer(tokenizer, np.asarray(arrays["vocab"]))
    if len(arrays["val"]) < 2:
        raise DataError("the validation split has fewer than 2 tokens")
    val = sample_documents(arrays["val"], tokenizer.eot_id, d.val_tokens).tokens
    groups = {name: (int(o), int(n)) for name, (o, n) in meta["groups"].items()}
    data = TokenData(
        tokenizer, arrays["train"], val, groups, mix_weights(groups, d), folder, arrays["val"], d.val_tokens
    )
    if d.test_tokens:
        test_set(data, d.test_tokens)  # a test set the data cannot hold is one line here, before any trial runs
    return data


def mix_weights(groups: dict[str, tuple[int, int]], d: DataConfig) -> dict[str, float]:
    """``data.tinystories_weight`` is the share of TinyStories windows when both groups exist."""
    if set(groups) == {STORIES, OTHER}:
        return {STORIES: d.tinystories_weight, OTHER: 1.0 - d.tinystories_weight}
    return {name: 1.0 for name in groups}


# -- Windows and batches ----------------------------------------------------------------------


def window_starts(data: TokenData, block_size: int, context: int = 0) -> dict[str, np.ndarray]:
    """Start offsets of the non-overlapping training windows of each group, ``context`` tokens in (no padding)."""
    starts = {}
    for name, (offset, length) in data.groups.items():
        count = (length - 1 - context) // block_size
        if count > 0 and data.weights[name] > 0:
            starts[name] = offset + context + np.arange(count, dtype=np.int64) * block_size
    if not starts:
        raise DataError(
            f"the training data ({sum(n for _, n in data.groups.values())} tokens) is shorter than one "
            f"window of {block_size + context + 1} tokens (model.block_size + 1"
            + (f" + {context} tokens of context)" if context else ")")
        )
    return starts


def epoch_order(starts: dict[str, np.ndarray], weights: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """One epoch's window starts, shuffled; with two groups, drawn in the configured shares."""
    if len(starts) == 1:
        (only,) = starts.values()
        return rng.permutation(only)
    total = sum(len(s) for s in starts.values())
    picked = []
    for name, group in starts.items():
        want = round(weights[name] * total)
        reps, rest = divmod(want, len(group))
        picked += [rng.permutation(group) for _ in range(reps)]
        picked.append(rng.choice(group, size=rest, replace=False))
    return rng.permutation(np.concatenate(picked))


def gather(tokens: np.ndarray, starts: np.ndarray, length: int, context: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``x`` (B, context + length) and next-token targets ``y`` (B, length) of windows, as int64."""
    rows = np.asarray(tokens[starts[:, None] - context + np.arange(context + length + 1)], dtype=np.int64)
    window = torch.from_numpy(rows)
    return window[:, :-1], window[:, context + 1 :]


def train_batches(
    data: TokenData, block_size: int, batch_size: int, rng: np.random.Generator, context: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled full batches (the last partial batch is dropped unless it is the only one)."""
    order = epoch_order(window_starts(data, block_size, context), data.weights, rng)
    n_full = len(order) // batch_size
    if n_full == 0:
        yield gather(data.train, order, block_size, context)
        return
    for i in range(n_full):
        yield gather(data.train, order[i * batch_size : (i + 1) * batch_size], block_size, context)


# -- Validation: which documents, and how their tokens are scored -----------------------------


@dataclass
class EvalSet:
    """Validation documents back to back, and the document of each scored token (for standard errors)."""

    tokens: np.ndarray
    doc_of_target: np.ndarray  # (len(tokens) - 1,): the document of each target token tokens[1:]
    documents: int
    description: dict[str, Any]


def document_lengths(tokens: np.ndarray, eot: int) -> np.ndarray:
    """Lengths of the documents of a stream cut after each end-of-text (a trailing rest is one more)."""
    ends = np.flatnonzero(np.asarray(tokens) == eot) + 1
    if len(ends) == 0 or ends[-1] != len(tokens):
        ends = np.append(ends, len(tokens))
    return np.diff(ends, prepend=0)


def choose_documents(
    lengths: np.ndarray, max_tokens: int | None, seed: int, allowed: np.ndarray | None = None
) -> np.ndarray:
    """A prefix of one seeded order of the ``allowed`` documents up to ``max_tokens``; smaller samples nest."""
    allowed = np.ones(len(lengths), dtype=bool) if allowed is None else allowed
    if max_tokens is None or max_tokens >= int(lengths[allowed].sum()):
        return allowed.copy()
    order = np.random.default_rng(seed).permutation(len(lengths))
    order = order[allowed[order]]
    take = int(np.searchsorted(np.cumsum(lengths[order]), max(max_tokens, 2))) + 1
    chosen = np.zeros(len(lengths), dtype=bool)
    chosen[order[:take]] = True
    return chosen


def sample_documents(
    tokens: np.ndarray, eot: int, max_tokens: int | None, seed: int = VAL_SEED, allowed: np.ndarray | None = None
) -> EvalSet:
    """Whole documents drawn with a fixed seed across the split until ``max_tokens`` (None: all), in split order."""
    lengths = document_lengths(tokens, eot)
    chosen = choose_documents(lengths, max_tokens, seed, allowed)
    where = "the split" if allowed is None else "the documents outside the validation sample"
    how = "the whole split" if allowed is None else where
    if max_tokens is not None and not np.array_equal(chosen, np.ones_like(chosen) if allowed is None else allowed):
        how = f"whole documents drawn at random across {where} (seed {seed}) until >= {max_tokens:,} tokens"
    kept = tokens if chosen.all() else np.asarray(tokens)[np.repeat(chosen, lengths)]
    doc_of_token = np.repeat(np.arange(int(chosen.sum()), dtype=np.int32), lengths[chosen])
    description = {
        "drawn": how,
        "seed": seed,
        "documents": int(chosen.sum()),
        "tokens": len(kept),
        "scored_tokens": len(kept) - 1,
        "split_documents": len(lengths),
        "split_tokens": len(tokens),
    }
    return EvalSet(kept, doc_of_token[1:], int(chosen.sum()), description)


def test_set(data: TokenData, test_tokens: int) -> EvalSet:
    """``data.test_tokens`` of validation documents outside the validation sample: scored once, after every choice."""
    split = data.val_split if data.val_split is not None else data.val
    return test_sample(split, data.tokenizer.eot_id, data.val_cap, test_tokens)


def test_sample(split: np.ndarray, eot: int, val_tokens: int | None, test_tokens: int) -> EvalSet:
    """The test documents of a validation split whose validation sample is capped at ``val_tokens``."""
    validation = choose_documents(document_lengths(split, eot), val_tokens, VAL_SEED)
    if validation.all():
        raise DataError(
            "data.test_tokens: the validation sample takes every validation document; "
            "lower data.val_tokens to leave documents for a test set"
        )
    return sample_documents(split, eot, test_tokens, TEST_SEED, allowed=~validation)


def validation_sets(data: TokenData, eval_tokens: int | None) -> tuple[EvalSet, EvalSet]:
    """The periodic set (``train.eval_tokens``; None: the whole capped set) and the capped set."""
    split = data.val_split if data.val_split is not None else data.val
    eot = data.tokenizer.eot_id
    full = sample_documents(split, eot, data.val_cap)
    if eval_tokens is None or eval_tokens >= len(full.tokens):
        return full, full
    return sample_documents(split, eot, eval_tokens), full


@dataclass(frozen=True)
class ScoringPolicy:
    """How validation windows are cut: ``window`` inputs every ``stride`` tokens, each scoring its last ``stride``."""

    window: int
    stride: int

    def describe(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "stride": self.stride,
            "min_context": self.window - self.stride,
            "policy": f"windows of {self.window} tokens every {self.stride}, each scoring its last {self.stride} "
            f"(the first scores all): >= {self.window - self.stride} tokens of real context after the first window",
        }


def scoring_policy(block_size: int, context_size: int | None) -> ScoringPolicy:
    """Finite context (k-gram: ``context_size`` = k - 1): that much before each block; else half-block strides."""
    if context_size is not None:
        return ScoringPolicy(block_size + context_size, block_size)
    return ScoringPolicy(block_size, max(1, block_size // 2))


def scoring_windows(n_tokens: int, policy: ScoringPolicy) -> tuple[int, np.ndarray, np.ndarray]:
    """Window width, starts and first scored column; a last window past the end moves back, scoring only the rest."""
    n_targets = n_tokens - 1
    width = min(policy.window, n_targets)
    stride = min(policy.stride, width)
    middle, rest = divmod(n_targets - width, stride)
    starts = [np.zeros(1), stride * np.arange(1, middle + 1), np.array([n_targets - width] if rest else [])]
    first = [np.zeros(1), np.full(middle, width - stride), np.array([width - rest] if rest else [])]
    return width, np.concatenate(starts).astype(np.int64), np.concatenate(first).astype(np.int64)


def eval_batches(
    tokens: np.ndarray, policy: ScoringPolicy, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]]:
    """Batches of inputs, targets, the targets to score and their indices: every token after the first, once."""
    width, starts, first = scoring_windows(len(tokens), policy)
    cols = np.arange(width)
    for i in range(0, len(starts), batch_size):
        s, f = starts[i : i + batch_size], first[i : i + batch_size]
        x, y = gather(tokens, s, width)
        scored = cols[None, :] >= f[:, None]
        yield x, y, torch.from_numpy(scored), (s[:, None] + cols)[scored]


# -- The counting baseline --------------------------------------------------------------------


def unigram_baseline(data: TokenData) -> dict[str, float]:
    """The training unigram distribution's entropy and add-one smoothed validation loss (nats): the bar to beat."""
    counts = np.bincount(np.asarray(data.train), minlength=data.vocab_size).astype(np.float64)
    probs = counts / counts.sum()
    nonzero = probs[probs > 0]
    smoothed = (counts + 1.0) / (counts.sum() + data.vocab_size)
    val_targets = np.asarray(data.val[1:], dtype=np.int64)
    return {
        "unigram_entropy": float(-(nonzero * np.log(nonzero)).sum()),
        "unigram_val_loss": float(-np.log(smoothed[val_targets]).mean()),
        "top_token_id": int(counts.argmax()),
        "top_token_share": float(probs.max()),
    }


def describe(data: TokenData) -> dict[str, Any]:
    """What the run trained on, for the run record and W&B."""
    return {
        "tokenizer": data.tokenizer.name,
        "vocab_size": data.vocab_size,
        "train_tokens": len(data.train),
        "val_tokens": len(data.val),
        "groups": {name: n for name, (_, n) in data.groups.items()},
        "weights": data.weights,
        "cache": str(data.cache_path),
        "notes": list(data.notes),
    }
