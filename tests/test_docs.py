"""The documentation stays true to the code: its links resolve and its commands use only flags the parsers accept.

Pages: README.md and docs/*.md. A relative link or image must name a file of the repository (and, with an
anchor, a heading of that file). Every ``python ...`` command in a fenced code block is parsed by the real
parser of the command it runs, so a renamed or removed flag fails here with the page, the line and the flag.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# ``python <script>`` and ``python -m <module>`` -> the module whose ``build_parser()`` parses its arguments.
SCRIPTS = {"sweep.py": "picollm.cli.sweep", "analyze.py": "picollm.cli.analyze"}
MODULES = {
    "picollm.train": "picollm.cli.train",
    "picollm.evaluate": "picollm.cli.evaluate",
    "picollm.generate": "picollm.cli.generate",
    "benchmarks.bench": "benchmarks.bench",
    "benchmarks.eval_cost": "benchmarks.eval_cost",
    "benchmarks.search_vs_random": "benchmarks.search_vs_random",
    "benchmarks.workers_scale": "benchmarks.workers_scale",
    "benchmarks.target_vs_brute_force": "benchmarks.target_vs_brute_force",
    "benchmarks.threads": "benchmarks.threads",
    "benchmarks.worker_memory": "benchmarks.worker_memory",
    "benchmarks.wsd_vs_cosine": "benchmarks.wsd_vs_cosine",
    "tests.soak": "tests.soak",
}
CONSOLE_SCRIPTS = {
    "picollm-train": "picollm.cli.train",
    "picollm-evaluate": "picollm.cli.evaluate",
    "picollm-generate": "picollm.cli.generate",
    "picollm-sweep": "picollm.cli.sweep",
    "picollm-analyze": "picollm.cli.analyze",
}
# Commands whose flags are not picollm's to check: other tools', scripts outside the package, the course's pico.py.
NOT_OURS = {"-m pytest", "-m venv", "-m pip", "docs/screenshots.py", "../shared/bench/quick_reference.py", "pico.py"}
NOT_SHELL = {"python", "py", "yaml", "yml", "json", "toml", "ini", "csv"}  # fenced blocks that hold no commands
PYTHONS = {"python", "python3"}
SEPARATORS = {"|", "||", "&&", ";", "&"}
PLACEHOLDER = re.compile(r"<[^<>\s]+>")  # results/runs/<run_id>: any value of the right kind
ENV_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"<(?:a|img)\s[^>]*?(?:href|src)=[\"']([^\"']+)[\"']", re.IGNORECASE)
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+\1")


# ---------------------------------------------------------------------------------------------
# Reading a page: prose lines (for links) and fenced blocks (for commands), with their line numbers.
# ---------------------------------------------------------------------------------------------


def split_page(text: str) -> tuple[list[tuple[int, str]], list[tuple[str, list[tuple[int, str]]]]]:
    """``(prose, blocks)``: prose lines, and each fenced block's language and lines; numbers count from 1."""
    prose: list[tuple[int, str]] = []
    blocks: list[tuple[str, list[tuple[int, str]]]] = []
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
            blocks.append((match.group(2).lower(), []))
        elif fence is not None and line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
            fence = None
        elif fence is not None:
            blocks[-1][1].append((number, line))
        else:
            prose.append((number, line))
    return prose, blocks


# ---------------------------------------------------------------------------------------------
# Links.
# ---------------------------------------------------------------------------------------------


def links(text: str) -> Iterator[tuple[int, str]]:
    """Every link and image target outside code (Markdown, reference-style and HTML), with its line."""
    prose, _ = split_page(text)
    for number, line in prose:
        line = INLINE_CODE.sub("", line)
        for pattern in (LINK, HTML_LINK, REFERENCE):
            for match in pattern.finditer(line):
                yield number, match.group(1)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    prose, _ = split_page(page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose:
        if match := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line):
            base = slug(match.group(1))
            out.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return out


