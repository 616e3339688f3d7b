"""The Explain tab's decomposition chart: one bar per term of the logit, as HTML (CSS bars:
it is redrawn at every slider step, and a matplotlib figure would cost far more), with
a table of every term (its kind in words, its module) for screen readers, and the names
of the terms' kinds (SPEC 2's roles)."""

from __future__ import annotations

import html

from explorer.draw import share_text
from explorer.explanation import Explanation
from explorer.view import is_cumulative


def term_html(explanation: Explanation, term_index: int) -> str:
    """A term's readable name, its module path (and what the module is) as a tooltip."""
    title = html.escape(explanation.title(term_index))
    if not explanation.labels:
        return title
    label = explanation.labels[term_index]
    tip = html.escape(f"{label.path}: {label.detail}" if label.detail else label.path)
    return f'<span title="{tip}">{title}</span>'


ROLE_WORDS = {
    "input": "input",
    "bias": "bias",
    "saturation": "saturation",
    "activation": "activation intercept",
    "gate": "gate intercept",
    "norm": "norm intercept",
}
"""How the chart and its table name each of a term's roles (SPEC 2's ``Term.kind``)."""


def kind_text(kind: str, source: str = "") -> str:
    """A term's kind in words, with what makes it: ``"bias + activation intercept
    (Conv2d+BatchNorm2d+SiLU)"``; an unknown role is shown as it is."""
    words = " + ".join(ROLE_WORDS.get(role, role) for role in kind.split("+"))
    return f"{words} ({source})" if source else words


def unmapped_words(explanation: Explanation) -> str:
    """What the terms without a map are: the classifier's biases on a piecewise-linear
    model; with 1 x 1 vectors (squeeze-excite) among them on the others."""
    kinds = {t.kind for t in explanation.result.terms if not t.spatial}
    return "classifier bias" if kinds <= {"bias"} else "classifier bias or 1 x 1 vector"


_DIM_KEY = '<span><i class="tg-key tg-pos tg-dim"></i>not yet included</span>'

CHART_CSS = """
.tg-chart { margin: 0; padding-top: 1.6em; font-size: var(--text-sm, 14px); }
.tg-chart figcaption { margin-bottom: 6px; }
.tg-frame { display: flex; gap: 6px; align-items: stretch; }
.tg-yaxis { position: relative; height: 190px; font-size: 11px; min-width: 3.5em;
  color: var(--body-text-color-subdued, #666); }
.tg-yaxis span { position: absolute; right: 0; transform: translateY(50%); line-height: 1; }
.tg-plot { position: relative; flex: 1; height: 190px; display: flex; gap: 1px;
  border-left: 1px solid var(--border-color-primary, #ccc);
  border-bottom: 1px solid var(--border-color-primary, #ccc); }
.tg-zero { position: absolute; left: 0; right: 0; height: 0;
  border-top: 1px solid var(--body-text-color, #333); pointer-events: none; }
.tg-col { position: relative; flex: 1; min-width: 2px; height: 100%; }
.tg-col[data-pos] { cursor: pointer; }
.tg-col[data-pos]:hover { background: rgba(255, 127, 14, 0.15); }
.tg-bar { position: absolute; left: 0; right: 0; min-height: 1px; }
.tg-pos { background: #1f77b4; }
.tg-neg { background: #d62728; }
.tg-ns { background: repeating-linear-gradient(45deg, #7f7f7f 0 3px, #d9d9d9 3px 6px); }
.tg-dim { opacity: 0.3; }
.tg-cur { background: #ff7f0e; outline: 2px solid #ff7f0e; outline-offset: 1px; z-index: 1; }
.tg-xaxis { display: flex; justify-content: space-between; margin-left: calc(3.5em + 6px);
  font-size: 11px; color: var(--body-text-color-subdued, #666); }
.tg-legend { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 6px; font-size: 12px; }
.tg-key { display: inline-block; width: 12px; height: 12px; vertical-align: middle;
  margin-right: 4px; }
.tg-chart details { margin-top: 8px; }
.tg-chart table { font-size: 12px; border-collapse: collapse; }
.tg-chart td, .tg-chart th { padding: 1px 8px; text-align: right; }
.tg-chart td:first-child, .tg-chart th:first-child,
.tg-chart td:nth-child(2), .tg-chart th:nth-child(2),
.tg-chart td:nth-child(3), .tg-chart th:nth-child(3) { text-align: left; }
.tg-chart tr[aria-current] { background: #ffe0b2; font-weight: bold; }
"""
"""Styles of :func:`chart_html`, scoped to its ``gr.HTML`` through ``css_template``."""

CHART_JS = """
element.addEventListener('click', (event) => {
  const column = event.target.closest('[data-pos]');
  if (column) trigger('select', {index: Number(column.dataset.pos), value: column.title});
});
"""
"""The chart's ``js_on_load``: a click on a bar with a map sends its slider position as a
``select`` event (the handler checks it like any other value from the page)."""


