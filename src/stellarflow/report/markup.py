"""Small pieces of offline HTML: escaped tables, figures, sections, the page itself.

Everything here returns strings; nothing reads or writes files except :func:`figure`, which
reads the image when it is embedded. The page carries its own CSS and one short inline script
(sortable tables; a count of images that failed to load, for the browser test); it loads
nothing from the network.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from astropy.table import Table

__all__ = ["cell_text", "definition_list", "figure", "page", "section", "table_html"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1em 2em;
       color: #222; line-height: 1.4; }
h1 { border-bottom: 2px solid #345; padding-bottom: 0.2em; }
h2 { border-bottom: 1px solid #aab; margin-top: 2em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1em 0; }
th, td { border: 1px solid #bbb; padding: 0.15em 0.5em; text-align: right; }
th { background: #eef; cursor: pointer; user-select: none; }
td.text, th.text { text-align: left; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.1em 1em; }
dt { font-weight: bold; } dd { margin: 0; }
figure { margin: 0.5em 0 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; }
.key { background: #f4f8ec; border-left: 4px solid #7a4; padding: 0.3em 1em; }
.muted { color: #666; font-size: 0.9em; }
pre { background: #f6f6f6; padding: 0.5em; overflow-x: auto; font-size: 0.85em; }
"""

# Click a header to sort by that column (numbers numerically); count images that failed.
_SCRIPT = """
function sfSort(th) {
  const table = th.closest('table'), body = table.tBodies[0];
  const col = Array.from(th.parentNode.children).indexOf(th);
  const asc = th.dataset.order !== 'asc'; th.dataset.order = asc ? 'asc' : 'desc';
  const key = r => { const t = r.children[col].textContent.trim(); const x = parseFloat(t);
                     return isNaN(x) ? t : x; };
  Array.from(body.rows).sort((a, b) => { const x = key(a), y = key(b);
    const c = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0)
                                      : (typeof x === 'number' ? -1 : 1);
    return asc ? c : -c; }).forEach(r => body.appendChild(r));
}
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0));
  document.body.dataset.imagesTotal = images.length;
  document.body.dataset.imagesBroken = broken.length;
  document.body.dataset.imagesBrokenSources = broken.map(i => i.getAttribute('src')).join(' ');
});
"""


def cell_text(value: object, digits: int = 4) -> str:
    """A table cell's text: floats to ``digits`` significant figures (two decimals between
    1e3 and 1e7, so that wavelengths in Å keep their precision), NaN as an empty cell."""
    if value is np.ma.masked:
        return ""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if not math.isfinite(number):
            return "" if math.isnan(number) else str(number)
        if 1e3 <= abs(number) < 1e7:  # wavelengths, temperatures: keep the decimals
            return f"{number:.2f}"
        return f"{number:.{digits}g}"
    if isinstance(value, np.bool_):
        return str(bool(value))
    return str(value)


def table_html(
    table: Table,
    columns: Sequence[str] | None = None,
    *,
    max_rows: int | None = None,
    table_id: str | None = None,
    digits: int = 4,
) -> str:
    """An HTML table of ``table``'s ``columns`` (default all 1-D ones), sortable by header.

    Args:
        table: the rows.
        columns: the columns shown, in order; absent names are skipped.
        max_rows: show only the first rows (a note says how many were left out).
        table_id: the ``id`` attribute (tests and links find the table by it).
        digits: significant figures of floating-point cells.

    Returns:
        The HTML text.
    """
    if columns is None:
        columns = [name for name in table.colnames if table[name].ndim == 1]
    columns = [name for name in columns if name in table.colnames]
    shown = table if max_rows is None else table[:max_rows]
    text_columns = {name for name in columns if table[name].dtype.kind in "USOb"}

    def klass(name: str) -> str:
        return ' class="text"' if name in text_columns else ""

    head = "".join(
        f'<th{klass(name)} onclick="sfSort(this)">{html.escape(name)}</th>' for name in columns
    )
    rows = "\n".join(
        "<tr>"
        + "".join(
            f"<td{klass(name)}>{html.escape(cell_text(row[name], digits))}</td>" for name in columns
        )
        + "</tr>"
        for row in shown
    )
    ident = f' id="{html.escape(table_id)}"' if table_id else ""
    note = ""
    if len(shown) < len(table):
        note = f'<p class="muted">first {len(shown)} of {len(table)} rows</p>'
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>\n{rows}\n</tbody></table>{note}"


def figure(path: Path, page_dir: Path, caption: str = "", *, embed: bool = False) -> str:
    """An ``<img>`` of ``path``: a link relative to ``page_dir``, or embedded as base64.

    Args:
        path: the PNG file.
        page_dir: the folder of the HTML page (relative links start there).
        caption: text under the figure.
        embed: put the image's bytes in the page (one file to mail) instead of linking it.

    Returns:
        The HTML text.
    """
    relative = Path(os.path.relpath(path, page_dir)).as_posix()
    source = relative
    if embed:
        source = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(caption or path.name)
    image = f'<img src="{html.escape(source)}" alt="{alt}" loading="eager">'
    link = f'<a href="{html.escape(relative)}">{image}</a>' if not embed else image
    caption_html = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f"<figure>{link}{caption_html}</figure>"


def definition_list(items: Iterable[tuple[str, object]]) -> str:
    """A two-column list of key numbers (``<dl>``); values are escaped."""
    body = "".join(
        f"<dt>{html.escape(str(key))}</dt><dd>{html.escape(cell_text(value))}</dd>"
        for key, value in items
    )
    return f"<dl>{body}</dl>"


def section(anchor: str, title: str, body: str) -> str:
    """A ``<section>`` with a heading that the navigation bar links to."""
    return f'<section id="{html.escape(anchor)}"><h2>{html.escape(title)}</h2>\n{body}\n</section>'


def page(title: str, intro: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole page: title, navigation, introduction and ``(anchor, title, body)`` sections."""
    nav = " ".join(
        f'<a href="#{html.escape(anchor)}">{html.escape(name)}</a>' for anchor, name, _ in sections
    )
    body = "\n".join(section(anchor, name, text) for anchor, name, text in sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_STYLE}</style>
<script>{_SCRIPT}</script>
</head>
<body>
<h1>{html.escape(title)}</h1>
<nav>{nav}</nav>
{intro}
{body}
</body></html>
"""
