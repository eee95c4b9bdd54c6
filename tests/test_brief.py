"""Briefings on a real index: POST /briefing in every format and for every bad input, the Word file's footnotes
and the Markdown footnotes checked against the documents, and `citeqa brief`."""

import copy
import html
import io
import json
import re
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docx
import pytest
from docx.opc.constants import RELATIONSHIP_TYPE
from docx.oxml.ns import qn
from fastapi.testclient import TestClient
from lxml import etree
from markdown_it import MarkdownIt
from mdit_py_plugins.footnote import footnote_plugin

from app.briefing.export import MEDIA_TYPES, md_block, md_text
from app.settings import Settings
from app.store.index import Snapshot
from app.web.api import create_app
from tests.conftest import citeqa_cli

pytestmark = pytest.mark.slow

VISIT = "When did the focused visit take place?"
AGENCY = "How many agency staff had senior managers recruited?"
FRANCE = "What is the capital of France?"
HOSTILE = "<script>alert(1)</script> [x](javascript:alert(1)) **bold** <img src=x onerror=alert(1)>?"
DOCX = MEDIA_TYPES["docx"]


@pytest.fixture(scope="module")
def client(seed_settings: Settings) -> Iterator[TestClient]:
    """The API over the seed index; the lifespan runs because the client is entered."""
    settings = seed_settings.model_copy(update={"admin_token": "", "cors_origins": [], "api_url": ""})
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def visit(client: TestClient) -> dict[str, Any]:
    """The /ask answer to the seed question, as a client would hold it."""
    response = client.post("/ask", json={"question": VISIT})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert not answer["abstained"] and answer["citations"]
    return answer  # type: ignore[no-any-return]


def brief(client: TestClient, items: list[dict[str, Any]], fmt: str = "json", title: str = "Test") -> Any:
    """POST /briefing and return the response."""
    return client.post("/briefing", json={"title": title, "format": fmt, "items": items})


def assert_bad(response: Any, status: int, *words: str) -> None:
    """A 4xx (never a 500) whose JSON `detail` mentions each of `words`."""
    assert response.status_code == status, response.text
    detail = str(response.json()["detail"])
    for word in words:
        assert word.lower() in detail.lower(), detail


def doc_text(client: TestClient, doc_id: str) -> str:
    """The text citation offsets index into, through the public API."""
    response = client.get(f"/documents/{doc_id}")
    assert response.status_code == 200, response.text
    return response.json()["text"]  # type: ignore[no-any-return]


# --- reading a Word file back ------------------------------------------------------------------------------


def _text(element: Any) -> str:
    """A run's or paragraph's text as Word shows it: w:t, line breaks and tabs."""
    out = []
    for node in element.iter(qn("w:t"), qn("w:br"), qn("w:tab")):
        out.append(node.text or "" if node.tag == qn("w:t") else "\n" if node.tag == qn("w:br") else "\t")
    return "".join(out)


def word_notes(content: bytes) -> tuple[Any, dict[int, str]]:
    """The document as python-docx opens it, and its footnotes' text by id (python-docx has no footnote API)."""
    document = docx.Document(io.BytesIO(content))
    part = document.part.part_related_by(RELATIONSHIP_TYPE.FOOTNOTES)
    assert part.content_type.endswith("footnotes+xml")
    root = etree.fromstring(part.blob)
    notes = {}
    for note in root.iter(qn("w:footnote")):
        if note.get(qn("w:type")) in ("separator", "continuationSeparator"):
            continue
        assert len(list(note.iter(qn("w:footnoteRef")))) == 1
        notes[int(note.get(qn("w:id")))] = _text(note).strip()
    return document, notes


def note_parts(note: str) -> tuple[str, str, int, int]:
    """A note's quote, document id and offsets: `“quote” — source. Document doc_id, characters start–end.`"""
    m = re.fullmatch(r"(?s)“(.*)”(?: — .*)?\. Document (\S+), characters (\d+)–(\d+)\.", note)
    assert m, note
    return m.group(1), m.group(2), int(m.group(3)), int(m.group(4))


