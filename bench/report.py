"""The machine description, the targets (PASS/MISS) and the printed tables of a benchmark run."""

import contextlib
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from app.store.embed import MODEL_NAME
from bench.watch import NOISY_CORES

CORPUS_LABEL = {"seed": "seed corpus", "squad": "SQuAD split", "synth": "synthetic 50k"}


def machine() -> dict[str, Any]:
    """Cores, CPU model, RAM, and the versions that decide the numbers."""
    import torch

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    versions = {}
    for package in ("sentence-transformers", "chromadb", "llama-index-core", "fastapi", "uvicorn", "bm25s"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_model": model,
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "model": MODEL_NAME,
        "os": f"{platform.system()} {platform.release()}",
        "versions": versions,
    }


def describe(m: dict[str, Any]) -> str:
    """The machine in one line."""
    return (
        f"{m['cores']} cores ({m['cpu_model']}), {m['ram_gb']} GiB RAM, Python {m['python']}, "
        f"torch {m['torch']} ({m['torch_threads']} threads by default), model {m['model']}"
    )


def _target(name: str, value: float | None, limit: float, unit: str, background: float | None = None) -> dict:
    higher_is_better = unit == "req/s"
    ok = None if value is None else (value >= limit if higher_is_better else value <= limit)
    noisy = background is not None and background > NOISY_CORES
    return {"name": name, "value": value, "limit": limit, "unit": unit, "pass": ok, "noisy": noisy}


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target that this run measured, flagged when other processes disturbed it. With the reader on
    the latency and throughput targets are the reader's own (docs/benchmark.md), and the ratio to the
    starter, whose retrieval reads nothing, is reported in the query table but not held to 1.3."""
    out = []
    query, ingest = r.get("query", {}), r.get("ingest", {})
    bg = {n: q.get("background_cores") for n, q in query.items()}
    reader = r.get("read_budget", 0) > 0
    for name, limit in (("seed", 60), ("synth", 90)) if reader else (("seed", 20), ("synth", 40)):
        if name in query:
            out.append(
                _target(
                    f"/ask p50 over HTTP, {CORPUS_LABEL[name]}",
                    query[name]["ask"]["p50_ms"],
                    limit,
                    "ms",
                    bg[name],
                )
            )
    for name, q in query.items():
        for route in ("ask", "retrieve"):
            ratio = round(q[route]["p95_ms"] / q[route]["p50_ms"], 2)
            out.append(_target(f"/{route} p95/p50, {CORPUS_LABEL[name]}", ratio, 2, "x", bg[name]))
    for name, q in query.items():
        if "ask_over_starter" in q and not reader:
            noise = max(bg[name] or 0.0, q["starter"].get("background_cores") or 0.0)
            label = f"/ask p50 / starter retrieve p50, {CORPUS_LABEL[name]}"
            out.append(_target(label, q["ask_over_starter"], 1.3, "x", noise))
    for name, i in ingest.items():
        out.append(
            _target(
                f"ingest / bare encode, {CORPUS_LABEL[name]}",
                i["ratio_to_bare"],
                1.25,
                "x",
                i.get("background_cores"),
            )
        )
    tp = r.get("throughput", {}).get("seed")
    if tp:
        out.append(
            _target(
                "/ask requests/s at concurrency 8, seed corpus",
                tp["rps"],
                25 if reader else 60,
                "req/s",
                tp.get("background_cores"),
            )
        )
    cold = r.get("cold_start", {})
    if "ask_s" in cold:
        out.append(_target("`citeqa ask` one-shot", cold["ask_s"], 6, "s", cold.get("ask_background_cores")))
    if "seed" in query:
        out.append(_target("server peak RSS, seed corpus", query["seed"]["peak_rss_mb"], 1200, "MB"))
    return out


def _table(head: list[str], rows: list[list[Any]]) -> str:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(head)]
    line = lambda xs: "| " + " | ".join(x.ljust(w) for x, w in zip(xs, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# Columns of each table: (heading, path into the corpus's entry of that section).
INGEST_COLUMNS = [
    ("runs", "runs"), ("ingest s", "ingest_s"), ("chunks/s", "chunks_per_s"),
    ("bare chunks s", "bare_encode_chunks_s"), ("ingest/bare", "ratio_to_bare"),
    ("bare sentences s", "bare_encode_sentences_s"), ("ingest/bare sentences", "ratio_to_bare_sentences"),
    ("own encode sentences s", "own_encode_sentences_s"), ("ingest/own encode", "ratio_to_own_encode"),
    ("background cores", "background_cores"),
]  # fmt: skip
QUERY_COLUMNS = [
    ("n", "ask.n"), ("/ask p50", "ask.p50_ms"), ("/ask p95", "ask.p95_ms"),
    ("/retrieve p50", "retrieve.p50_ms"), ("/retrieve p95", "retrieve.p95_ms"),
    ("starter p50", "starter.p50_ms"), ("starter p95", "starter.p95_ms"), ("/ask ÷ starter", "ask_over_starter"),
    ("background cores", "background_cores"), ("server start s", "server_start_s"), ("idle RSS MB", "idle_rss_mb"),
    ("peak RSS MB", "peak_rss_mb"), ("peak anon MB", "peak_anon_mb"),
]  # fmt: skip
STAGE_COLUMNS = [
    (s, f"ask.server_stage_p50_ms.{s}") for s in ("embed", "search", "score", "read", "compose", "total")
] + [("read share", "ask.read_share")]
THROUGHPUT_COLUMNS = [
    ("concurrency", "concurrency"), ("seconds", "seconds"), ("requests", "requests"), ("errors", "errors"),
    ("req/s", "rps"), ("p50 ms", "p50_ms"), ("p95 ms", "p95_ms"), ("client cores", "client_cores"),
    ("background cores", "background_cores"),
]  # fmt: skip
SECTIONS = [
    ("corpora", "Corpora", [("documents", "documents"), ("chunks", "chunks"), ("sentences", "sentences"),
                            ("note", "note")]),
    ("ingest", "Ingest (s; median of runs, warm model; bare = SentenceTransformer.encode of the same texts, "
               "own encode = citeqa's ONNX encoder on the sentences ingest embeds)",
     INGEST_COLUMNS),
    ("query", "Query (ms; HTTP keep-alive, one request at a time; starter = llama-index retrieve in-process)",
     QUERY_COLUMNS),
    ("query", "Server-side /ask stages (p50 ms, from the responses' timings_ms)", STAGE_COLUMNS),
    ("throughput", "Throughput (/ask; back-to-back clients, one keep-alive connection each)", THROUGHPUT_COLUMNS),
]  # fmt: skip


def _get(entry: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        entry = entry.get(key, {}) if isinstance(entry, dict) else {}
    return None if entry == {} else entry


def render(r: dict[str, Any]) -> str:
    """The run as markdown tables (readable in a terminal, pasteable into docs/benchmark.md)."""
    load = r["load_avg"]
    parts = [
        f"machine: {describe(r['machine'])}",
        f"run: {r['mode']}, {r['started']}, {r['duration_s'] / 60:.1f} min; "
        f"1-min load average {load['start']} at start, {load.get('end')} at end; "
        + (f"reader on (budget {r['read_budget']})" if r.get("read_budget", 0) > 0 else "reader off"),
    ]
    for section, title, columns in SECTIONS:
        if r.get(section):
            rows = [[CORPUS_LABEL[n], *(_get(e, path) for _, path in columns)] for n, e in r[section].items()]
            parts += [title, _table(["corpus", *(h for h, _ in columns)], rows)]
    cold = r.get("cold_start", {})
    if "ask_s" in cold:
        runs = {k: ", ".join(f"{x:.2f}" for x in cold.get(f"{k}_runs_s", [])) for k in ("ask", "serve")}
        rows = [
            ["`citeqa ask` one-shot", cold["ask_s"], runs["ask"], cold.get("ask_background_cores")],
            ["`citeqa serve` to a healthy /health", cold.get("serve_s"), runs["serve"], None],
        ]
        parts += ["Cold start (s, seed corpus)", _table(["what", "median", "runs", "background cores"], rows)]
    rows = []
    for t in r["targets"]:
        verdict = ("–" if t["pass"] is None else ("PASS" if t["pass"] else "MISS")) + (
            "*" if t.get("noisy") else ""
        )
        sign = ">=" if t["unit"] == "req/s" else "<="
        rows.append(
            [verdict, t["name"], f"{_fmt(t['value'])} {t['unit']}", f"{sign} {_fmt(t['limit'])} {t['unit']}"]
        )
    parts += ["Targets", _table(["", "target", "value", "limit"], rows)]
    if any(t.get("noisy") for t in r["targets"]):
        parts.append(
            f"* other processes used more than {NOISY_CORES} cores during this measurement: re-run it."
        )
    return "\n\n".join(parts)
