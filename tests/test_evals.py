"""The eval harness: metric functions, the gate, the report, and full runs on real and degraded corpora."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from app.cli import main as cli
from app.errors import BadInput, CiteqaError
from app.qa.answer import ask
from app.qa.retrieve import CHUNK_COVERAGE_WEIGHT
from app.schemas import Answer, Citation, Message, Passage
from app.settings import Settings
from app.store.embed import Embedder
from app.store.index import Snapshot
from evals import metrics, report, squad
from evals.fit import TARGET_FALSE_ABSTENTION, fit, fit_answer, fit_frame, fit_rank
from evals.run import Question, Remote, baseline_from, load_baseline, load_questions, score
from tests.conftest import ROOT

QUESTIONS = ROOT / "evals" / "questions.yaml"
BASELINE = ROOT / "evals" / "baseline.json"
LETTER = "ofsted-focused-visit-letter-wakefield-2018-03-22.md"
SCRIPT = "<script>alert('x')</script>"


# --- fitting the sentence ranker ---------------------------------------------------------------------


def test_listwise_fit_recovers_the_ratio_of_the_weights_that_made_the_labels() -> None:
    rng = np.random.default_rng(7)
    groups = []
    for _ in range(300):
        x = rng.normal(size=(12, 2))
        # Gold sentences drawn from a softmax over 2 * x0 + 1 * x1: the fit should find a ratio near 0.5.
        p = np.exp(x @ np.array([2.0, 1.0]))
        y = np.zeros(12)
        y[rng.choice(12, p=p / p.sum())] = 1.0
        groups.append((x, y))
    result = fit(groups)
    assert result["chunk_coverage_weight"] == pytest.approx(0.5, abs=0.15)
    assert result["questions"] == 300
    assert fit(groups) == result  # deterministic


def test_fit_is_wired_to_the_committed_constant() -> None:
    # `python -m evals.squad --fit` prints the constant app/qa/retrieve.py carries; it needs the SQuAD index,
    # so here only the wiring is checked: the printed key names the constant.
    assert "chunk_coverage_weight" in fit([(np.eye(2), np.array([1.0, 0.0]))] * 3)
    assert 0 < CHUNK_COVERAGE_WEIGHT < 2


def test_reader_fit_ranks_listwise_on_answerable_questions_only() -> None:
    rng = np.random.default_rng(11)
    rows, labels, question = [], [], []
    for number in range(400):
        # (score, unframed, logit, coverage); answers drawn from a softmax over 1.5 * logit + 1 * coverage.
        x = np.column_stack(
            [rng.normal(size=8), rng.integers(0, 2, 8), rng.normal(size=8), rng.normal(size=8)]
        )
        y = np.zeros(8)
        if number % 4:  # every fourth question is unanswerable: no gold among its candidates
            p = np.exp(x @ np.array([0.0, 0.0, 1.5, 1.0]))
            y[rng.choice(8, p=p / p.sum())] = 1.0
        rows.append(x)
        labels.append(y)
        question += [number] * 8
    result = fit_rank(np.vstack(rows), np.concatenate(labels), np.array(question))
    assert result["rank_questions"] == 300
    rank = result["rank_weights"]
    assert rank["coverage"] / rank["reader"] == pytest.approx(1 / 1.5, abs=0.15)
    assert abs(rank["hybrid"]) < 0.3 and abs(rank["frame"]) < 0.3
    frame = fit_frame(np.vstack(rows), np.concatenate(labels))
    assert frame["candidates"] == 3200 and "frame_penalty" in frame


def test_answer_fit_learns_the_confidence_and_thresholds_false_abstention_on_calibration_questions() -> None:
    rng = np.random.default_rng(5)
    rows, labels, question = [], [], []
    # 300 answerable questions, then 100 unanswerable; an answer sentence has a higher logit on average.
    for number in range(400):
        x = np.column_stack([rng.uniform(0.3, 1, 8), np.zeros(8), rng.normal(size=8), np.zeros(8)])
        y = np.zeros(8)
        if number < 300:
            y[0], x[0, 2] = 1.0, x[0, 2] + 3.0
        rows.append(x)
        labels.append(y)
        question += [number] * 8
    x, y, q = np.vstack(rows), np.concatenate(labels), np.array(question)
    result = fit_answer(x, y, q, (300, 400), floor=0.0)
    assert result["answer_candidates"] == 3200
    assert result["answer_weights"]["reader"] > 1 and abs(result["answer_weights"]["frame"]) < 0.1
    # The threshold holds false abstention to the target and turns most unanswerable questions away.
    target = f"{TARGET_FALSE_ABSTENTION:.2f}"
    assert result["answer_curve"][target]["threshold"] == result["answer_threshold"]
    assert result["answer_curve"][target]["false_abstention"] <= TARGET_FALSE_ABSTENTION
    assert result["answer_curve"][target]["abstention"] > 0.5
    curve = [result["answer_curve"][k]["abstention"] for k in ("0.05", "0.10", "0.20")]
    assert curve == sorted(curve)
    # A floor above every score leaves no candidate: every question abstains at any threshold.
    none = fit_answer(x, y, q, (300, 400), floor=2.0)
    assert none["answer_curve"][target]["false_abstention"] == 1.0


# --- metric functions -------------------------------------------------------------------------------


def test_hit_at_k_and_mrr_count_the_first_relevant_rank() -> None:
    ranks = [1, 3, None, 6]
    assert metrics.hit_at_k(ranks, 1) == 0.25
    assert metrics.hit_at_k(ranks, 5) == 0.5
    assert metrics.hit_at_k(ranks, 10) == 0.75
    assert metrics.mrr(ranks) == pytest.approx((1 + 1 / 3 + 0 + 1 / 6) / 4)


def test_hit_at_k_and_mrr_edge_cases() -> None:
    assert metrics.hit_at_k([], 5) == 0.0
    assert metrics.mrr([]) == 0.0
    assert metrics.hit_at_k([None, None], 5) == 0.0
    assert metrics.mrr([None]) == 0.0
    assert metrics.hit_at_k([1], 1) == metrics.mrr([1]) == 1.0


def test_percentile_interpolates_like_numpy() -> None:
    values = [120.0, 5.0, 33.0, 7.5, 61.0, 9.0, 18.0]
    for p in (0, 10, 50, 90, 95, 100):
        assert metrics.percentile(values, p) == pytest.approx(float(np.percentile(values, p)))
    assert metrics.percentile([42.0], 95) == 42.0
    assert metrics.percentile([], 50) == 0.0
    with pytest.raises(ValueError):
        metrics.percentile(values, 101)


def test_regex_matching_is_case_insensitive_and_handles_empty_inputs() -> None:
    text = "The inspectors were Neil Penswick, HMI, and Matthew Brazier, HMI."
    assert metrics.matches_all(["neil penswick", "MATTHEW BRAZIER"], text)
    assert not metrics.matches_all(["Penswick", "Ofsted"], text)
    assert metrics.matches_all([], text)
    assert metrics.matches_any_quote("council.s view", ["a", "the council’s view that"])
    assert not metrics.matches_any_quote("anything", [])
    assert metrics.first_relevant_rank("82%", ["nothing", "from 43% to 82%", "82% again"]) == 2
    assert metrics.first_relevant_rank("82%", []) is None


def test_citation_validity_is_the_offset_invariant() -> None:
    text = "Alpha beta. Gamma delta."
    assert metrics.citation_valid(text, 12, 24, "Gamma delta.")
    assert not metrics.citation_valid(text, 11, 24, "Gamma delta.")
    assert not metrics.citation_valid(text, 12, 99, "Gamma delta.")  # slicing would silently truncate
    assert not metrics.citation_valid(text, -1, 3, "")
    assert not metrics.citation_valid(None, 0, 5, "Alpha")


# --- gate and summaries on hand-made figures ----------------------------------------------------------


def test_gate_compares_with_baseline_and_tolerance() -> None:
    base = {"answer_match": 0.80, "false_abstention_rate": 0.10, "latency_p95_ms": 50.0}
    tol = {"answer_match": 0.02, "false_abstention_rate": 0.02, "latency_p95_ms": None}
    ok = {
        "answer_match": 0.785,
        "false_abstention_rate": 0.115,
        "latency_p95_ms": 5000.0,
        "invalid_citations": 0,
    }
    assert all(c.ok for c in metrics.gate(ok, base, tol))
    worse = {**ok, "answer_match": 0.77, "false_abstention_rate": 0.13}
    failed = {c.metric for c in metrics.gate(worse, base, tol) if not c.ok}
    assert failed == {"answer_match", "false_abstention_rate"}
    check = next(c for c in metrics.gate(worse, base, tol) if c.metric == "answer_match")
    assert check.describe() == "answer_match = 0.770 vs baseline 0.800 - 0.02"


def test_gate_fails_on_any_invalid_citation_or_error_whatever_the_baseline() -> None:
    base = {"invalid_citations": 3, "errors": 2}
    tol: dict[str, float | None] = {"invalid_citations": 5.0, "errors": 5.0}
    failed = [c for c in metrics.gate({"invalid_citations": 1, "errors": 1}, base, tol) if not c.ok]
    assert [c.metric for c in failed] == ["invalid_citations", "errors"]
    assert failed[0].describe() == "invalid_citations = 1 (must be 0)"


def _result(qid: str, tags: list[str], *, unanswerable: bool = False, passed: bool = True) -> dict:
    return {
        "id": qid, "tags": tags, "unanswerable": unanswerable, "passed": passed, "answer_match": passed,
        "evidence_match": passed, "abstained": unanswerable, "relevant_rank": None if unanswerable else 1,
        "citations": 1, "invalid_citations": 0, "error": None, "latency_ms": 10.0,
    }  # fmt: skip


def test_summaries_per_tag_leave_undefined_rates_empty() -> None:
    results = [
        _result("a", ["x"]),
        _result("b", ["x", "y"], passed=False),
        _result("c", ["z"], unanswerable=True),
    ]
    overall = metrics.summarize(results)
    assert overall["pass_rate"] == pytest.approx(2 / 3)
    assert overall["answer_match"] == 0.5
    assert overall["abstention_rate"] == 1.0
    assert overall["false_abstention_rate"] == 0.0
    tags = metrics.by_tag(results)
    assert list(tags) == ["x", "y", "z"]
    assert tags["y"]["pass_rate"] == 0.0
    assert tags["z"]["answer_match"] is None and tags["z"]["hit_at_5"] is None
    assert metrics.summarize([])["pass_rate"] is None


def test_baseline_round_trip_keeps_tolerances(tmp_path: Path) -> None:
    summary = metrics.summarize([_result("a", ["x"])])
    written = baseline_from(summary, metrics.by_tag([_result("a", ["x"])]), None, 1)
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(written))
    data, tol = load_baseline(path)
    assert data["metrics"]["pass_rate"] == 1.0 and tol == metrics.DEFAULT_TOLERANCE
    path.write_text(json.dumps({**written, "tolerance": 0.05}))
    _, tol = load_baseline(path)
    assert tol["answer_match"] == 0.05 and tol["latency_p95_ms"] is None
    with pytest.raises(BadInput, match="update-baseline"):
        load_baseline(tmp_path / "missing.json")


def test_committed_baseline_covers_every_headline_metric() -> None:
    data, tol = load_baseline(BASELINE)
    assert set(metrics.HEADLINE) <= set(data["metrics"])
    assert data["metrics"]["invalid_citations"] == 0
    assert tol["latency_p50_ms"] is None and tol["latency_p95_ms"] is None
    assert all(set(metrics.SQUAD_HEADLINE) <= set(data[key]) for key in metrics.BENCHMARKS)


# --- question file --------------------------------------------------------------------------------------


def test_question_file_loads_with_unique_ids() -> None:
    questions = load_questions(QUESTIONS)
    assert len(questions) == len({q.id for q in questions}) >= 90
    assert any(q.history for q in questions) and any(q.unanswerable for q in questions)


@pytest.mark.parametrize(
    ("item", "error"),
    [
        ({"id": "a", "question": "q", "answer": ["(unclosed"]}, "bad regex"),
        ({"id": "a", "question": "q", "answer": "not a list"}, "list of regexes"),
        ({"question": "no id"}, "needs an id"),
    ],
)
def test_malformed_questions_are_refused(tmp_path: Path, item: dict, error: str) -> None:
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump([item]))
    with pytest.raises(BadInput, match=error):
        load_questions(path)


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump([{"id": "a", "question": "q"}, {"id": "a", "question": "r"}]))
    with pytest.raises(BadInput, match="duplicate id a"):
        load_questions(path)


# --- scoring one question against a hand-made backend ------------------------------------------------------


class Tampered:
    """A backend whose answer cites offsets that do not hold the quoted text."""

    mode = "fake"
    text = "Inspectors visited on 27 and 28 February 2018. They met staff."

    def ask(self, question: str, history: list[Message]) -> Answer:
        cite = Citation(n=1, doc_id="d", title="t", source="s", published="", url="", quote="They met staff.",
                        start=0, end=15, score=1.0)  # fmt: skip
        return Answer(answer="They met staff. [1]", abstained=False, citations=[cite], query=question)

    def passages(self, query: str, top_k: int) -> list[Passage]:
        return [
            Passage(doc_id="d", title="t", source="s", text=self.text, start=0, end=len(self.text), score=1.0)
        ]

    def document_text(self, doc_id: str) -> str | None:
        return self.text if doc_id == "d" else None


def test_score_flags_a_citation_whose_offsets_do_not_hold_the_quote() -> None:
    q = Question("q1", "Whom did they meet?", ["staff"], "met staff", False, ["t"])
    result = score(q, Tampered())
    assert result["answer_match"] and result["evidence_match"] and result["relevant_rank"] == 1
    assert result["invalid_citations"] == 1 and not result["passed"]
    summary = metrics.summarize([result])
    failed = [c.metric for c in metrics.gate(summary, {}, metrics.DEFAULT_TOLERANCE) if not c.ok]
    assert failed == ["invalid_citations"]


class Broken(Tampered):
    """A backend whose every call fails, as a server answering 500 would."""

    def ask(self, question: str, history: list[Message]) -> Answer:
        raise CiteqaError("POST /ask answered 500")

    def passages(self, query: str, top_k: int) -> list[Passage]:
        raise CiteqaError("POST /retrieve answered 500")


def test_a_failing_call_is_an_error_that_fails_the_gate() -> None:
    results = [score(Question("q1", "Anything?", ["x"], "x", False, ["t"]), Broken())]
    assert results[0]["error"] == "CiteqaError: POST /ask answered 500" and not results[0]["passed"]
    summary = metrics.summarize(results)
    assert summary["errors"] == 1 and summary["latency_p50_ms"] is None
    assert [c.metric for c in metrics.gate(summary, {}, {}) if not c.ok] == ["errors"]


def test_an_unreachable_server_is_a_clear_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli(
        ["eval", "--url", "http://127.0.0.1:9", "--report", str(tmp_path), "--baseline", str(BASELINE)]
    )
    assert code == 2
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--squad", "--natural"])
def test_a_benchmark_cannot_be_asked_of_a_server(
    flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["eval", flag, "--url", "http://127.0.0.1:9", "--report", str(tmp_path)]
    assert cli([*args, "--baseline", str(BASELINE)]) == 2
    assert f"{flag} runs this checkout's code in-process" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["SPLIT", "NATURAL"])
def test_missing_benchmark_data_is_a_clear_error(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(squad, name, tmp_path / "missing.json")
    with pytest.raises(BadInput, match="the benchmark data is not at .*missing.json"):
        squad.natural(tmp_path / "home") if name == "NATURAL" else squad.benchmark(tmp_path / "home")
    # The eval says so before it spends time on the question set.
    args = ["eval", "--squad", "--natural", "--report", str(tmp_path), "--baseline", str(BASELINE)]
    assert cli(args) == 2
    assert "the benchmark data is not at" in capsys.readouterr().err


def test_fit_with_the_reader_off_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CITEQA_READ_BUDGET", "0")
    assert squad.main(["--fit"]) == 2
    assert "CITEQA_READ_BUDGET=0" in capsys.readouterr().err


def test_the_rank_fit_articles_are_none_of_the_benchmarks_articles() -> None:
    def titles(path: Path) -> set[str]:
        return {article["title"] for article in json.loads(path.read_text(encoding="utf-8"))["data"]}

    fitted = titles(squad.NATURAL_FIT)
    assert len(fitted) == 628
    assert not fitted & titles(squad.NATURAL) and not fitted & titles(squad.SPLIT)


def test_the_benchmark_data_is_in_the_repository_and_nothing_looks_beside_it() -> None:
    for split in (squad.SPLIT, squad.NATURAL, squad.NATURAL_FIT):
        assert split.is_relative_to(ROOT / "evals" / "data") and split.is_file()
    licences = (squad.SPLIT.parent / "README.md").read_text(encoding="utf-8")
    assert "CC BY-SA 4.0" in licences and "CC BY-SA 3.0" in licences
    # No project file reaches outside the checkout: neither a folder beside it nor the absolute path of
    # the folder holding it, whatever this machine happens to have there.
    beside = [f"../{p.name}/" for p in ROOT.parent.iterdir() if p.is_dir() and p != ROOT]
    needles = (*beside, f"{ROOT.parent}/")
    places = [ROOT / name for name in ("Makefile", "README.md", "pyproject.toml", ".ci/run")]
    for folder in ("app", "ingest", "evals", "training", "bench", "tests", "corpus", "docs"):
        places += [
            p
            for p in (ROOT / folder).rglob("*")
            if p.is_file() and p.suffix in {".py", ".md", ".yaml", ".txt", ".toml", ".json"}
        ]
    named = [
        f"{p.relative_to(ROOT)}: {needle}"
        for p in places
        if p not in (squad.SPLIT, squad.NATURAL, squad.NATURAL_FIT) and "cache" not in p.parts
        for needle in needles
        if needle in p.read_text(encoding="utf-8", errors="replace")
    ]
    assert named == []


# --- full runs ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_gate_fails_when_the_ofsted_letter_is_missing(
    corpus_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (corpus_copy / LETTER).unlink()
    items = yaml.safe_load(QUESTIONS.read_text(encoding="utf-8"))
    items.append({"id": "escaped", "question": f"What does {SCRIPT} say?", "answer": ["never-said"],
                  "evidence": "never-said", "unanswerable": False, "tags": ["html"]})  # fmt: skip
    questions = tmp_path / "questions.yaml"
    questions.write_text(yaml.safe_dump(items), encoding="utf-8")
    reports = tmp_path / "reports"
    args = ["eval", "--corpus", str(corpus_copy), "--questions", str(questions), "--report", str(reports)]

    code = cli([*args, "--baseline", str(BASELINE)])

    out = capsys.readouterr().out
    assert code == 1
    assert "GATE FAILED: answer_match" in out
    assert f"report: {reports / 'report.html'}" in out
    data = json.loads((reports / "report.json").read_text())
    assert data["run"]["gate"] == "fail" and len(data["results"]) == len(items)
    letter = {r["id"]: r for r in data["results"]}["wakefield-agency-staff-recruited"]
    assert not letter["passed"] and all(x["doc_id"] != LETTER for x in letter["quotes"])
    assert "## Gate failures" in (reports / "report.md").read_text()
    page = (reports / "report.html").read_text()
    assert SCRIPT not in page and "<script" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert page.count("<svg") >= 3 and not re.search(r"<link|<img|src=|url\(|@import", page)

    # On purpose, from the same degraded corpus: the baseline is rewritten and the history grows.
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(yaml.safe_dump(items[:3]), encoding="utf-8")
    new_baseline = tmp_path / "baseline.json"
    shutil.copy(BASELINE, new_baseline)
    args = ["eval", "--corpus", str(corpus_copy), "--questions", str(tiny), "--report", str(reports)]
    assert cli([*args, "--baseline", str(new_baseline), "--update-baseline"]) == 0
    assert "baseline rewritten" in capsys.readouterr().out
    written, committed = json.loads(new_baseline.read_text()), json.loads(BASELINE.read_text())
    assert written["questions"] == 3 and written["tolerance"] == committed["tolerance"]
    # A run without the benchmarks keeps their figures.
    assert all(written[key] == committed[key] for key in metrics.BENCHMARKS)
    assert len((reports / "history.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_gate_passes_on_the_real_corpus_against_the_committed_baseline(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    citeqa = Path(sys.executable).with_name("citeqa")
    done = subprocess.run(
        [str(citeqa), "eval", "--squad", "--natural", "--report", str(reports),
         "--json", str(tmp_path / "metrics.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "gate passed" in done.stdout and "hit_at_5" in done.stdout
    assert "SQuAD benchmark (435 answerable, 506 unanswerable)" in done.stdout
    assert "Natural-question benchmark (685 answerable, 670 unanswerable)" in done.stdout
    for name in ("report.json", "report.md", "report.html", "history.jsonl"):
        assert (reports / name).is_file()
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data["metrics"]["invalid_citations"] == 0 and data["metrics"]["errors"] == 0
    # One command shows every corpus, each benchmark gated against its own baseline.
    for key, (title, _) in metrics.BENCHMARKS.items():
        bench = data[key]
        assert bench["metrics"]["invalid_citations"] == 0 and bench["metrics"]["errors"] == 0
        assert {c["metric"] for c in bench["gate"]} >= {"hit_at_5", "answer_contains_gold", "abstention_rate"}
        assert all(c["ok"] and c["corpus"] == key for c in bench["gate"])
        assert f"## {title}" in (reports / "report.md").read_text()
        assert f"<h2>{title}</h2>" in (reports / "report.html").read_text()


@pytest.mark.slow
def test_remote_mode_gives_the_in_process_answers(
    seed_settings: Settings, seed_snapshot: Snapshot, embedder: Embedder
) -> None:
    api = pytest.importorskip("app.web.api")
    from fastapi.testclient import TestClient

    wanted = {"wakefield-focused-visit-dates", "followup-kirklees-rating", "unanswerable-capital-of-france"}
    questions = [q for q in load_questions(QUESTIONS) if q.id in wanted]
    with TestClient(api.create_app(seed_settings)) as client:
        remote = Remote("http://testserver", client=client)
        results = [score(q, remote) for q in questions]
    assert len(results) == 3
    for q, r in zip(questions, results, strict=True):
        local = ask(seed_snapshot, embedder, q.question, seed_settings, history=q.history)
        assert (r["answer"], r["abstained"], r["query"]) == (local.answer, local.abstained, local.query)
        assert r["invalid_citations"] == 0 and r["error"] is None
        assert r["unanswerable"] or r["relevant_rank"] is not None


def test_report_table_and_markdown_render_from_a_run(tmp_path: Path) -> None:
    results = [_result("a", ["x"])]
    q = Question("b", f"Is {SCRIPT} here?", ["nope"], "nope", False, ["x"])
    failing = score(q, Tampered())
    summary = metrics.summarize([*results, failing])
    checks = metrics.gate(summary, {"pass_rate": 1.0}, {"pass_rate": 0.02})
    run = {"at": "now", "mode": "fake", "target": "t", "questions_file": "q", "seconds": 0.1, "gate": "fail"}
    data = {"run": run, "metrics": summary, "tags": metrics.by_tag([*results, failing]), "baseline": None,
            "gate": [c.__dict__ for c in checks], "results": [*results, failing]}  # fmt: skip
    history = report.append_history(tmp_path, run, summary)
    paths = report.write(tmp_path, data, history)
    assert "pass_rate" in report.table(summary, {"pass_rate": 1.0}, checks)
    assert "- pass_rate = 0.500 vs baseline 1.000 - 0.02" in paths["md"].read_text()
    assert SCRIPT not in paths["html"].read_text()
    assert "SQuAD" not in paths["md"].read_text()  # a run without --squad has no such section

    # A SQuAD benchmark that fell below its baseline is named among the gate failures of both pages.
    figures = {k: 0.5 for k in metrics.SQUAD_HEADLINE} | {"invalid_citations": 0, "errors": 0,
               "answerable": 400, "unanswerable": 400}  # fmt: skip
    base = {**figures, "answer_contains_gold": 0.8}
    squad_checks = metrics.gate(figures, base, metrics.SQUAD_TOLERANCE, "squad")
    assert [c.describe() for c in squad_checks if not c.ok] == [
        "squad.answer_contains_gold = 0.500 vs baseline 0.800 - 0.02"
    ]
    data["squad"] = {"metrics": figures, "baseline": base, "gate": [c.__dict__ for c in squad_checks]}
    paths = report.write(tmp_path, data, history)
    md, page = paths["md"].read_text(), paths["html"].read_text()
    assert "## SQuAD benchmark" in md and "- squad.answer_contains_gold = 0.500 vs baseline 0.800" in md
    assert "<h2>SQuAD benchmark</h2>" in page and "squad.answer_contains_gold = 0.500" in page