# --- formats ---------------------------------------------------------------------------------------------


def test_word_footnotes_quote_the_documents_at_their_offsets(
    client: TestClient, visit: dict[str, Any]
) -> None:
    items = [
        {"question": VISIT, "answer": visit},
        {"question": AGENCY},
        {"question": FRANCE},
        {"question": VISIT},
    ]
    response = brief(client, items, "docx", title="Wakefield: staffing")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == DOCX
    assert response.headers["content-disposition"] == 'attachment; filename="wakefield-staffing.docx"'
    assert re.fullmatch(r"gen-\d{6}", response.headers["x-citeqa-generation"])
    document, notes = word_notes(response.content)

    # Every note quotes its document exactly at the offsets it states.
    cited = {(c["doc_id"], c["start"], c["end"]) for c in visit["citations"]}
    located = set()
    for note in notes.values():
        quote, doc_id, start, end = note_parts(note)
        assert doc_text(client, doc_id)[start:end] == quote
        located.add((doc_id, start, end))
    assert cited <= located
    assert sorted(notes) == list(range(1, len(notes) + 1))
    assert len(located) == len(notes)  # one note per distinct quote, though the visit is asked twice

    # Each note has exactly one footnote reference, in order; the repeated question points back with NOTEREF.
    refs = [int(r.get(qn("w:id"))) for r in document.element.body.iter(qn("w:footnoteReference"))]
    assert refs == sorted(notes)
    instructions = [_text(i) or i.text for i in document.element.body.iter(qn("w:instrText"))]
    assert sorted(int(re.search(r"Note(\d+)", i).group(1)) for i in instructions) == [
        c["n"] for c in visit["citations"]
    ]

    headings = [p.text for p in document.paragraphs if p.style.name.startswith("Heading")]
    assert headings == [VISIT, AGENCY, VISIT, "Not answered by the sources"]
    assert [p.text for p in document.paragraphs if p.style.name == "List Bullet"] == [FRANCE]
    assert document.paragraphs[0].text == "Wakefield: staffing"
    body = "\n".join(p.text for p in document.paragraphs)
    for c in visit["citations"]:
        assert " ".join(c["quote"].split()) in body


def test_markdown_footnotes_resolve_and_quote_the_documents(
    client: TestClient, visit: dict[str, Any]
) -> None:
    items = [{"question": VISIT, "answer": visit}, {"question": FRANCE}, {"question": HOSTILE}]
    response = brief(client, items, "md", title="<b>Wakefield</b> & more")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/markdown")
    text = response.text
    refs = re.findall(r"\[\^(\d+)\](?!:)", text)
    defs = re.findall(r"^\[\^(\d+)\]: ", text, re.M)
    assert refs and set(refs) == set(defs) and len(defs) == len(set(defs))

    # Rendered by a real Markdown engine: every reference resolves to its note, every note quotes its document.
    tokens = MarkdownIt("commonmark").use(footnote_plugin).parse(text)
    notes = {}
    for i, token in enumerate(tokens):
        if token.type == "footnote_open":
            inline = next(t for t in tokens[i:] if t.type == "inline")
            notes[int(token.meta["label"])] = "".join(
                child.content for child in inline.children or [] if child.type in ("text", "softbreak")
            )
    assert sorted(notes) == sorted(int(n) for n in defs)
    for note in notes.values():
        quote, doc_id, start, end = note_parts(note)
        assert quote == " ".join(doc_text(client, doc_id)[start:end].split())
    rendered = MarkdownIt("commonmark").use(footnote_plugin).render(text)
    assert rendered.count('class="footnote-ref"') == len(refs)
    assert "<script" not in rendered and "<img" not in rendered and "<b>" not in rendered
    assert 'href="javascript' not in rendered and "<strong>" not in rendered
    assert html.escape("<b>Wakefield</b> & more", quote=False) in rendered
    assert "## Not answered by the sources" in text
    assert text.index("## Not answered by the sources") > text.index(f"## {VISIT}")


