"""Fuzzing: schemathesis against the app's own OpenAPI schema, and property tests of cleaning, offsets and citations."""

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.settings import Settings
from app.store.embed import Embedder
from app.store.index import Snapshot, Store
from app.web.api import create_app
from ingest.build import ingest
from ingest.chunk import MAX_CHUNK_CHARS, MAX_SENTENCE_CHARS, bounded_sentences, chunk
from ingest.clean import clean
from tests.conftest import check_citations, make_settings

# --- schemathesis: every operation of /openapi.json, against the app with its lifespan running ---------------

# The schema states the limits (question length, top_k range, history depth) from the settings, so a
# schema-valid body must be accepted and a schema-invalid one refused.
CHECKS = [
    not_a_server_error,
    positive_data_acceptance,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# A body over the size limit is refused before it is parsed, valid or not: JSON Schema cannot state a size.
CONFIG = schemathesis.Config.from_str(
    """
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422]

[checks.positive_data_acceptance]
expected-statuses = ["2xx", 401, 403, 404, 409, 413]

# A schema-valid briefing may carry made-up answers, rightly refused with 422 (see tests/schemathesis.toml).
[[operations]]
include-name = "POST /briefing"  # one operation: separate path and method filters would match either
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 403, 404, 409, 413, 422]
"""
)
TRACE_MARKERS = ("Traceback", 'File "/', "site-packages")


# Every operation of the schema; a test below fails when an endpoint is added without being listed here.
OPERATIONS = [
    ("GET", "/health"),
    ("POST", "/ask"),
    ("POST", "/retrieve"),
    ("GET", "/documents"),
    ("GET", "/documents/{doc_id}"),
    ("POST", "/briefing"),
    ("POST", "/ingest"),
    ("POST", "/documents"),
    ("DELETE", "/documents/{doc_id}"),
    ("POST", "/questions"),
]


@pytest.fixture(scope="module")
def api_schema(seed_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The schema served by the app itself; the ASGI client starts the lifespan (model and index) once. On
    copies of the index and corpus: the writing operations are fuzzed too."""
    copy = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(seed_settings.home, copy / "home")
    shutil.copytree(seed_settings.corpus, copy / "corpus")
    settings = seed_settings.model_copy(
        update={
            "admin_token": "fuzz-admin-token",
            "cors_origins": [],
            "home": copy / "home",
            "corpus": copy / "corpus",
            "questions_file": copy / "recorded.yaml",
        }
    )
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(settings), config=CONFIG)


@pytest.mark.slow
def test_the_fuzzed_operations_are_all_of_them(api_schema: Any) -> None:
    listed = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert listed == set(OPERATIONS)


# Valid input for every operation; invalid input where there is something to get wrong (a body, a token).
FUZZ = [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS] + [
    (m, p, GenerationMode.NEGATIVE) for m, p in OPERATIONS if m == "POST"
]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path", "mode"), FUZZ, ids=[f"{m} {p} {g.value}" for m, p, g in FUZZ])
def test_every_operation_conforms_to_its_schema(
    api_schema: Any, seed_snapshot: Snapshot, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]
    strategy = operation.as_strategy(generation_mode=mode)
    if mode == GenerationMode.POSITIVE:
        known = [api_schema.get_strategies_from_examples(operation)]
        if "{doc_id}" in path:  # random ids are all 404: the documents that exist get their 200s checked too
            known.append([operation.as_strategy(path_parameters={"doc_id": d}) for d in seed_snapshot.docs])
        strategy = st.one_of(strategy, *[k for group in known for k in group])

    @given(case=strategy)
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
    def fuzz(case: schemathesis.Case) -> None:
        response = case.call()
        case.validate_response(response, checks=CHECKS)
        # Decoded leniently: a Word briefing is binary.
        text = response.content.decode("utf-8", "replace")
        assert not any(marker in text for marker in TRACE_MARKERS), text[:500]
        if response.status_code >= 400:
            assert response.json()["detail"], response.text

    fuzz()


# --- text strategies: what real documents and hostile ones contain -----------------------------------------------

PIECES = [
    "The council met on Monday. ",
    "Inspectors found that 37 children were waiting for a social worker. ",
    "Dr. Smith said (e.g. in March) that caseloads were high! ",
    "“Quoted words,” she said. ",
    "مرحبا بالعالم. هذا نص عربي. ",  # RTL
    "שלום עולם. ",
    "Emoji 👩‍👩‍👧‍👦 and flags 🇬🇧 here. ",
    "Combining: e\u0301 a\u0308 n\u0303 Z\u0335\u0336\u0337. ",
    "NUL\x00inside. ",
    "lone \ud800 and \udfff surrogates. ",
    "Windows\r\nline\r\nends. ",
    "old Mac\rline ends. ",
    "zero\u200bwidth\ufeffmarks. ",
    "mojibake: councilâ€™s â€œplanâ€\x9d. ",
    "<script>alert(1)</script><b>bold</b> & <i>it</i>. ",
    "Hide Ad\n",
    "\n\n",
    "   \t  ",
    "x" * 2500,
    "word " * 400,
    "A very long line without any full stop " * 40,
    "...!!!???",
    "12.5 per cent. 3.4 million. ",
]

texts = st.lists(st.sampled_from(PIECES) | st.text(max_size=200), max_size=12).map("".join)
clean_texts = st.lists(st.sampled_from(PIECES) | st.text(max_size=120), min_size=1, max_size=8).map("".join)


@given(texts)
@settings(max_examples=300, deadline=None)
def test_clean_never_raises_and_returns_valid_utf8(raw: str) -> None:
    text, removed = clean(raw)
    text.encode("utf-8")  # no lone surrogates
    for fragment in removed:
        fragment.encode("utf-8")
    assert "\x00" not in text and "\r" not in text
    assert text == text.strip()


def check_offsets(text: str) -> None:
    """Every sentence and chunk of the chunker is a non-empty, in-bounds, in-order, non-overlapping span."""
    sentences = bounded_sentences(text)
    previous_end = 0
    for start, end in sentences:
        assert previous_end <= start < end <= len(text), (start, end, previous_end, len(text))
        assert text[start:end].strip(), (start, end)
        assert end - start <= MAX_SENTENCE_CHARS
        previous_end = end
    chunks = chunk(sentences)
    expected_first = 0
    previous_end = 0
    for start, end, first, count in chunks:
        assert first == expected_first and count >= 1
        assert (start, end) == (sentences[first][0], sentences[first + count - 1][1])
        assert previous_end <= start < end <= len(text)
        assert count == 1 or end - start <= MAX_CHUNK_CHARS
        expected_first, previous_end = first + count, end
    assert expected_first == len(sentences)


@given(texts)
@settings(max_examples=300, deadline=None)
def test_sentence_and_chunk_offsets_over_arbitrary_text(raw: str) -> None:
    check_offsets(raw)
    check_offsets(clean(raw)[0])


# --- the citation invariant over arbitrary documents, through a real ingest ---------------------------------------

SUFFIXES = [".txt", ".md", ".html"]


@pytest.mark.slow
@given(body=clean_texts, suffix=st.sampled_from(SUFFIXES), pick=st.integers(min_value=0))
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_citation_quotes_the_document_exactly(
    embedder: Embedder, body: str, suffix: str, pick: int
) -> None:
    # One known sentence keeps every example indexable; the generated text goes around it.
    raw = f"{body}\n\nThe harbour master recorded forty ships in 1911.\n\n{body[::-1]}"
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        # surrogatepass writes lone surrogates as the invalid bytes a damaged file would hold.
        (corpus / f"doc{suffix}").write_bytes(raw.encode("utf-8", "surrogatepass"))
        settings_ = make_settings(Path(tmp) / "home")
        summary = ingest(corpus, settings_, embedder)
        if summary.skipped:
            # NUL bytes in a text file make it binary: skipped with a reason, never half-read.
            assert suffix != ".html" and "binary" in summary.skipped[0].reason, summary
            return
        snapshot = Store(settings_).open()
        (doc,) = snapshot.docs.values()
        check_offsets(doc.text)
        assert "\x00" not in doc.text and "<script>" not in doc.text
        doc.text.encode("utf-8")
        s, e = doc.sentences[pick % len(doc.sentences)]
        for question in (doc.text[s:e][:300], "How many ships did the harbour master record?"):
            if not question.strip():
                continue
            check_citations(snapshot, embedder, settings_, question)
