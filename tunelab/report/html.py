"""The page: inline CSS, header, sections, footer; and small escaping/table helpers.

Every piece of text from a file or the command line goes through :func:`esc` (or
:func:`table`, which escapes cells); only :class:`Markup` strings pass through unchanged.
"""

from __future__ import annotations

import html
import re
from typing import Any, Iterable, Sequence

from tunelab.report.render import Markup

CSS = """
:root { --fg:#1d2330; --muted:#667085; --line:#e4e7ec; --bg:#ffffff; --soft:#f6f7f9; --accent:#2f6fdf; }
* { box-sizing: border-box; }
body { margin:0; background:var(--soft); color:var(--fg);
  font: 14px/1.5 -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 28px 40px; }
header.page { background:var(--bg); border:1px solid var(--line); border-radius:10px; padding:20px 24px; margin-bottom:18px; }
header.page h1 { margin:0 0 4px; font-size:24px; letter-spacing:-0.01em; }
.meta { color:var(--muted); font-size:13px; }
.meta b { color:var(--fg); font-weight:600; }
nav.toc { margin-top:12px; font-size:13px; }
nav.toc a { color:var(--accent); text-decoration:none; margin-right:14px; white-space:nowrap; }
section { background:var(--bg); border:1px solid var(--line); border-radius:10px; padding:18px 24px 20px; margin-bottom:18px; }
section h2 { margin:0 0 10px; font-size:18px; }
section h3 { margin:16px 0 6px; font-size:14.5px; }
p.note, .muted { color:var(--muted); font-size:12.5px; }
.scroll { overflow-x:auto; }
table { border-collapse:collapse; font-size:13px; margin:6px 0 12px; }
th, td { padding:5px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
th { font-weight:600; color:#344054; background:#fafbfc; border-bottom:1px solid #d0d5dd; white-space:nowrap; }
td.num, th.num { text-align:right; font-variant-numeric: tabular-nums; white-space:nowrap; }
tbody tr:hover td { background:#f9fafb; }
code, .path { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size:12px; }
.swatch { display:inline-block; width:10px; height:10px; border-radius:2px; margin-right:6px; vertical-align:baseline; }
img.plot { display:block; max-width:100%; height:auto; margin:8px 0; }
.figures { display:flex; flex-wrap:wrap; gap:16px; }
.figures figure { margin:0; flex:1 1 460px; }
.figures figcaption { color:var(--muted); font-size:12px; }
.delta-pos { color:#12805c; } .delta-neg { color:#b42318; }
.error { color:#b42318; }
footer { color:var(--muted); font-size:12px; padding:4px 4px 0; }
footer ul { margin:4px 0; padding-left:18px; }
"""


def esc(value: Any) -> str:
    """HTML-escape ``value`` (any object, via str), unless it is already :class:`Markup`."""
    if isinstance(value, Markup):
        return value
    return html.escape("" if value is None else str(value), quote=True)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = (), caption: str | None = None) -> Markup:
    """An HTML table; cells are escaped unless Markup; columns in ``numeric`` align right."""
    num = set(numeric)
    head = "".join(f'<th{" class=num" if i in num else ""}>{esc(h)}</th>' for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f'<td{" class=num" if i in num else ""}>{esc(c)}</td>' for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    cap = f'<p class="note">{esc(caption)}</p>' if caption else ""
    return Markup(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>{cap}')


def swatch(color: str, label: str) -> Markup:
    """A coloured square + label, matching a run's colour in the figures."""
    return Markup(f'<span class="swatch" style="background:{esc(color)}"></span>{esc(label)}')


def run_anchor(name: str) -> str:
    """The element id of a run's row in the "Runs" section (other sections link to ``#`` it)."""
    return "run-" + (re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "x")


def page(title: str, header: str, sections: Sequence[tuple[str, str, str]], footer: str) -> str:
    """The whole document; ``sections`` = (anchor id, title, body HTML)."""
    toc = "".join(f'<a href="#{esc(key)}">{esc(t)}</a>' for key, t, _ in sections)
    body = "\n".join(f'<section id="{esc(key)}"><h2>{esc(t)}</h2>\n{html_body}\n</section>' for key, t, html_body in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n"
        f'<body><main>\n<header class="page"><h1>{esc(title)}</h1>\n{header}\n'
        f'<nav class="toc">{toc}</nav></header>\n{body}\n<footer>{footer}</footer>\n</main></body></html>\n'
    )
