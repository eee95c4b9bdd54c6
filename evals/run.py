"""`citeqa eval`: ask every question through the `/ask` code path, score, report and gate on the baseline."""

import argparse
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import httpx
import yaml

from app.errors import BadInput, CiteqaError
from app.schemas import Answer, Message, Passage, RetrieveResponse
from app.settings import Settings, get_settings
from evals import metrics, report, squad

# Passages scored for hit@k and MRR: enough to see a relevant one ranked just out of the answer's reach.
RETRIEVE_K = 10
# The shipped question set and its baseline.
SHIPPED_QUESTIONS = Path(__file__).resolve().parent / "questions.yaml"
SHIPPED_BASELINE = SHIPPED_QUESTIONS.with_name("baseline.json")
# Seconds before a remote call counts as failed; the first /ask of a cold server can be slow.
HTTP_TIMEOUT = 120.0


@dataclass
class Question:
    """One item of the question file."""

    id: str
    question: str
    answer: list[str]
    evidence: str
    unanswerable: bool
    tags: list[str]
    history: list[Message] = field(default_factory=list)


class Backend(Protocol):
    """What the eval needs from the system under test: the same calls a client of the API makes."""

    mode: str

    def ask(self, question: str, history: list[Message]) -> Answer:
        """Answer a question as POST /ask does."""
        ...

    def passages(self, query: str, top_k: int) -> list[Passage]:
        """Retrieve passages as POST /retrieve does."""
        ...

    def document_text(self, doc_id: str) -> str | None:
        """The cleaned text of a document that offsets index into, or None when it does not exist."""
        ...


def load_questions(path: Path) -> list[Question]:
    """Read and check the question file; a malformed item is a clear error, not a skipped question."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise BadInput(f"cannot read questions from {path}: {exc}") from exc
    if not isinstance(raw, list):
        raise BadInput(f"{path} must hold a list of questions")
    out: list[Question] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        where = f"{path} item {i + 1}"
        if not isinstance(item, dict) or not item.get("id") or not item.get("question"):
            raise BadInput(f"{where}: every question needs an id and a question")
        qid = str(item["id"])
        if qid in seen:
            raise BadInput(f"{where}: duplicate id {qid}")
        seen.add(qid)
        answer = item.get("answer") or []
        if not isinstance(answer, list):
            raise BadInput(f"{where} ({qid}): answer must be a list of regexes")
        patterns = [str(p) for p in answer]
        evidence = str(item.get("evidence") or "")
        for pattern in [*patterns, evidence]:
            try:
                re.compile(pattern, re.I)
            except re.error as exc:
                raise BadInput(f"{where} ({qid}): bad regex {pattern!r}: {exc}") from exc
        try:
            history = [Message.model_validate(m) for m in item.get("history") or []]
        except ValueError as exc:
            raise BadInput(f"{where} ({qid}): bad history: {exc}") from exc
        tags = [str(t) for t in item.get("tags") or []]
        out.append(
            Question(
                qid, str(item["question"]), patterns, evidence, bool(item.get("unanswerable")), tags, history
            )
        )
    return out


class InProcess:
    """A fresh index of the corpus in a temporary home, asked through `app.qa.answer` as the API does."""

    mode = "in-process"

    def __init__(self, corpus: Path, settings: Settings) -> None:
        from app.store.embed import get_embedder
        from app.store.index import Store
        from ingest.build import ingest

        self._tmp = tempfile.TemporaryDirectory(prefix="citeqa-eval-")
        # Always an embedded store: a shared Chroma server would mix (and prune) another index's collections.
        self.settings = settings.model_copy(update={"home": Path(self._tmp.name) / "index", "chroma_url": ""})
        self.embedder = get_embedder(settings.model_cache)
        ingest(corpus, self.settings, self.embedder)
        self.snapshot = Store(self.settings).open()

    def ask(self, question: str, history: list[Message]) -> Answer:
        """Answer with the default top_k, exactly as POST /ask does."""
        from app.qa.answer import ask

        return ask(self.snapshot, self.embedder, question, self.settings, history=history)

    def passages(self, query: str, top_k: int) -> list[Passage]:
        """Retrieve passages, exactly as POST /retrieve does."""
        from app.qa.answer import passages

        return passages(self.snapshot, self.embedder, query, self.settings, top_k)

    def document_text(self, doc_id: str) -> str | None:
        """The indexed document's text."""
        doc = self.snapshot.docs.get(doc_id)
        return doc.text if doc else None

    def close(self) -> None:
        """Delete the temporary index."""
        self._tmp.cleanup()


