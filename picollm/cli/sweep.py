"""Hyperparameter sweeps with Optuna over picollm's trainer.

python sweep.py --config experiments/quick.yaml                 # run (or resume) the study
python sweep.py status --config experiments/quick.yaml          # a table of its trials
python sweep.py export --config experiments/quick.yaml          # re-export results/studies/<study>/
python sweep.py launch --config experiments/quick.yaml --workers 8   # a Slurm job array (launcher: block)
python sweep.py confirm --config experiments/quick.yaml         # re-train the top configs with fresh seeds
python sweep.py delete --study quick --files                    # start a study over (asks first)
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from typing import TYPE_CHECKING, Any

from picollm.api import run_study
from picollm.config import add_override_argument
from picollm.errors import EXIT_INTERRUPTED, ConfigError, mask_url
from picollm.storage_url import add_storage_argument

if TYPE_CHECKING:
    from picollm.sweeps.study import CappedStudy

COMMANDS = ("run", "status", "export", "launch", "confirm", "delete")

EPILOG = """\
An experiment file is a trainer config plus two blocks:
  search:  dotted config keys and their distributions, e.g.
             optim.lr: {type: float, low: 1.0e-4, high: 3.0e-2, log: true}
             model.k: {type: int, low: 1, high: 5, when: {model.type: kgram}}
  study:   name, metric, sampler (tpe|random|grid|cmaes|qmc|sobol), pruner
           (median|hyperband|successive_halving|halving|patient|none), budget_tokens,
           target_tokens (rungs scored by branched decays up to it), n_trials, seed,
           max_tokens (what the whole study may train; n_trials: null lets it decide).
           Options go with the name: sampler: {name: sobol, tpe_after: 32} (Sobol points, then
           Optuna's multivariate TPE after the first 32 fresh trials; experiments/target.yaml)

Trials are ranked by study.metric (default final_val_loss) on one fixed validation set.

confirm:  (optional) top: 3, seeds: 3 -- after the sweep, re-train the top complete configs and
           the baseline with fresh seeds; best.yaml becomes the confirmed winner, with its 95%
           interval and paired comparisons. `sweep.py confirm --top K --seeds N` does it on demand.

--n-trials is the study's total of finished trials: run the same command again to resume an
interrupted sweep. A study answers one question: a run whose data, budget or unsearched settings
differ from the study's (or that --set's a searched key) is refused with one line saying what
differs. The data and the base config are checked before a study is created, so a mistake
there leaves nothing behind. To start a study over: sweep.py delete --study NAME --files (it
asks first; --yes without a terminal; --files removes its results/studies/NAME/ too, which a
new study of that name would not write over, nor one of that name in another storage). A resumed
sweep runs its failed baseline and the trials Ctrl-C stopped again, with their parameters.
For several machines, give every machine the same --storage postgresql://user@host/db and the
same command; --workers N runs N processes on this machine (worker i on cuda:i % GPUs).
Set the storage in PICOLLM_STORAGE to keep a password out of your shell history.

