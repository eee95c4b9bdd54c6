"""The HTTP API on a real index: every endpoint, every error path, the citation invariant, the token rules."""

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from app.store.embed import Embedder
from app.store.index import Snapshot
from app.web.api import create_app

pytestmark = pytest.mark.slow

SEED_QUESTION = "When did the focused visit take place?"
LETTER = "ofsted-focused-visit-letter"
UNANSWERABLE = "What is the capital of France?"
NEW_DOC = "zz-brackenridge-lighthouse.txt"
NEW_TEXT = (
    "Brackenridge lighthouse notes\n\n"
    "The Brackenridge lighthouse was repainted in 1987 by the Coastal Heritage Trust. "
    "Its lamp was converted to electricity in 1952.\n"
)


@pytest.fixture(scope="module")
def client(seed_settings: Settings) -> Iterator[TestClient]:
    """The API over the seed index, with ingest disabled; the lifespan runs because the client is entered."""
    settings = seed_settings.model_copy(update={"admin_token": "", "cors_origins": [], "api_url": ""})
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def ask(client: TestClient, question: str, **extra: Any) -> dict[str, Any]:
    """POST /ask and return the body, failing on anything but 200."""
    response = client.post("/ask", json={"question": question, **extra})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def assert_cited(client: TestClient, answer: dict[str, Any]) -> None:
    """The contract: markers match citations 1..n; each quote is exactly its document's text[start:end]."""
    numbers = [c["n"] for c in answer["citations"]]
    assert numbers == list(range(1, len(numbers) + 1))
    assert {int(n) for n in re.findall(r"\[(\d+)\]", answer["answer"])} == set(numbers)
    for c in answer["citations"]:
        doc = client.get(f"/documents/{c['doc_id']}")
        assert doc.status_code == 200, doc.text
        assert doc.json()["text"][c["start"] : c["end"]] == c["quote"]
        assert c["quote"].strip()
        assert c["title"] == doc.json()["title"]


def assert_bad(response: Any, status: int, *words: str) -> None:
    """A 4xx (never a 500) whose JSON `detail` mentions what is wrong."""
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert detail
    for word in words:
        assert word.lower() in str(detail).lower(), detail


# --- endpoints -------------------------------------------------------------------------------------


def test_health_counts_the_index(client: TestClient, seed_snapshot: Snapshot) -> None:
    body = client.get("/health").json()
    assert body == {"status": "ok", "documents": len(seed_snapshot.docs), "chunks": seed_snapshot.n_chunks}


def test_documents_list_every_document(client: TestClient, seed_snapshot: Snapshot) -> None:
    response = client.get("/documents")
    assert response.status_code == 200
    listed = {d["doc_id"]: d for d in response.json()}
    assert listed.keys() == seed_snapshot.docs.keys()
    for doc_id, info in listed.items():
        doc = seed_snapshot.docs[doc_id]
        assert (info["title"], info["path"], info["chars"]) == (doc.title, doc.path, len(doc.text))
        assert "text" not in info


def test_document_detail_has_the_cleaned_text(client: TestClient, seed_snapshot: Snapshot) -> None:
    for doc_id, doc in seed_snapshot.docs.items():
        body = client.get(f"/documents/{doc_id}").json()
        assert body["text"] == doc.text
        assert body["removed_count"] == doc.removed_count
        assert body["removed_sample"] == doc.removed_sample


def test_ask_cites_the_letter_for_the_seed_question(client: TestClient) -> None:
    answer = ask(client, SEED_QUESTION)
    assert not answer["abstained"]
    assert answer["query"] == SEED_QUESTION
    assert answer["timings_ms"]
    assert_cited(client, answer)
    assert any(c["doc_id"].startswith(LETTER) for c in answer["citations"]), answer


def test_ask_abstains_with_closest_material_still_quoted(client: TestClient) -> None:
    answer = ask(client, UNANSWERABLE)
    assert answer["abstained"]
    assert_cited(client, answer)


def test_follow_up_searches_a_completed_query(client: TestClient) -> None:
    first = ask(client, SEED_QUESTION)
    history = [{"role": "user", "content": SEED_QUESTION}, {"role": "assistant", "content": first["answer"]}]
    answer = ask(client, "And who carried it out?", history=history, top_k=3)
    assert answer["query"] != "And who carried it out?"
    assert_cited(client, answer)


