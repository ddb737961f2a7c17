"""Coming from the course's pico.py: its flags, its sanity check, TinyStories at weight 0, a smoke run that counts,
the thread count of a lone run, and one line for a cache path under a file or a NaN loss."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import picollm
from picollm import corpora
from picollm import data as data_mod
from picollm.cli import run_cli
from picollm.cli import train as train_cli
from picollm.cli.generate import main as generate_main
from picollm.config import load_config
from picollm.course import CHUNK_NOTE, COURSE_FLAGS
from picollm.errors import DataError, PicoError
from picollm.threads import fit_threads, lone_run_threads
from picollm.trainer import NonFiniteLoss
from tests.conftest import ROOT


@pytest.fixture(autouse=True)
def busy_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every core held by other processes (a test suite's neighbours): a lone CPU run fits one thread, whatever the
    load of the machine the tests run on."""
    from picollm import threads

    monkeypatch.setattr(threads, "running_elsewhere", lambda: 64.0)


ALL_FLAGS = [
    *["--input_files", "a.txt", "my notes.txt"],
    *["--tinystories_weight", "0.0", "--block_size", "32", "--embed_size", "48", "--kgram_k", "4"],
    *["--num_inner_mlp_layers", "2", "--max_steps_per_epoch", "7", "--prompt", "0 1 2 3 4", "--device_id", "cpu"],
]
SAME_AS_SET = [
    "data.input_files=[a.txt, my notes.txt]",
    "data.tinystories_weight=0.0",
    "model.block_size=32",
    "model.embed_size=48",
    "model.k=4",
    "model.num_inner_layers=2",
    "train.max_steps_per_epoch=7",
    "train.prompt='0 1 2 3 4'",
    "train.device=cpu",
]


