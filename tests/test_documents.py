"""Documents added and removed over HTTP (POST /documents, DELETE /documents/{doc_id}) on a real index:
who may write, every bad input refused with a clear 4xx, and nothing lost when a request fails."""

import io
import json
import shutil
import socket
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docx
import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from pypdf import PdfReader, PdfWriter

from app.settings import Settings
from app.store.embed import Embedder
from app.store.index import Store
from app.web.api import create_app
from bench.load import serve
from ingest.build import ingest
from ingest.upload import UPLOADS
from tests.conftest import CORPUS

pytestmark = pytest.mark.slow

LOCAL = ("127.0.0.1", 50000)
SEED_QUESTION = "When did the focused visit take place?"
PDF_FACT = "The Brackenridge lighthouse was repainted in 1987 by the Coastal Heritage Trust."
PDF_QUESTION = "When was the Brackenridge lighthouse repainted?"
DOCX_FACT = "The Dunmore ferry carried 4,200 passengers across the estuary in its first summer."
DOCX_QUESTION = "How many passengers did the Dunmore ferry carry in its first summer?"


def text_pdf(*lines: str) -> bytes:
    """A one-page PDF whose text layer holds the lines (Helvetica), built by hand with a correct xref."""
    text = " ".join(f"({line}) Tj T*" for line in lines)
    stream = f"BT /F1 11 Tf 14 TL 72 720 Td {text} ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def encrypted(pdf: bytes) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.encrypt("secret")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def word(*paragraphs: str) -> bytes:
    document = docx.Document()
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def zip_bomb() -> bytes:
    """A .docx-shaped zip whose document part expands to 101 MiB of zeros (about 100 KB packed)."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("word/document.xml", "w") as part,
    ):
        for _ in range(101):
            part.write(bytes(1024 * 1024))
    return out.getvalue()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> tuple[Path, Path]:
    """A corpus copy and its index, built once; each test works on copies of both."""
    root = tmp_path_factory.mktemp("documents")
    shutil.copytree(CORPUS, root / "corpus")
    ingest(root / "corpus", Settings(home=root / "home", corpus=root / "corpus"), embedder)
    return root / "corpus", root / "home"


@pytest.fixture
def settings(tmp_path: Path, built: tuple[Path, Path]) -> Settings:
    shutil.copytree(built[0], tmp_path / "corpus")
    shutil.copytree(built[1], tmp_path / "home")
    return Settings(
        home=tmp_path / "home", corpus=tmp_path / "corpus", admin_token="", cors_origins=[], api_url=""
    )


def client(settings: Settings, where: tuple[str, int] = LOCAL) -> TestClient:
    """A client at `where`, addressing the server by its loopback name as a local browser or curl does."""
    return TestClient(
        create_app(settings), raise_server_exceptions=False, client=where, base_url="http://127.0.0.1:8000"
    )


@pytest.fixture
def local(settings: Settings) -> Iterator[TestClient]:
    """A client on this machine (loopback), the server with no admin token."""
    with client(settings) as test_client:
        yield test_client


def upload(
    api: TestClient, files: list[tuple[str, bytes]], metadata: Any = None, **kw: Any
) -> httpx.Response:
    """POST /documents as multipart written out by hand: clients escape odd file names, a hostile one need not."""
    parts = [
        b'--b\r\nContent-Disposition: form-data; name="files"; filename="%s"\r\n\r\n%s\r\n'
        % (name.encode(), body)
        for name, body in files
    ]
    if metadata is not None:
        text = metadata if isinstance(metadata, str) else json.dumps(metadata)
        parts.append(b'--b\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n%s\r\n' % text.encode())
    headers = {"Content-Type": "multipart/form-data; boundary=b", **kw.pop("headers", {})}
    return api.post("/documents", content=b"".join(parts) + b"--b--\r\n", headers=headers, **kw)


def state(api: TestClient, settings: Settings) -> tuple[Any, ...]:
    """What a failed request must leave as it was: the indexed documents, the corpus files, a seed answer."""
    docs = sorted((d["doc_id"], d["title"]) for d in api.get("/documents").json())
    files = sorted(
        p.relative_to(settings.corpus).as_posix() for p in settings.corpus.rglob("*") if p.is_file()
    )
    answer = api.post("/ask", json={"question": SEED_QUESTION}).json()
    return docs, files, answer["answer"], Store(settings).current()


def ask(api: TestClient, question: str) -> dict[str, Any]:
    response = api.post("/ask", json={"question": question})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_a_pdf_and_a_docx_are_added_answered_from_and_removed(local: TestClient, settings: Settings):
    pdf, doc = text_pdf("Brackenridge lighthouse notes", PDF_FACT), word("Dunmore ferry", DOCX_FACT)
    meta = {
        "lighthouse.pdf": {
            "title": "Brackenridge lighthouse notes",
            "publisher": "Coastal Heritage Trust",
            "published": "1990-01-01",
            "kind": "report",
        }
    }
    response = upload(local, [("lighthouse.pdf", pdf), ("ferry.docx", doc)], meta)
    assert response.status_code == 200, response.text
    assert response.json()["added"] == 2 and response.json()["skipped"] == []
    listed = {d["doc_id"]: d for d in local.get("/documents").json()}
    assert listed["uploads--lighthouse.pdf"]["publisher"] == "Coastal Heritage Trust"
    assert listed["uploads--lighthouse.pdf"]["title"] == "Brackenridge lighthouse notes"
    # The listing says what cleaning took out: nothing from this PDF, page furniture from the news pages.
    assert listed["uploads--lighthouse.pdf"]["removed_count"] == 0
    assert any(d["removed_count"] > 0 for d in listed.values())
    assert (settings.corpus / UPLOADS / "lighthouse.pdf").read_bytes() == pdf

    answer = ask(local, PDF_QUESTION)
    assert not answer["abstained"]
    assert [c["doc_id"] for c in answer["citations"]][0] == "uploads--lighthouse.pdf"
    assert "1987" in answer["citations"][0]["quote"]
    assert DOCX_FACT in ask(local, DOCX_QUESTION)["citations"][0]["quote"]

    again = upload(local, [("lighthouse.pdf", pdf)], meta).json()
    assert (again["added"], again["updated"], again["removed"], again["chunks_embedded"]) == (0, 0, 0, 0)

    removed = local.delete("/documents/uploads--lighthouse.pdf")
    assert removed.status_code == 200, removed.text
    assert removed.json()["removed"] == 1
    assert ask(local, PDF_QUESTION)["abstained"]
    assert not (settings.corpus / UPLOADS / "lighthouse.pdf").exists()
    manifest = yaml.safe_load((settings.corpus / UPLOADS / "manifest.yaml").read_text())
    assert set(manifest["documents"]) == {"ferry.docx"}


def test_a_changed_file_is_embedded_again_alone_and_ingest_sees_uploads(
    local: TestClient, settings: Settings, embedder: Embedder
):
    assert (
        upload(local, [("notes.txt", b"Harbour notes.\n\nThe quay was rebuilt in 1911.\n")]).json()["added"]
        == 1
    )
    changed = upload(local, [("notes.txt", b"Harbour notes.\n\nThe quay was rebuilt in 1912.\n")]).json()
    assert (changed["added"], changed["updated"], changed["unchanged"]) == (0, 1, 5)
    assert changed["chunks_embedded"] == 1
    # A restart or `citeqa ingest` finds the same documents with the same fields: nothing to do.
    summary = ingest(settings.corpus, settings, embedder)
    assert (summary.added, summary.updated, summary.removed, summary.unchanged) == (0, 0, 0, 6)


def test_html_with_scripts_is_indexed_as_text_only(local: TestClient):
    page = b"<html><body><script>alert('x')</script><p>The pier opened in 1899.</p><img src=x onerror=alert(1)></body></html>"
    assert upload(local, [("pier.html", page)]).status_code == 200
    text = local.get("/documents/uploads--pier.html").json()["text"]
    assert "The pier opened in 1899." in text and "<" not in text and "alert" not in text


BAD = [
    ("over the size limit", [("big.txt", b"A sentence that is long enough. " * 8000)], None, 413, "limit"),
    ("a wrong type", [("sheet.xlsx", b"PK\x03\x04 not really")], None, 415, "unsupported file type .xlsx"),
    ("an encrypted PDF", [("locked.pdf", encrypted(text_pdf(PDF_FACT)))], None, 422, "encrypted PDF"),
    ("a broken PDF", [("broken.pdf", b"%PDF-1.4 not really a pdf")], None, 422, "unreadable PDF"),
    ("a zip bomb in a .docx", [("bomb.docx", zip_bomb())], None, 422, "expands to"),
    ("a name with a folder", [("../escape.txt", b"Some text here.")], None, 422, "plain name"),
    (
        "a name with control characters",
        [("bell\x07.txt", b"Some text here.")],
        None,
        422,
        "control characters",
    ),
    ("a hidden name", [(".hidden.txt", b"Some text here.")], None, 422, "leading dot"),
    ("the same document twice", [("a.txt", b"Same text."), ("a.txt", b"Same text.")], None, 422, "twice"),
    ("an empty file", [("empty.txt", b"")], None, 422, "empty"),
    ("a file with no text", [("blank.txt", b"   \n\n  ")], None, 422, "no text"),
    ("one good file and one bad", [("good.txt", b"A fine sentence."), ("x.exe", b"MZ")], None, 415, "x.exe"),
    ("too many files", [(f"f{i}.txt", b"Text.") for i in range(3)], None, 422, "at most 2"),
    ("metadata that is not JSON", [("a.txt", b"Some text.")], "{not json", 422, "JSON object"),
    ("metadata with an unknown field", [("a.txt", b"Some text.")], {"a.txt": {"author": "x"}}, 422, "author"),
    ("metadata for a file not sent", [("a.txt", b"Some text.")], {"b.txt": {}}, 422, "b.txt"),
    ("metadata over two lines", [("a.txt", b"Some text.")], {"a.txt": {"title": "a\nb"}}, 422, "one line"),
    ("metadata nested too deep", [("a.txt", b"Some text.")], "[" * 100_000, 422, "JSON object"),
    ("a name over 255 bytes", [("é" * 196 + ".txt", b"Some text.")], None, 422, "255 bytes"),
]


@pytest.mark.parametrize(
    ("files", "metadata", "status", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_uploads_are_refused_clearly_and_change_nothing(
    settings: Settings, files: list[tuple[str, bytes]], metadata: Any, status: int, words: str
):
    small = settings.model_copy(update={"max_file_bytes": 200_000, "max_upload_files": 2})
    with client(small) as api:
        before = state(api, small)
        response = upload(api, files, metadata)
        assert response.status_code == status, response.text
        assert words in str(response.json()["detail"])
        assert state(api, small) == before


def test_no_files_is_a_clear_422(local: TestClient):
    response = local.post("/documents", data={"metadata": "{}"})
    assert response.status_code == 422 and "files" in str(response.json()["detail"])


def test_an_upload_while_another_ingest_runs_is_refused_with_409(local: TestClient, settings: Settings):
    before = state(local, settings)
    with Store(settings).lock():
        response = upload(local, [("late.txt", b"A late sentence arrives.")])
    assert response.status_code == 409 and "another ingest" in response.json()["detail"]
    assert state(local, settings) == before


def test_other_machines_may_not_write_without_the_token(settings: Settings):
    with client(settings, ("203.0.113.9", 40000)) as remote, client(settings) as api:
        before = state(api, settings)
        refused = upload(remote, [("a.txt", b"Some text here.")])
        assert refused.status_code == 403 and "CITEQA_ADMIN_TOKEN" in refused.json()["detail"]
        assert remote.delete("/documents/kirklees-widespread-failings.txt").status_code == 403
        proxied = upload(api, [("a.txt", b"Some text here.")], headers={"X-Forwarded-For": "203.0.113.9"})
        assert proxied.status_code == 403
        assert state(api, settings) == before


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Host": "evil.example:8000"},
    ],
    ids=["another site's page", "an opaque origin", "a cross-site fetch", "a rebound DNS name"],
)
def test_a_page_of_another_site_in_a_local_browser_may_not_write(
    local: TestClient, settings: Settings, headers
):
    before = state(local, settings)
    response = upload(local, [("a.txt", b"Some text here.")], headers=headers)
    assert response.status_code == 403 and "CITEQA_ADMIN_TOKEN" in response.json()["detail"]
    assert local.delete("/documents/kirklees-widespread-failings.txt", headers=headers).status_code == 403
    assert state(local, settings) == before
    # The page's own origin may.
    same = {"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"}
    assert upload(local, [("a.txt", b"Some text here.")], headers=same).json()["added"] == 1


def test_links_ids_and_fields_are_kept_straight(local: TestClient, settings: Settings):
    meta = {"notes.txt": {"title": "Harbour notes"}}
    assert upload(local, [("notes.txt", b"The quay was rebuilt in 1911.")], meta).json()["added"] == 1
    # Sent again without fields: nothing changes, the title stays.
    again = upload(local, [("notes.txt", b"The quay was rebuilt in 1911.")]).json()
    assert (again["added"], again["updated"]) == (0, 0)
    assert local.get("/documents/uploads--notes.txt").json()["title"] == "Harbour notes"
    # A name that differs only in case would take the other file's id.
    clash = upload(local, [("Notes.txt", b"Other words entirely.")])
    assert clash.status_code == 422 and "would take the id" in clash.json()["detail"]
    # A document that is a link is not removed through it (its target is another document).
    (settings.corpus / "link.txt").symlink_to(settings.corpus / "kirklees-widespread-failings.txt")
    ingest_summary = local.post("/ask", json={"question": SEED_QUESTION})
    assert ingest_summary.status_code == 200
    from ingest.build import ingest as reindex

    reindex(settings.corpus, settings, local.app.state.embedder)
    refused = local.delete("/documents/link.txt")
    assert refused.status_code == 422 and "is a link" in refused.json()["detail"]
    assert (settings.corpus / "kirklees-widespread-failings.txt").is_file()


def test_a_broken_uploads_manifest_is_reported_not_overwritten(local: TestClient, settings: Settings):
    (settings.corpus / UPLOADS).mkdir()
    (settings.corpus / UPLOADS / "manifest.yaml").write_text("documents: [not, a, map\n")
    response = upload(local, [("a.txt", b"Some text here.")])
    assert response.status_code == 422 and "manifest.yaml is not valid YAML" in response.json()["detail"]
    assert (settings.corpus / UPLOADS / "manifest.yaml").read_text() == "documents: [not, a, map\n"
    assert not (settings.corpus / UPLOADS / "a.txt").exists()


def test_with_a_token_every_writer_must_send_it(settings: Settings):
    guarded = settings.model_copy(update={"admin_token": "s3cret"})
    with client(guarded) as api, client(guarded, ("203.0.113.9", 40000)) as remote:
        before = state(api, guarded)
        assert upload(api, [("a.txt", b"Some text here.")]).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert upload(api, [("a.txt", b"Some text here.")], headers=wrong).status_code == 403
        assert state(api, guarded) == before
        right = {"Authorization": "Bearer s3cret"}
        assert upload(remote, [("a.txt", b"Some text here.")], headers=right).json()["added"] == 1
        assert remote.delete("/documents/uploads--a.txt", headers=right).json()["removed"] == 1


def test_deleting_an_unknown_document_is_404(local: TestClient):
    response = local.delete("/documents/not-a-document.txt")
    assert response.status_code == 404 and "no document" in response.json()["detail"]
    # A path that climbs out names no route at all: also 404, and nothing outside the corpus is touched.
    assert local.delete("/documents/..%2F..%2Fetc%2Fpasswd").status_code == 404


def test_the_schema_states_the_write_rules(local: TestClient, settings: Settings):
    schema = local.get("/openapi.json").json()
    post = schema["paths"]["/documents"]["post"]
    assert {"403", "409", "413", "415", "422"} <= set(post["responses"])
    assert "security" not in post and "only clients on this machine" in post["description"]
    assert f"{settings.max_file_bytes:,} bytes" in post["description"]
    guarded = settings.model_copy(update={"admin_token": "s3cret"})
    with client(guarded) as api:
        post = api.get("/openapi.json").json()["paths"]["/documents"]["post"]
        assert post["security"] and "401" in post["responses"]


def test_an_upload_cut_off_half_way_changes_nothing(settings: Settings, tmp_path: Path):
    server = serve(settings.home, settings.corpus, tmp_path / "server.log")
    try:
        host, port = server.url.removeprefix("http://").split(":")
        docs = httpx.get(f"{server.url}/documents").json()
        body = (
            b'--b\r\nContent-Disposition: form-data; name="files"; filename="cut.txt"\r\n\r\n'
            + b"Half a file. " * 100
        )
        with socket.create_connection((host, int(port))) as sock:
            head = f"POST /documents HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            sock.sendall(head.encode() + f"Content-Length: {len(body) * 4}\r\n\r\n".encode() + body)
        assert httpx.get(f"{server.url}/documents").json() == docs
        assert not (settings.corpus / UPLOADS).exists()
        assert (
            httpx.post(f"{server.url}/ask", json={"question": SEED_QUESTION}, timeout=60).status_code == 200
        )
    finally:
        server.stop()


def test_questions_during_an_upload_are_answered_from_one_whole_index(settings: Settings, tmp_path: Path):
    server = serve(settings.home, settings.corpus, tmp_path / "server.log")
    try:
        before = httpx.post(f"{server.url}/ask", json={"question": SEED_QUESTION}, timeout=60)
        old = before.headers["X-Citeqa-Generation"]
        files = [("files", ("ferry.docx", word("Dunmore ferry", DOCX_FACT)))]
        pool = ThreadPoolExecutor(1)
        upload_done = pool.submit(httpx.post, f"{server.url}/documents", files=files, timeout=120)
        seen = []
        while not upload_done.done():
            reply = httpx.post(f"{server.url}/ask", json={"question": SEED_QUESTION}, timeout=60)
            assert reply.status_code == 200, reply.text
            seen.append((reply.headers["X-Citeqa-Generation"], reply.json()["answer"]))
        assert upload_done.result().status_code == 200
        new = httpx.post(f"{server.url}/ask", json={"question": DOCX_QUESTION}, timeout=60)
        assert DOCX_FACT in new.json()["citations"][0]["quote"]
        assert seen and {generation for generation, _ in seen} <= {old, new.headers["X-Citeqa-Generation"]}
        # The seed answer is the same from either index: nothing half-built was read.
        assert {answer for _, answer in seen} == {before.json()["answer"]}
    finally:
        server.stop()


def test_a_body_over_the_upload_limit_is_refused_before_it_is_read(settings: Settings):
    small = settings.model_copy(update={"max_upload_bytes": 100_000})
    with client(small) as api:
        before = state(api, small)
        response = upload(
            api, [("a.txt", b"Words and more words. " * 5000), ("b.txt", b"More words here. " * 3000)]
        )
        assert response.status_code == 413 and "100,000-byte limit" in response.json()["detail"]
        assert state(api, small) == before


def test_the_page_passes_on_the_browsers_origin_to_the_api():
    import gradio as gr
    from starlette.requests import Request

    from app.web.ui.client import on_behalf

    def browser(host: str, client: str, **headers: str) -> gr.Request:
        raw = [(b"host", host.encode())] + [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        scope = {"type": "http", "method": "POST", "path": "/", "headers": raw, "client": (client, 1)}
        return gr.Request(request=Request(scope))

    assert on_behalf(browser("127.0.0.1:8000", "127.0.0.1", Origin="http://127.0.0.1:8000")) == {}
    # Another site's page posting to this UI from a local browser: the API must see it is not this machine's.
    assert "x-forwarded-for" in on_behalf(
        browser("127.0.0.1:8000", "127.0.0.1", Origin="https://evil.example")
    )
    assert on_behalf(browser("10.0.0.5:8000", "203.0.113.9"))["x-forwarded-for"] == "203.0.113.9"
    assert on_behalf(browser("127.0.0.1:8000", "127.0.0.1", **{"X-Forwarded-For": "198.51.100.7"}))[
        "x-forwarded-for"
    ].startswith("198.51.100.7")