def test_json_briefing_numbers_each_distinct_quote_once(client: TestClient, visit: dict[str, Any]) -> None:
    items = [{"question": VISIT, "answer": visit}, {"question": FRANCE}, {"question": VISIT, "answer": visit}]
    response = brief(client, items, "json")
    assert response.status_code == 200, response.text
    assert "content-disposition" not in response.headers
    body = response.json()
    assert [s["item"] for s in body["sections"]] == [0, 2]
    assert body["not_answered"] == [{"item": 1, "question": FRANCE}]
    assert [n["n"] for n in body["notes"]] == list(range(1, len(visit["citations"]) + 1))
    assert body["sections"][0]["statements"] == body["sections"][1]["statements"]
    for note, citation in zip(body["notes"], visit["citations"], strict=True):
        assert (note["doc_id"], note["quote"], note["start"], note["end"]) == (
            citation["doc_id"],
            citation["quote"],
            citation["start"],
            citation["end"],
        )
        assert doc_text(client, note["doc_id"])[note["start"] : note["end"]] == note["quote"]
        assert note["title"] == citation["title"]


def test_an_item_without_an_answer_is_answered_as_ask_would(
    client: TestClient, visit: dict[str, Any]
) -> None:
    body = brief(client, [{"question": VISIT}]).json()
    quotes = [n["quote"] for n in body["notes"]]
    assert quotes == [c["quote"] for c in visit["citations"]]


def test_a_briefing_over_the_general_body_limit_has_its_own(
    client: TestClient, visit: dict[str, Any]
) -> None:
    # Fifty answers to long questions: about 170 KB, well over the 64 KiB other routes take.
    long_query = {**visit, "query": f"{VISIT} " * 50}
    items = [{"question": VISIT, "answer": long_query}] * 50
    big = brief(client, items, "json")
    assert big.status_code == 200, big.text
    assert len(big.request.content) > 64 * 1024
    padded = copy.deepcopy(visit)
    padded["query"] = "x" * (1024 * 1024)
    assert_bad(brief(client, [{"question": VISIT, "answer": padded}]), 413, "limit")


def test_the_schema_states_the_limits(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    request = schemas["BriefingRequest"]["properties"]
    assert (request["items"]["minItems"], request["items"]["maxItems"]) == (1, 50)
    assert request["title"]["maxLength"] == 200
    assert schemas["BriefingItem"]["properties"]["question"]["maxLength"] == 2000
    operation = spec["paths"]["/briefing"]["post"]
    assert {"200", "400", "413", "422", "503"} <= operation["responses"].keys()
    assert {"text/markdown", DOCX, "application/json"} <= operation["responses"]["200"]["content"].keys()


# --- bad input: a 4xx whose detail names the item ----------------------------------------------------------


def _edited(answer: dict[str, Any], **changes: Any) -> dict[str, Any]:
    edited = copy.deepcopy(answer)
    edited["citations"][0].update(changes)
    return edited


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"doc_id": "no-such-document.md"}, ["items[1]", "not in the index"]),
        ({"start": -5}, ["items[1]", "outside"]),
        ({"end": 10**9}, ["items[1]", "outside"]),
        ({"start": 40, "end": 40}, ["items[1]", "outside"]),
        (
            {"quote": "The inspectors found nothing wrong."},
            ["items[1]", "does not match", "ask the question again"],
        ),
        ({"start": 1}, ["items[1]", "does not match"]),
    ],
)
def test_a_citation_that_does_not_match_the_index_is_refused(
    client: TestClient, visit: dict[str, Any], change: dict[str, Any], words: list[str]
) -> None:
    items = [{"question": AGENCY}, {"question": VISIT, "answer": _edited(visit, **change)}]
    for fmt in ("md", "docx", "json"):
        assert_bad(brief(client, items, fmt), 422, *words)


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("timings_ms", {"read": False}),
        ("timings_ms", {"read": "1.5"}),
        ("score", True),
        ("start", "0"),
        ("n", True),
    ],
)
def test_a_number_sent_as_a_boolean_or_a_string_is_refused(
    client: TestClient, visit: dict[str, Any], where: str, value: Any
) -> None:
    # The schema says number; pydantic's lax mode would take true as 1 and "1.5" as 1.5.
    answer = copy.deepcopy(visit)
    if where == "timings_ms":
        answer["timings_ms"] = value
    else:
        answer["citations"][0][where] = value
    assert_bad(brief(client, [{"question": VISIT, "answer": answer}]), 422, "items", where)


