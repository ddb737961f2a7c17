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
import sys

from picollm.api import delete_sweep, load_sweep, run_study
from picollm.config import add_override_argument
from picollm.errors import EXIT_INTERRUPTED, ConfigError, mask_url
from picollm.storage_url import add_storage_argument

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
    if args.command == "delete":
        return delete_command(args)
    if args.config is None:
        command = "" if args.command == "run" else f" {args.command}"
        raise ConfigError(f"sweep.py{command} needs --config experiments/<name>.yaml")
    if args.command == "launch":
        return launch_command(args)
    if args.command == "run":
        return run_command(args)
    result = load_sweep(args.config, args.storage, args.overrides, args.study_name, args.n_trials)
    commands = {
        "status": result.status,
        "export": result.export,
        "confirm": lambda: result.confirm(args.top, args.seeds, args.workers),
    }
    print("\n".join(commands[args.command]()))
    return 0


def run_command(args: argparse.Namespace) -> int:
    """`sweep.py` (run): the study to --n-trials, its report, and where its files went."""
    from picollm.sweeps.export import exported  # optuna: sweep.py --help stays quick

    result = run_study(
        args.config, args.storage, args.n_trials, args.workers, args.overrides, args.study_name, args.timeout
    )
    print("\n".join([*result.report(), *result.notes]))
    written = exported(result.experiment.study.figures)
    print(f"results: {result.folder}/ ({written}); run records in {result.experiment.base.tracking.out_dir}/")
    return EXIT_INTERRUPTED if result.interrupted else 0


def launch_command(args: argparse.Namespace) -> int:
    """`sweep.py launch`: --workers Slurm jobs (the file's launcher: block) that each run the same worker."""
    from picollm.sweeps import load_experiment  # optuna: sweep.py --help stays quick
    from picollm.sweeps.launch import launch_command as launch  # submitit: sweep.py --help stays light

    exp = load_experiment(args.config, args.overrides, args.study_name, args.n_trials)
    if args.workers is None:
        raise ConfigError("sweep.py launch needs --workers N: the number of jobs to submit")
    return launch(exp, args)


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

    name = args.study_name or (load_experiment(args.config, args.overrides).study.name if args.config else None)
    if not name:
        raise ConfigError("sweep.py delete needs --study NAME (or --config, whose study.name it deletes)")
    lines = delete_sweep(
        name, args.storage, args.files, ask=None if args.yes else lambda what: _confirmed(f"delete {what}?")
    )
    print("\n".join(lines or ["nothing was deleted"]))
    return 0 if lines else 1
