"""A Markdown report (MyST figures) that gathers the noise analysis, rankings, best config and samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from picollm.analysis.compare import compare_lines, compare_runs
from picollm.analysis.figures import compare_figure, false_increase_figure, noise_figure
from picollm.analysis.noise import analyze_noise, overall_verdict
from picollm.analysis.records import RunHistory
from picollm.fileio import atomic_write_text


def _figure(path: Path, caption: str, label: str) -> str:
    return f"```{{figure}} {path.name}\n:name: {label}\n:width: 90%\n\n{caption}\n```\n"


def _samples(run: RunHistory) -> str | None:
    if run.run_dir is None or not (run.run_dir / "samples.jsonl").is_file():
        return None
    lines = [line for line in (run.run_dir / "samples.jsonl").read_text().splitlines() if line.strip()]
    if not lines:
        return None
    last = json.loads(lines[-1])
    return f"{last['prompt']}{last['text']}"


def write_report(name: str, runs: list[RunHistory], out_dir: Path, header: list[str] | None = None) -> Path:
    """Write ``report.md`` and its figures into ``out_dir``; returns the report path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"# picollm report: {name}\n"]
    if header:
        parts.append("## The study\n\n" + "\n".join(f"- {line}" for line in header) + "\n")
    long_enough = [run for run in runs if len(run.losses) >= 8]
    results = [analyze_noise(run, simulate=len(runs) <= 4) for run in long_enough]
    if results:
        parts.append("## Is an epoch-to-epoch increase real?\n\n" + overall_verdict(results) + "\n")
        fig = false_increase_figure(results, out_dir / "false_increase.png")
        parts.append(
            _figure(
                fig,
                "Probability that an epoch's mean training loss rises although the true loss "
                "falls, by steps per epoch.",
                "fig-false-increase",
            )
        )
        for r, run in list(zip(results, long_enough, strict=True))[:6]:
            fig = noise_figure(run, r, out_dir / f"noise_{run.name}.png")
            parts.append(
                f"### {run.name}\n\n{r['verdict']}\n\n" + _figure(fig, f"Losses of {run.name}.", f"fig-{run.name}")
            )
    if len(runs) >= 2:
        try:
            cmp = compare_runs(runs)
        except ValueError:
            cmp = None
        if cmp:
            fig = compare_figure(cmp["runs"], list(cmp["metrics"]), out_dir / "compare.png")
            parts.append(
                "## Which number ranks configurations?\n\n```text\n" + "\n".join(compare_lines(cmp)) + "\n```\n"
            )
            parts.append(_figure(fig, "Each training-loss metric against the validation loss.", "fig-compare"))
    best = min((r for r in runs if r.val_epoch_loss() is not None), key=lambda r: r.val_epoch_loss(), default=None)
    if best is not None:
        baseline = best.summary.get("unigram_val_loss")
        parts.append(
            f"## Best run\n\n`{best.name}`: validation loss {best.val_epoch_loss():.4f} nats"
            + (f" against the unigram (counting) baseline {baseline:.4f}" if baseline else "")
            + ".\n"
        )
        sample = _samples(best)
        if sample:
            parts.append(f"Sample:\n\n> {sample!r}\n")
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(parts))
    atomic_write_text(out_dir / "noise.json", json.dumps({"runs": results}, indent=1, default=_json_default))
    return path


def _json_default(value: Any) -> Any:
    return str(value)