def broken_link(page: Path, target: str) -> str | None:
    """Why ``target`` (as written in ``page``) does not resolve, or None when it does; web links are not fetched."""
    if re.match(r"^[a-zA-Z][\w+.-]*:", target):
        return None
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    if not file.exists():
        return f"no file {path}"
    if ROOT.resolve() not in file.parents and file != ROOT.resolve():
        return f"{path} is outside the repository"
    if anchor and file.suffix == ".md" and anchor not in anchors(file):
        return f"no heading #{anchor} in {file.relative_to(ROOT.resolve())}"
    return None


# ---------------------------------------------------------------------------------------------
# Commands.
# ---------------------------------------------------------------------------------------------


def logical_lines(lines: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """Shell lines with their continuations joined, numbered by their first line."""
    start, parts = None, []
    for number, line in lines:
        start = number if start is None else start
        if line.rstrip().endswith("\\"):
            parts.append(line.rstrip()[:-1])
            continue
        yield start, " ".join([*parts, line])
        start, parts = None, []
    if parts:
        yield start or 0, " ".join(parts)


def segments(line: str) -> Iterator[list[str]]:
    """The simple commands of one shell line: split at pipes and lists, redirections and comments dropped."""
    line = PLACEHOLDER.sub("1", line.strip().removeprefix("$ "))
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # an unclosed quote: prose that is not a command
        return
    current: list[str] = []
    skip_next = False
    for token in tokens:
        if skip_next:
            skip_next = False
        elif token in SEPARATORS:
            yield current
            current = []
        elif token and set(token) <= set("<>&"):
            skip_next = True  # a redirection and its target
        else:
            current.append(token)
    yield current


def commands(text: str) -> Iterator[tuple[int, list[str]]]:
    """Every ``python ...`` (or console-script) command in the page's fenced blocks: its line and argv,
    ``VAR=value`` prefixes dropped."""
    _, blocks = split_page(text)
    for language, lines in blocks:
        if language in NOT_SHELL:
            continue
        for number, line in logical_lines(lines):
            for argv in segments(line):
                while argv and ENV_PREFIX.match(argv[0]):
                    argv = argv[1:]
                if argv and (argv[0] in PYTHONS or argv[0] in CONSOLE_SCRIPTS):
                    yield number, argv


def parser_for(argv: list[str]) -> tuple[Callable[[], argparse.ArgumentParser] | None, list[str], str]:
    """``(build_parser, its arguments, the command's name)``; build_parser is None for another tool's command."""
    if argv[0] in CONSOLE_SCRIPTS:
        return importlib.import_module(CONSOLE_SCRIPTS[argv[0]]).build_parser, argv[1:], argv[0]
    args = argv[1:]
    if args[:1] == ["-m"] and len(args) > 1:
        key, rest, module = f"-m {args[1]}", args[2:], MODULES.get(args[1])
    elif args:
        key, rest, module = args[0], args[1:], SCRIPTS.get(args[0])
    else:
        return None, [], "python"
    if module is None:
        if key in NOT_OURS:
            return None, rest, f"python {key}"
        raise LookupError(f"python {key}: no parser known for it (add it to tests/test_docs.py)")
    return importlib.import_module(module).build_parser, rest, f"python {key}"


def refused(argv: list[str]) -> str | None:
    """What the command's real parser says against ``argv`` (an unknown flag, a bad choice), or None."""
    try:
        build, args, name = parser_for(argv)
    except LookupError as exc:
        return str(exc)
    if build is None:
        return None
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            _, unknown = build().parse_known_args(args)
    except SystemExit:
        message = stderr.getvalue().strip().splitlines()
        return f"{name}: {message[-1] if message else 'refused'}"
    flags = [arg for arg in unknown if arg.startswith("-")]
    if unknown:
        return f"{name}: unknown flag {flags[0]}" if flags else f"{name}: unexpected arguments {' '.join(unknown)}"
    return None


def command_problems(text: str, page: str) -> list[str]:
    return [
        f"{page}:{number}: {problem}  ({' '.join(argv)})"
        for number, argv in commands(text)
        if (problem := refused(argv)) is not None
    ]


# ---------------------------------------------------------------------------------------------
# The tests.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_resolves(page: Path) -> None:
    problems = [
        f"{page.relative_to(ROOT)}:{number}: {target}: {why}"
        for number, target in links(page.read_text(encoding="utf-8"))
        if (why := broken_link(page, target)) is not None
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_command_uses_only_flags_its_parser_accepts(page: Path) -> None:
    problems = command_problems(page.read_text(encoding="utf-8"), str(page.relative_to(ROOT)))
    assert not problems, "\n".join(problems)


def test_the_pages_hold_commands_to_check() -> None:
    """The checks above see the README's commands (a reader that found none would pass every page)."""
    found = [argv[1] for _, argv in commands((ROOT / "README.md").read_text(encoding="utf-8"))]
    assert {"sweep.py", "analyze.py", "-m"} <= set(found)


SNIPPET = """\
Prose with `python sweep.py --not-in-a-block` is not a command.

```bash
TIKTOKEN_CACHE_DIR=../shared/tiktoken-cache python sweep.py --config experiments/quick.yaml \\
  --set data.tinystories=../shared/data/tinystories-sample   # a comment --made-up
python analyze.py inspect results/runs/<run_id> --position 10 | head -5 > out.txt
python -m picollm.generate results/runs/<run_id> --top-p 0.9 && echo done
python3 -m venv .venv && . .venv/bin/activate
python sweep.py status --config experiments/quick.yaml \\
  --n-trials 3 \\
  --made-up-flag 7
```

```yaml
python sweep.py --also-not-a-command
```
"""


def test_a_made_up_flag_fails_with_the_page_the_line_and_the_flag() -> None:
    problems = command_problems(SNIPPET, "snippet.md")
    assert problems == [
        "snippet.md:9: python sweep.py: unknown flag --made-up-flag  "
        "(python sweep.py status --config experiments/quick.yaml --n-trials 3 --made-up-flag 7)"
    ]


def test_continuations_prefixes_comments_pipes_and_placeholders_are_read_as_a_shell_would() -> None:
    found = {number: argv for number, argv in commands(SNIPPET)}
    assert found[4] == [
        "python",
        "sweep.py",
        "--config",
        "experiments/quick.yaml",
        "--set",
        "data.tinystories=../shared/data/tinystories-sample",
    ]
    assert found[6] == ["python", "analyze.py", "inspect", "results/runs/1", "--position", "10"]
    assert found[7] == ["python", "-m", "picollm.generate", "results/runs/1", "--top-p", "0.9"]
    assert sorted(found) == [4, 6, 7, 8, 9]


def test_a_bad_choice_and_an_unknown_command_are_refused_too() -> None:
    assert "invalid choice" in (refused(["python", "sweep.py", "frobnicate"]) or "")
    assert "no parser known" in (refused(["python", "-m", "picollm.trian"]) or "")
    assert refused(["python", "-m", "pytest", "-q", "--anything"]) is None


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    page = ROOT / "docs" / "example.md"  # never written: only its folder matters
    text = (
        "[ok](sweeps.md) ![img](dashboard.png) [gone](missing.md) `[code](nowhere.md)` [web](https://x.org)\n"
        '<img src="lost.png" alt="x">\n[ref]: ../nowhere.md\n'
    )
    found = [broken_link(page, t) for _, t in links(text)]
    assert found == [None, None, "no file missing.md", None, "no file lost.png", "no file ../nowhere.md"]
    assert broken_link(page, "../README.md#no-such-heading") == "no heading #no-such-heading in README.md"
    assert slug("One study = one question") == "one-study--one-question"
