"""A study's report as a document: sections of text, tables, code and figures, written as Markdown
(``report.md``, plain image links any viewer shows) and optionally as one self-contained HTML file.

The sections themselves are built in :mod:`picollm.analysis.sections`; this module owns the document
model, the Markdown rendering and where the files go.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from picollm.fileio import atomic_write_json, atomic_write_text


@dataclass
class Figure:
    path: Path  # a PNG next to the report
    caption: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Section:
    """One heading and what goes under it, in this order: text, tables, code, figures, subsections."""

    title: str
    text: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    code: str | None = None
    code_lang: str = "text"
    copy_button: bool = False  # the HTML report offers to copy the code (the best config)
    figures: list[Figure] = field(default_factory=list)
    subsections: list[Section] = field(default_factory=list)
    warning: str | None = None

    @property
    def anchor(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.title.lower()).strip("-")


@dataclass
class Report:
    name: str
    out_dir: Path
    sections: list[Section]
    data: dict[str, Any] = field(default_factory=dict)  # the analysis numbers, saved as report.json


def cell(value: Any) -> str:
    """A table cell: floats to 4 decimals, None as a dash."""
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:.4f}"
    return str(value)


def _md_table(table: Table) -> str:
    lines = ["| " + " | ".join(table.header) + " |", "|" + " --- |" * len(table.header)]
    lines += ["| " + " | ".join(cell(v).replace("|", "\\|") for v in row) + " |" for row in table.rows]
    caption = f"{table.caption}\n\n" if table.caption else ""
    return caption + "\n".join(lines) + "\n"


def _md_section(section: Section, level: int, out_dir: Path) -> str:
    parts = [f"{'#' * level} {section.title}\n"]
    if section.warning:
        parts.append(f"> **Warning:** {section.warning}\n")
    parts += [f"{paragraph}\n" for paragraph in section.text]
    parts += [_md_table(table) for table in section.tables]
    if section.code is not None:
        parts.append(f"```{section.code_lang}\n{section.code.rstrip()}\n```\n")
    parts += [f"![{fig.caption}]({_link(fig.path, out_dir)})\n\n*{fig.caption}*\n" for fig in section.figures]
    parts += [_md_section(sub, level + 1, out_dir) for sub in section.subsections]
    return "\n".join(parts)


def _link(path: Path, out_dir: Path) -> str:
    """A figure's path relative to the report, so the Markdown file shows it from where it lies."""
    return Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()


def render_markdown(report: Report) -> str:
    body = "\n".join(_md_section(section, 2, report.out_dir) for section in report.sections)
    return f"# picollm report: {report.name}\n\n{body}"


def write_report(report: Report, html: bool = False) -> list[Path]:
    """``report.md`` (+ ``report.html``) and ``report.json`` into the report's folder; returns the paths."""
    out = report.out_dir
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.md"]
    atomic_write_text(paths[0], render_markdown(report))
    if html:
        from picollm.analysis.html import render_html

        paths.append(out / "report.html")
        atomic_write_text(paths[1], render_html(report))
    atomic_write_json(out / "report.json", report.data)
    return paths
