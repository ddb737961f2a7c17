"""Metrics: one interface, two sinks, the local run record (always) and W&B (when enabled).

Training never waits on W&B, which works on its own thread; a W&B failure costs one warning and
``wandb_complete: false`` in summary.json, and the local record (docs/run-record.md) keeps everything.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import platform
import queue
import secrets
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from picollm.config import Config, save_config
from picollm.errors import PicoError, mask_url
from picollm.fileio import atomic_write_bytes, atomic_write_json
from picollm.wandb_offline import has_exit_record

# Each metric's x-axis in W&B; its summary is the last value logged, the run's end.
STEP_METRICS = ("train/loss", "lr", "tokens", "tokens_per_s", "grad_norm", "val/loss", "val/loss_stderr")
EPOCH_METRICS = (
    "val/epoch_loss",
    "val/epoch_loss_stderr",
    "train/epoch_loss",
    "train/epoch_loss_stderr",
    "train/epoch_steps",
)
# Validation losses whose lowest value so far W&B also gets, as ``best/<key>`` (a curve; its summary is the minimum).
BEST_OF = ("val/loss", "val/epoch_loss")
# How long one W&B call may take before W&B counts as stuck and the run goes on without it (override for tests).
WANDB_TIMEOUT_S = float(os.environ.get("PICOLLM_WANDB_TIMEOUT_S", "60"))
# The Optuna state a trial's run ends in, by the run's status: W&B shows it next to the trial number.
TRIAL_STATE = {"finished": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL", "interrupted": "FAIL"}

PROGRESS_EVERY_S = 10.0  # a sweep's running trial says how far it is at most this often


def new_run_id(prefix: str = "") -> str:
    """Opaque and unique: a timestamp and random hex, never hyperparameters to parse back."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{prefix}{stamp}-{secrets.token_hex(3)}"


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("torch", "numpy", "tiktoken", "datasets", "wandb", "optuna"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    return versions


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to top-level dotted keys, as W&B's panels and the search space name them."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def wandb_config(cfg: Config, extra: dict[str, Any]) -> dict[str, Any]:
    """Every trainer setting and the run's context as dotted keys; context named like a section gets ``_summary``."""
    settings = cfg.to_dict()
    context = {f"{k}_summary" if k in settings else k: v for k, v in extra.items() if k != "argv"}
    trial = context.get("trial")
    if isinstance(trial, dict) and "params" in trial:  # the params are the config's own dotted keys
        context["trial"] = {k: v for k, v in trial.items() if k != "params"} | {"searched": sorted(trial["params"])}
    return flatten({**settings, **context})


def trial_summary(extra: dict[str, Any], status: str | None) -> dict[str, Any]:
    """For a sweep trial's run: its number and Optuna state, so W&B tables sort and filter by them."""
    trial = extra.get("trial")
    if not isinstance(trial, dict) or "number" not in trial:
        return {}
    return {"trial_number": trial["number"], "trial_state": TRIAL_STATE.get(str(status), "FAIL")}


def wait_for_run_file(run: Any) -> None:
    """Return once a finished W&B run's file holds its exit record; TimeoutError after ``WANDB_TIMEOUT_S``."""
    path = Path(run.settings.sync_file)
    deadline, pause = time.monotonic() + WANDB_TIMEOUT_S, 0.01
    while not has_exit_record(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path.name} has no exit record after {WANDB_TIMEOUT_S:g}s")
        time.sleep(pause)
        pause = min(2 * pause, 0.5)


class Sink(Protocol):
    def log(self, row: dict[str, Any]) -> None: ...
    def log_sample(self, row: dict[str, Any]) -> None: ...
    def finish(self, summary: dict[str, Any]) -> None: ...


RECORD_FILES = ("metrics.jsonl", "samples.jsonl")


class JsonlSink:
    """The local record: appends rows as JSON lines, flushed so a crash loses at most one row."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.lengths = {name: _count_lines(run_dir / name) for name in RECORD_FILES}
        # Open for the run's lifetime (closed in finish), not per row: a step must not pay for an open().
        self._metrics = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self._samples = open(run_dir / "samples.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def log(self, row: dict[str, Any]) -> None:
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        self.lengths["metrics.jsonl"] += 1

    def log_sample(self, row: dict[str, Any]) -> None:
        self._samples.write(json.dumps(row) + "\n")
        self._samples.flush()
        self.lengths["samples.jsonl"] += 1

    def close_files(self) -> None:
        self._metrics.close()
        self._samples.close()

    def finish(self, summary: dict[str, Any]) -> None:
        self.close_files()
        atomic_write_json(self.run_dir / "summary.json", summary)


def read_summary(run_dir: str | Path | None) -> dict[str, Any]:
    """A run record's ``summary.json``; empty where the record is on another machine, unfinished or unreadable."""
    try:
        return json.loads(Path(str(run_dir), "summary.json").read_text()) if run_dir else {}
    except (OSError, ValueError):
        return {}


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as file:
            return sum(1 for _ in file)
    except FileNotFoundError:
        return 0


def keep_first_lines(source: Path, target: Path, lines: int) -> None:
    """``target`` as the first ``lines`` lines of ``source``: a record's rows up to a checkpoint."""
    kept = b"".join(itertools.islice(source.read_bytes().splitlines(keepends=True), lines)) if source.is_file() else b""
    atomic_write_bytes(target, kept)


def wandb_credentials_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def resolve_wandb_mode(setting: str) -> str:
    """``auto``: WANDB_MODE if set, else online with credentials, else offline (never needs a key)."""
    if setting != "auto":
        return setting
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("online", "offline", "disabled"):
        return env
    if env == "dryrun":
        return "offline"
    return "online" if wandb_credentials_present() else "offline"


class WandbSink:
    """W&B behind the sink interface, on its own worker thread so training never waits for it.

    :meth:`finish` returns once W&B holds the whole run. W&B is stuck only when one call has not answered within
    ``WANDB_TIMEOUT_S``; an error or a stuck call costs one warning and leaves :attr:`complete` False.
    """

    def __init__(self, cfg: Config, mode: str, run_id: str, run_dir: Path, config: dict[str, Any]) -> None:
        self.run: Any = None
        self.run_id: str | None = run_id
        self.url: str | None = None  # the run's page, online only (the dashboard links to it)
        self.mode = mode
        self.rows: list[list[Any]] = []
        self.error: str | None = None
        self.complete = False  # True once W&B holds the whole run
        self._warned = False
        self._best: dict[str, float] = {}
        self._call: tuple[str, float] | None = None  # the call in hand and when it began, for finish's watchdog
        self._queue: queue.Queue[tuple[str, Callable[[], None] | None]] = queue.Queue()
        # A daemon: a stuck W&B call must not keep the process alive once the run has ended without it.
        self._thread = threading.Thread(target=self._work, name="wandb-sink", daemon=True)
        self._thread.start()
        self._queue.put(("init", lambda: self._init(cfg, mode, run_id, run_dir, config)))

    def _init(self, cfg: Config, mode: str, run_id: str, run_dir: Path, config: dict[str, Any]) -> None:
        import wandb

        t = cfg.tracking
        settings = wandb.Settings(silent=True, init_timeout=WANDB_TIMEOUT_S, console="off")
        self.run = wandb.init(
            project=t.project,
            entity=t.entity,
            group=t.group,
            job_type=t.job_type,
            name=t.name or run_id,
            tags=t.tags or None,
            config=config,
            id=run_id,
            resume="allow",  # a run resumed from a checkpoint goes on in the same W&B run
            dir=str(run_dir),
            mode=mode,
            settings=settings,
            reinit="create_new",
        )
        self.run.define_metric("step")
        self.run.define_metric("epoch")
        axis = dict.fromkeys(STEP_METRICS, "step") | dict.fromkeys(EPOCH_METRICS, "epoch")
        for key, step_metric in axis.items():
            self.run.define_metric(key, step_metric=step_metric)
        for key in BEST_OF:
            self.run.define_metric(f"best/{key}", step_metric=axis[key])
        resumed_at = config.get("resumed_at_step")
        if resumed_at is not None:  # W&B's rewind is a private preview, so say it where the charts are read
            self.run.notes = (
                f"resumed from a checkpoint at step {resumed_at}: the steps the killed sitting logged after it appear "
                "twice in the charts; the run record's metrics.jsonl holds them once"
            )
            self.run.summary["resumed_at_step"] = resumed_at

    def _work(self) -> None:
        while True:
            kind, call = self._queue.get()
            if call is None:
                return
            if self.error is None:
                self._call = (kind, time.monotonic())
                try:
                    call()
                except Exception as exc:  # W&B must never take training down with it
                    self.error = f"W&B {kind} failed ({type(exc).__name__}: {str(exc)[:200]})"
                    self._close_quietly()
                finally:
                    self._call = None

    def _close_quietly(self) -> None:
        with contextlib.suppress(Exception):
            if self.run is not None:
                self.run.finish(exit_code=1)

    def _warn_once(self) -> None:
        if self.error and not self._warned:
            self._warned = True
            self.run_id = None
            warnings.warn(
                f"{self.error}; this run's W&B record is incomplete (summary.json: wandb_complete false), "
                "its local record has everything",
                stacklevel=3,
            )

    def note_best(self, row: dict[str, Any]) -> None:
        """Keep the lowest value so far of each validation loss ``row`` holds."""
        for key in BEST_OF:
            if row.get(key) is not None:
                self._best[key] = min(row[key], self._best.get(key, math.inf))

    def _with_best(self, row: dict[str, Any]) -> dict[str, Any]:
        """``row`` plus ``best/<key>``, the lowest value so far, for each validation loss it holds."""
        self.note_best(row)
        return row | {f"best/{key}": self._best[key] for key in BEST_OF if row.get(key) is not None}

    def log(self, row: dict[str, Any]) -> None:
        self._warn_once()
        if self.error is None:
            row = self._with_best(row)
            self._queue.put(("log", lambda: self.run.log(row)))

    def log_sample(self, row: dict[str, Any]) -> None:
        self._warn_once()
        if self.error is not None:
            return
        self.rows.append([row["step"], row["prompt"], row["text"]])
        rows = list(self.rows)

        def log_table() -> None:
            import wandb

            self.run.log({"samples": wandb.Table(columns=["step", "prompt", "text"], data=rows)})

        self._queue.put(("log", log_table))

    def finish(self, summary: dict[str, Any]) -> None:
        def close() -> None:
            nested_ok = ("time_breakdown",)  # W&B shows it as time_breakdown.<phase>
            self.run.summary.update({k: v for k, v in summary.items() if not isinstance(v, dict) or k in nested_ok})
            if self.mode == "online":
                self.url = self.run.url
            self.run.finish(exit_code=0 if summary.get("status") in ("finished", "pruned") else 1)

        self._queue.put(("finish", close))
        self._queue.put(("file write", lambda: wait_for_run_file(self.run)))
        self._queue.put(("end", None))
        stuck = self._wait()
        if stuck is not None and self.error is None:
            self.error = f"W&B {stuck} did not answer within {WANDB_TIMEOUT_S:g}s"
        self.complete = self.error is None
        self._warn_once()

    def _wait(self) -> str | None:
        """Wait for the worker to end; the kind of the call that is stuck, if one is."""
        while self._thread.is_alive():
            self._thread.join(min(0.2, WANDB_TIMEOUT_S))
            call = self._call
            if call is not None and time.monotonic() - call[1] > WANDB_TIMEOUT_S:
                return call[0]
        return None


class Tracker:
    """The logger container the trainer talks to: fans every call out to the active sinks."""

    def __init__(
        self,
        cfg: Config,
        run_id: str,
        extra: dict[str, Any] | None = None,
        run_dir: Path | None = None,
        on_progress: Callable[[str], None] | None = None,
    ) -> None:
        self.run_id = run_id
        self.run_dir = run_dir or Path(cfg.tracking.out_dir) / run_id
        self.extra = extra or {}
        mode = resolve_wandb_mode(cfg.tracking.wandb)
        self.meta = {
            "run_id": run_id,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "argv": [mask_url(arg) for arg in sys.argv],
            "git_commit": git_commit(),
            "versions": library_versions(),
            "host": platform.node(),
            **self.extra,
            "wandb": {"mode": mode, "run_id": None if mode == "disabled" else run_id},
        }
        self.local = self._create_record(cfg, existing=run_dir is not None)
        self.sinks: list[Sink] = [self.local]
        self.wandb: WandbSink | None = None
        if mode != "disabled":  # last: nothing that can fail comes after W&B's thread starts
            self.wandb = WandbSink(cfg, mode, run_id, self.run_dir, wandb_config(cfg, self.extra))
            self.sinks.append(self.wandb)
        self.progress = ProgressLine(cfg.tracking.name or run_id, on_progress)

    def _create_record(self, cfg: Config, existing: bool = False) -> JsonlSink:
        """A new run folder with config.yaml, meta.json and open metric files, or one line saying why not."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=existing)
        except OSError as exc:
            raise PicoError(
                f"tracking.out_dir={cfg.tracking.out_dir}: cannot create the run folder {self.run_dir}: {exc.strerror}"
            ) from None
        try:
            save_config(cfg, self.run_dir / "config.yaml")
            atomic_write_json(self.run_dir / "meta.json", self.meta)
            return JsonlSink(self.run_dir)
        except OSError as exc:
            if not existing:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise PicoError(f"cannot write the run record in {self.run_dir}: {exc.strerror}") from None

    @classmethod
    def reopen(
        cls,
        cfg: Config,
        run_dir: Path,
        rows: dict[str, int],
        extra: dict[str, Any],
        on_progress: Callable[[str], None] | None = None,
    ) -> Tracker:
        """The record of a run that goes on from a checkpoint: later rows dropped; W&B resumes the same run id."""
        for name in RECORD_FILES:
            keep_first_lines(run_dir / name, run_dir / name, rows.get(name, 0))
        (run_dir / "summary.json").unlink(missing_ok=True)
        try:
            first = json.loads((run_dir / "meta.json").read_text())
        except (OSError, ValueError):
            first = {}
        tracker = cls(cfg, run_dir.name, extra=extra, run_dir=run_dir, on_progress=on_progress)
        resumed = {k: tracker.meta[k] for k in ("started", "argv", "git_commit", "host") if k in tracker.meta}
        first.setdefault("resumes", []).append({**resumed, "at_step": extra.get("resumed_at_step")})
        tracker.update_meta(**first)
        tracker.seed_best()
        return tracker

    def copy_rows(self, source: Path, rows: dict[str, int]) -> None:
        """Start this record with another's rows up to a checkpoint (a run extended from it)."""
        self.local.close_files()
        for name in RECORD_FILES:
            keep_first_lines(source / name, self.run_dir / name, rows.get(name, 0))
        self.local = JsonlSink(self.run_dir)
        self.sinks[0] = self.local
        self.seed_best()

    def seed_best(self) -> None:
        """W&B's ``best/<key>`` curves go on from the lowest value the kept rows hold, not from the resumed step."""
        if self.wandb is None or not (self.run_dir / "metrics.jsonl").is_file():
            return
        for line in (self.run_dir / "metrics.jsonl").read_text().splitlines():
            self.wandb.note_best(json.loads(line))

    def record_lengths(self) -> dict[str, int]:
        """Rows written so far per file: a checkpoint keeps them, so a resumed run drops what came after."""
        return dict(self.local.lengths)

    def update_meta(self, **fields: Any) -> None:
        self.meta.update(fields)
        atomic_write_json(self.run_dir / "meta.json", self.meta)

    def log(self, row: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.log(row)
        self.progress.update(row)

    def log_sample(self, step: int, prompt: str, text: str) -> None:
        for sink in self.sinks:
            sink.log_sample({"step": step, "prompt": prompt, "text": text})

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """W&B first, so the local summary says whether W&B holds the whole run, and if not, why; returns that
        summary, as ``summary.json`` holds it."""
        summary = {**summary, **trial_summary(self.extra, summary.get("status"))}
        if self.wandb is not None:
            self.wandb.finish(summary)
        summary = {**summary, "run_id": self.run_id, **self._wandb_outcome()}
        self.local.finish(summary)
        return summary

    def _wandb_outcome(self) -> dict[str, Any]:
        if self.wandb is None:
            return {"wandb_run_id": None}
        outcome = {"wandb_run_id": self.wandb.run_id, "wandb_complete": self.wandb.complete}
        if self.wandb.error:
            outcome["wandb_error"] = self.wandb.error
        if self.wandb.url:
            outcome["wandb_url"] = self.wandb.url
        return outcome


class ProgressLine:
    """At most one line every PROGRESS_EVERY_S seconds about a running run, to ``say`` (None: silent)."""

    def __init__(self, name: str, say: Callable[[str], None] | None = None) -> None:
        self.name, self.say = name, say
        self.last: dict[str, Any] = {}
        self.next_at = time.monotonic() + PROGRESS_EVERY_S

    def update(self, row: dict[str, Any]) -> None:
        if self.say is None:
            return
        self.last.update({k: v for k, v in row.items() if v is not None})
        if time.monotonic() < self.next_at:
            return
        self.next_at = time.monotonic() + PROGRESS_EVERY_S
        self.say(self.line())

    def line(self) -> str:
        fields = [f"step {self.last.get('step', 0)}", f"{self.last.get('tokens', 0):,} tokens"]
        for key in ("train/loss", "val/loss"):
            if key in self.last:
                fields.append(f"{key} {self.last[key]:.4f}")
        if "tokens_per_s" in self.last:
            fields.append(f"{self.last['tokens_per_s']:,.0f} tokens/s")
        return f"  {self.name}: " + ", ".join(fields)
