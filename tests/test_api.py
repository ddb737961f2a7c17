"""The Python API behaves in a kernel: lazy import, one code path with the CLIs, errors that raise,
results that display, nothing leaked between calls, interrupts that leave a study resumable."""

from __future__ import annotations

import gc
import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from matplotlib.figure import Figure

import picollm
from picollm import api
from picollm.errors import ConfigError, DataError, PicoError
from picollm.sweeps import load_experiment
from tests.conftest import ROOT
from tests.sweeps import write_experiment

HEAVY = ("torch", "optuna", "wandb", "torch._dynamo")


def run_python(code: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (``python -c``), as a new kernel would import it."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> api.TrainResult:
    """One small run on the synthetic task (8-step epochs, so the noise analysis has epochs to compare)."""
    tmp = tmp_path_factory.mktemp("trained")
    return picollm.train(
        None,
        [
            f"tracking.out_dir={tmp / 'runs'}",
            f"data.cache_dir={tmp / 'cache'}",
            "train.progress=false",
            "tracking.wandb=disabled",
            "data.tinystories=null",
            "data.synthetic=600",
            "data.tokenizer=bytes",
            "model.type=kgram",
            "model.block_size=16",
            "model.embed_size=32",
            "optim.lr=3e-3",
            "train.epochs=6",
            "train.max_steps_per_epoch=8",
            "train.eval_every=4",
            "train.eval_tokens=1024",
            "train.prompt='0 1 2'",
        ],
    )


# --- the package --------------------------------------------------------------------------------


def test_import_picollm_loads_no_torch_optuna_wandb_or_dynamo() -> None:
    done = run_python(
        f"""
        import json, sys
        import picollm
        names = picollm.__all__
        print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
        """
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_every_exported_function_says_why_and_shows_an_example() -> None:
    assert sorted(picollm.__all__) == sorted(api.__all__)
    for name in api.__all__:
        doc = getattr(api, name).__doc__
        assert "Why" in doc and f"picollm.{name}(" in doc, name


def test_train_generate_evaluate_are_ordinary_functions_after_the_library_is_imported() -> None:
    """``picollm.train`` is the API's function, whatever the library has imported (the trainer, the CLIs' modules
    behind ``python -m picollm.train``)."""
    import types

    import picollm.cli.train
    import picollm.scoring
    import picollm.sweeps.workers
    import picollm.trainer

    for name in ("train", "generate", "evaluate", "sweep"):
        assert isinstance(getattr(picollm, name), types.FunctionType), name
        assert getattr(picollm, name) is getattr(api, name)


def test_the_library_never_imports_the_command_lines() -> None:
    """Importing ``picollm.train`` (the module behind ``python -m``) would rebind ``picollm.train``: only the
    command lines themselves may import them."""
    from tests.test_layout_of_the_package import import_graph

    shims = {"picollm.train", "picollm.evaluate", "picollm.generate"}
    for module, deps in import_graph().items():
        if module not in shims and not module.startswith("picollm.cli"):
            assert not any(d in shims or d.startswith("picollm.cli") for d in deps), module


# --- training and reading a run -----------------------------------------------------------------


def test_train_returns_history_curves_and_summary(trained: api.TrainResult) -> None:
    assert trained.summary["status"] == "finished"
    assert trained.run_dir.is_dir() and (trained.run_dir / "summary.json").is_file()
    steps = trained.history.dropna(subset=["train/loss"])
    assert list(steps["step"]) == list(range(1, trained.summary["steps"] + 1))
    assert steps["train/loss"].iloc[-4:].mean() < steps["train/loss"].iloc[:4].mean()  # it learned
    fig = trained.plot()
    assert isinstance(fig, Figure)
    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert "train/loss" in labels and "unigram baseline" in " ".join(labels)
    assert any(label.startswith("val/loss") for label in labels)
    assert any(label.startswith("val/epoch_loss") for label in labels)
    page = trained._repr_html_()
    assert "best_val_loss" in page and "data:image/png;base64," in page
    assert str(trained.run_dir) in repr(trained)


def test_inspect_shows_top_tokens_frequencies_and_baseline(trained: api.TrainResult) -> None:
    result = picollm.inspect(trained, position=10, top=5)
    assert list(result.top.columns) == ["token", "id", "prob"] and len(result.top) == 5
    assert result.top["prob"].is_monotonic_decreasing and result.top["prob"].sum() <= 1.0 + 1e-6
    assert result.token_frequencies["share"].sum() <= 1.0 + 1e-6
    assert all(isinstance(fig, Figure) for fig in result.figures) and len(result.figures) == 2
    assert "unigram baseline" in repr(result) and "data:image/png" in result._repr_html_()


def test_noise_returns_epochs_verdict_and_figures(trained: api.TrainResult) -> None:
    result = picollm.noise(trained, trained.run_dir, simulate=False)
    assert len(result.runs) == 2 and len(result.figures) == 3  # one per run, then the false-rise curve
    assert all(isinstance(fig, Figure) for fig in result.figures)
    assert sorted(set(result.epochs["epoch"])) == list(range(1, 7))
    assert (result.epochs["ci_low"] <= result.epochs["mean"]).all()
    assert result.verdict in repr(result)


def test_generate_is_repeatable_with_a_seed(trained: api.TrainResult) -> None:
    first = picollm.generate(trained, "0 1 2", max_new_tokens=12, seed=3)
    assert first == picollm.generate(trained.run_dir, "0 1 2", max_new_tokens=12, seed=3)
    assert len(first) == 12  # bytes tokenizer: one character per token
    assert picollm.generate(trained, "0 1 2", max_new_tokens=12, greedy=True) == picollm.generate(
        trained, "0 1 2", max_new_tokens=12, greedy=True, seed=99
    )


def test_generate_refuses_settings_that_sample_nothing_before_loading_the_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"top_k \(--top-k\) must be >= 1"):
        picollm.generate(tmp_path / "no-such-run", "0 1 2", top_k=0)


def test_evaluate_scores_the_saved_weights(trained: api.TrainResult) -> None:
    scores = picollm.evaluate(trained)
    assert {"loss", "stderr", "tokens", "context"} <= set(scores)
    assert 0 < scores["loss"] < trained.summary["unigram_val_loss"] and scores["stderr"] > 0
    final = picollm.evaluate(trained, weights="final")  # what --weights chooses
    assert final["weights"] == "final.pt"
    assert final["loss"] == pytest.approx(trained.summary["final_val_loss"], abs=1e-5)
    with pytest.raises(ConfigError, match="choose best or final"):
        picollm.evaluate(trained, weights="latest")
    with pytest.raises(ConfigError, match=r"cuda:99 is not available"):  # --device reaches the scorer
        picollm.evaluate(trained, device="cuda:99")


def test_resume_and_extend_take_a_result_and_refuse_a_finished_cosine_run(trained: api.TrainResult) -> None:
    with pytest.raises(ConfigError, match=r"the run finished$"):  # no --extend-to hint: a cosine run cannot extend
        picollm.resume(trained)
    with pytest.raises(ConfigError, match="no stable phase to branch from"):
        picollm.extend(trained, 10**6)


def test_a_loss_that_stops_being_finite_is_one_line_naming_the_closed_record(tmp_path: Path) -> None:
    overrides = [f"tracking.out_dir={tmp_path}", "optim.name=sgd", "optim.lr=1e12", "optim.grad_clip=0"]
    with pytest.raises(ConfigError, match=r"closed as failed; try a lower optim\.lr") as raised:
        picollm.train(ROOT / "experiments" / "smoke.yaml", [*overrides, "tracking.wandb=disabled"])
    (record,) = tmp_path.iterdir()
    assert f"run record {record} closed as failed" in str(raised.value) and "\n" not in str(raised.value)
    assert json.loads((record / "summary.json").read_text())["status"] == "failed"


# --- bad input ----------------------------------------------------------------------------------


def test_bad_input_raises_the_clis_one_line_not_system_exit(tmp_path: Path) -> None:
    cli = subprocess.run(
        [sys.executable, "-m", "picollm.train", "--config", "experiments/smoke.yaml", "--set", "optim.lr=0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    with pytest.raises(ConfigError) as raised:
        picollm.train(ROOT / "experiments" / "smoke.yaml", "optim.lr=0")
    assert cli.returncode == 2 and cli.stderr.strip() == f"error: {raised.value}"
    calls = [
        lambda: picollm.load_config(tmp_path / "missing.yaml"),
        lambda: picollm.inspect(tmp_path / "no-run"),
        lambda: picollm.noise(),
        lambda: picollm.generate(tmp_path, weights="latest"),
        lambda: picollm.sweep(ROOT / "experiments" / "quick.yaml", workers=0),
        lambda: picollm.sweep(ROOT / "experiments" / "smoke.yaml"),  # no search: block
        lambda: picollm.sweep(load_experiment(str(ROOT / "experiments" / "quick.yaml"), []), overrides="optim.lr=1"),
    ]
    for call in calls:
        with pytest.raises(PicoError) as err:
            call()
        assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="no saved weights"):
        picollm.generate(tmp_path)


# --- twice in one kernel: nothing leaks ----------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _children() -> set[int]:
    kids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        kids |= {int(pid) for pid in (task / "children").read_text().split()}
    return kids


def _resources() -> tuple[int, list[str], int]:
    gc.collect()
    return _open_fds(), sorted(t.name for t in threading.enumerate()), len(_children())


def test_train_twice_with_wandb_leaks_nothing(tmp_path: Path) -> None:
    import wandb

    overrides = [
        f"tracking.out_dir={tmp_path / 'runs'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "tracking.wandb=offline",
        "train.epochs=1",
        "train.max_steps_per_epoch=6",
    ]
    first = picollm.train(ROOT / "experiments" / "smoke.yaml", overrides)
    after_first = _resources()
    second = picollm.train(ROOT / "experiments" / "smoke.yaml", overrides)
    assert _resources() == after_first
    assert wandb.run is None
    assert first.run_dir != second.run_dir and second.summary["wandb_run_id"]


def test_sweep_twice_leaks_nothing_and_returns_a_study(tmp_path: Path) -> None:
    import wandb

    # figures: the first sweep imports matplotlib, as the second one's plots() does
    path = write_experiment(tmp_path, study={"n_trials": 2, "figures": True}, tracking={"wandb": "offline"})
    storage = f"sqlite:///{tmp_path}/s.db"
    handler = signal.getsignal(signal.SIGTERM)
    first = picollm.sweep(path, storage=storage, workers=1)
    del first
    after_first = _resources()
    result = picollm.sweep(path, storage=storage, n_trials=3, workers=1)  # resumes: one more trial
    assert signal.getsignal(signal.SIGTERM) is handler
    assert wandb.run is None
    assert len(result.trials) == 3 and list(result.trials.columns[:3]) == ["number", "state", "value"]
    assert result.best_config["optim"]["lr"] == pytest.approx(
        result.study.best_trial.params.get("optim.lr", result.best_config["optim"]["lr"])
    )
    assert picollm.load_config(result.best_yaml).to_dict() == result.best_config
    assert result.plots() and all(isinstance(fig, Figure) for fig in result.plots().values())
    assert "best: trial" in repr(result) and "<table" in result._repr_html_()
    del result
    assert _resources() == after_first


def test_interrupted_sweep_raises_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel interrupt in trial 1 stops the sweep, keeps trial 0 and lets the next call finish."""
    train_module = importlib.import_module("picollm.trainer")
    real_train = train_module.train
    calls = {"n": 0}

    def interrupted_second_trial(cfg, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_train(cfg, **kwargs)

    monkeypatch.setattr(train_module, "train", interrupted_second_trial)
    path = write_experiment(tmp_path, study={"n_trials": 3})
    storage = f"sqlite:///{tmp_path}/s.db"
    with pytest.raises(KeyboardInterrupt):
        picollm.sweep(path, storage=storage, workers=1)
    monkeypatch.setattr(train_module, "train", real_train)
    result = picollm.sweep(path, storage=storage, workers=1)
    states = list(result.trials["state"])
    assert states.count("COMPLETE") == 3 and states[0] == "COMPLETE" and states[1] == "FAIL"
    assert (tmp_path / "studies" / "t" / "trials.csv").is_file()


def test_interrupt_as_a_trial_starts_leaves_none_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between Optuna's ``ask`` and the objective: the kernel lives on, so no restart would fail that trial."""
    import optuna

    real_ask = optuna.Study.ask
    asked = {"n": 0}

    def ask_then_interrupt(self, *args, **kwargs):
        trial = real_ask(self, *args, **kwargs)
        asked["n"] += 1
        if asked["n"] == 2:
            raise KeyboardInterrupt
        return trial

    monkeypatch.setattr(optuna.Study, "ask", ask_then_interrupt)
    path = write_experiment(tmp_path, study={"n_trials": 2})
    storage = f"sqlite:///{tmp_path}/s.db"
    with pytest.raises(KeyboardInterrupt):
        picollm.sweep(path, storage=storage, workers=1)
    states = [t.state.name for t in optuna.load_study(study_name="t", storage=storage).trials]
    assert states == ["COMPLETE", "FAIL"]
    monkeypatch.setattr(optuna.Study, "ask", real_ask)
    assert list(picollm.sweep(path, storage=storage, workers=1).trials["state"]) == ["COMPLETE", "FAIL", "COMPLETE"]


def test_two_worker_sweep_from_a_notebook_kernel(tmp_path: Path) -> None:
    """In a real kernel ``__main__`` is the notebook's namespace, not a file: spawned workers need nothing from it."""
    import nbformat
    from nbclient import NotebookClient

    path = write_experiment(tmp_path, study={"n_trials": 4})
    cell = f"""
import os
import picollm

def defined_in_the_notebook():  # workers must not need to import this
    return 1

result = picollm.sweep({str(path)!r}, storage="sqlite:///{tmp_path}/s.db", workers=2)
pids = {{t.user_attrs["worker"].rpartition(":")[2] for t in result.study.trials}}
print("states", sorted(result.trials["state"]), "in the kernel", str(os.getpid()) in pids)
"""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()
    printed = "".join(out.get("text", "") for out in nb.cells[0].outputs if out.output_type == "stream")
    assert "states ['COMPLETE', 'COMPLETE', 'COMPLETE', 'COMPLETE'] in the kernel False" in printed


def test_kernel_interrupt_stops_a_sweep_cleanly_and_the_next_call_resumes(tmp_path: Path) -> None:
    """A real kernel interrupt (SIGINT) mid-sweep: no trial left RUNNING, exports written, then resume."""
    import optuna
    from jupyter_client.manager import start_new_kernel

    path = write_experiment(tmp_path, study={"n_trials": 50})
    storage = f"sqlite:///{tmp_path}/s.db"
    call = f"import picollm\nresult = picollm.sweep({str(path)!r}, storage={storage!r}, n_trials={{n}}, workers=1)"
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(ROOT))

    def reply_to(msg_id: str) -> dict:
        while (msg := kc.get_shell_msg(timeout=300))["parent_header"].get("msg_id") != msg_id:
            pass
        return msg["content"]

    try:
        running = kc.execute(call.format(n=50))
        while "trial   1" not in kc.get_iopub_msg(timeout=300)["content"].get("text", ""):
            pass  # interrupt once two trials finished, while later ones are training
        km.interrupt_kernel()
        reply = reply_to(running)
        assert (reply["status"], reply.get("ename")) == ("error", "KeyboardInterrupt")
        study = optuna.load_study(study_name="t", storage=storage)
        states = [t.state.name for t in study.trials]
        assert "RUNNING" not in states and states.count("COMPLETE") >= 2
        assert (tmp_path / "studies" / "t" / "trials.csv").is_file()
        done = states.count("COMPLETE")
        reply = reply_to(kc.execute(call.format(n=done + 1)))
        assert reply["status"] == "ok", reply
        states = [t.state.name for t in optuna.load_study(study_name="t", storage=storage).trials]
        assert states.count("COMPLETE") == done + 1 and "RUNNING" not in states
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
