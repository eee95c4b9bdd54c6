"""The question set grows from use: POST /questions records a question with the sentence that answers it (or
none), in a file `citeqa eval --questions` runs; every bad request is refused and leaves the file as it was."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from app.cli import main as cli
from app.settings import Settings
from app.web.api import create_app
from evals.run import load_questions

pytestmark = pytest.mark.slow

LETTER = "ofsted-focused-visit-letter-wakefield-2018-03-22.md"
INSPECTORS = "The inspectors were Neil Penswick, HMI, and Matthew Brazier, HMI."


@pytest.fixture
def settings(seed_settings: Settings, tmp_path: Path) -> Settings:
    return seed_settings.model_copy(
        update={
            "admin_token": "",
            "cors_origins": [],
            "api_url": "",
            "questions_file": tmp_path / "recorded.yaml",
        }
    )


@pytest.fixture
def local(settings: Settings) -> Iterator[TestClient]:
    # A client on this machine, addressing the server by its loopback name as curl or a local browser does.
    app = create_app(settings)
    local_client = {"client": ("127.0.0.1", 50000), "base_url": "http://127.0.0.1:8000"}
    with TestClient(app, raise_server_exceptions=False, **local_client) as client:
        yield client


def test_recorded_questions_run_as_a_question_set(local: TestClient, settings: Settings, capsys):
    answer = local.post("/ask", json={"question": "When did the focused visit take place?"}).json()
    cited = answer["citations"][0]
    right = {
        "question": "When did the focused visit take place?",
        "answered_by": {"sentence": cited["quote"], "doc_id": cited["doc_id"]},
    }
    recorded = local.post("/questions", json={**right, "tags": ["wakefield"]})
    assert recorded.status_code == 200, recorded.text
    assert recorded.json()["unanswerable"] is False and "February" in recorded.json()["evidence"]
    # An answer marked wrong, with the sentence that does answer; and an abstention confirmed.
    wrong = {
        "question": "Who were the two inspectors?",
        "answered_by": {"sentence": INSPECTORS, "doc_id": LETTER},
    }
    assert local.post("/questions", json=wrong).status_code == 200
    none = local.post("/questions", json={"question": "What is the capital of France?"})
    assert none.status_code == 200 and none.json()["unanswerable"] is True

    items = load_questions(settings.questions_file)
    assert [q.question for q in items] == [
        right["question"],
        wrong["question"],
        "What is the capital of France?",
    ]
    assert items[0].tags == ["recorded", "wakefield"] and items[2].unanswerable
    text = settings.questions_file.read_text()
    assert f"# source: {LETTER} {INSPECTORS!r}" in text

    reports = settings.questions_file.parent / "reports"
    args = ["eval", "--corpus", str(settings.corpus), "--questions", str(settings.questions_file)]
    assert cli([*args, "--report", str(reports)]) == 0
    report = json.loads((reports / "report.json").read_text())
    assert [r["passed"] for r in report["results"]] == [True, True, True]
    assert "3/3 questions passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (
            {
                "question": "Who?",
                "answered_by": {"sentence": "The inspectors were two people.", "doc_id": LETTER},
            },
            422,
            "has no sentence",
        ),
        ({"question": "Who?", "answered_by": {"sentence": INSPECTORS}}, 422, "doc_id"),
        ({"question": "Who?", "answered_by": {"doc_id": LETTER}}, 422, "sentence"),
        (
            {"question": "Who?", "answered_by": {"sentence": INSPECTORS, "doc_id": "nope.txt"}},
            404,
            "no document",
        ),
        ({"question": "Who?", "answered_by": {"sentence": "  ", "doc_id": LETTER}}, 422, "sentence"),
        ({"question": "   "}, 422, "question"),
        ({"question": "Who?", "tags": ["Not A Tag"]}, 422, "tags"),
        ({"question": "What is the capital of France?"}, 409, "already"),
    ],
)
def test_bad_records_are_refused_and_the_file_stays(
    local: TestClient, settings: Settings, body, status, words
):
    local.post("/questions", json={"question": "What is the capital of France?"})
    before = settings.questions_file.read_bytes()
    response = local.post("/questions", json=body)
    assert response.status_code == status, response.text
    assert words in json.dumps(response.json()["detail"])
    assert settings.questions_file.read_bytes() == before


def test_a_broken_question_file_is_refused_and_left_alone(local: TestClient, settings: Settings):
    settings.questions_file.write_text("- not: [a question\n")
    broken = local.post("/questions", json={"question": "What is the capital of France?"})
    assert broken.status_code == 422 and "cannot read questions" in broken.json()["detail"]
    assert settings.questions_file.read_text() == "- not: [a question\n"


def test_other_machines_may_not_record_without_the_token(settings: Settings):
    with TestClient(create_app(settings), raise_server_exceptions=False, client=("203.0.113.9", 1)) as remote:
        response = remote.post("/questions", json={"question": "What is the capital of France?"})
    assert response.status_code == 403 and not settings.questions_file.exists()


def test_the_shipped_set_keeps_its_own_baseline_and_a_recorded_file_gets_its_own(tmp_path: Path):
    from evals.run import SHIPPED_BASELINE, SHIPPED_QUESTIONS, baseline_of

    assert baseline_of(SHIPPED_QUESTIONS, None) == SHIPPED_BASELINE
    assert baseline_of(tmp_path / "recorded.yaml", None) == tmp_path / "recorded.baseline.json"
    assert baseline_of(tmp_path / "recorded.yaml", "b.json") == Path("b.json")
    assert yaml.safe_load(SHIPPED_QUESTIONS.read_text())  # the shipped file is where the runner looks
