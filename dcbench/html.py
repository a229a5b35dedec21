"""The static HTML report: one self-contained ``index.html`` (inline CSS and JS, figures embedded
as ``data:`` URIs) that works offline from ``file://``.

Tables sort by clicking a header (numbers by value, ``—`` last); the sort state lives in the URL
fragment (``#sort=<table id>,<column>,<asc|desc>``) so a sorted view can be linked. Once loaded, the
page records on ``<html data-images="shown/total">`` how many of its images decoded.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dcbench.leaderboard import Table, provenance

if TYPE_CHECKING:
    from dcbench.report import Report

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #1b1b1b; background: #fff; }
h1 { font-size: 1.7rem; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #ddd; }
nav ul { padding-left: 1.2rem; }
.caption { color: #444; font-size: 0.9rem; max-width: 75rem; }
.scroll { overflow-x: auto; margin: 0.5rem 0 1.5rem; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: 0.9rem; }
th, td { border: 1px solid #d0d0d0; padding: 0.25rem 0.6rem; white-space: nowrap; }
th { background: #f2f4f7; cursor: pointer; user-select: none; position: sticky; top: 0; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
td:first-child { font-weight: 600; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.missing { color: #999; text-align: center; }
figure { margin: 1rem 0 2rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; image-rendering: pixelated; }
figcaption { color: #444; font-size: 0.9rem; max-width: 75rem; }
.problems li { color: #8a1c1c; }
"""

JS = """
(function () {
  function key(cell) {
    var text = cell.textContent.trim();
    var m = text.match(/^[+\\-\\u2212]?\\d+(\\.\\d+)?/);
    if (m) { return parseFloat(m[0].replace("\\u2212", "-")); }
    return text === "\\u2014" || text === "" ? null : text;
  }
  function compare(a, b) {
    if (typeof a === "number" && typeof b === "number") { return a - b; }
    return String(a).localeCompare(String(b));
  }
  function sortTable(table, col, ascending) {
    var heads = table.tHead.rows[0].cells;
    for (var i = 0; i < heads.length; i++) { heads[i].removeAttribute("aria-sort"); }
    heads[col].setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (ra, rb) {
      var a = key(ra.cells[col]), b = key(rb.cells[col]);
      if (a === null || b === null) { return (a === null) - (b === null); }
      return ascending ? compare(a, b) : compare(b, a);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  var tables = document.querySelectorAll("table.sortable");
  Array.prototype.forEach.call(tables, function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.title = "sort";
      th.addEventListener("click", function () {
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        sortTable(table, col, ascending);
        var hash = "#sort=" + table.id + "," + col + "," + (ascending ? "asc" : "desc");
        if (window.history && history.replaceState) { history.replaceState(null, "", hash); }
      });
    });
    table.setAttribute("data-sortable", "ready");
  });
  window.addEventListener("load", function () {
    var images = document.images, shown = 0;
    for (var i = 0; i < images.length; i++) {
      if (images[i].complete && images[i].naturalWidth > 0) { shown++; }
    }
    document.documentElement.setAttribute("data-images", shown + "/" + images.length);
  });
  var m = window.location.hash.match(/^#sort=([^,]+),(\\d+),(asc|desc)$/);
  if (m) {
    var target = document.getElementById(decodeURIComponent(m[1]));
    if (target && target.tHead) { sortTable(target, parseInt(m[2], 10), m[3] === "asc"); }
  }
})();
"""


def table_html(table: Table, number: int) -> str:
    """A captioned sortable table."""
    head = "".join(f"<th>{escape(str(c))}</th>" for c in table.frame.columns)
    rows = []
    for values in table.frame.itertuples(index=False):
        cells = "".join(
            f'<td class="missing">{escape(v)}</td>' if v == "—" else f"<td>{escape(str(v))}</td>"
            for v in values
        )
        rows.append(f"<tr>{cells}</tr>")
    return (
        f'<h3 id="{escape(table.name)}-title">{escape(table.title)}</h3>\n'
        f'<p class="caption"><b>Table {number}.</b> {escape(table.caption)}</p>\n'
        f'<div class="scroll"><table class="sortable" id="{escape(table.name)}">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def figure_html(spec: Any, folder: Path) -> str:
    """A figure with its PNG embedded as a ``data:`` URI and a link to the SVG beside it."""
    png = (folder / f"{spec.name}.png").read_bytes()
    data = base64.b64encode(png).decode("ascii")
    svg = f"figures/{spec.name}.svg"
    return (
        f'<figure id="{escape(spec.name)}"><img src="data:image/png;base64,{data}" '
        f'alt="{escape(spec.title)}">'
        f"<figcaption>{escape(spec.caption)} "
        f'(<a href="{escape(svg)}">SVG</a>)</figcaption></figure>'
    )


def render_html(report: Report, figures: Sequence[Any], out: Path) -> str:
    """The report as one HTML page; ``figures`` must already be drawn under ``out/figures``."""
    folder = out / "figures"
    sources = ", ".join(f"<code>{escape(s)}</code>" for s in report.sources)
    parts = [
        "<h1>dcbench report</h1>",
        f"<p>{provenance(report.records, sources)} Click a column header to sort.</p>",
    ]
    nav = [f'<li><a href="#{escape(tr.track.slug)}">{escape(tr.track.title)}</a></li>'
           for tr in report.tracks]  # fmt: skip
    if report.score_tables:
        nav.append('<li><a href="#scores">DD-Ranking scores</a></li>')
    grids = [f for f in figures if f.section == "images"]
    if grids:
        nav.append('<li><a href="#images">Distilled images</a></li>')
    parts.append(f"<nav><ul>{''.join(nav)}</ul></nav>")
    if report.problems:
        items = "".join(f"<li>{escape(p)}</li>" for p in report.problems)
        parts.append(f'<h2 id="problems">Problems</h2><ul class="problems">{items}</ul>')
    number = 0
    for tr in report.tracks:
        parts.append(f'<section id="{escape(tr.track.slug)}"><h2>{escape(tr.track.title)}</h2>')
        for table in [tr.leaderboard, *tr.cross_arch, tr.cost]:
            number += 1
            parts.append(table_html(table, number))
        mine = [f for f in figures if f.section == tr.track.slug]
        if mine:
            parts.append("<h3>Figures</h3>")
            parts += [figure_html(f, folder) for f in mine]
        parts.append("</section>")
    if report.score_tables:
        parts.append('<section id="scores"><h2>DD-Ranking scores</h2>')
        for table in report.score_tables:
            number += 1
            parts.append(table_html(table, number))
        parts.append("</section>")
    if grids:
        parts.append('<section id="images"><h2>Distilled images</h2>')
        for spec in grids:
            parts.append(f"<h3>{escape(spec.title)}</h3>{figure_html(spec, folder)}")
        parts.append("</section>")
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>dcbench report</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n"
        f"<script>{JS}</script>\n</body>\n</html>\n"
    )