def resolved(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[dict, str]:
    """The config ``python -m picollm.train ARGV --print-config`` prints, and what it said on stderr."""
    assert train_cli.main([*argv, "--print-config"]) == 0
    captured = capsys.readouterr()
    return yaml.safe_load(captured.out), captured.err


def sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


# --- 1. pico.py's flags are aliases of dotted keys -----------------------------------------------


def test_each_course_flag_sets_what_its_set_sets(capsys: pytest.CaptureFixture[str]) -> None:
    by_flags, _ = resolved(ALL_FLAGS, capsys)
    by_sets, _ = resolved(sets(SAME_AS_SET), capsys)
    defaults, _ = resolved(["--set", "train.threads=1"], capsys)  # what fit_threads gives the cpu runs
    assert by_flags == by_sets
    assert by_flags["data"]["input_files"] == ["a.txt", "my notes.txt"] and by_flags["model"]["embed_size"] == 48
    changed = {f"{s}.{k}" for s in defaults for k in defaults[s] if defaults[s][k] != by_flags[s][k]}
    assert changed == {a.key for a in COURSE_FLAGS.values() if a.key}  # every key, and only those


@pytest.mark.parametrize(
    ("argv", "block"),
    [
        (["--block_size", "32"], 32),  # the command line wins over the file (64)
        (["--block_size", "32", "--set", "model.block_size=16"], 16),  # for one key, the later wins
        (["--set", "model.block_size=16", "--block_size", "32"], 32),
        (["--block_size", "8", "--block_size", "32"], 32),
    ],
)
def test_flags_and_set_share_one_order(argv: list[str], block: int, tmp_path: Path, capsys) -> None:
    config = tmp_path / "exp.yaml"
    config.write_text("model:\n  block_size: 64\n")
    cfg, _ = resolved(["--config", str(config), *argv], capsys)
    assert cfg["model"]["block_size"] == block


@pytest.mark.parametrize(
    ("argv", "key", "value"),
    [
        (["--prompt", "yes"], "prompt", "yes"),  # text as given, not YAML's true
        (["--prompt", "a: b"], "prompt", "a: b"),
        (["--device_id", "1"], "device", "cuda:1"),  # pico.py's bare GPU number
        (["--device_id", "cuda:0"], "device", "cuda:0"),
        (["--device_id", "cpu"], "device", "cpu"),
    ],
)
def test_flag_values_arrive_as_given(argv: list[str], key: str, value: str, capsys) -> None:
    cfg, _ = resolved(argv, capsys)
    assert cfg["train"][key] == value


def test_kgram_chunk_size_is_accepted_and_says_it_changes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    plain, quiet = resolved(["--set", "model.type=kgram"], capsys)
    chunked, said = resolved(["--set", "model.type=kgram", "--kgram_chunk_size", "16"], capsys)
    assert chunked == plain and quiet == ""
    assert said.strip() == CHUNK_NOTE


def test_a_kgram_flag_on_another_model_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    _, said = resolved(["--kgram_k", "4"], capsys)
    assert len(said.splitlines()) == 1 and "model.type=kgram" in said and "transformer" in said
    _, quiet = resolved(["--kgram_k", "4", "--set", "model.type=kgram"], capsys)
    assert quiet == ""


def test_help_lists_the_course_flags_with_their_keys() -> None:
    text = " ".join(train_cli.build_parser().format_help().split())
    assert "pico.py's flags" in text
    for flag, alias in COURSE_FLAGS.items():
        assert re.search(rf"{flag} [A-Z_][^()]*\(({re.escape(f'--set {alias.key}')}|sets nothing)\)", text), flag


def test_the_doc_page_has_one_row_per_flag() -> None:
    page = (ROOT / "docs" / "course.md").read_text()
    rows = re.findall(r"^\| `(--\w+)[^`]*` \| (?:`([\w.]+)`|—)", page, flags=re.M)
    assert dict(rows) == {flag: alias.key or "" for flag, alias in COURSE_FLAGS.items()}


# --- 2. the course's sanity check, as the course writes it -----------------------------------------


def three_seqs(path: Path, lines: int = 2000) -> Path:
    """Three kinds of number sequences, one per line: counting, step-3 arithmetic, and counting down."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(lines):
        start, length = int(rng.integers(0, 50)), int(rng.integers(8, 20))
        family = (range(start, start + length), range(start, start + 3 * length, 3), range(start + length, start, -1))
        rows.append(" ".join(map(str, family[i % 3])))
    path.write_text("\n".join(rows) + "\n")
    return path


def test_the_course_sanity_check_runs_as_the_course_writes_it(tmp_path: Path) -> None:
    three_seqs(tmp_path / "3seqs.txt")
    course = ["--input_files", "3seqs.txt", "--tinystories_weight", "0.0", "--block_size", "32"]
    budget = ["--max_steps_per_epoch", "10"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "picollm.train", *course, "--prompt", "0 1 2 3 4", *budget],
        cwd=tmp_path,  # 3seqs.txt as a relative path; the run record lands in ./results, as a student's does
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "run record:" in proc.stdout
    (run_dir,) = (tmp_path / "results" / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    meta = json.loads((run_dir / "meta.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 10 and summary["tokenizer"] == "gpt2"
    assert set(meta["data"]["groups"]) == {"other"}  # the file's sequences, no TinyStories
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert samples[-1]["prompt"] == "0 1 2 3 4"


# --- 3. a TinyStories weight of 0 loads no TinyStories ---------------------------------------------


def no_hub(*_: object) -> None:
    raise AssertionError("TinyStories was loaded")


def test_weight_zero_loads_no_tinystories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpora, "load_tinystories", no_hub)
    monkeypatch.setattr(corpora, "hub_reachable", lambda *_: False)
    seqs = three_seqs(tmp_path / "3seqs.txt")
    overrides = [f"data.input_files=[{seqs}]", "data.tinystories_weight=0.0", "data.tokenizer=bytes"]
    cfg = load_config(None, [*overrides, f"data.cache_dir={tmp_path / 'cache'}", "data.offline_fallback=true"])
    ran, note = data_mod.apply_offline_fallback(cfg)
    assert (ran, note) == (cfg, None)  # nothing to fall back from: no stand-in stories replace it
    data = data_mod.load_token_data(cfg.data, progress=False)
    assert set(data.groups) == {"other"}
    other_name = dataclasses.replace(cfg.data, tinystories="./not/here")
    assert data_mod.cache_key(other_name) == data_mod.cache_key(cfg.data)


def test_a_positive_weight_still_loads_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    stories = [f"story {i} about a cat" for i in range(20)]
    monkeypatch.setattr(corpora, "load_tinystories", lambda *a: calls.append(a) or (stories, None))
    seqs = three_seqs(tmp_path / "3seqs.txt")
    cfg = load_config(None, [f"data.input_files=[{seqs}]", "data.tinystories_weight=0.5", "data.tokenizer=bytes"])
    data = data_mod.load_token_data(dataclasses.replace(cfg.data, cache_dir=str(tmp_path / "cache")), progress=False)
    assert len(calls) == 1 and set(data.groups) == {"tinystories", "other"}


def test_weight_zero_with_nothing_else_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpora, "load_tinystories", no_hub)
    cfg = load_config(None, ["data.tinystories_weight=0", "data.tokenizer=bytes", f"data.cache_dir={tmp_path}"])
    with pytest.raises(DataError, match="TinyStories is not loaded"):
        data_mod.load_token_data(cfg.data, progress=False)


# --- 4. the smoke run learns to count ----------------------------------------------------------------


def test_smoke_config_learns_to_count(out: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    run = picollm.train(ROOT / "experiments" / "smoke.yaml", [*out, "tracking.wandb=disabled"])
    summary = run.summary
    assert summary["status"] == "finished"
    assert summary["final_val_loss"] < 0.5 * summary["unigram_entropy"], summary
    saved = yaml.safe_load((run.run_dir / "config.yaml").read_text())
    assert saved["train"]["threads"] == lone_run_threads(saved["train"]["device"])  # picollm.train fits threads
    capsys.readouterr()
    generate_main([str(run.run_dir), "--prompt", "0 1 2 3 4", "--greedy", "--max-new-tokens", "12"])
    continuation = capsys.readouterr().out.splitlines()[-1].removeprefix("0 1 2 3 4")
    assert continuation.startswith(" 5 6 7"), continuation


# --- 5. threads of a lone run ---------------------------------------------------------------------------


def test_a_lone_cpu_run_takes_the_free_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from picollm.threads import available_cores, free_cores

    assert [free_cores(2, load) for load in (0.1, 0.6, 1.4, 9.0)] == [2, 1, 1, 1]
    assert [free_cores(8, load) for load in (0.0, 3.2, 7.9)] == [8, 5, 1]
    from picollm import threads

    monkeypatch.setattr(threads, "running_elsewhere", lambda: 0.0)  # a quiet machine: every core
    assert fit_threads(load_config(None, ["train.device=cpu"])).train.threads == available_cores()
    monkeypatch.setattr(threads, "available_cores", lambda: 4)  # the suite keeps each test process to one core
    assert fit_threads(load_config(None, ["train.device=cpu"])).train.threads == 4


def test_a_lone_cpu_run_on_a_busy_machine_gets_one_thread_unless_told(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(None, ["train.device=cpu"])
    fitted = fit_threads(cfg)
    assert fitted.train.threads == 1 and cfg.train.threads is None  # the caller's config is left as it was
    assert fit_threads(load_config(None, ["train.device=cpu", "train.threads=2"])).train.threads == 2
    assert lone_run_threads("cuda:0") is None  # on a GPU, torch's own default
    printed, _ = resolved(["--device_id", "cpu"], capsys)
    assert printed["train"]["threads"] == 1
    printed, _ = resolved(["--device_id", "cpu", "--set", "train.threads=2"], capsys)
    assert printed["train"]["threads"] == 2


# --- 6. one line, exit 2 ------------------------------------------------------------------------------------


def run_train_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train_cli.main, argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("where", ["a_file/cache", "a_file"])
def test_cache_dir_under_a_file_is_one_line(where: str, synthetic: list[str], tmp_path: Path, capsys) -> None:
    (tmp_path / "a_file").write_text("not a folder")
    err = run_train_cli(sets([*synthetic, f"data.cache_dir={tmp_path / where}"]), capsys)
    assert "data.cache_dir" in err and "a file stands in its path" in err
    assert not (tmp_path / "runs").exists()  # no run record was started


def test_nan_loss_is_one_line_and_the_record_closes_failed(synthetic: list[str], capsys) -> None:
    nan = ["optim.name=sgd", "optim.lr=1e12", "optim.grad_clip=0"]
    err = run_train_cli(sets([*synthetic, *nan]), capsys)
    assert "training loss became" in err
    (run_dir,) = Path(synthetic[0].split("=", 1)[1]).iterdir()
    assert str(run_dir) in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "NonFiniteLoss" in summary["reason"]
    assert not issubclass(NonFiniteLoss, PicoError)  # a sweep records a NaN trial as failed and goes on