class HttpClient(Protocol):
    """The part of `httpx.Client` the eval uses (Starlette's TestClient has it too)."""

    def get(self, url: str) -> Any:
        """Send a GET."""
        ...

    def post(self, url: str, *, json: Any) -> Any:
        """Send a POST with a JSON body."""
        ...

    def close(self) -> None:
        """Release the connections."""
        ...


class Remote:
    """A running server, called over HTTP with the public contract only."""

    mode = "http"

    def __init__(self, url: str, client: HttpClient | None = None) -> None:
        self.url = url.rstrip("/")
        self.client: HttpClient = client or httpx.Client(base_url=self.url, timeout=HTTP_TIMEOUT)
        self._texts: dict[str, str | None] = {}
        try:
            health = self.client.get("/health")
        except httpx.HTTPError as exc:
            raise CiteqaError(f"cannot reach {self.url}: {exc}") from exc
        if health.status_code != 200:
            raise CiteqaError(f"{self.url}/health answered {health.status_code}: {health.text[:200]}")

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        response = self.client.post(path, json=body)
        if response.status_code != 200:
            raise CiteqaError(f"POST {path} answered {response.status_code}: {response.text[:300]}")
        return response.json()

    def ask(self, question: str, history: list[Message]) -> Answer:
        """POST /ask with the question and its history."""
        body = {"question": question, "history": [m.model_dump() for m in history]}
        return Answer.model_validate(self._post("/ask", body))

    def passages(self, query: str, top_k: int) -> list[Passage]:
        """POST /retrieve."""
        return RetrieveResponse.model_validate(
            self._post("/retrieve", {"question": query, "top_k": top_k})
        ).passages

    def document_text(self, doc_id: str) -> str | None:
        """GET /documents/{doc_id}, once per document."""
        if doc_id not in self._texts:
            response = self.client.get(f"/documents/{quote(doc_id, safe='')}")
            self._texts[doc_id] = response.json().get("text") if response.status_code == 200 else None
        return self._texts[doc_id]

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()


def score(q: Question, backend: Backend) -> dict[str, Any]:
    """Ask one question, retrieve for what was searched, and judge the answer, its quotes and offsets."""
    result: dict[str, Any] = {
        "id": q.id,
        "question": q.question,
        "tags": q.tags,
        "unanswerable": q.unanswerable,
        "history": [m.model_dump() for m in q.history],
        "expected_answer": q.answer,
        "expected_evidence": q.evidence,
        "answer": "",
        "abstained": False,
        "query": q.question,
        "quotes": [],
        "citations": 0,
        "invalid_citations": 0,
        "relevant_rank": None,
        "answer_match": False,
        "evidence_match": False,
        "passed": False,
        "latency_ms": None,
        "error": None,
        "reasons": [],
    }
    reasons: list[str] = result["reasons"]
    started = time.perf_counter()
    try:
        answer = backend.ask(q.question, q.history)
    except Exception as exc:  # a crash on one question is recorded and gated, not fatal to the run
        result["error"] = f"{exc.__class__.__name__}: {exc}"
        reasons.append(f"error: {result['error']}")
    else:
        result["latency_ms"] = (time.perf_counter() - started) * 1000
        result.update(answer=answer.answer, abstained=answer.abstained, query=answer.query)
        for c in answer.citations:
            valid = metrics.citation_valid(backend.document_text(c.doc_id), c.start, c.end, c.quote)
            result["quotes"].append(
                {
                    "n": c.n,
                    "doc_id": c.doc_id,
                    "quote": c.quote,
                    "start": c.start,
                    "end": c.end,
                    "valid": valid,
                }
            )
        result["citations"] = len(answer.citations)
        result["invalid_citations"] = sum(not x["valid"] for x in result["quotes"])
        if result["invalid_citations"]:
            reasons.append(f"{result['invalid_citations']} citation(s) do not match their document offsets")
    if not q.unanswerable:
        failed_retrieval = None
        try:
            # Retrieve for the query the answer searched, so follow-ups are scored on their rewritten form.
            texts = [p.text for p in backend.passages(result["query"], RETRIEVE_K)]
            result["relevant_rank"] = metrics.first_relevant_rank(q.evidence, texts) if q.evidence else None
        except Exception as exc:  # scored as a retrieval miss and an error; the answer is still judged
            failed_retrieval = f"retrieval {exc.__class__.__name__}: {exc}"
            reasons.append(f"error: {failed_retrieval}")
        if result["error"] is None:
            _judge_answer(q, result, reasons)
        result["error"] = result["error"] or failed_retrieval
    elif result["error"] is None and not result["abstained"]:
        reasons.append("answered a question the documents do not answer")
    result["passed"] = result["error"] is None and not reasons
    return result