def test_retrieve_returns_passages_that_are_document_text(client: TestClient) -> None:
    response = client.post("/retrieve", json={"question": SEED_QUESTION, "top_k": 3})
    assert response.status_code == 200, response.text
    found = response.json()["passages"]
    assert 1 <= len(found) <= 3
    for p in found:
        text = client.get(f"/documents/{p['doc_id']}").json()["text"]
        assert text[p["start"] : p["end"]] == p["text"]


def test_openapi_documents_every_endpoint_with_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = {"/health", "/ask", "/retrieve", "/documents", "/documents/{doc_id}", "/ingest"}
    assert paths <= spec["paths"].keys()
    examples = spec["paths"]["/ask"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    assert examples["question"]["value"]["question"]
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_root_leads_to_the_ui(client: TestClient) -> None:
    response = client.get("/", follow_redirects=False)
    assert response.status_code in (302, 307) and response.headers["location"].endswith("/ui/")
    page = client.get("/ui/")
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_no_cors_headers_by_default(client: TestClient) -> None:
    response = client.get("/health", headers={"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in response.headers


def test_cors_allows_only_configured_origins(seed_settings: Settings) -> None:
    settings = seed_settings.model_copy(update={"cors_origins": ["https://briefings.example"]})
    with TestClient(create_app(settings)) as cors_client:
        allowed = cors_client.get("/health", headers={"Origin": "https://briefings.example"})
        other = cors_client.get("/health", headers={"Origin": "https://elsewhere.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://briefings.example"
    assert "access-control-allow-origin" not in other.headers


# --- bad input: always a 4xx with a detail ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"question": ""}, ["empty"]),
        ({"question": "   \n\t "}, ["empty"]),
        ({"question": "x" * 2001}, ["longer"]),
        ({"question": " " * 2000 + "x"}, ["longer"]),
        ({"question": 123}, ["string"]),
        ({"question": None}, ["string"]),
        ({}, ["required"]),
        ({"question": "hi", "top_k": "five"}, ["integer"]),
        ({"question": "hi", "top_k": "3"}, ["integer"]),
        ({"question": "hi", "top_k": True}, ["integer"]),
        ({"question": "hi", "top_k": 2.5}, ["integer"]),
        ({"question": "hi", "top_k": 0}, ["top_k"]),
        ({"question": "hi", "top_k": -3}, ["top_k"]),
        ({"question": "hi", "top_k": 10**9}, ["top_k"]),
        ({"question": "hi", "history": "earlier"}, ["list"]),
        ({"question": "hi", "history": [{"role": "system", "content": "obey"}]}, ["role"]),
        ({"question": "hi", "history": [{"role": "user"}]}, ["required"]),
        ({"question": "hi", "history": [{"role": "user", "content": "x"}] * 21}, ["history"]),
        ([SEED_QUESTION], ["dictionary"]),
    ],
)
def test_ask_rejects_bad_input(client: TestClient, body: Any, words: list[str]) -> None:
    assert_bad(client.post("/ask", json=body), 422, *words)


def test_retrieve_rejects_bad_input(client: TestClient) -> None:
    assert_bad(client.post("/retrieve", json={"question": "", "top_k": 3}), 422, "empty")
    assert_bad(client.post("/retrieve", json={"question": "caseloads", "top_k": 0}), 422, "top_k")
    assert_bad(client.post("/retrieve", json={"question": "caseloads", "top_k": 10**9}), 422, "top_k")


def test_a_whole_number_written_as_a_float_is_an_integer(client: TestClient) -> None:
    # JSON Schema's "integer" includes 3.0, so clients generated from the schema may send it.
    response = client.post("/retrieve", json={"question": "social workers caseloads", "top_k": 3.0})
    assert response.status_code == 200, response.text
    assert 1 <= len(response.json()["passages"]) <= 3


def test_malformed_json_is_422(client: TestClient) -> None:
    response = client.post("/ask", content=b'{"question": ', headers={"content-type": "application/json"})
    assert_bad(response, 422, "json")


def test_non_utf8_body_is_400(client: TestClient) -> None:
    json_type = {"content-type": "application/json"}
    response = client.post("/ask", content=b'{"question": "\xff\xfe"}', headers=json_type)
    assert_bad(response, 400, "utf-8")
    response = client.post("/ask", content=b"\xff\xfe\xfd", headers={"content-type": "text/plain"})
    assert 400 <= response.status_code < 500 and response.json()["detail"]


def test_a_megabyte_question_is_413(client: TestClient) -> None:
    assert_bad(client.post("/ask", json={"question": "x" * 1_000_000}), 413, "limit")


def test_a_streamed_body_over_the_limit_is_413(client: TestClient) -> None:
    # A generator body goes out chunked, without Content-Length, so only the streamed count can catch it.
    chunks = (b'{"question": "' if i == 0 else b"x" * 4096 for i in range(40))
    response = client.post("/ask", content=chunks, headers={"content-type": "application/json"})
    assert_bad(response, 413, "limit")


def test_a_deep_history_is_rejected(client: TestClient) -> None:
    turn = [{"role": "user", "content": "and then?"}, {"role": "assistant", "content": "no [1]"}]
    history = turn * 5000
    assert_bad(client.post("/ask", json={"question": "hi", "history": history}), 413)


@pytest.mark.parametrize(
    "path",
    [
        "/documents/..%2f..%2fetc%2fpasswd",
        "/documents/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/documents/..%5c..%5cetc%5cpasswd",
        "/documents/%2e%2e",
        "/documents/%2Fetc%2Fpasswd",
        "/documents/no-such-document",
    ],
)
def test_unknown_or_traversing_document_ids_are_404(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404, response.text
    assert response.json()["detail"]
    assert "root:" not in response.text


def test_unknown_route_and_wrong_method_are_json(client: TestClient) -> None:
    assert_bad(client.get("/nope"), 404)
    assert_bad(client.get("/ask"), 405)


def test_ingest_is_404_without_a_configured_token(client: TestClient) -> None:
    assert_bad(client.post("/ingest"), 404, "CITEQA_ADMIN_TOKEN")
    assert_bad(client.post("/ingest", headers={"Authorization": "Bearer guess"}), 404)


# --- no index, and ingest over HTTP ---------------------------------------------------------------------


def test_no_index_is_503_but_bad_input_is_still_422(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "empty", corpus=tmp_path / "none", admin_token="")
    with TestClient(create_app(settings), raise_server_exceptions=False) as empty:
        assert_bad(empty.get("/health"), 503, "no index", "citeqa ingest")
        assert_bad(empty.post("/ask", json={"question": SEED_QUESTION}), 503, "citeqa ingest")
        assert_bad(empty.post("/retrieve", json={"question": SEED_QUESTION}), 503, "citeqa ingest")
        assert_bad(empty.get("/documents"), 503, "citeqa ingest")
        assert_bad(empty.get("/documents/anything"), 503, "citeqa ingest")
        assert_bad(empty.post("/ask", json={"question": ""}), 422, "empty")


def test_ingest_token_rules_and_a_changed_corpus_shows_up(
    tmp_path: Path, corpus_copy: Path, embedder: Embedder
) -> None:
    token = "s3cret-admin-token"
    settings = Settings(home=tmp_path / "home", corpus=corpus_copy, admin_token=token, cors_origins=[])
    right = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(settings), raise_server_exceptions=False) as admin:
        assert admin.get("/health").status_code == 503
        missing = admin.post("/ingest")
        assert_bad(missing, 401, "bearer")
        assert missing.headers["www-authenticate"] == "Bearer"
        assert_bad(admin.post("/ingest", headers={"Authorization": f"Basic {token}"}), 401)
        assert_bad(admin.post("/ingest", headers={"Authorization": "Bearer wrong"}), 403, "wrong")
        assert_bad(admin.post("/ingest", headers={"Authorization": f"Bearer {token}x"}), 403)

        first = admin.post("/ingest", headers=right)
        assert first.status_code == 200, first.text
        sources = [p for p in corpus_copy.iterdir() if p.name != "manifest.yaml"]
        assert first.json()["added"] == len(sources)
        assert admin.get("/health").json()["documents"] == len(sources)

        (corpus_copy / NEW_DOC).write_text(NEW_TEXT, encoding="utf-8")
        second = admin.post("/ingest", headers=right)
        assert second.status_code == 200, second.text
        assert (second.json()["added"], second.json()["unchanged"]) == (1, len(sources))
        listed = {d["path"]: d["doc_id"] for d in admin.get("/documents").json()}
        assert NEW_DOC in listed
        answer = ask(admin, "When was the Brackenridge lighthouse repainted?")
        assert any(c["doc_id"] == listed[NEW_DOC] for c in answer["citations"]), answer
        assert_cited(admin, answer)
