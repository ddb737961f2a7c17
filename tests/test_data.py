"""Data: cached tokens, fixed validation tokens, no padding, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from picollm import data as data_mod
from picollm.config import load_config
from picollm.corpora import builtin_stories, synthetic_sequences
from picollm.data import apply_offline_fallback, eval_batches, load_token_data, train_batches
from picollm.errors import DataError
from tests.conftest import SAMPLE, needs_sample


@pytest.mark.parametrize("context_size", [None, 0, 2])
@pytest.mark.parametrize("block_size", [1, 7, 32, 100, 600])
def test_evaluation_scores_every_validation_token_once_with_context(block_size: int, context_size: int | None) -> None:
    tokens = np.arange(1, 502, dtype=np.uint16)  # 501 tokens -> 500 targets
    policy = data_mod.scoring_policy(block_size, context_size)
    batches = list(eval_batches(tokens, policy, 4))
    targets = np.concatenate([y[scored].numpy() for _, y, scored, _ in batches])
    index = np.concatenate([i for *_, i in batches])
    assert np.array_equal(np.sort(targets), tokens[1:])  # same tokens for every block_size, none twice
    assert np.array_equal(tokens[index + 1], targets)  # each index names its target
    for x, y, *_ in batches:
        assert np.array_equal(x.numpy()[:, 1:], y.numpy()[:, :-1])  # targets are next tokens, never padding


def test_later_windows_have_half_a_block_or_k_minus_1_tokens_of_context() -> None:
    tokens = np.arange(1, 1002, dtype=np.uint16)
    for policy, need in ((data_mod.scoring_policy(64, None), 32), (data_mod.scoring_policy(16, 4), 4)):
        width, starts, first = data_mod.scoring_windows(len(tokens), policy)
        assert first[0] == 0 and (first[1:] >= need).all()
        assert width == policy.window and len(starts) == len(first)


def test_validation_samples_are_whole_documents_spread_over_the_split() -> None:
    eot = 0
    docs = [np.full(n, i + 1, dtype=np.uint16) for i, n in enumerate(np.random.default_rng(1).integers(5, 40, 300))]
    split = np.concatenate([np.append(d, eot) for d in docs]).astype(np.uint16)
    small = data_mod.sample_documents(split, eot, 500)
    large = data_mod.sample_documents(split, eot, 3000)
    again = data_mod.sample_documents(split, eot, 500)
    assert np.array_equal(small.tokens, again.tokens)  # fixed seed: the same set every run
    assert 500 <= len(small.tokens) < 540 and small.description["documents"] == small.documents
    ids = set(small.tokens.tolist()) - {eot}
    assert ids <= set(large.tokens.tolist())  # the smaller sample is part of the larger one
    assert min(ids) < 60 and max(ids) > 240  # spread over the split, not its first documents
    for i in ids:  # whole documents only
        assert (small.tokens == i).sum() == len(docs[i - 1])
    doc_of = np.concatenate([[0], small.doc_of_target])
    assert np.array_equal(np.unique(doc_of), np.arange(small.documents))
    assert (np.diff(doc_of) >= 0).all() and (small.tokens[np.flatnonzero(np.diff(doc_of))] == eot).all()
    whole = data_mod.sample_documents(split, eot, None)
    assert len(whole.tokens) == len(split) and whole.documents == 300


def test_an_epoch_visits_every_training_window_once_as_next_token_pairs() -> None:
    cfg = load_config(None, ["data.tinystories=null", "data.synthetic=50", "data.tokenizer=bytes"])
    data = load_token_data(cfg.data, progress=False)
    starts = data_mod.window_starts(data, 16)["other"]
    assert np.array_equal(starts, np.arange((len(data.train) - 1) // 16) * 16)  # non-overlapping, from 0
    order = data_mod.epoch_order(data_mod.window_starts(data, 16), data.weights, np.random.default_rng(0))
    assert np.array_equal(np.sort(order), starts) and not np.array_equal(order, starts)  # all once, shuffled
    batches = list(train_batches(data, 16, 4, np.random.default_rng(0)))
    assert len(batches) == len(starts) // 4
    for x, y in batches:
        assert x.shape == y.shape == (4, 16)
        assert np.array_equal(x[:, 1:].numpy(), y[:, :-1].numpy())


def test_kgram_training_windows_read_real_context_before_their_start() -> None:
    cfg = load_config(None, ["data.tinystories=null", "data.synthetic=50", "data.tokenizer=bytes"])
    data = load_token_data(cfg.data, progress=False)
    starts = data_mod.window_starts(data, 16, context=2)["other"]
    assert starts[0] == 2 and (np.diff(starts) == 16).all()
    x, y = next(train_batches(data, 16, 4, np.random.default_rng(0), context=2))
    assert x.shape == (4, 18) and y.shape == (4, 16)
    assert np.array_equal(x[:, 3:].numpy(), y[:, :-1].numpy())  # x = 2 context tokens + the block
    train = np.asarray(data.train)
    for row_x in x.numpy():
        (hits,) = np.nonzero((np.lib.stride_tricks.sliding_window_view(train, 18) == row_x).all(1))
        assert len(hits) >= 1  # the context tokens are the real tokens before the block


def test_cache_is_reused_and_a_corrupt_cache_is_rebuilt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(
        None, ["data.tinystories=null", "data.synthetic=100", "data.tokenizer=bytes", f"data.cache_dir={tmp_path}"]
    )
    first = load_token_data(cfg.data)
    expected = np.array(first.train)  # a copy: the memmap would see the corruption below
    assert "tokenizing" in capsys.readouterr().err
    second = load_token_data(cfg.data)
    assert "tokenizing" not in capsys.readouterr().err
    assert np.array_equal(expected, second.train)
    train_bin = first.cache_path / "train.bin"
    train_bin.write_bytes(train_bin.read_bytes()[:-10])  # truncated, as by a crash or a full disk
    third = load_token_data(cfg.data)
    assert "failed its check" in capsys.readouterr().err
    assert np.array_equal(expected, third.train)


def test_an_unreadable_cache_is_one_line_and_not_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(
        None, ["data.tinystories=null", "data.synthetic=100", "data.tokenizer=bytes", f"data.cache_dir={tmp_path}"]
    )
    folder = load_token_data(cfg.data, progress=False).cache_path
    real_sha = data_mod._file_sha256

    def denied(path: Path) -> str:
        if Path(path).name == "val.bin":
            raise PermissionError(13, "Permission denied", str(path))
        return real_sha(path)

    monkeypatch.setattr(data_mod, "_file_sha256", denied)
    with pytest.raises(DataError, match=r"cannot read it.*Permission denied"):
        load_token_data(cfg.data, progress=False)
    assert (folder / "val.bin").is_file() and (folder / "train.bin").is_file()  # nothing deleted


def test_changed_input_file_changes_the_cache_key(tmp_path: Path) -> None:
    text = tmp_path / "a.txt"
    text.write_text("hello world\nsecond line\n")
    cfg = load_config(None, ["data.tinystories=null", f"data.input_files=[{text}]", "data.tokenizer=bytes"])
    key = data_mod.cache_key(cfg.data)
    text.write_text("hello there\nsecond line\n")
    assert data_mod.cache_key(cfg.data) != key


def test_mixing_weight_sets_the_share_of_windows(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            "data.tinystories=null",
            "data.builtin_stories=300",
            "data.synthetic=600",
            "data.tokenizer=bytes",
            f"data.cache_dir={tmp_path}",
            "data.tinystories_weight=0.8",
        ],
    )
    data = load_token_data(cfg.data, progress=False)
    stories_end = data.groups["tinystories"][0] + data.groups["tinystories"][1]
    order = data_mod.epoch_order(data_mod.window_starts(data, 16), data.weights, np.random.default_rng(0))
    share = float(np.mean(order < stories_end))
    assert share == pytest.approx(0.8, abs=0.01)


def test_compact_vocabulary_renumbers_and_round_trips(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            "data.tinystories=null",
            "data.synthetic=100",
            "data.tokenizer=bytes",
            "data.compact_vocab=true",
            f"data.cache_dir={tmp_path}",
        ],
    )
    data = load_token_data(cfg.data, progress=False)
    assert data.vocab_size == len(set("0123456789 ")) + 2  # digits, space, end-of-text, OOV
    assert int(np.asarray(data.train).max()) < data.vocab_size
    assert data.tokenizer.decode(data.tokenizer.encode("12 13 14")) == "12 13 14"
    assert data.tokenizer.encode("x")[0] == data.tokenizer.oov_id


def test_generators_are_deterministic() -> None:
    assert synthetic_sequences(30) == synthetic_sequences(30)
    assert builtin_stories(10) == builtin_stories(10)
    assert all(seq.split() == [str(int(t)) for t in seq.split()] for seq in synthetic_sequences(30))


def test_offline_fallback_says_so_and_records_what_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_config(None, ["data.offline_fallback=true", "data.max_stories=300"])
    new, note = apply_offline_fallback(cfg)
    assert note and "offline" in note and "built-in corpus" in note
    assert new.data.tinystories is None and new.data.builtin_stories == 300 and new.data.tokenizer in ("bytes", "gpt2")


def test_local_folder_that_does_not_exist_is_an_error() -> None:
    cfg = load_config(None, ["data.tinystories=./missing-dataset"])
    with pytest.raises(DataError, match="local dataset folder not found"):
        load_token_data(cfg.data)


@needs_sample
def test_local_tinystories_copy_uses_its_validation_split(tmp_path: Path) -> None:
    cfg = load_config(None, [f"data.tinystories={SAMPLE}", f"data.cache_dir={tmp_path}"])
    data = load_token_data(cfg.data, progress=False)
    assert data.vocab_size == 50257 and data.tokenizer.eot_id == 50256
    assert 150_000 < len(data.train) < 250_000 and 15_000 < len(data.val) < 35_000
    assert data.tokenizer.decode(np.asarray(data.val[:4]).tolist()).strip()
