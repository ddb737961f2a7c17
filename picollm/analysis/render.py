"""The report written out: ``report.md``, ``report.json`` and optionally a self-contained ``report.html``.

The HTML inlines its figures and fetches nothing, so it can be mailed or opened offline.
"""

from __future__ import annotations

import base64
import os
import re
from html import escape
from pathlib import Path

from picollm.analysis.report import Report, Section, Table, cell
from picollm.fileio import atomic_write_json, atomic_write_text

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;
color:#1d1d1f;line-height:1.45}
h1{border-bottom:2px solid #ddd;padding-bottom:.3em}h2{margin-top:2em;border-bottom:1px solid #eee}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #ddd;padding:.25em .6em;
text-align:left}th{background:#f5f5f7}tr.pruned td{color:#8a6d00;background:#fffbe6}
figure{margin:1em 0}figure img{max-width:min(100%,820px);border:1px solid #eee}code{background:#f5f5f7}
figcaption{font-size:.85em;color:#555}
pre{background:#f5f5f7;padding:.8em;overflow-x:auto;font-size:.85em}.code{position:relative}
.code button{position:absolute;top:.4em;right:.4em}.warning{background:#fff0f0;border-left:4px solid #d00;
padding:.5em 1em}nav{font-size:.9em}nav a{margin-right:1em}
"""

COPY_SCRIPT = """
function copyCode(id, button) {
  const text = document.getElementById(id).innerText;
  const done = () => { button.textContent = "copied"; setTimeout(() => button.textContent = "copy", 1500); };
  if (navigator.clipboard && window.isSecureContext) { navigator.clipboard.writeText(text).then(done); return; }
  const area = document.createElement("textarea"); area.value = text; document.body.appendChild(area);
  area.select(); document.execCommand("copy"); area.remove(); done();
}
"""


def _inline(text: str) -> str:
    """Escaped text with Markdown's `code` spans as <code> (the paragraphs are shared with report.md)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(text))


def _table(table: Table) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in table.header)
    rows = []
    for row in table.rows:
        pruned = ' class="pruned"' if "pruned" in row else ""
        rows.append(f"<tr{pruned}>" + "".join(f"<td>{escape(cell(v))}</td>" for v in row) + "</tr>")
    caption = f"<p>{escape(table.caption)}</p>" if table.caption else ""
    return f"{caption}<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    img = f'<img src="data:image/png;base64,{data}" alt="{escape(caption, quote=True)}">'
    return f"<figure>{img}<figcaption>{escape(caption)}</figcaption></figure>"


def _code(section: Section) -> str:
    code_id = f"code-{section.anchor}"
    button = (
        f'<button type="button" onclick="copyCode(\'{code_id}\', this)">copy</button>' if section.copy_button else ""
    )
    return f'<div class="code">{button}<pre><code id="{code_id}">{escape(section.code or "")}</code></pre></div>'


def _section(section: Section, level: int) -> str:
    parts = [f'<section id="{section.anchor}"><h{level}>{escape(section.title)}</h{level}>']
    if section.warning:
        parts.append(f'<p class="warning"><strong>Warning:</strong> {escape(section.warning)}</p>')
    parts += [f"<p>{_inline(text)}</p>" for text in section.text]
    parts += [_table(table) for table in section.tables]
    if section.code is not None:
        parts.append(_code(section))
    parts += [_figure(fig.path, fig.caption) for fig in section.figures]
    parts += [_section(sub, level + 1) for sub in section.subsections]
    return "\n".join([*parts, "</section>"])


def render_html(report: Report) -> str:
    nav = " ".join(f'<a href="#{s.anchor}">{escape(s.title)}</a>' for s in report.sections)
    body = "\n".join(_section(section, 2) for section in report.sections)
    title = f"picollm report: {escape(report.name)}"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style>'
        f"<script>{COPY_SCRIPT}</script></head>\n<body><h1>{title}</h1><nav>{nav}</nav>\n{body}\n</body></html>\n"
    )


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
        paths.append(out / "report.html")
        atomic_write_text(paths[1], render_html(report))
    atomic_write_json(out / "report.json", report.data)
    return paths