def chart_caption(explanation: Explanation, position: int) -> str:
    """The chart's caption (HTML): the logit, its terms and the gap, the term at slider
    ``position`` (highlighted) with its value and share, and what shares are of."""
    terms = explanation.result.terms
    current = explanation.term_indices[position]
    value = float(terms[current].contribution[0])
    return (
        f"Logit {explanation.logit:.3f} = sum of {len(terms)} terms (completeness gap "
        f"{explanation.gap:.1e}). Highlighted: <b>{term_html(explanation, current)}</b>, "
        f"{value:+.3f} logit units ({share_text(explanation, value)}). Shares are of the sum "
        f"of the absolute sizes of all terms, {explanation.total_size:.3f}, which stays "
        "meaningful when the logit is small or negative."
    )


def chart_html(explanation: Explanation, position: int, mode: str | None) -> str:
    """One bar per term of the logit, the term at ``position`` highlighted, as HTML.

    Blue: pushes the logit up; red: down; hatched grey: terms without a map (the
    classifier's biases, squeeze-excite vectors); orange: the slider's term. In
    "everything up to here" mode the terms not yet included are faded. A table with
    every number follows, for screen readers.
    """
    result = explanation.result
    terms = result.terms
    values = [float(t.contribution[0]) for t in terms]
    logit = explanation.logit
    current = explanation.term_indices[position]
    caption = chart_caption(explanation, position)
    cumulative = is_cumulative(mode)
    top = max(0.0, *values)
    bottom = min(0.0, *values)
    span = (top - bottom) or 1.0
    zero = -bottom / span * 100
    positions = {term_index: k for k, term_index in enumerate(explanation.term_indices)}

    columns = []
    rows = []
    for index, (term, value) in enumerate(zip(terms, values, strict=True)):
        height = abs(value) / span * 100
        base = zero if value >= 0 else zero - height
        classes = ["tg-bar", "tg-pos" if value >= 0 else "tg-neg"]
        if not term.spatial:
            classes.append("tg-ns")
        if index == current:
            classes.append("tg-cur")
        elif cumulative and term.spatial and index > current:
            classes.append("tg-dim")
        grid = f"{term.grid[0]}x{term.grid[1]}" if term.grid else "no map"
        title = explanation.title(index)
        tip = (
            f"{title} ({term.name}, {kind_text(term.kind, term.source)}): "
            f"{value:+.4g} = {share_text(explanation, value)}"
        )
        position = positions.get(index)
        jump = "" if position is None else f' data-pos="{position}"'
        columns.append(
            f'<div class="tg-col"{jump} title="{html.escape(tip)}">'
            f'<div class="{" ".join(classes)}" '
            f'style="bottom:{base:.3f}%;height:{height:.3f}%"></div></div>'
        )
        mark = ' aria-current="true"' if index == current else ""
        rows.append(
            f"<tr{mark}><td>{html.escape(title)}</td><td>{html.escape(term.name)}</td>"
            f"<td>{html.escape(kind_text(term.kind, term.source))}</td><td>{grid}</td>"
            f"<td>{value:+.4f}</td><td>{share_text(explanation, value)}</td></tr>"
        )

    value = values[current]
    spatial = explanation.positions
    label = (
        f"Bar chart of the {len(terms)} terms of the logit {logit:.3f}: the input term, "
        f"{spatial - 1} layer terms and {len(terms) - spatial} terms without a map. "
        f"Largest {top:+.3f}, smallest {bottom:+.3f}. Highlighted: "
        f"{explanation.title(current)}, {value:+.3f}. Click a bar to show its map."
    )
    return (
        '<figure class="tg-chart">'
        f"<figcaption>{caption}</figcaption>"
        '<div class="tg-frame">'
        '<div class="tg-yaxis" aria-hidden="true">'  # each label at its value's height
        f'<span style="bottom:100%">{top:+.2f}</span>'
        f'<span class="tg-zero-label" style="bottom:{zero:.3f}%">0</span>'
        f'<span style="bottom:0%">{bottom:+.2f}</span></div>'
        f'<div class="tg-plot" role="img" aria-label="{html.escape(label)}">'
        f'<div class="tg-zero" style="bottom:{zero:.3f}%"></div>'
        + "".join(columns)
        + "</div></div>"
        '<div class="tg-xaxis" aria-hidden="true"><span>input</span>'
        "<span>layers, in forward order →</span><span>classifier</span></div>"
        '<div class="tg-legend" aria-hidden="true">'
        '<span><i class="tg-key tg-pos"></i>raises the logit</span>'
        '<span><i class="tg-key tg-neg"></i>lowers it</span>'
        f'<span><i class="tg-key tg-ns"></i>{unmapped_words(explanation)} (no map)</span>'
        '<span><i class="tg-key tg-cur"></i>current position</span>'
        + (_DIM_KEY if cumulative else "")
        + "</div>"
        "<details><summary>Every term as a table</summary><table>"
        "<thead><tr><th>term</th><th>module</th><th>kind</th><th>grid</th><th>contribution</th>"
        "<th>share</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></details>"
        "</figure>"
    )
