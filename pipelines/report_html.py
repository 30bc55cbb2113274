"""HTML building blocks of the self-contained cohort report.

No external resources: CSS is inline, images are ``data:`` URIs, there are no
scripts, fonts or links to other hosts, so the report opens offline and can be
archived as one file. Every text goes through :func:`esc`.
"""
from __future__ import annotations

import html
import math
from typing import Any, Iterable

import pandas as pd

__all__ = ["esc", "fmt", "table_html", "section", "figure", "page", "CSS"]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em auto;max-width:1200px;
 color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.8em;margin:.5em 0;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #ddd;padding:2px 6px;text-align:right}th{background:#f3f3f3}
td.t,th.t{text-align:left}
.missing{color:#a33;font-style:italic}.note{color:#555;font-size:.85em}
figure{margin:.5em 0}figcaption{font-size:.8em;color:#444}
img{max-width:100%;height:auto}
.mips{display:flex;flex-wrap:wrap;gap:.8em}.mips figure{margin:0;max-width:420px}
td{max-width:28em;overflow-wrap:anywhere}
nav a{margin-right:.8em;font-size:.85em}
"""


def esc(value: Any) -> str:
    """HTML-escaped text of ``value``."""
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 3) -> str:
    """Short display text of a table cell (None/NaN shown as an em dash)."""
    if value is None:
        return "\u2014"
    if isinstance(value, float):
        if math.isnan(value):
            return "\u2014"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.{digits}g}"
        text = f"{value:.{digits}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    if isinstance(value, (list, tuple, dict)):
        return esc(value)[:200]
    return esc(value)


def table_html(frame: pd.DataFrame, *, table_id: str, max_rows: int = 200) -> str:
    """An HTML table of ``frame`` (at most ``max_rows`` rows, saying so when cut)."""
    n = len(frame)
    shown = frame.head(max_rows)
    text_cols = {c for c in shown.columns if not pd.api.types.is_numeric_dtype(shown[c])}
    head = "".join(f'<th class="{"t" if c in text_cols else ""}">{esc(c)}</th>' for c in shown.columns)
    rows = []
    for rec in shown.itertuples(index=False, name=None):
        cells = "".join(f'<td class="{"t" if c in text_cols else ""}">{fmt(v)}</td>'
                        for c, v in zip(shown.columns, rec))
        rows.append(f"<tr>{cells}</tr>")
    note = f'<p class="note">Showing {max_rows} of {n} rows (full table in tables/).</p>' if n > max_rows else ""
    return (f'<table id="{esc(table_id)}" data-table="{esc(table_id)}" data-rows="{n}">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{note}")


def section(section_id: str, title: str, body: str, *, missing: str | None = None) -> str:
    """A report section; with ``missing`` set it says what is missing and why.

    ``data-status`` is ``ok``, ``partial`` (content plus a note on what is
    missing) or ``missing`` (no content).
    """
    status = ("partial" if body else "missing") if missing else "ok"
    miss = f'<p class="missing" data-missing="{esc(section_id)}">{esc(missing)}</p>' if missing else ""
    return (f'<section id="{esc(section_id)}" data-section="{esc(section_id)}" data-status="{status}">'
            f"<h2>{esc(title)}</h2>{miss}{body}</section>")


def figure(figure_id: str, data_uri: str, caption: str) -> str:
    """An inline figure (``data:`` URI image) with its caption."""
    return (f'<figure id="{esc(figure_id)}"><img data-figure="{esc(figure_id)}" alt="{esc(caption)}" '
            f'src="{data_uri}"><figcaption>{esc(caption)}</figcaption></figure>')


def page(title: str, sections: Iterable[tuple[str, str, str]], *, generated: str) -> str:
    """The whole report document; ``sections`` are (id, title, html) triples."""
    sections = list(sections)
    nav = "".join(f'<a href="#{esc(sid)}">{esc(stitle)}</a>' for sid, stitle, _ in sections)
    body = "".join(html_ for _, _, html_ in sections)
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{esc(title)}</h1><p class=\"note\">Generated {esc(generated)}. Pseudonymous keys only.</p>"
            f"<nav>{nav}</nav>{body}</body></html>")
