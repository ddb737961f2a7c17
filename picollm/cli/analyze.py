"""Read loss curves honestly: noise statistics, metric rankings, model diagnostics and reports.

python analyze.py noise results/runs/<a> results/runs/<b>        # is an epoch "increase" real?
python analyze.py compare --study quick                          # which number ranks configs reliably?
python analyze.py inspect results/runs/<a> --position 20         # what does the model see and predict?
python analyze.py transfer --study quick                         # does the cheap budget predict the target?
python analyze.py report --study quick --html                    # all of it as Markdown (+ one HTML file)
python analyze.py dashboard --study quick                        # optuna-dashboard on localhost, with the figures
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from picollm.analysis import records
from picollm.analysis.render import write_report
from picollm.api import inspect
from picollm.errors import ConfigError, DataError, mask_url
from picollm.fileio import atomic_write_json
from picollm.storage_url import add_storage_argument

EPILOG = """\
Sources (noise, compare, report): run record folders (results/runs/<run_id>), offline W&B files
(run-<id>.wandb), a sweep (--study NAME [--storage URL]) or W&B (--wandb ENTITY/PROJECT [--group G]).
Losses are nats per token. A truncated last line in metrics.jsonl (a crash mid-write) is skipped with
a warning.
"""


def add_sources(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="*", help="run record folders or offline .wandb files")
    parser.add_argument("--study", help="analyse the completed trials of this sweep")
    add_storage_argument(parser)
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read run histories through the W&B API")
    parser.add_argument("--group", help="with --wandb: only this group (a sweep's study name)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python analyze.py",
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    noise = sub.add_parser("noise", help="step noise, epoch means with intervals, false-increase probability")
    add_sources(noise)
    noise.add_argument("--out", default="results/analysis/noise", help="folder for noise.json and figures")
    noise.add_argument("--no-simulation", action="store_true", help="skip the Monte-Carlo check (faster)")
    compare = sub.add_parser("compare", help="rank runs by noisy and steady metrics; the cost of a noisy pick")
    add_sources(compare)
    compare.add_argument("--last-n", type=int, default=50, help="steps in the 'mean of the last N' metric")
    compare.add_argument("--out", default="results/analysis/compare")
    inspect = sub.add_parser("inspect", help="decoded input, top-k next tokens, token frequencies, warnings")
    inspect.add_argument("run_dir")
    inspect.add_argument("--batch", type=int, default=0, help="validation window index")
    inspect.add_argument("--position", type=int, help="position in the window (default: the last)")
    inspect.add_argument("--top", type=int, default=10)
    inspect.add_argument("--weights", choices=("best", "final"), default="best")
    inspect.add_argument("--out", default="results/analysis/inspect")
    transfer = sub.add_parser(
        "transfer",
        help="does the ranking at the cheap budget predict the ranking at the target budget?",
        description="For each token count a study's trials reported a loss at (and the target): Spearman's rank "
        "correlation with the configurations' target losses and the regret of picking there, with 95% bootstrap "
        "intervals over configurations and their confirmation seeds.",
    )
    transfer.add_argument("--study", help="the sweep to read (required)")
    add_storage_argument(transfer)
    transfer.add_argument("--out", help="folder for transfer.json and transfer.png (default: results/reports/<study>)")
    transfer.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    report = sub.add_parser(
        "report", help="a Markdown (and --html: one self-contained HTML) report in results/reports/<name>/"
    )
    add_sources(report)
    report.add_argument("--name", help="report name (default: the study name or 'runs')")
    report.add_argument("--out", help="folder for the report and its figures (default: results/reports/<name>)")
    report.add_argument("--html", action="store_true", help="also one self-contained report.html (figures inlined)")
    dashboard = sub.add_parser(
        "dashboard",
        help="serve a study with optuna-dashboard on localhost, with its figures and run-record links",
        description="optuna-dashboard (history, importances, parallel coordinates, slices, trial table) for the "
        "study in --storage, plus its figures as artifacts in the study's note and, on each trial, links to its "
        "run record and W&B run. Notes and artifacts are saved into the study (figures only once per content).",
    )
    add_storage_argument(dashboard)
    dashboard.add_argument("--study", help="publish figures and notes for this study only (default: every study)")
    dashboard.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (default 8080; 0: any free)")
    dashboard.add_argument("--artifacts", default="results/artifacts", help="where the uploaded figures are kept")
    dashboard.add_argument("--reports", default="results/reports", help="where `analyze.py report` wrote reports")
    return parser


def load_sources(args: argparse.Namespace) -> list[Any]:
    given = sum(bool(x) for x in (args.runs, args.study, args.wandb))
    if given != 1:
        raise ConfigError("give exactly one source: run folders, --study NAME, or --wandb ENTITY/PROJECT")
    if args.study:
        return records.load_study_runs(records.load_study(args.study, args.storage))
    if args.wandb:
        return records.load_wandb_project(args.wandb, args.group)
    runs = []
    for path in args.runs:
        if not Path(path).exists():
            raise DataError(f"no such run record: {path}")
        runs.append(records.load_wandb_file(path) if path.endswith(".wandb") else records.load_run_dir(path))
    return runs


def cmd_noise(args: argparse.Namespace) -> int:
    from picollm.analysis.figures import false_increase_figure, noise_figure  # matplotlib: --help stays light
    from picollm.analysis.noise import analyze_noise, overall_verdict  # scipy: --help stays light
    from picollm.analysis.smoothing import window_analysis, window_line  # scipy: --help stays light

    runs = load_sources(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        results = [analyze_noise(run, simulate=not args.no_simulation) for run in runs]
    except ValueError as exc:
        raise DataError(str(exc)) from None
    figures = [noise_figure(run, r, out / f"noise_{run.name}.png") for run, r in zip(runs, results, strict=True)]
    figures.append(false_increase_figure(results, out / "false_increase.png"))
    payload = {**results[0], "runs": results} if len(results) == 1 else {"runs": results}
    payload["verdict"] = overall_verdict(results)
    windows = [window_analysis(run) for run in runs]
    payload["running_average"] = windows
    atomic_write_json(out / "noise.json", payload)
    for r, w in zip(results, windows, strict=True):
        print(f"\n{r['run']}: sigma {r['step_noise_sigma']:.4f}, lag-1 autocorrelation {r['lag1_autocorrelation']:.2f}")
        print("  " + window_line(w))
        print("  epoch  mean     95% interval          steps")
        for e in r["epochs"][:12]:
            print(f"  {e['epoch']:5d}  {e['mean']:.4f}  [{e['ci_low']:.4f}, {e['ci_high']:.4f}]  {e['n_steps']:6d}")
        if len(r["epochs"]) > 12:
            print(f"  ... {len(r['epochs']) - 12} more epochs in noise.json")
    print("\nverdict:")
    for r in results:
        print(f"  {r['verdict']}")
    if len(results) > 1:
        print(f"  {payload['verdict']}")
    print(f"\nwrote {out / 'noise.json'} and {len(figures)} figures in {out}/")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from picollm.analysis.compare import compare_lines, compare_runs  # scipy: --help stays light
    from picollm.analysis.figures import compare_figure  # matplotlib: --help stays light

    try:
        result = compare_runs(load_sources(args), args.last_n)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "compare.json", result)
    figure = compare_figure(result["runs"], list(result["metrics"]), out / "compare.png")
    print("\n".join(compare_lines(result)))
    print(f"wrote {out / 'compare.json'} and {figure}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from picollm.analysis.figures import save_figure  # matplotlib: --help stays light

    result = inspect(args.run_dir, args.position, args.top, args.batch, args.weights)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "inspect.json", result.data)
    for figure, name in zip(result.figures, ("top_k.png", "token_frequencies.png"), strict=True):
        save_figure(figure, out / name)
    print(repr(result))
    print(f"wrote {out}/inspect.json, top_k.png, token_frequencies.png")
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    from picollm.analysis.figures import transfer_figure  # matplotlib: --help stays light
    from picollm.analysis.transfer import transfer_analysis, transfer_lines  # scipy: --help stays light

    if not args.study:
        raise ConfigError("transfer needs --study NAME (and --storage URL for a study outside the default storage)")
    if args.bootstrap < 100:
        raise ConfigError(f"--bootstrap must be at least 100 for a 95% interval, got {args.bootstrap}")
    result = transfer_analysis(records.load_study(args.study, args.storage), args.bootstrap)
    out = Path(args.out or f"results/reports/{args.study}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "transfer.json", result)
    written = [out / "transfer.json"]
    if any(row["spearman"] is not None for row in result["rows"]):
        written.append(transfer_figure(result, out / "transfer.png"))
    print("\n".join(transfer_lines(result)))
    print(f"wrote {' and '.join(map(str, written))}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from picollm.analysis.sections import build_report  # matplotlib, scipy: --help stays light

    study = records.load_study(args.study, args.storage) if args.study else None
    runs = records.load_study_runs(study) if study is not None else load_sources(args)
    name = args.name or args.study or args.group or "runs"
    try:
        report = build_report(name, runs, Path(args.out or f"results/reports/{name}"), study, html=args.html)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    for path in write_report(report, html=args.html):
        print(f"wrote {path}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from picollm.analysis.dashboard import make_server  # matplotlib, scipy: --help stays light

    storage, names = records.open_studies(args.storage, args.study)
    server = make_server(storage, names, args.port, Path(args.artifacts), Path(args.reports))
    where = f"http://127.0.0.1:{server.server_port}/dashboard/"
    # Ctrl-C stops the server whatever this process inherited (a blocked SIGINT) or an import installed.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(f"optuna-dashboard for {', '.join(names)} at {where} (press Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("dashboard stopped", flush=True)
    finally:
        server.server_close()
    return 0


COMMANDS = {
    "noise": cmd_noise,
    "compare": cmd_compare,
    "inspect": cmd_inspect,
    "transfer": cmd_transfer,
    "report": cmd_report,
    "dashboard": cmd_dashboard,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sys.argv = [mask_url(arg) for arg in sys.argv]  # W&B and run records copy argv: no password in it
    return COMMANDS[args.command](args)
