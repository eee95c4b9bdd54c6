"""The UI in Debian's Chromium against a real server: cited answers, the source view, follow-ups, abstentions,
and markup in documents or questions shown as text, never run."""

import html
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from test_e2e import serve, stop

from app.settings import Settings
from app.store.embed import Embedder
from app.store.split import squash
from app.web.ui.chat import answer_html, citation_line, source_html
from app.web.ui.client import as_text
from ingest.build import ingest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SEED_QUESTION = "When did the focused visit take place?"
FOLLOW_UP = "Who carried it out?"
UNANSWERABLE = "What is the capital of France?"
XSS_FILE = "zz-lantern-pilot-notes.txt"
XSS_QUESTION = "When did the Harrowgate lantern pilot begin?"
IMG = '<img src=x onerror="window.__pwned=1">'
SCRIPT = "<script>window.__pwned=1</script>"
# Entities survive the loader's tag stripping and cleaning decodes them, so the indexed text holds live
# markup; the raw tags further down are stripped at ingest, and must not run either way.
XSS_TEXT = f"""Lantern pilot notes {html.escape(IMG, quote=False)}

The Harrowgate lantern pilot began on 4 May 1999 under the logbook heading {html.escape(SCRIPT)} (clerk).

{SCRIPT}
{IMG}

The lantern pilot was paid for by the Harrowgate parish council, which voted for it in March 1999.
"""
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def site_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of the browser tests' server: its index, corpus, log and temporary files (`tmp`)."""
    return tmp_path_factory.mktemp("browser")


