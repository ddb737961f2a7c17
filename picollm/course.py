"""The course script's flags (``pico.py``'s ``--block_size 32``, ...) as aliases of config keys.

Each flag does exactly what ``--set KEY=VALUE`` does, in the same ordered list of overrides. :data:`COURSE_FLAGS` is the
only table of them (the parser, ``--help`` and ``docs/course.md`` come from or are checked against it).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from picollm.config import Config

CHUNK_NOTE = (
    "--kgram_chunk_size changes nothing here: picollm's k-gram computes every position of a block at once, "
    "so there is no chunk to size"
)


def device_name(text: str) -> str:
    """pico.py's ``--device_id``: ``cpu``, ``cuda:N``, or a bare GPU number N (= ``cuda:N``)."""
    return f"cuda:{text}" if text.isdigit() else text


@dataclass(frozen=True)
class Alias:
    """One pico.py flag: the key it sets (None: accepted, sets nothing, says why), how its text is read, its help."""

    key: str | None
    help: str
    type: Callable[[str], Any] = str
    nargs: str | None = None
    model: str | None = None  # the only model.type that reads the key: a run of another type is told so
    note: str | None = None  # said on stderr whenever the flag is given


COURSE_FLAGS: dict[str, Alias] = {
    "--input_files": Alias("data.input_files", "text files, one example per line", nargs="+"),
    "--tinystories_weight": Alias("data.tinystories_weight", "share of TinyStories windows; 0 loads none", float),
    "--block_size": Alias("model.block_size", "training window in tokens", int),
    "--embed_size": Alias("model.embed_size", "token embedding width", int),
    "--kgram_k": Alias("model.k", "k-gram context in tokens", int, model="kgram"),
    "--kgram_chunk_size": Alias(None, "accepted, so that pico.py's commands run", int, note=CHUNK_NOTE),
    "--num_inner_mlp_layers": Alias("model.num_inner_layers", "hidden layers of the k-gram MLP", int, model="kgram"),
    "--max_steps_per_epoch": Alias("train.max_steps_per_epoch", "cap on training steps per epoch", int),
    "--prompt": Alias("train.prompt", "text the run's samples continue", str),
    "--device_id": Alias("train.device", "cpu, cuda:N, or a GPU number N meaning cuda:N", device_name),
}


class _CourseFlag(argparse.Action):
    """Appends ``KEY=<value as JSON>`` to ``--set``'s list, in order: JSON is YAML, so ``--prompt yes`` stays "yes"."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None
    ) -> None:
        alias = COURSE_FLAGS[self.option_strings[0]]
        namespace.course_flags = [*namespace.course_flags, self.option_strings[0]]
        if alias.key is not None:
            item = f"{alias.key}={json.dumps(values, ensure_ascii=False)}"
            namespace.overrides = [*namespace.overrides, item]


def add_course_flags(parser: argparse.ArgumentParser) -> None:
    """pico.py's flags as their own ``--help`` group, each naming its key; needs ``--set`` (dest ``overrides``)."""
    group = parser.add_argument_group(
        "pico.py's flags",
        "each sets the key shown, exactly as --set KEY=VALUE does; for one key, the later\n"
        "of a flag and a --set on the line wins (docs/course.md)",
    )
    for flag, alias in COURSE_FLAGS.items():
        sets = f"--set {alias.key}" if alias.key else "sets nothing"
        group.add_argument(
            flag, action=_CourseFlag, dest=argparse.SUPPRESS, type=alias.type, nargs=alias.nargs,
            metavar=flag.strip("-").upper(), help=f"{alias.help} ({sets})",
        )  # fmt: skip
    parser.set_defaults(course_flags=[])


def course_notes(flags: Sequence[str], cfg: Config) -> list[str]:
    """One line per given flag that does not do what it did in pico.py for this run."""
    notes = []
    for flag in dict.fromkeys(flags):
        alias = COURSE_FLAGS[flag]
        if alias.note:
            notes.append(alias.note)
        if alias.model and cfg.model.type != alias.model:
            notes.append(
                f"{flag} sets {alias.key}, which only model.type={alias.model} reads; this run trains a "
                f"{cfg.model.type} (pico.py trains every model, picollm the one model.type names)"
            )
    return notes
