"""The report's index.html: a small stylesheet, the best configuration, a sortable table of every trial, the plots.

Self-contained (inline CSS and a few lines of JS, nothing fetched), so it opens from a folder, a
study artifact or a mail attachment alike. Every value from the study is HTML-escaped."""

from __future__ import annotations

import html
import math
import shlex
from dataclasses import dataclass
from typing import Any, Sequence

from tuner.shipping._report_data import Row
from tuner.text import significant

STYLE = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;background:#f6f8fa;margin:0}
main{max-width:1080px;margin:0 auto;padding:24px 20px 48px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:0 0 10px}
.meta{color:#57606a;margin:0 0 16px}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:16px 20px;margin:0 0 18px}
nav{margin:0 0 18px}nav a{margin-right:14px;color:#0969da;text-decoration:none}
table{border-collapse:collapse;font-size:14px}
th,td{padding:4px 8px;border-bottom:1px solid #eaeef2;text-align:left;white-space:nowrap}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.scroll{overflow-x:auto;max-height:640px;overflow-y:auto}
table.sortable th{position:sticky;top:0;background:#f6f8fa;cursor:pointer;user-select:none}
table.sortable th:hover{background:#eaeef2}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
tr.best td{background:#fff8c5;font-weight:600}
.muted{color:#8c959f}.state-pruned{color:#9a6700}.state-fail{color:#cf222e}.state-complete{color:#1a7f37}
figure{margin:0;overflow-x:auto}figure img{display:block;max-width:none}
code{background:#f6f8fa;padding:1px 5px;border-radius:4px;font-size:13px}
.note{color:#57606a;margin:8px 0 0}
"""

# Click a header: sort by that column (numbers as numbers, blanks last); click again: reverse.
SCRIPT = """
function compare(a, b) {
  if (a === "" || b === "") return (a === "") - (b === "");
  const x = Number(a), y = Number(b);
  return isNaN(x) || isNaN(y) ? a.localeCompare(b) : x - y;
}
document.querySelectorAll("table.sortable th").forEach((th, column) => th.addEventListener("click", () => {
  const rows = th.closest("table").tBodies[0];
  const up = th.getAttribute("aria-sort") !== "ascending";
  th.parentNode.querySelectorAll("th").forEach(other => other.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", up ? "ascending" : "descending");
  const key = row => row.cells[column].dataset.v ?? row.cells[column].textContent.trim();
  const sorted = [...rows.rows].sort((a, b) => {
    const [x, y] = [key(a), key(b)];
    return x === "" || y === "" ? compare(x, y) : (up ? 1 : -1) * compare(x, y);
  });
  rows.append(...sorted);
}));
"""


BEST_ROW = ' class="best"'
STATE_ORDER = ("complete", "pruned", "fail", "running", "waiting")


@dataclass(frozen=True)
class Section:
    title: str
    image: str | None
    note: str
    size: tuple[int, int] | None = None  # the PNG's pixels: shown at that size, where its labels read


@dataclass(frozen=True)
class Summary:
    """The facts at the top of the page."""

    name: str
    metric: str
    direction: str
    counts: dict[str, int]  # trials by state
    best: Row | None
    best_value: float | None = None  # what it is best by: a pruned best's best epoch's (its row has its last)
    best_note: str = ""  # a pruned best's `pruned at epoch 3, best epoch 2`

    @property
    def value(self) -> float | None:
        if self.best is None:
            return None
        return self.best.value if self.best_value is None else self.best_value


def e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def shown(value: Any) -> str:
    """A value at 4 significant digits, escaped."""
    return e(significant(value))


def sort_key(value: Any) -> str:
    """What the table sorts by: numbers in full precision, the rest as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return e(repr(value) if isinstance(value, float) else value)


def page(summary: Summary, rows: Sequence[Row], columns: tuple[Sequence[str], str],
         sections: Sequence[Section]) -> str:
    """`columns`: the parameters the trial table shows, and a note on why those."""
    blocks = [header(summary), best_block(summary), trials_block(summary, rows, *columns)]
    blocks += ['<div id="plots">', *(plot_block(s) for s in sections), "</div>"]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>tuner report: {e(summary.name)}</title><style>{STYLE}</style></head>\n<body><main>\n"
        + "\n".join(blocks) + f"\n</main><script>{SCRIPT}</script></body></html>\n"
    )


def header(summary: Summary) -> str:
    total = sum(summary.counts.values())
    order = sorted(summary.counts, key=lambda s: (STATE_ORDER.index(s) if s in STATE_ORDER else len(STATE_ORDER), s))
    counts = ", ".join(f"{summary.counts[state]} {e(state)}" for state in order)
    note = f", {e(summary.best_note)}" if summary.best_note else ""
    best = (f"Best {e(summary.metric)}: <b>{shown(summary.value)}</b> (trial {summary.best.number}{note})."
            if summary.best else "No trial has completed yet.")
    links = ['<a href="#best">Best configuration</a>', '<a href="#trials">Trials</a>',
             '<a href="#plots">Plots</a>']
    return (f"<h1>Study {e(summary.name)}</h1>\n<p class=\"meta\">{e(summary.direction).capitalize()} "
            f"{e(summary.metric)}. {total} trial{'s' if total != 1 else ''}: {counts}. {best}</p>\n"
            f"<nav>{''.join(links)}</nav>")


def best_block(summary: Summary) -> str:
    best = summary.best
    if best is None:
        return '<section id="best"><h2>Best configuration</h2><p>No trial has completed yet.</p></section>'
    epochs = f", {best.epochs} epoch{'s' if best.epochs != 1 else ''}" if best.epochs is not None else ""
    if summary.best_note:  # a pruned best: its best epoch is what counted, and what retrain trains
        epochs = f" ({e(summary.best_note)}: its parameters trained for that many epochs reproduce it)"
    quoted = e(shlex.quote(summary.name))
    rows = "".join(f"<tr><th>{e(name)}</th><td>{shown(value)}</td></tr>" for name, value in sorted(best.params.items()))
    return (f'<section id="best"><h2>Best configuration</h2>\n<p>Trial {best.number}: {e(summary.metric)} '
            f"<b>{shown(summary.value)}</b>{epochs}.</p>\n<table class=\"kv\">{rows}</table>\n"
            f"<p class=\"note\">Save it: <code>tuner best --study {quoted} --format yaml &gt; best.yaml</code>; "
            f"train the final model: <code>tuner retrain --study {quoted} --out model</code> (with this "
            "report's <code>--storage</code>).</p></section>")


def trials_block(summary: Summary, rows: Sequence[Row], columns: Sequence[str], why: str) -> str:
    heads = ['<th class="n">#</th>', "<th>state</th>", f'<th class="n">{e(summary.metric)}</th>',
             '<th class="n">epochs</th>', "<th>stop reason</th>"] + [f"<th>{e(c)}</th>" for c in columns]
    best = summary.best.number if summary.best else None
    body = "\n".join(trial_row(row, columns, row.number == best) for row in rows)
    return (f'<section id="trials"><h2>Trials</h2>\n<div class="scroll"><table class="sortable" id="trial-table">'
            f"<thead><tr>{''.join(heads)}</tr></thead>\n<tbody>\n{body}\n</tbody></table></div>\n"
            '<p class="note">Click a column header to sort. A pruned trial\'s value (grey) is its last epoch\'s.'
            f"{' The best trial is highlighted.' if best is not None else ''} {e(why)}</p></section>")


def trial_row(row: Row, columns: Sequence[str], best: bool) -> str:
    value = shown(row.value) if row.value is not None else ""
    muted = ' muted" title="last reported epoch' if row.last_reported else ""
    cells = [f'<td class="n">{row.number}</td>', f'<td class="state-{e(row.state)}">{e(row.state)}</td>',
             f'<td class="n{muted}" data-v="{sort_key(row.value)}">{value}</td>',
             f'<td class="n">{e(row.epochs) if row.epochs is not None else ""}</td>', f"<td>{e(row.stop_reason)}</td>"]
    for name in columns:
        present = name in row.params
        cells.append(f'<td data-v="{sort_key(row.params.get(name))}">{shown(row.params[name]) if present else ""}</td>')
    return f"<tr{BEST_ROW if best else ''}>{''.join(cells)}</tr>"


def plot_block(section: Section) -> str:
    parts = [f"<section><h2>{e(section.title)}</h2>"]
    if section.image:
        size = f' width="{section.size[0]}" height="{section.size[1]}"' if section.size else ""
        parts.append(f'<figure><img src="{e(section.image)}" alt="{e(section.title)}"{size}></figure>')
    if section.note:
        parts.append(f'<p class="note">{e(section.note)}</p>')
    return "".join(parts) + "</section>"
