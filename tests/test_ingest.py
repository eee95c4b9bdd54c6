"""Ingest against a real Chroma in a temporary folder and the real model."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.qa.answer import ask
from app.settings import Settings
from app.store.embed import Embedder
from app.store.index import Store
from app.store.split import sentence_spans
from ingest.build import HNSW_EF_SEARCH, ingest
from ingest.clean import clean
from ingest.load import load
from tests.conftest import CORPUS, ROOT, make_settings

LETTER = "ofsted-focused-visit-letter-wakefield-2018-03-22.md"
FURNITURE = [
    "Hide Ad",
    "READ:",
    "cookies",
    "Your browser",
    "Stock image",
    "Comment",
    "Have your say",
    "Click links below",
    "More like this",
    "You must sign in",
    "**",
    "###",
]


def test_offsets_of_every_chunk_and_sentence(seed_snapshot):
    for doc in seed_snapshot.docs.values():
        assert doc.chunks
        for _, start, end, first, count in doc.chunks:
            assert doc.text[start:end].startswith(doc.text[slice(*doc.sentences[first])])
            assert doc.text[start:end].endswith(doc.text[slice(*doc.sentences[first + count - 1])])
        for start, end in doc.sentences:
            assert doc.text[start:end] == doc.text[start:end].strip() != ""


def test_cleaning_removes_furniture_from_every_seed(seed_snapshot):
    for doc in seed_snapshot.docs.values():
        for junk in FURNITURE:
            assert junk not in doc.text, (doc.doc_id, junk)
        assert "˜" not in doc.text and "â€" not in doc.text
    first = seed_snapshot.docs["wakefield-council-failings-children-at-risk.txt"]
    assert first.text.startswith("‘Council failings")
    assert first.removed_count >= 10 and "Hide Ad" in first.removed_sample


def test_cleaning_keeps_every_findings_sentence_of_the_letter(seed_snapshot):
    raw = (CORPUS / LETTER).read_text()
    findings = raw.split("### **Findings**")[1].split("Ofsted will take the findings")[0]
    text = seed_snapshot.docs[LETTER.lower()].text
    paragraphs = [" ".join(p.split()).lstrip("- ") for p in findings.split("\n\n") if p.strip()]
    # Two paragraphs of the source were broken mid-sentence; cleaning joins them back.
    joined = " ".join(paragraphs).replace("was open with", "was open with")
    for sentence in [s for p in paragraphs for s in p.split(". ")]:
        assert sentence.strip(" .") in " ".join(text.split()), sentence
    assert "The local authority was open with inspectors" in text
    assert "The chair of the Local Safeguarding Children Board (LSCB) has significant concerns" in text
    assert joined


def test_glued_teaser_keeps_the_sentence_after_it():
    text, removed = clean("READ: Council response says all is wellA letter said: “Visits were late.”\n")
    assert text == "A letter said: “Visits were late.”"
    assert removed == ["READ: Council response says all is well"]


def test_sentences_do_not_end_at_initials_or_titles():
    text = "Chief Minister H.D. Kumaraswamy spoke. At 4 a.m. Capt. George S. James fired. The fort fell."
    assert [text[a:b] for a, b in sentence_spans(text)] == [
        "Chief Minister H.D. Kumaraswamy spoke.",
        "At 4 a.m. Capt. George S. James fired.",
        "The fort fell.",
    ]


def test_an_address_block_is_one_unit_and_a_date_line_a_heading_and_a_list_item_stand_alone():
    text = (
        "Piccadilly Gate  \nStore Street  \nManchester M1 2WD\n\n22 March 2018\n\n# Findings\n"
        "- Caseloads are high\n- Audits vary\n\nYours sincerely\n\nNeil Penswick\nHer Majesty's Inspector\n\n"
        "The visit found delays.\nManagers were new."
    )
    assert [text[a:b] for a, b in sentence_spans(text)] == [
        "Piccadilly Gate  \nStore Street  \nManchester M1 2WD",
        "22 March 2018",
        "# Findings",
        "Caseloads are high",
        "Audits vary",
        "Yours sincerely",
        "Neil Penswick\nHer Majesty's Inspector",
        "The visit found delays.",
        "Managers were new.",
    ]


def test_incremental_unchanged_edited_deleted(tmp_path: Path, corpus_copy: Path, embedder: Embedder):
    settings = make_settings(tmp_path / "home")
    first = ingest(corpus_copy, settings, embedder)
    assert (first.added, first.updated, first.removed, first.unchanged) == (5, 0, 0, 0)
    assert first.chunks_embedded == Store(settings).open().n_chunks

    again = ingest(corpus_copy, settings, embedder)
    assert (again.added, again.updated, again.removed, again.unchanged, again.chunks_embedded) == (
        0,
        0,
        0,
        5,
        0,
    )

    edited = corpus_copy / "kirklees-widespread-failings.txt"
    edited.write_text(edited.read_text() + "\nThe council published a new improvement plan in December.\n")
    before = Store(settings).open()
    kirklees_chunks = len(before.docs["kirklees-widespread-failings.txt"].chunks)
    result = ingest(corpus_copy, settings, embedder)
    assert (result.added, result.updated, result.removed, result.unchanged) == (0, 1, 0, 4)
    assert 1 <= result.chunks_embedded <= kirklees_chunks + 1
    after = Store(settings).open()
    assert "new improvement plan in December" in after.docs["kirklees-widespread-failings.txt"].text

    edited.unlink()
    gone = ingest(corpus_copy, settings, embedder)
    assert (gone.removed, gone.unchanged, gone.chunks_embedded) == (1, 4, 0)
    snapshot = Store(settings).open()
    assert "kirklees-widespread-failings.txt" not in snapshot.docs
    found = snapshot.lexical(["kirkle"], 50) + snapshot.dense(embedder.encode(["Kirklees"])[0], 50)
    assert all(
        snapshot.doc_list[int(snapshot.chunk_doc[p])].doc_id != "kirklees-widespread-failings.txt"
        for p, _ in found
    )
    assert snapshot.n_chunks == len(snapshot.chunk_ids) == snapshot._collection.count()


def test_bad_files_are_skipped_with_reasons(tmp_path: Path, corpus_copy: Path, embedder: Embedder):
    (corpus_copy / "empty.txt").write_bytes(b"")
    (corpus_copy / "binary.txt").write_bytes(bytes(range(256)) * 10)
    (corpus_copy / "broken.pdf").write_bytes(b"%PDF-1.4 not really a pdf")
    (corpus_copy / "broken.docx").write_bytes(b"PK\x03\x04 not a zip")
    (corpus_copy / "image.png").write_bytes(b"\x89PNG\r\n")
    (corpus_copy / "huge.txt").write_bytes(b"word " * 5000)
    (corpus_copy / "only-furniture.txt").write_text("Hide Ad\nHide Ad\n")
    (corpus_copy / "latin1.txt").write_bytes(
        "Caf\xe9 owners said the council\x92s plan was late.".encode("latin-1")
    )
    outside = tmp_path / "secret.txt"
    outside.write_text("A secret sentence outside the corpus.")
    (corpus_copy / "link.txt").symlink_to(outside)
    settings = make_settings(tmp_path / "home", max_file_bytes=20_000)
    summary = ingest(corpus_copy, settings, embedder)
    reasons = {s.path: s.reason for s in summary.skipped}
    assert reasons["empty.txt"] == "empty file"
    assert "binary" in reasons["binary.txt"]
    assert "PDF" in reasons["broken.pdf"] and "DOCX" in reasons["broken.docx"]
    assert "unsupported" in reasons["image.png"]
    assert "limit" in reasons["huge.txt"]
    assert reasons["only-furniture.txt"] == "no text after cleaning"
    assert "outside the corpus" in reasons["link.txt"]
    snapshot = Store(settings).open()
    assert "Café owners said the council’s plan was late." in snapshot.docs["latin1.txt"].text
    assert summary.added == 6 and not any("secret" in d.text for d in snapshot.docs.values())


def test_html_pdf_docx_and_script_stripping(tmp_path: Path, embedder: Embedder):
    import docx
    from pypdf import PdfWriter

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "page.html").write_text(
        "<html><head><title>T</title><script>alert(1)</script></head><body><nav>Home | News</nav>"
        "<p>The council met on Monday.</p><p>It agreed a plan.<img src=x onerror=alert(1)></p></body></html>"
    )
    (corpus / "note.txt").write_text(
        "Plain words here.<script>document.cookie</script> More words <b>bold</b>."
    )
    document = docx.Document()
    document.add_paragraph("The word document says the budget rose.")
    document.save(str(corpus / "memo.docx"))
    writer = PdfWriter()
    writer.add_blank_page(72, 72)
    with open(corpus / "blank.pdf", "wb") as handle:
        writer.write(handle)
    settings = make_settings(tmp_path / "home")
    summary = ingest(corpus, settings, embedder)
    docs = Store(settings).open().docs
    assert "The council met on Monday." in docs["page.html"].text
    assert "alert" not in docs["page.html"].text and "Home | News" not in docs["page.html"].text
    assert docs["note.txt"].text == "Plain words here. More words bold."
    assert "budget rose" in docs["memo.docx"].text
    assert {s.path: s.reason for s in summary.skipped}["blank.pdf"] == "no text after cleaning"


def test_load_decodes_utf16_and_rejects_nul():
    assert load(Path("a.txt"), "hello".encode("utf-16")) == "hello"
    with pytest.raises(Exception, match="binary"):
        load(Path("a.txt"), b"abc\x00def")


def test_bad_file_keeps_previous_version(tmp_path: Path, corpus_copy: Path, embedder: Embedder):
    settings = make_settings(tmp_path / "home")
    ingest(corpus_copy, settings, embedder)
    (corpus_copy / "kirklees-widespread-failings.txt").write_bytes(b"\x00\x01binary now")
    summary = ingest(corpus_copy, settings, embedder)
    assert summary.skipped and summary.removed == 0
    assert "Eleanor Brazil" in Store(settings).open().docs["kirklees-widespread-failings.txt"].text


def _squad_corpus(folder: Path, n: int) -> None:
    data = json.loads((ROOT / "evals" / "data" / "squad-dev-split.json").read_text())["data"]
    paragraphs = [p["context"] for a in data for p in a["paragraphs"]][:n]
    folder.mkdir()
    for i, text in enumerate(paragraphs):
        (folder / f"p{i:03d}.txt").write_text(text)


@pytest.mark.slow
def test_kill_during_ingest_keeps_old_index(tmp_path: Path, embedder: Embedder):
    corpus = tmp_path / "corpus"
    _squad_corpus(corpus, 294)
    small = tmp_path / "small"
    small.mkdir()
    (small / "one.txt").write_text("The old index answers this question about lighthouses in Cornwall.")
    home = tmp_path / "home"
    settings = make_settings(home)
    ingest(small, settings, embedder)
    live = Store(settings).current()
    env = {**os.environ, "CITEQA_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "ingest", str(corpus), "--json"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # Wait until the new generation folder exists, i.e. the run is past scanning, then kill it hard.
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name > live.name for p in home.glob("gen-*")):
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert Store(settings).current() == live or proc.returncode == 0
    if proc.returncode != 0:
        snapshot = Store(settings).open()
        answer = ask(snapshot, embedder, "Where are the lighthouses?", settings)
        assert answer.citations[0].doc_id == "one.txt"
    resumed = ingest(corpus, settings, embedder)
    assert resumed.added == 294
    assert len(list(home.glob("gen-*"))) <= 2


def test_damaged_index_gives_clear_message_and_rebuild_recovers(
    tmp_path: Path, corpus_copy: Path, embedder: Embedder
):
    settings = make_settings(tmp_path / "home")
    ingest(corpus_copy, settings, embedder)
    live = Store(settings).current()
    (live / "docs.json").write_text("{not json")
    with pytest.raises(Exception, match="rebuild"):
        Store(settings).open()
    with pytest.raises(Exception, match="rebuild"):
        ingest(corpus_copy, settings, embedder)
    summary = ingest(corpus_copy, settings, embedder, rebuild=True)
    assert summary.added == 5
    assert Store(settings).open().n_chunks > 0


def test_cli_ingest_json(tmp_path: Path, corpus_copy: Path):
    env = {**os.environ, "CITEQA_HOME": str(tmp_path / "home")}
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "ingest", str(corpus_copy), "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(out.stdout)
    assert set(summary) == {"added", "updated", "removed", "unchanged", "chunks_embedded", "skipped"}
    assert summary["added"] == 5


def test_the_dense_search_explores_enough_neighbours_to_repeat_itself(seed_snapshot):
    # HNSW_EF_SEARCH is set when the collection is made; Chroma's default of 100 varied between runs.
    assert seed_snapshot._collection.configuration_json["hnsw"]["ef_search"] == HNSW_EF_SEARCH


def test_no_default_embedding_function_or_openai(seed_snapshot):
    home = Path.home()
    assert not (home / ".cache" / "chroma" / "onnx_models").exists()
    assert "openai" not in sys.modules


def test_missing_corpus_is_a_clear_error(tmp_path: Path, embedder: Embedder):
    with pytest.raises(Exception, match="does not exist"):
        ingest(tmp_path / "nope", Settings(home=tmp_path / "h"), embedder)


def test_manifest_metadata_and_examples(seed_snapshot, tmp_path: Path, embedder: Embedder):
    from ingest.build import read_examples

    letter = seed_snapshot.docs[LETTER.lower()]
    assert (letter.publisher, letter.published, letter.kind) == ("Ofsted", "2018-03-22", "official letter")
    assert seed_snapshot.docs["kirklees-widespread-failings.txt"].publisher == ""
    assert len(read_examples(CORPUS)) >= 3
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("A sentence about ferries.")
    (corpus / "manifest.yaml").write_text("documents: [not, a, mapping]\n")
    summary = ingest(corpus, make_settings(tmp_path / "home"), embedder)
    assert summary.added == 1 and "manifest ignored" in summary.skipped[0].reason
    assert read_examples(corpus) == []
