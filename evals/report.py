"""The eval report: JSON, Markdown, a self-contained HTML page with inline SVG charts, and the run history."""

import json
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from evals.metrics import BENCHMARKS, HEADLINE, LOWER_IS_BETTER, ROUNDING, SQUAD_HEADLINE, Check, fmt

HISTORY = "history.jsonl"
# Runs charted in the history panel: enough to see a trend, few enough to read each point.
HISTORY_RUNS = 10
# Metrics drawn against the baseline and over past runs (counts and latency tails add little there).
CHARTED = HEADLINE[: HEADLINE.index("citation_validity") + 1]
SQUAD_CHARTED = SQUAD_HEADLINE[: SQUAD_HEADLINE.index("false_abstention_rate") + 1]
TRENDED = (
    "pass_rate",
    "answer_match",
    "evidence_match",
    "hit_at_5",
    "mrr",
    "abstention_rate",
    "false_abstention_rate",
    "latency_p50_ms",
)
OK, BAD, BAR, MUTED = "#2e7d32", "#c62828", "#3b6ea5", "#888"


def append_history(folder: Path, run: Mapping[str, Any], summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Append this run to the folder's history file and return the last runs, oldest first."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / HISTORY
    entry = {**run, "metrics": {k: summary.get(k) for k in HEADLINE}}
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")
    runs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            runs.append(json.loads(line))
        except ValueError:  # a torn line from an interrupted run is skipped, not fatal
            continue
    return runs[-HISTORY_RUNS:]


def write(folder: Path, data: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> dict[str, Path]:
    """Write report.json, report.md and report.html into the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "report.json", "md": folder / "report.md", "html": folder / "report.html"}
    paths["json"].write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    paths["md"].write_text(markdown(data), encoding="utf-8")
    paths["html"].write_text(html(data, history), encoding="utf-8")
    return paths


def _status(name: str, checks: Sequence[Check]) -> str:
    found = [c for c in checks if c.metric == name]
    if not found:
        return "—"
    return "ok" if all(c.ok for c in found) else "FAIL"


def _checks(data: Mapping[str, Any]) -> list[Check]:
    return [Check(**c) for c in data.get("gate", [])]


def _benchmarks(data: Mapping[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any], list[Check]]]:
    """Each benchmark the run included: its key, figures, baseline and checks."""
    return [
        (key, section["metrics"], section.get("baseline") or {}, [Check(**c) for c in section["gate"]])
        for key in BENCHMARKS
        if (section := data.get(key))
    ]


def _failed(data: Mapping[str, Any]) -> list[Check]:
    return [c for c in _checks(data) + [c for *_, cs in _benchmarks(data) for c in cs] if not c.ok]


def _about(key: str, figures: Mapping[str, Any]) -> str:
    return (
        f"{figures['answerable']} answerable and {figures['unanswerable']} unanswerable {BENCHMARKS[key][1]}."
    )


def _benchmarks_markdown(data: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for key, figures, base, checks in _benchmarks(data):
        out += ["", f"## {BENCHMARKS[key][0]}", "", _about(key, figures), ""]
        out += _md_table(figures, base, checks, SQUAD_HEADLINE)
    return out


def _md_table(
    figures: Mapping[str, Any], base: Mapping[str, Any], checks: Sequence[Check], keys: Sequence[str]
) -> list[str]:
    """Metrics against the baseline, with the gate, as a Markdown table."""
    rows = [
        f"| {k} | {fmt(figures.get(k), k)} | {fmt(base.get(k), k)} | {_status(k, checks)} |" for k in keys
    ]
    return ["| metric | value | baseline | gate |", "| --- | ---: | ---: | --- |", *rows]


def table(
    summary: Mapping[str, Any],
    baseline: Mapping[str, Any],
    checks: Sequence[Check],
    keys: Sequence[str] = HEADLINE,
) -> str:
    """The headline metrics (or the given ones) as a fixed-width table for the terminal."""
    rows = [("metric", "value", "baseline", "gate")]
    rows += [(k, fmt(summary.get(k), k), fmt(baseline.get(k), k), _status(k, checks)) for k in keys]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _failures(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [r for r in data["results"] if not r["passed"]]


def _expected(r: Mapping[str, Any]) -> str:
    if r["unanswerable"]:
        return "an abstention"
    answer = ", ".join(f"/{p}/" for p in r["expected_answer"]) or "(any answer)"
    return f"answer {answer}; a quote matching /{r['expected_evidence']}/"


def markdown(data: Mapping[str, Any]) -> str:
    """The report as Markdown: headline table, gate, per-tag table and failures."""
    m, run, checks = data["metrics"], data["run"], _checks(data)
    base = (data.get("baseline") or {}).get("metrics", {})
    out = [
        f"# citeqa eval: gate {run['gate']}",
        "",
        f"{run['at']} · {run['mode']} · {run['target']} · {m['passed']}/{m['questions']} passed"
        f" · {run['seconds']} s",
        "",
        *_md_table(m, base, checks, HEADLINE),
    ]
    out += _benchmarks_markdown(data)
    failed = _failed(data)
    if failed:
        out += ["", "## Gate failures", ""] + [f"- {c.describe()}" for c in failed]
    out += [
        "",
        "## Per tag",
        "",
        "| tag | n | pass | answer | evidence | hit@5 | MRR | abstention |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for tag, t in data["tags"].items():
        cells = [
            fmt(t[k])
            for k in ("pass_rate", "answer_match", "evidence_match", "hit_at_5", "mrr", "abstention_rate")
        ]
        out.append(f"| {tag} | {t['questions']} | " + " | ".join(cells) + " |")
    failures = _failures(data)
    out += ["", f"## Failures ({len(failures)})", ""]
    for r in failures:
        out += [
            f"### {r['id']}",
            "",
            f"- question: {r['question']}",
            f"- expected: {_expected(r)}",
            f"- answer: {r['answer'] or '(none)'}",
            f"- why: {'; '.join(r['reasons'])}",
        ]
        out += [
            f"- quote [{x['n']}] {x['doc_id']} {x['start']}:{x['end']}: “{x['quote']}”" for x in r["quotes"]
        ]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def bars(rows: Sequence[tuple[str, float | None, float | None, str, bool]], width: int = 720) -> str:
    """A horizontal bar chart of 0-1 values: (label, value, baseline tick, note, ok) per row."""
    label_w, note_w, row_h = 190, 150, 24
    plot_w = width - label_w - note_w
    height = row_h * len(rows) + 28
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for frac in (0, 0.25, 0.5, 0.75, 1):
        x = label_w + frac * plot_w
        parts.append(f'<line x1="{x:.1f}" y1="4" x2="{x:.1f}" y2="{height - 20}" stroke="#e3e3e3"/>')
        parts.append(
            f'<text x="{x:.1f}" y="{height - 6}" font-size="10" text-anchor="middle" fill="{MUTED}">'
            f"{frac:g}</text>"
        )
    for i, (label, value, tick, note, ok) in enumerate(rows):
        y = 6 + i * row_h
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 14}" font-size="12" text-anchor="end">{escape(label)}</text>'
        )
        if value is not None:
            w = max(0.0, min(1.0, value)) * plot_w
            parts.append(
                f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" '
                f'fill="{BAR if ok else BAD}"><title>{escape(label)}: {value:.3f}</title></rect>'
            )
        if tick is not None:
            x = label_w + max(0.0, min(1.0, tick)) * plot_w
            parts.append(
                f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + row_h - 2}" stroke="#111" '
                f'stroke-width="2"><title>baseline {tick:.3f}</title></line>'
            )
        parts.append(f'<text x="{label_w + plot_w + 8}" y="{y + 14}" font-size="12">{escape(note)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def trend(name: str, values: Sequence[float | None], baseline: float | None, width: int = 230) -> str:
    """A small line chart of one metric over the last runs, with the baseline dashed."""
    height, pad, left = 120, 26, 40
    known = [v for v in values if v is not None]
    if name.endswith("_ms"):
        lo, hi = 0.0, max([*known, baseline or 0.0, 1.0]) * 1.15
    else:
        lo, hi = 0.0, 1.0
    plot_w, plot_h = width - left - 8, height - 2 * pad
    top = f"{hi:.0f} ms" if name.endswith("_ms") else f"{hi:g}"

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (plot_w * i / (len(values) - 1) if len(values) > 1 else plot_w / 2)
        return x, pad + plot_h * (1 - (v - lo) / ((hi - lo) or 1.0))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
        f'<text x="{left}" y="14" font-size="12" font-weight="bold">{escape(name)}</text>',
        f'<rect x="{left}" y="{pad}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#ddd"/>',
        f'<text x="{left - 4}" y="{pad + 4}" font-size="9" text-anchor="end" fill="{MUTED}">{top}</text>',
        f'<text x="{left - 4}" y="{pad + plot_h}" font-size="9" text-anchor="end" fill="{MUTED}">0</text>',
    ]
    if baseline is not None:
        _, y = xy(0, baseline)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#111" '
            f'stroke-dasharray="4 3"><title>baseline {fmt(baseline, name)}</title></line>'
        )
    points = [(xy(i, v), v) for i, v in enumerate(values) if v is not None]
    if len(points) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for (x, y), _ in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{BAR}" stroke-width="2"/>')
    for (x, y), v in points:
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{BAR}"><title>{fmt(v, name)}</title></circle>'
        )
    if points:
        (x, y), v = points[-1]
        parts.append(
            f'<text x="{min(x, left + plot_w - 2):.1f}" y="{height - 8}" font-size="11" text-anchor="end">'
            f"latest {fmt(v, name)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.pass{color:#2e7d32}.fail{color:#c62828}.muted{color:#777}
table{border-collapse:collapse;font-size:13px}
td,th{border-bottom:1px solid #eee;padding:3px 10px;text-align:right}
td:first-child,th:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:8px 24px;align-items:flex-start}
.failure{border:1px solid #e5c7c7;border-left:4px solid #c62828;border-radius:4px}
.failure{padding:8px 12px;margin:10px 0}
.failure p{margin:3px 0}.quote{background:#f6f6f6;border-left:3px solid #bbb;margin:4px 0;padding:4px 8px}
code{background:#f2f2f2;padding:0 3px;border-radius:3px}
"""


def html(data: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> str:
    """The self-contained HTML page: every value from the run is escaped, every chart is inline SVG."""
    m, run, checks = data["metrics"], data["run"], _checks(data)
    baseline = data.get("baseline") or {}
    base, base_tags = baseline.get("metrics", {}), baseline.get("tag_pass_rate", {})
    gate_cls = "pass" if run["gate"] == "pass" else "fail"
    out = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>citeqa eval report</title>',
        f"<style>{CSS}</style></head><body>",
        f'<h1>citeqa eval: <span class="{gate_cls}">gate {escape(run["gate"])}</span></h1>',
        f'<p class="muted">{escape(run["at"])} · {escape(run["mode"])} · {escape(run["target"])} · '
        f"{m['passed']}/{m['questions']} questions passed · {run['seconds']} s</p>",
    ]
    failed = _failed(data)
    if failed:
        out.append(
            '<ul class="fail">' + "".join(f"<li>{escape(c.describe())}</li>" for c in failed) + "</ul>"
        )
    out.append("<h2>Metrics against the baseline</h2>")
    out += _against_baseline(m, base, checks, CHARTED, HEADLINE)
    out += _benchmarks_html(data)
    out.append("<h2>Pass rate per tag</h2>")
    tag_rows = [
        (
            f"{tag} ({t['questions']})",
            t["pass_rate"],
            base_tags.get(tag),
            f"{t['passed']}/{t['questions']}",
            t["pass_rate"] is None
            or base_tags.get(tag) is None
            or t["pass_rate"] >= base_tags[tag] - ROUNDING,
        )
        for tag, t in data["tags"].items()
    ]
    out.append(bars(tag_rows))
    out.append(
        '<p class="muted">Ticks: the baseline pass rate of each tag; red bars are below it (not gated).</p>'
    )
    out.append(_tag_table(data["tags"]))
    out.append(f'<h2>Last runs ({len(history)})</h2><div class="grid">')
    for k in TRENDED:
        out.append(trend(k, [h.get("metrics", {}).get(k) for h in history], base.get(k)))
    out.append(
        '</div><p class="muted">Oldest on the left; dashed line is the baseline. History: '
        f"{escape(HISTORY)} in the report folder.</p>"
    )
    failures = _failures(data)
    out.append(f"<h2>Failures ({len(failures)})</h2>")
    out += [_failure(r) for r in failures] or ["<p>None.</p>"]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _benchmarks_html(data: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for key, figures, base, checks in _benchmarks(data):
        out += [
            f"<h2>{escape(BENCHMARKS[key][0])}</h2>",
            f'<p class="muted">{escape(_about(key, figures).replace("`", ""))} Gated like the question set.</p>',
            *_against_baseline(figures, base, checks, SQUAD_CHARTED, SQUAD_HEADLINE),
        ]
    return out


def _against_baseline(
    figures: Mapping[str, Any],
    base: Mapping[str, Any],
    checks: Sequence[Check],
    charted: Sequence[str],
    tabled: Sequence[str],
) -> list[str]:
    """Bars of the charted metrics with the baseline's ticks, beside a table of every metric and its gate."""
    rows = []
    for k in charted:
        value, tick = figures.get(k), base.get(k)
        note = f"{fmt(value, k)} (base {fmt(tick, k)})" if tick is not None else fmt(value, k)
        label = k + (" ↓" if k in LOWER_IS_BETTER else "")
        rows.append((label, value, tick, note, _status(k, checks) != "FAIL"))
    out = [
        '<div class="grid"><div>' + bars(rows, width=660),
        '<p class="muted">Bars are this run, black ticks the committed baseline; ↓ marks lower-is-better.<br>'
        "Red bars failed the gate.</p></div>",
        "<table><tr><th>metric</th><th>value</th><th>baseline</th><th>gate</th></tr>",
    ]
    for k in tabled:
        status = _status(k, checks)
        cls = {"ok": "pass", "FAIL": "fail"}.get(status, "muted")
        out.append(
            f"<tr><td>{k}</td><td>{fmt(figures.get(k), k)}</td><td>{fmt(base.get(k), k)}</td>"
            f'<td class="{cls}">{status}</td></tr>'
        )
    out.append("</table></div>")
    return out


def _tag_table(tags: Mapping[str, Mapping[str, Any]]) -> str:
    keys = CHARTED[: CHARTED.index("false_abstention_rate") + 1]
    head = "".join(f"<th>{k}</th>" for k in ("tag", "n", *keys))
    body = "".join(
        f"<tr><td>{escape(tag)}</td><td>{t['questions']}</td>"
        + "".join(f"<td>{fmt(t[k])}</td>" for k in keys)
        + "</tr>"
        for tag, t in tags.items()
    )
    return f"<details><summary>All metrics per tag</summary><table><tr>{head}</tr>{body}</table></details>"


def _failure(r: Mapping[str, Any]) -> str:
    parts = [
        f'<div class="failure" id="{escape(r["id"])}"><p><b>{escape(r["id"])}</b> '
        f'<span class="muted">{escape(", ".join(r["tags"]))}</span></p>'
    ]
    for turn in r["history"]:
        parts.append(f'<p class="muted">{escape(turn["role"])}: {escape(turn["content"])}</p>')
    parts.append(f"<p><b>Question:</b> {escape(r['question'])}</p>")
    if r["query"] != r["question"]:
        parts.append(f"<p><b>Searched:</b> {escape(r['query'])}</p>")
    parts.append(f"<p><b>Expected:</b> {escape(_expected(r))}</p>")
    parts.append(f"<p><b>Answer:</b> {escape(r['answer'] or '(none)')}</p>")
    parts.append(f"<p><b>Why:</b> {escape('; '.join(r['reasons']))}</p>")
    for x in r["quotes"]:
        flag = "" if x["valid"] else ' <b class="fail">offsets do not match</b>'
        parts.append(
            f'<div class="quote">[{x["n"]}] <code>{escape(x["doc_id"])} {x["start"]}:{x["end"]}</code>{flag}'
            f"<br>{escape(x['quote'])}</div>"
        )
    rank = r["relevant_rank"]
    if not r["unanswerable"]:
        parts.append(f'<p class="muted">first relevant passage: {rank if rank else "none in the top 10"}</p>')
    parts.append("</div>")
    return "".join(parts)