def test_an_edited_statement_or_marker_is_refused(client: TestClient, visit: dict[str, Any]) -> None:
    reworded = copy.deepcopy(visit)
    reworded["answer"] = reworded["answer"].replace("focused visit", "friendly visit", 1)
    assert_bad(brief(client, [{"question": VISIT, "answer": reworded}]), 422, "items[0]", "statement 1")
    unmarked = copy.deepcopy(visit)
    unmarked["answer"] = re.sub(r"\s*\[1\]", "", unmarked["answer"])
    assert_bad(brief(client, [{"question": VISIT, "answer": unmarked}]), 422, "items[0]", "markers")
    extra = copy.deepcopy(visit)
    extra["answer"] += " And it went well."
    assert_bad(
        brief(client, [{"question": VISIT, "answer": extra}]),
        422,
        "items[0]",
        f"statement {len(visit['citations']) + 1}",
        "no citation",
    )
    claimed = copy.deepcopy(visit)
    claimed["answer"] = "The documents do not answer this question."
    claimed["citations"] = []
    assert_bad(
        brief(client, [{"question": VISIT, "answer": claimed}]), 422, "items[0]", "statement 1", "no citation"
    )


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"title": "T", "items": []}, 422, ["items", "at least 1"]),
        ({"title": "T", "items": [{"question": VISIT}] * 51}, 422, ["items", "at most 50"]),
        ({"title": "T", "items": [{"question": VISIT}, {"question": "  "}]}, 422, ["items", "1", "question"]),
        (
            {"title": "T", "items": [{"question": VISIT}, {"question": "x" * 2001}]},
            422,
            ["items", "1", "question"],
        ),
        (
            {"title": "T", "items": [{"question": "hi", "answer": {"answer": "x"}}]},
            422,
            ["items", "0", "answer"],
        ),
        (
            {"title": "T", "items": [{"question": VISIT}, {"question": "\ud800"}]},
            422,
            ["items", "1", "question", "string"],
        ),
        ({"title": "", "items": [{"question": VISIT}]}, 422, ["title"]),
        ({"title": " \n ", "items": [{"question": VISIT}]}, 422, ["title"]),
        ({"title": "x" * 201, "items": [{"question": VISIT}]}, 422, ["title"]),
        ({"title": "\ud800", "items": [{"question": VISIT}]}, 422, ["title", "string"]),
        ({"title": "T", "format": "pdf", "items": [{"question": VISIT}]}, 422, ["format"]),
        ({"items": [{"question": VISIT}]}, 422, ["title", "required"]),
        ([VISIT], 422, ["dictionary"]),
    ],
)
def test_bad_briefings_are_4xx_with_a_detail(
    client: TestClient, body: Any, status: int, words: list[str]
) -> None:
    # Sent as ASCII JSON, so lone surrogates travel as the `\ud800` escapes a hostile client would send.
    raw = json.dumps(body).encode()
    assert_bad(
        client.post("/briefing", content=raw, headers={"content-type": "application/json"}), status, *words
    )


def test_without_an_index_a_briefing_is_503(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "empty", corpus=tmp_path / "none", admin_token="")
    with TestClient(create_app(settings), raise_server_exceptions=False) as empty:
        assert_bad(
            empty.post("/briefing", json={"title": "T", "items": [{"question": VISIT}]}), 503, "ingest"
        )
        assert_bad(empty.post("/briefing", json={"title": "T", "items": []}), 422, "items")