@pytest.fixture(scope="module")
def site(seed_settings: Settings, embedder: Embedder, site_root: Path) -> Iterator[str]:
    """A real server on the seed index, copied and extended with a document full of markup."""
    root = site_root
    home, corpus = root / "home", root / "corpus"
    shutil.copytree(seed_settings.home, home)
    shutil.copytree(seed_settings.corpus, corpus)
    (corpus / XSS_FILE).write_text(XSS_TEXT, encoding="utf-8")
    summary = ingest(corpus, seed_settings.model_copy(update={"home": home, "corpus": corpus}), embedder)
    assert summary.added == 1
    (root / "tmp").mkdir()
    # Its own temporary folder, so a test can see what the server leaves there; GRADIO_IS_E2E_TEST makes
    # Gradio drop a closed tab's session after a second instead of an hour, and changes nothing else we use.
    extra = {
        "TMPDIR": str(root / "tmp"),
        "GRADIO_IS_E2E_TEST": "1",
        "CITEQA_QUESTIONS_FILE": str(root / "recorded.yaml"),
    }
    proc, base = serve(home, corpus, root / "server.log", extra)
    try:
        yield base
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless (Playwright's own browser download cannot run offline)."""
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium; run `make browser`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, site: str) -> Iterator[Any]:
    """A fresh page on the UI, with any dialog (an injected alert) recorded and dismissed."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    tab.dialogs = []

    def on_dialog(dialog: Any) -> None:
        tab.dialogs.append(dialog.message)
        dialog.dismiss()

    tab.on("dialog", on_dialog)
    tab.goto(f"{site}/ui/")
    tab.wait_for_selector("#cq-question textarea", timeout=60_000)
    yield tab
    context.close()


def api_ask(site: str, question: str, history: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """What the API answers, for comparing with what the page shows."""
    response = httpx.post(f"{site}/ask", json={"question": question, "history": history or []}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def ask_ui(page: Any, question: str, answers: int) -> Any:
    """Type a question, press Ask, and return the bot message once the `answers`-th answer is shown."""
    page.fill("#cq-question textarea", question)
    page.click("#cq-ask")
    page.wait_for_function(
        f"document.querySelectorAll('#cq-chat .cq-answer').length >= {answers}", timeout=60_000
    )
    page.wait_for_function("document.querySelector('#cq-question textarea').value === ''", timeout=10_000)
    return page.locator('#cq-chat [data-testid="bot"]').nth(answers - 1)


def open_source(page: Any, n: int) -> None:
    """Choose citation [n] in the sources panel and wait for its highlighted quote."""
    page.locator("#cq-pick label").filter(has_text=f"[{n}]").first.click()
    page.wait_for_selector("#cq-source mark", timeout=30_000)


def assert_not_executed(page: Any) -> None:
    """Nothing injected ran: no flag, no alert, no image or script element made from document or question."""
    page.wait_for_timeout(500)  # an <img onerror> fires within milliseconds of being parsed
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.dialogs == []
    assert page.locator("img[src='x']").count() == 0
    assert page.locator("#cq-chat script, #cq-source script, #cq-documents script").count() == 0


@pytest.mark.browser
@pytest.mark.slow
def test_cited_answer_source_view_follow_up_and_abstention(page: Any, site: str) -> None:
    assert page.get_by_text("Example questions").is_visible()
    expected = api_ask(site, SEED_QUESTION)
    assert expected["citations"] and not expected["abstained"]

    message = ask_ui(page, SEED_QUESTION, 1)
    quotes = [squash(q) for q in message.locator(".cq-quote").all_inner_texts()]
    assert quotes == [f"“{squash(c['quote'])}”" for c in expected["citations"]]
    titles = message.locator(".cq-card .cq-title").all_inner_texts()
    assert titles == [c["title"] for c in expected["citations"]]
    assert message.locator(".cq-abstain").count() == 0

    first = expected["citations"][0]
    open_source(page, first["n"])
    assert squash(page.inner_text("#cq-source mark")) == squash(first["quote"])
    doc = httpx.get(f"{site}/documents/{first['doc_id']}", timeout=30).json()
    line = page.input_value("#cq-citation textarea")
    assert line.startswith(f"“{squash(first['quote'])}” — {doc['title']}")
    if doc["publisher"]:
        assert doc["publisher"] in line

    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(400)
    page.screenshot(path=str(ARTIFACTS / "ui-answer.png"))

    marker = message.locator("a.cq-marker").first
    marker.click()
    card = page.locator(f"#{marker.get_attribute('href')[1:]}")
    assert "cq-flash" in (card.get_attribute("class") or "")

    history = [
        {"role": "user", "content": SEED_QUESTION},
        {"role": "assistant", "content": expected["answer"]},
    ]
    follow = api_ask(site, FOLLOW_UP, history)
    message = ask_ui(page, FOLLOW_UP, 2)
    assert [squash(q) for q in message.locator(".cq-quote").all_inner_texts()] == [
        f"“{squash(c['quote'])}”" for c in follow["citations"]
    ]
    assert (message.locator(".cq-abstain").count() > 0) == follow["abstained"]

    message = ask_ui(page, UNANSWERABLE, 3)
    assert "Not answered by the documents" in message.inner_text()
    if api_ask(site, UNANSWERABLE)["citations"]:
        assert "Closest material — not an answer" in message.inner_text()


@pytest.mark.browser
@pytest.mark.slow
def test_markup_in_a_document_is_shown_as_text(page: Any, site: str) -> None:
    doc_id = next(
        d["doc_id"] for d in httpx.get(f"{site}/documents", timeout=30).json() if d["path"] == XSS_FILE
    )
    text = httpx.get(f"{site}/documents/{doc_id}", timeout=30).json()["text"]
    expected = api_ask(site, XSS_QUESTION)
    cited = [c for c in expected["citations"] if c["doc_id"] == doc_id]
    assert cited, expected

    message = ask_ui(page, XSS_QUESTION, 1)
    shown = message.inner_text()
    for c in cited:
        assert squash(c["quote"]) in squash(shown)
    open_source(page, cited[0]["n"])
    source = page.inner_text("#cq-source")
    page.click("#cq-docs-panel > button")
    page.wait_for_timeout(300)
    for literal in (IMG, SCRIPT):
        if literal in text:
            assert literal in source
    if IMG in text:
        assert IMG in page.inner_text("#cq-documents")
    assert_not_executed(page)


@pytest.mark.browser
@pytest.mark.slow
def test_markup_in_a_question_is_shown_as_text(page: Any) -> None:
    question = f"<img src=x onerror=window.__pwned=1> {XSS_QUESTION}"
    ask_ui(page, question, 1)
    assert question in page.locator('#cq-chat [data-testid="user"]').last.inner_text()
    page.locator("#cq-chat a.cq-add").first.click()
    page.wait_for_selector("#cq-brief-remove-0", timeout=30_000)
    assert briefing_rows(page) == [squash(question)]
    assert_not_executed(page)


@pytest.mark.slow
def test_markup_in_a_quote_stays_text_in_a_markdown_briefing(site: str) -> None:
    from markdown_it import MarkdownIt
    from mdit_py_plugins.footnote import footnote_plugin

    items = [{"question": XSS_QUESTION}, {"question": f"{SCRIPT} {XSS_QUESTION}"}]
    response = httpx.post(f"{site}/briefing", json={"title": IMG, "items": items}, timeout=60)
    assert response.status_code == 200, response.text
    quoted = [
        n["quote"]
        for n in httpx.post(
            f"{site}/briefing", json={"title": "t", "format": "json", "items": items}, timeout=60
        ).json()["notes"]
    ]
    assert any("<script>" in q for q in quoted), quoted  # the document's markup is in a quote ...
    rendered = MarkdownIt("commonmark").use(footnote_plugin).render(response.text)
    assert "<script" not in rendered and "<img" not in rendered  # ... and stays text in the briefing
    assert html.escape(SCRIPT) in rendered and html.escape(IMG) in rendered


@pytest.mark.browser
@pytest.mark.slow
def test_errors_are_messages_not_tracebacks(page: Any) -> None:
    page.fill("#cq-question textarea", "x" * 2500)
    page.click("#cq-ask")
    page.wait_for_selector("text=longer than", timeout=30_000)
    page.fill("#cq-question textarea", "   ")
    page.click("#cq-ask")
    page.wait_for_selector("text=Type a question first", timeout=30_000)
    assert page.locator("#cq-chat .cq-answer").count() == 0
    assert "Traceback" not in page.inner_text("body")


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "ask_operation"),
    [
        ("/docs", "#operations-answers-ask_route_ask_post .opblock-summary-path"),
        ("/redoc", "[data-section-id='tag/answers/operation/ask_route_ask_post']"),
    ],
    ids=["swagger-ui", "redoc"],
)
def test_api_docs_render_with_every_other_host_refused(
    browser: Any, site: str, path: str, ask_operation: str
) -> None:
    # The machines citeqa is built for have no internet: a page that needs a CDN shows nothing there.
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    server = urlsplit(site).netloc
    refused: list[str] = []

    def only_the_server(route: Any) -> None:
        if urlsplit(route.request.url).netloc == server:
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_server)
    tab = context.new_page()
    try:
        tab.goto(f"{site}{path}")
        tab.wait_for_selector(ask_operation, timeout=60_000)
        assert "/ask" in tab.locator(ask_operation).first.inner_text()
        assert tab.get_by_text("/retrieve").count() >= 1
        ARTIFACTS.mkdir(exist_ok=True)
        tab.screenshot(path=str(ARTIFACTS / f"api{path.replace('/', '-')}.png"))
    finally:
        context.close()
    assert refused == []


# --- the rendering helpers, without a browser --------------------------------------------------------------


def test_as_text_leaves_no_markup_or_markdown() -> None:
    rendered = as_text(f"{IMG} {SCRIPT} **bold** [link](javascript:x) $$x$$ `code` &amp;")
    assert not set("<>\"'*[]()`$") & set(rendered.replace("&#", ""))
    assert html.unescape(rendered) == f"{IMG} {SCRIPT} **bold** [link](javascript:x) $$x$$ `code` &amp;"


def test_answer_html_links_markers_to_escaped_cards() -> None:
    citation = {
        "n": 1,
        "doc_id": "d",
        "title": IMG,
        "source": SCRIPT,
        "published": "2018-03-22",
        "url": "javascript:alert(1)",
        "quote": f"A {SCRIPT} quote.",
        "start": 0,
        "end": 1,
        "score": 1.0,
    }
    rendered = answer_html(
        {"answer": f"A {IMG} quote. [1] [7]", "abstained": False, "citations": [citation]}, 3
    )
    assert '<a class="cq-marker" href="#cq-c3-1">[1]</a>' in rendered
    assert 'id="cq-c3-1"' in rendered and "22 March 2018" in rendered
    assert "<img" not in rendered and "<script" not in rendered and "javascript:alert" not in rendered
    assert "cq-c3-7" not in rendered  # a marker without a citation stays plain text
    abstained = answer_html({"answer": "No. [1]", "abstained": True, "citations": [citation]}, 1)
    assert "Not answered by the documents" in abstained and "not an answer" in abstained


def test_source_view_marks_exactly_the_quote_and_the_citation_line_is_briefing_ready() -> None:
    text = f"Intro {SCRIPT}. The visit was in February. After."
    start = text.index("The visit")
    end = start + len("The visit was in February.")
    citation = {"n": 1, "quote": text[start:end], "start": start, "end": end}
    doc = {"title": "Letter", "publisher": "Ofsted", "published": "2018-03-22", "url": "https://x.example/l"}
    doc["text"] = text
    rendered = source_html(citation, doc)
    assert "<mark>The visit was in February.</mark>" in rendered
    assert "<script" not in rendered and "&lt;script&gt;" in rendered
    moved = source_html({**citation, "start": 0}, doc)
    assert "<mark>" not in moved and "no longer" in moved
    line = citation_line(citation, doc)
    assert line == "“The visit was in February.” — Letter, Ofsted, 22 March 2018, https://x.example/l"
    assert citation_line(citation, {**doc, "publisher": "", "url": ""}) == (
        "“The visit was in February.” — Letter, 22 March 2018"
    )


# --- the briefing panel ------------------------------------------------------------------------------------

AGENCY = "How many agency staff had senior managers recruited?"


def briefing_rows(page: Any) -> list[str]:
    """The questions listed under "In the briefing", in order."""
    return [squash(t) for t in page.locator("#cq-briefing .cq-brief-entry .cq-brief-q").all_inner_texts()]


def wait_ready(page: Any, questions: int, title: str = "Briefing") -> None:
    """Wait until the downloads hold a briefing called `title` of `questions` questions."""
    label = f"“{title}”: {questions} question{'s' if questions != 1 else ''},"
    page.wait_for_function(
        f"(document.querySelector('#cq-brief-ready') || {{}}).innerText?.startsWith({label!r})",
        timeout=60_000,
    )


@pytest.mark.browser
@pytest.mark.slow
def test_briefing_collects_two_answers_and_downloads_word_footnotes(
    page: Any, site: str, tmp_path: Path
) -> None:
    from test_brief import note_parts, word_notes

    first, second = api_ask(site, SEED_QUESTION), api_ask(site, AGENCY)
    assert first["citations"] and second["citations"] and not second["abstained"]
    ask_ui(page, SEED_QUESTION, 1)
    ask_ui(page, AGENCY, 2)
    page.wait_for_selector("#cq-add-2", timeout=30_000)
    page.locator("#cq-chat a.cq-add").nth(0).click()
    page.wait_for_selector("#cq-brief-remove-0", timeout=30_000)
    wait_ready(page, 1)
    page.locator("#cq-chat a.cq-add").nth(1).click()
    page.wait_for_selector("#cq-brief-remove-1", timeout=30_000)
    wait_ready(page, 2)
    assert briefing_rows(page) == [SEED_QUESTION, AGENCY]
    assert page.locator("#cq-add-1").is_disabled() and page.locator("#cq-add-2").is_disabled()

    # Reorder, then check the order went into the file.
    page.click("#cq-brief-up-1")
    page.wait_for_function(
        f"document.querySelector('#cq-briefing .cq-brief-q')?.innerText === {AGENCY!r}", timeout=30_000
    )
    wait_ready(page, 2)
    page.fill("#cq-brief-title textarea, #cq-brief-title input", "Wakefield staffing")
    wait_ready(page, 2, "Wakefield staffing")
    ARTIFACTS.mkdir(exist_ok=True)
    page.set_viewport_size({"width": 1400, "height": 1800})  # the whole panel in view, for the picture
    page.wait_for_timeout(300)
    box = page.locator("#cq-briefing").bounding_box()
    margin = 12  # the heading sits a little outside the column's box
    page.screenshot(
        path=str(ARTIFACTS / "briefing-panel.png"),
        clip={
            "x": box["x"] - margin,
            "y": box["y"] - margin,
            "width": box["width"] + 2 * margin,
            "height": box["height"] + 2 * margin,
        },
    )

    with page.expect_download(timeout=60_000) as download:
        page.click("#cq-brief-docx")
    saved = tmp_path / "briefing.docx"
    download.value.save_as(saved)
    assert download.value.suggested_filename == "wakefield-staffing.docx"
    document, notes = word_notes(saved.read_bytes())
    assert document.paragraphs[0].text == "Wakefield staffing"
    headings = [p.text for p in document.paragraphs if p.style.name.startswith("Heading")]
    assert headings == [AGENCY, SEED_QUESTION]
    expected = {
        (c["doc_id"], c["start"], c["end"], c["quote"]) for c in first["citations"] + second["citations"]
    }
    found = set()
    for note in notes.values():
        quote, doc_id, start, end = note_parts(note)
        text = httpx.get(f"{site}/documents/{doc_id}", timeout=30).json()["text"]
        assert text[start:end] == quote
        found.add((doc_id, start, end, quote))
    assert found == expected

    with page.expect_download(timeout=60_000) as download:
        page.click("#cq-brief-md")
    markdown = Path(download.value.path()).read_text(encoding="utf-8")
    assert markdown.startswith("# Wakefield staffing\n") and "[^1]: “" in markdown

    page.click("#cq-brief-remove-0")
    page.wait_for_selector("#cq-brief-remove-1", state="detached", timeout=30_000)
    assert briefing_rows(page) == [SEED_QUESTION]
    assert page.locator("#cq-add-2").is_enabled()


@pytest.mark.browser
@pytest.mark.slow
def test_a_closed_sessions_briefing_files_are_removed(page: Any, site_root: Path) -> None:
    """The files offered for download live in a folder per session, removed when Gradio drops the session."""
    folders = site_root / "tmp"
    before = set(folders.glob("citeqa-briefing-*"))
    ask_ui(page, SEED_QUESTION, 1)
    page.locator("#cq-chat a.cq-add").nth(0).click()
    wait_ready(page, 1)
    [folder] = set(folders.glob("citeqa-briefing-*")) - before
    assert sorted(p.suffix for p in folder.iterdir()) == [".docx", ".md"]
    page.context.close()  # the tab closes; Gradio marks its session closed
    deadline = time.monotonic() + 30
    while folder.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not folder.exists()


@pytest.mark.browser
@pytest.mark.slow
def test_documents_added_in_the_page_are_answered_from_recorded_and_removed(
    page: Any, site: str, site_root: Path, tmp_path: Path
) -> None:
    from test_documents import DOCX_FACT, DOCX_QUESTION, PDF_FACT, PDF_QUESTION, text_pdf, word

    from app.cli import main as cli

    files = {"lighthouse.pdf": text_pdf("Brackenridge lighthouse notes", PDF_FACT)}
    files["ferry.docx"] = word("Dunmore ferry", DOCX_FACT)
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    page.click("#cq-docs-panel > button")
    page.locator("#cq-upload input[type=file]").set_input_files([str(tmp_path / name) for name in files])
    page.wait_for_function(
        "['lighthouse', 'ferry'].every(n => document.querySelector('#cq-upload').innerText.includes(n))",
        timeout=60_000,
    )
    page.fill("#cq-upload-publisher textarea, #cq-upload-publisher input", "Coastal Heritage Trust")
    page.click("#cq-upload-add")
    page.wait_for_selector("#cq-docs-done", timeout=120_000)
    assert "2 added" in page.inner_text("#cq-docs-done")
    listed = page.inner_text("#cq-documents")
    assert (
        "Dunmore ferry" in listed and "Coastal Heritage Trust" in listed and "removed in cleaning" in listed
    )

    # An answer only the new Word file holds, kept in the question set.
    bot = ask_ui(page, DOCX_QUESTION, 1)
    assert "4,200 passengers" in bot.inner_text()
    page.click("#cq-qset > button")
    page.click("#cq-qset-add")
    page.wait_for_selector("#cq-qset-done", timeout=60_000)

    # One only the PDF holds, then the PDF removed: the same question is no longer answered.
    assert "1987" in ask_ui(page, PDF_QUESTION, 2).inner_text()
    page.click("#cq-remove-pick input")
    page.keyboard.type("lighthouse")
    page.get_by_role("option", name="uploads--lighthouse.pdf").first.click()
    page.click("#cq-remove")
    page.wait_for_function(
        "document.querySelector('#cq-docs-done')?.innerText.includes('1 removed')", timeout=120_000
    )
    assert "do not answer" in ask_ui(page, PDF_QUESTION, 3).inner_text()
    assert_not_executed(page)

    recorded = site_root / "recorded.yaml"
    reports = tmp_path / "reports"
    args = [
        "eval",
        "--corpus",
        str(site_root / "corpus"),
        "--questions",
        str(recorded),
        "--report",
        str(reports),
    ]
    assert cli(args) == 0
    [result] = json.loads((reports / "report.json").read_text())["results"]
    assert result["question"] == DOCX_QUESTION and result["passed"]
    # A file the server refuses: the API's own message in the page, and the index as it was.
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 not really a pdf")
    page.locator("#cq-upload input[type=file]").set_input_files([str(tmp_path / "broken.pdf")])
    page.wait_for_function(
        "document.querySelector('#cq-upload').innerText.includes('broken')", timeout=60_000
    )
    page.click("#cq-upload-add")
    page.wait_for_selector("#cq-docs-result .cq-warn", timeout=60_000)
    assert "unreadable PDF" in page.inner_text("#cq-docs-result")
    assert "broken" not in page.inner_text("#cq-documents")
    # The page's own upload leaves the other browser tests the corpus they expect.
    assert httpx.delete(f"{site}/documents/uploads--ferry.docx", timeout=120).status_code == 200