def _judge_answer(q: Question, result: dict[str, Any], reasons: list[str]) -> None:
    if result["abstained"]:
        reasons.append("abstained on an answerable question")
        return
    quotes = [x["quote"] for x in result["quotes"]]
    result["answer_match"] = metrics.matches_all(q.answer, result["answer"])
    result["evidence_match"] = metrics.matches_any_quote(q.evidence, quotes)
    missing = [p for p in q.answer if not metrics.matches_all([p], result["answer"])]
    if missing:
        reasons.append("answer lacks " + ", ".join(f"/{p}/" for p in missing))
    if not result["evidence_match"]:
        reasons.append(f"no quote matches /{q.evidence}/")


def evaluate(
    questions: list[Question], backend: Backend, progress: Callable[[int, int], None] | None = None
) -> list[dict[str, Any]]:
    """Score every question in order."""
    results = []
    for i, q in enumerate(questions, 1):
        results.append(score(q, backend))
        if progress:
            progress(i, len(questions))
    return results


def baseline_of(questions: Path, given: str | None) -> Path:
    """The baseline for a question file: the one given, the shipped one for the shipped set, else the
    file's own beside it (recorded.yaml: recorded.baseline.json)."""
    if given is not None:
        return Path(given)
    if questions.resolve() == SHIPPED_QUESTIONS.resolve():
        return SHIPPED_BASELINE
    return questions.with_name(questions.stem + ".baseline.json")


def load_baseline(path: Path) -> tuple[dict[str, Any], dict[str, float | None]]:
    """The baseline metrics and tolerances; a bare number as `tolerance` applies to every gated metric."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BadInput(
            f"no baseline at {path}; create one on purpose with `citeqa eval --update-baseline`"
        ) from exc
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read the baseline {path}: {exc}") from exc
    tol = data.get("tolerance", metrics.DEFAULT_TOLERANCE)
    if isinstance(tol, int | float):
        tol = {k: None if v is None else float(tol) for k, v in metrics.DEFAULT_TOLERANCE.items()}
    return data, tol


def baseline_from(
    summary: dict[str, Any],
    tags: dict[str, dict[str, Any]],
    previous: dict[str, Any] | None,
    n: int,
    benchmarks: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A new baseline from this run, keeping the previous file's tolerances (and a benchmark's figures when
    the run did not include it)."""
    ran = benchmarks or {}
    return {
        "note": "Written by `citeqa eval --update-baseline` from a real run; commit changes with a reason.",
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "questions": n,
        "metrics": {k: _round(summary[k]) for k in metrics.HEADLINE},
        "tolerance": (previous or {}).get("tolerance", metrics.DEFAULT_TOLERANCE),
        "tag_pass_rate": {t: _round(m["pass_rate"]) for t, m in tags.items()},
        **{
            key: {k: _round(ran[key][k]) for k in metrics.SQUAD_HEADLINE}
            if key in ran
            else (previous or {}).get(key)
            for key in metrics.BENCHMARKS
        },
    }


def _round(value: Any) -> Any:
    return round(value, 6) if isinstance(value, float) else value