launch sends --workers N copies of the same worker to Slurm as one job array (submitit), set by
the file's launcher: block (name: slurm|local, partition, timeout_min, cpus_per_task, gpus_per_node,
tasks_per_node, mem_gb, array_parallelism, sbatch: {account: ..., qos: ...}, setup: [shell lines]),
e.g. --set launcher.partition=gpu. It needs a PostgreSQL storage, which jobs read from
PICOLLM_STORAGE; preempted or timed-out jobs are requeued and their trials retried.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python sweep.py",
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", nargs="?", choices=COMMANDS, default="run", help="default: run")
    parser.add_argument("--config", help="experiment YAML with search: and study: blocks")
    parser.add_argument("--n-trials", type=int, help="total finished trials the study should reach")
    parser.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    add_storage_argument(parser)
    parser.add_argument("--study-name", "--study", help="override study.name; delete: the study to delete")
    parser.add_argument(
        "--workers",
        type=int,
        help="worker processes on this machine (default: one per core, up to 8; one per GPU with CUDA), for the trials "
        "and the confirmation runs; launch: jobs",
    )
    parser.add_argument("--wait", action="store_true", help="launch: follow the jobs to the end, then export")
    parser.add_argument("--top", type=int, help="confirm: complete configs to re-train (default: confirm.top, 3)")
    parser.add_argument("--seeds", type=int, help="confirm: fresh seeds per config (default: confirm.seeds, 3)")
    parser.add_argument("--yes", action="store_true", help="delete: do not ask (needed without a terminal)")
    parser.add_argument("--files", action="store_true", help="delete: remove the study's results folder too")
    add_override_argument(parser, "override any key, e.g. optim.lr=3e-4 or study.sampler=random (repeatable)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sys.argv = [mask_url(arg) for arg in sys.argv]  # W&B and run records copy argv: no password in it
    if (args.workers is not None and args.workers < 1) or (args.n_trials is not None and args.n_trials < 1):
        raise ConfigError("--workers and --n-trials must be >= 1")
    # optuna and torch: sweep.py --help and a mistyped option stay quick
    from picollm.sweeps import best_value, load_experiment, open_study, report_lines, trial_line
    from picollm.sweeps.export import export_study, exported
    from picollm.sweeps.report import in_finishing_order

    if args.command == "delete":
        return delete_command(args)
    exp = load_experiment(args.config, args.overrides, args.study_name, args.n_trials)
    if args.command == "launch":
        from picollm.sweeps.launch import launch_command  # submitit: sweep.py --help stays light

        if args.workers is None:
            raise ConfigError("sweep.py launch needs --workers N: the number of jobs to submit")
        return launch_command(exp, args)
    if args.command == "run":
        result = run_study(exp, args.storage, workers=args.workers, timeout_s=args.timeout)
        print("\n".join([*result.report(), *result.notes]))
        runs = exp.base.tracking.out_dir
        print(f"results: {result.folder}/ ({exported(exp.study.figures)}); run records in {runs}/")
        return EXIT_INTERRUPTED if result.interrupted else 0
    study = open_study(exp, args.storage, create=False)
    if args.command == "confirm":
        print("\n".join(confirm_command(study, exp, args)))
        return 0
    if args.command == "status":
        for trial in in_finishing_order(study.trials):
            print(trial_line(trial, best_value(study, upto=trial)))
        print("\n".join(report_lines(study)))
        return 0
    # best.yaml stays the confirmed winner, if there is one
    folder, notes = export_study(study, exp.study.out_dir, figures=exp.study.figures)
    print("\n".join([*notes, f"exported to {folder}/"]))
    return 0


def confirm_command(study: CappedStudy, exp: Any, args: argparse.Namespace) -> list[str]:
    """`sweep.py confirm`: the experiment's confirm: block (or the defaults), with --top/--seeds on top."""
    from picollm.sweeps.experiment import ConfirmSettings, check_confirm  # optuna: sweep.py --help stays quick
    from picollm.sweeps.export import confirm_and_export  # optuna: sweep.py --help stays quick

    s = dataclasses.replace(exp.confirm or ConfirmSettings())
    s.top = args.top if args.top is not None else s.top
    s.seeds = args.seeds if args.seeds is not None else s.seeds
    check_confirm(s)
    return confirm_and_export(study, s, exp.study.out_dir, args.workers, exp.study.figures)


def _confirmed(question: str) -> bool:
    """Ask on the terminal; without one, refuse (a script says --yes)."""
    if not sys.stdin.isatty():
        raise ConfigError("sweep.py delete asks before it deletes, and there is no terminal to ask on: add --yes")
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def delete_command(args: argparse.Namespace) -> int:
    """`sweep.py delete --study NAME`: the study out of the storage (--files: its folder too); says what it keeps."""
    from picollm.sweeps import load_experiment  # optuna: sweep.py --help stays quick
    from picollm.sweeps.study import delete_stored, find_study  # optuna: sweep.py --help stays quick

    name = args.study_name or (load_experiment(args.config, args.overrides).study.name if args.config else None)
    if not name:
        raise ConfigError("sweep.py delete needs --study NAME (or --config, whose study.name it deletes)")
    found = find_study(name, args.storage)
    folder = found.export_dir if args.files else None
    what = f"study {name!r} ({found.summary()}) from {mask_url(args.storage)}" + (f" and {folder}/" if folder else "")
    if not args.yes and not _confirmed(f"delete {what}?"):
        print("nothing was deleted")
        return 1
    delete_stored(found)
    if folder is not None:
        shutil.rmtree(folder)
    kept = [f"the run records in {found.runs_dir}/ (named {name}-t<N>-...)", "any W&B runs"]
    if found.export_dir is not None and folder is None:
        kept.append(f"{found.export_dir}/ (--files removes it; a new study named {name!r} will not write over it)")
    if found.other_dir is not None:
        kept.append(f"{found.other_dir}/ (another study's results)")
    print(f"deleted {what}")
    print(f"kept: {'; '.join(kept)}")
    return 0