# --- Markdown escaping, without a server -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        HOSTILE,
        "- a list?",
        "1. a numbered list",
        "# a heading",
        "> a quote",
        "a `code` span and \\ backslash | table ~~strike~~ $x$",
        "[^1] a fake footnote",
        "&amp; an entity",
    ],
)
def test_markdown_text_renders_as_exactly_the_text(value: str) -> None:
    rendered = MarkdownIt("commonmark").use(footnote_plugin).render(md_block(md_text(value)))
    assert rendered.startswith("<p>") and rendered.count("<") == 2, rendered
    assert html.unescape(rendered[3:-5]) == value


# --- the command line --------------------------------------------------------------------------------------


def _cli(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return citeqa_cli(home, "brief", *args, check=check)


def test_cli_brief_writes_word_markdown_and_json(
    seed_settings: Settings, seed_snapshot: Snapshot, tmp_path: Path
) -> None:
    lines = tmp_path / "questions.txt"
    lines.write_text(f"# for the Monday meeting\n{VISIT}\n\n{FRANCE}\n", encoding="utf-8")
    out = tmp_path / "brief.docx"
    done = _cli(seed_settings.home, str(lines), "--title", "Monday", "-o", str(out))
    assert b"1 answered, 1 not answered" in done.stderr
    document, notes = word_notes(out.read_bytes())
    assert document.paragraphs[0].text == "Monday" and notes
    for note in notes.values():
        quote, doc_id, start, end = note_parts(note)
        assert seed_snapshot.docs[doc_id].text[start:end] == quote

    listed = tmp_path / "questions.yaml"
    listed.write_text(
        f"title: From YAML\nquestions:\n  - {VISIT}\n  - question: {AGENCY}\n", encoding="utf-8"
    )
    markdown = _cli(seed_settings.home, str(listed)).stdout.decode()
    assert markdown.startswith("# From YAML\n") and f"## {AGENCY}" in markdown and "[^1]: “" in markdown
    as_json = _cli(seed_settings.home, str(listed), "--format", "json").stdout
    assert b'"not_answered": []' in as_json


def test_cli_brief_errors_are_one_line(seed_settings: Settings, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n", encoding="utf-8")
    failed = _cli(seed_settings.home, str(empty), check=False)
    assert failed.returncode == 2 and b"holds no questions" in failed.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("- [unclosed\n", encoding="utf-8")
    failed = _cli(seed_settings.home, str(broken), check=False)
    assert failed.returncode == 2 and b"not valid YAML" in failed.stderr
    failed = _cli(seed_settings.home / "nowhere", str(broken.with_name("missing.txt")), check=False)
    assert failed.returncode == 2 and b"cannot read" in failed.stderr


def test_libreoffice_reads_the_word_footnotes(
    client: TestClient, visit: dict[str, Any], tmp_path: Path
) -> None:
    soffice = shutil.which("soffice")
    if soffice is None:
        pytest.skip("LibreOffice is not installed (optional: apt-get install libreoffice-writer-nogui)")
    items = [{"question": VISIT, "answer": visit}, {"question": AGENCY}, {"question": VISIT, "answer": visit}]
    response = brief(client, items, "docx")
    assert response.status_code == 200, response.text
    _, notes = word_notes(response.content)
    (tmp_path / "brief.docx").write_bytes(response.content)
    subprocess.run(
        [
            soffice,
            f"-env:UserInstallation=file://{tmp_path}/profile",
            "--headless",
            "--convert-to",
            "odt",
            "--outdir",
            str(tmp_path),
            str(tmp_path / "brief.docx"),
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    with zipfile.ZipFile(tmp_path / "brief.odt") as odt:
        content = odt.read("content.xml").decode()
    bodies = re.findall(
        r"<text:note [^>]*text:note-class=\"footnote\".*?<text:note-body>(.*?)</text:note-body>", content
    )
    assert len(bodies) == len(notes)
    for body, note in zip(bodies, notes.values(), strict=True):
        quote = note_parts(note)[0]
        assert html.escape(quote.split("\n")[0], quote=False) in body.replace("&apos;", "'").replace(
            "&quot;", '"'
        )