def _progress(done: int, total: int) -> None:
    print(f"\r  {done}/{total} questions", end="\n" if done == total else "", file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    """Run the eval for `citeqa eval`; 1 when a gate fails, 0 otherwise."""
    questions = load_questions(Path(args.questions))
    baseline_path = baseline_of(Path(args.questions), args.baseline)
    update = bool(getattr(args, "update_baseline", False))
    previous: dict[str, Any] | None = None
    tolerance = metrics.DEFAULT_TOLERANCE
    # A question file of one's own (grown from use) has no baseline until one is made on purpose: it is
    # gated on invalid citations and errors only, and the report shows each question.
    own = Path(args.questions).resolve() != SHIPPED_QUESTIONS.resolve() and args.baseline is None
    if baseline_path.exists() or not (update or own):
        previous, tolerance = load_baseline(baseline_path)
    prior = previous or {}
    # The benchmarks asked for (keys of metrics.BENCHMARKS), each with the data it reads and what runs it.
    runners = {"squad": (squad.SPLIT, squad.benchmark), "natural": (squad.NATURAL, squad.natural)}
    wanted = {key: runner for key, runner in runners.items() if getattr(args, key, False)}
    for key, (path, _) in wanted.items():
        # Checked before the question set runs, so a bad combination costs nothing.
        if args.url:
            raise BadInput(
                f"--{key} runs this checkout's code in-process; it cannot measure a server (--url)"
            )
        squad.require(path)
    settings = get_settings()
    corpus = Path(args.corpus or settings.corpus)
    tty = sys.stderr.isatty()
    started = time.perf_counter()
    backend: InProcess | Remote
    if args.url:
        backend = Remote(args.url)
    else:
        print(f"indexing {corpus} into a temporary index ...", file=sys.stderr)
        backend = InProcess(corpus, settings)
    try:
        results = evaluate(questions, backend, _progress if tty else None)
    finally:
        backend.close()
    summary = metrics.summarize(results)
    tags = metrics.by_tag(results)
    base_metrics = prior.get("metrics", {})
    checks = metrics.gate(summary, {} if update else base_metrics, tolerance)
    benchmarks: dict[str, dict[str, Any]] = {}
    bench_checks: dict[str, list[metrics.Check]] = {}
    for key, (_, runner) in wanted.items():
        print(f"running the {metrics.BENCHMARKS[key][0]} in-process ...", file=sys.stderr)
        benchmarks[key] = runner()
        bench_base = {} if update else prior.get(key) or {}
        bench_checks[key] = metrics.gate(benchmarks[key], bench_base, metrics.SQUAD_TOLERANCE, key)
    failed = [c for c in checks + [c for cs in bench_checks.values() for c in cs] if not c.ok]
    run_info = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": backend.mode,
        "target": args.url or str(corpus),
        "questions_file": str(args.questions),
        "seconds": round(time.perf_counter() - started, 1),
        "gate": "fail" if failed else "pass",
    }
    data = {
        "run": run_info,
        "metrics": summary,
        "tags": tags,
        "baseline": previous,
        "gate": [c.__dict__ for c in checks],
        "results": results,
        **{
            key: {
                "metrics": benchmarks[key],
                "baseline": prior.get(key),
                "gate": [c.__dict__ for c in bench_checks[key]],
            }
            if key in benchmarks
            else None
            for key in metrics.BENCHMARKS
        },
    }
    report_dir = Path(args.report)
    history = report.append_history(report_dir, run_info, summary)
    paths = report.write(report_dir, data, history)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    print(report.table(summary, base_metrics, checks))
    print(f"\n{summary['passed']}/{summary['questions']} questions passed; report: {paths['html']}")
    for key, figures in benchmarks.items():
        n, m = figures["answerable"], figures["unanswerable"]
        print(f"\n{metrics.BENCHMARKS[key][0]} ({n} answerable, {m} unanswerable):")
        print(report.table(figures, prior.get(key) or {}, bench_checks[key], metrics.SQUAD_HEADLINE))
    if update:
        new = baseline_from(summary, tags, previous, len(questions), benchmarks)
        baseline_path.write_text(json.dumps(new, indent=2) + "\n", encoding="utf-8")
        print(f"baseline rewritten: {baseline_path} (commit the diff with the reason)")
    for check in failed:
        print(f"GATE FAILED: {check.describe()}")
    if not failed:
        print("gate passed" + ("" if update else f" against {baseline_path}"))
    return 1 if failed else 0
