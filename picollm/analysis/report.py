"""A study's report as a document: what :mod:`.sections` builds and :mod:`.render` writes, apart."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
