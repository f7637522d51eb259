"""A picture of a checked history: one self-contained HTML page (inline SVG and CSS, no JS).

Each client has a lane; each op is a bar from its call to its return (an op that never
returned runs to the right edge, dashed). For a failing result only the failing part is
drawn: the ops of the longest linearizable prefix are green and numbered in the order that
linearization takes them (hover for the state after each), the op that cannot follow it is
red, and the other ops left are grey. The failure's account follows the picture.
Everything drawn is escaped; lanes are sorted by the client's name.
"""

from __future__ import annotations

import html
import math
from typing import Any

from ._linearizability import Model, Operation, Result

_LANE = 30  # px per client lane
_BAR = 20  # px of bar height
_LEFT = 110  # px for the lane labels
_CHAR = 6.6  # px per character of label text (monospace, 11 px)

_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
.scroll { overflow-x: auto; border: 1px solid #ccc; }
svg text { font: 11px ui-monospace, monospace; }
.lane { fill: #f6f6f6; } .lane.odd { fill: #ececec; }
.op rect { stroke: #555; stroke-width: 1; }
.prefix rect { fill: #a6dba0; } .culprit rect { fill: #f4a3a3; stroke: #b00; stroke-width: 2; }
.rest rect { fill: #d9d9d9; } .ok rect { fill: #cfe2f3; }
.pending rect { stroke-dasharray: 4 3; fill-opacity: 0.5; }
.axis { stroke: #999; } .legend span { display: inline-block; padding: 0 .6em; margin-right: .5em; }
pre { background: #f8f8f8; padding: 1em; overflow-x: auto; }
"""


def render_html(result: Result[Any, Any, Any], *, title: str = "Linearizability check") -> str:
    """The page for ``result``: the failing part if it failed, else every op."""
    model, failure = result.model, result.failure
    ops = failure.operations if failure is not None else result.operations
    role: dict[int, str] = {}
    tip: dict[int, str] = {}
    if failure is not None:
        role = dict.fromkeys(range(len(ops)), "rest")
        for k, (i, state) in enumerate(zip(failure.prefix, failure.states, strict=True), 1):
            role[i] = "prefix"
            tip[i] = f"#{k} of the longest linearizable prefix; state after: "
            tip[i] += model.state_text(state)
        role[failure.culprit] = "culprit"
        tip[failure.culprit] = "cannot follow the longest linearizable prefix"
    order = {i: k for k, i in enumerate(failure.prefix, 1)} if failure is not None else {}
    svg = _svg(ops, model, role, tip, order)
    verdict = {True: "linearizable", False: "not linearizable", None: "unknown (timed out)"}
    heading = f"{html.escape(title)}: {verdict[result.ok]}"
    what = (
        f"part {failure.part + 1} of {result.parts} ({len(ops)} operations)"
        if failure is not None
        else f"{len(ops)} operations in {result.parts} parts"
    )
    legend = (
        '<p class="legend"><span style="background:#a6dba0">longest linearizable prefix '
        '(numbered)</span><span style="background:#f4a3a3">cannot follow it</span>'
        '<span style="background:#d9d9d9">not linearized</span> dashed: never returned</p>'
        if failure is not None
        else ""
    )
    account = f"<pre>{html.escape(result.account)}</pre>" if result.account else ""
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{heading}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{heading}</h1><p>{html.escape(what)}</p>{legend}"
        f"<div class='scroll'>{svg}</div>{account}</body></html>\n"
    )


def _svg(
    ops: list[Operation[Any, Any]],
    model: Model[Any, Any, Any],
    role: dict[int, str],
    tip: dict[int, str],
    order: dict[int, int],
) -> str:
    clients = sorted({str(op.client) for op in ops})
    lane_of = {c: k for k, c in enumerate(clients)}
    start = min((op.call for op in ops), default=0.0)
    finish = max((t for op in ops for t in (op.call, op.ret) if t is not None), default=1.0)
    span = max(finish - start, 1e-9)
    busiest = max((sum(1 for op in ops if str(op.client) == c) for c in clients), default=1)
    width = min(60_000, max(1_000, 90 * busiest))
    right = _LEFT + width + 40  # room for the bars of ops that never returned
    height = _LANE * len(clients) + 30

    def x(t: float) -> float:
        return _LEFT + (t - start) / span * width

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{right}" height="{height}">']
    for c, k in lane_of.items():
        y = k * _LANE
        odd = " odd" if k % 2 else ""
        parts.append(f'<rect class="lane{odd}" x="0" y="{y}" width="{right}" height="{_LANE}"/>')
        parts.append(f'<text x="4" y="{y + 19}">{html.escape(_clip(c, _LEFT - 8))}</text>')
    for tick in _ticks(start, finish):
        tx = x(tick)
        parts.append(f'<line class="axis" x1="{tx:.1f}" y1="0" x2="{tx:.1f}" y2="{height - 20}"/>')
        parts.append(f'<text x="{tx + 2:.1f}" y="{height - 6}">{tick:.6g}</text>')
    for i, op in enumerate(ops):
        x0 = x(op.call)
        x1 = right - 4 if op.ret is None else x(op.ret)
        w = max(x1 - x0, 2.0)
        y = lane_of[str(op.client)] * _LANE + (_LANE - _BAR) / 2
        classes = ["op", role.get(i, "ok")] + (["pending"] if op.ret is None else [])
        label = model.operation_text(op)
        if i in order:
            label = f"#{order[i]} {label}"
        title = model.describe(op) + (f"\n{tip[i]}" if i in tip else "")
        parts.append(
            f'<g class="{" ".join(classes)}"><title>{html.escape(title)}</title>'
            f'<rect x="{x0:.1f}" y="{y:.1f}" width="{w:.1f}" height="{_BAR}" rx="3"/>'
            f'<text x="{x0 + 3:.1f}" y="{y + 14:.1f}">{html.escape(_clip(label, w - 6))}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _clip(text: str, pixels: float) -> str:
    fits = int(pixels / _CHAR)
    if len(text) <= fits:
        return text
    return text[: max(fits - 1, 0)] + "…" if fits > 1 else ""


def _ticks(start: float, finish: float) -> list[float]:
    """About ten round times between ``start`` and ``finish``."""
    span = finish - start
    if span <= 0:
        return [start]
    step = 10 ** math.floor(math.log10(span / 10))
    for factor in (1, 2, 5, 10):
        if span / (step * factor) <= 12:
            step *= factor
            break
    first = math.ceil(start / step) * step
    return [first + k * step for k in range(int((finish - first) / step) + 1)]
