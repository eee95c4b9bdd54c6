"""The retrieval layer on the seed corpus: answers, citations, abstention, follow-ups."""

import re

import pytest

import app.qa.retrieve as retrieve_module
from app.errors import BadInput, CitationInvalid
from app.qa.answer import (
    ABSTAIN_TEXT,
    _unquoted,
    ask,
    candidates,
    check_citations,
    citations,
    passages,
    render,
)
from app.qa.expect import (
    DATE,
    NAME,
    NUMBER,
    PERSON,
    RATING,
    counted_nouns,
    counts,
    expected,
    form_words,
    offers,
    sub_questions,
)
from app.qa.followup import standalone
from app.qa.retrieve import CHUNK_COVERAGE_WEIGHT, FRAME_PENALTY, Evidence, retrieve, unframed
from app.schemas import Message
from app.settings import Settings
from app.store.index import Store
from ingest.build import ingest
from tests.conftest import citeqa_cli

LETTER = "ofsted-focused-visit-letter-wakefield-2018-03-22.md"


def _invariants(snapshot, answer):
    markers = {int(n) for n in re.findall(r"\[(\d+)\]", answer.answer)}
    assert markers == {c.n for c in answer.citations}
    for c in answer.citations:
        assert snapshot.docs[c.doc_id].text[c.start : c.end] == c.quote


def test_focused_visit_dates_cite_the_letter(seed_snapshot, embedder, seed_settings):
    answer = ask(seed_snapshot, embedder, "When did the focused visit take place?", seed_settings)
    assert not answer.abstained
    assert "27 and 28 February 2018" in answer.answer
    assert any(c.doc_id == LETTER and "27 and 28 February 2018" in c.quote for c in answer.citations)
    _invariants(seed_snapshot, answer)


def test_a_letters_contact_block_can_be_the_answer_quoted_whole(seed_snapshot, embedder, seed_settings):
    answer = ask(seed_snapshot, embedder, "What is Ofsted's textphone number?", seed_settings)
    assert not answer.abstained
    [block] = [c for c in answer.citations if "0161 618 8524" in c.quote]
    # The whole block, line breaks and all, exactly as the letter has it.
    assert block.doc_id == LETTER and block.quote.count("\n") >= 2
    assert "0161 618 8524" in answer.answer
    _invariants(seed_snapshot, answer)


def test_out_of_domain_question_abstains_with_closest_material(seed_snapshot, embedder, seed_settings):
    answer = ask(seed_snapshot, embedder, "What is the capital of France?", seed_settings)
    assert answer.abstained
    assert answer.answer.startswith(ABSTAIN_TEXT)
    assert answer.citations and "not an answer" in answer.answer
    _invariants(seed_snapshot, answer)


def test_a_sentence_the_questions_names_do_not_frame_is_demoted(
    seed_snapshot, embedder, seed_settings, monkeypatch
):
    # The corpus is about Wakefield and Kirklees: its ratings are weak evidence for a question about Leeds,
    # each demoted by the frame penalty, and the answer is an abstention.
    question = "How did Ofsted rate children's services in Leeds?"
    found = retrieve(seed_snapshot, embedder, question, seed_settings)
    assert found.sentences and all(unframed(seed_snapshot, found.focus, ev) for ev in found.sentences[:10])
    assert ask(seed_snapshot, embedder, question, seed_settings).abstained
    monkeypatch.setattr(retrieve_module, "FRAME_PENALTY", 0.0)
    plain = {ev.row: ev.score for ev in retrieve(seed_snapshot, embedder, question, seed_settings).sentences}
    for ev in found.sentences:
        demoted = FRAME_PENALTY if unframed(seed_snapshot, found.focus, ev) else 0.0
        assert ev.score == pytest.approx(plain[ev.row] - demoted)
    # The same question about a council of the corpus is answered from a sentence it frames, undemoted. The
    # reader is left out: its confidence, not the frame, decides whether that sentence is quoted with it on.
    monkeypatch.undo()
    kirklees = question.replace("Leeds", "Kirklees")
    found = retrieve(seed_snapshot, embedder, kirklees, seed_settings)
    usable = candidates(seed_snapshot, found)
    assert usable and not unframed(seed_snapshot, found.focus, usable[0])
    off = seed_settings.model_copy(update={"read_budget": 0})
    assert not ask(seed_snapshot, embedder, kirklees, off).abstained


def test_figure_question_answers_with_the_figure(seed_snapshot, embedder, seed_settings):
    answer = ask(
        seed_snapshot, embedder, "How many agency staff had senior managers recruited?", seed_settings
    )
    assert "29 agency staff" in answer.answer
    _invariants(seed_snapshot, answer)


@pytest.mark.parametrize(
    "question",
    [
        "Who replaced the previous director?",
        "What did the MP say?",
        "and in Kirklees?",
        "rating",
        "¿Qué pasó?",
        "<script>alert(1)</script>",
        "x" * 2000,
        "When " * 300,
    ],
)
def test_invariants_hold_for_any_question(seed_snapshot, embedder, seed_settings, question):
    _invariants(seed_snapshot, ask(seed_snapshot, embedder, question, seed_settings))


def test_official_letter_preferred_when_press_repeats_it(seed_snapshot, embedder, seed_settings):
    answer = ask(
        seed_snapshot,
        embedder,
        "Were child protection visits completed within the agreed timescales?",
        seed_settings,
    )
    quoting = [c for c in answer.citations if "child protection visits were not being completed" in c.quote]
    assert quoting and all(c.doc_id == LETTER for c in quoting)


def test_each_documents_best_sentence_leads_it_and_official_documents_come_first(seed_snapshot):
    def sentences(doc_id):
        doc = next(i for i, d in enumerate(seed_snapshot.doc_list) if d.doc_id == doc_id)
        rows = [r for r in range(len(seed_snapshot.sent_doc)) if int(seed_snapshot.sent_doc[r]) == doc]
        return [
            Evidence(r, doc, int(seed_snapshot.sent_start[r]), int(seed_snapshot.sent_end[r]), 0.5, 0)
            for r in rows
        ]

    def quoted(text):
        return [m.strip() for m in re.split(r"\[\d+\]", text) if m.strip()]

    def words(ev):
        return seed_snapshot.doc_list[ev.doc].text[ev.start : ev.end]

    letter = sentences(LETTER)
    news = sentences(
        next(d.doc_id for d in seed_snapshot.doc_list if d.doc_id != LETTER and "official" not in d.kind)
    )
    # Given best first: a news sentence, then the letter's later sentence, then earlier ones of each.
    best_first = [news[6], letter[9], news[2], letter[3]]
    assert quoted(render(seed_snapshot, list(best_first))) == [
        words(ev) for ev in (letter[9], letter[3], news[6], news[2])
    ]
    # A document's own order holds after its best sentence.
    assert quoted(render(seed_snapshot, [news[5], news[1], news[3]])) == [
        words(ev) for ev in (news[5], news[1], news[3])
    ]


def test_check_citations_rejects_tampering(seed_snapshot, embedder, seed_settings):
    answer = ask(seed_snapshot, embedder, "When did the focused visit take place?", seed_settings)
    good = answer.citations
    with pytest.raises(CitationInvalid):
        check_citations(seed_snapshot, answer.answer + " [9]", good)
    with pytest.raises(CitationInvalid):
        check_citations(seed_snapshot, re.sub(r"\[\d+\]", "", answer.answer), good)
    shifted = [c.model_copy(update={"start": c.start + 1}) for c in good]
    with pytest.raises(CitationInvalid):
        check_citations(seed_snapshot, answer.answer, shifted)
    assert citations(seed_snapshot, []) == []


def test_follow_up_is_expanded_and_returned_as_query(seed_snapshot, embedder, seed_settings):
    history = [
        Message(role="user", content="How many agency staff had Wakefield recruited?"),
        Message(role="assistant", content="Senior managers had recruited 29 agency staff [1]"),
    ]
    query, focus = standalone("And in Kirklees?", history)
    assert "Kirklees" in query and "agency staff" in query and "Wakefield" not in query
    answer = ask(seed_snapshot, embedder, "And in Kirklees?", seed_settings, history=history)
    assert answer.query == query
    _invariants(seed_snapshot, answer)
    pronoun, focus = standalone(
        "Who replaced him?",
        [
            Message(role="user", content="Who was Wakefield's director of children's services?"),
            Message(role="assistant", content="The previous director John Wilson had left in November. [1]"),
        ],
    )
    assert "John Wilson" in pronoun and focus == "Who replaced him"
    assert (
        standalone("When did the focused visit take place?", history)[0]
        == "When did the focused visit take place?"
    )
    assert standalone("Anything?", [])[0] == "Anything?"


def test_follow_up_gives_something_new(seed_snapshot, embedder, seed_settings):
    first = ask(seed_snapshot, embedder, "Who were the inspectors on the focused visit?", seed_settings)
    history = [
        Message(role="user", content="Who were the inspectors on the focused visit?"),
        Message(role="assistant", content=first.answer),
    ]
    second = ask(seed_snapshot, embedder, "When did they visit?", seed_settings, history=history)
    assert {c.quote for c in second.citations}.isdisjoint({c.quote for c in first.citations})


def test_bad_questions_and_top_k(seed_snapshot, embedder, seed_settings):
    for question in ["", "   ", "x" * (seed_settings.max_question_chars + 1)]:
        with pytest.raises(BadInput):
            ask(seed_snapshot, embedder, question, seed_settings)
    for k in (0, seed_settings.max_top_k + 1, 10**9):
        with pytest.raises(BadInput):
            passages(seed_snapshot, embedder, "caseloads", seed_settings, k)


def test_passages_have_exact_offsets(seed_snapshot, embedder, seed_settings):
    found = passages(seed_snapshot, embedder, "social workers caseloads morale", seed_settings, 5)
    assert 1 <= len(found) <= 5
    for p in found:
        assert seed_snapshot.docs[p.doc_id].text[p.start : p.end] == p.text


def test_sentences_rank_by_chunk_coverage_but_answer_on_their_own_evidence(
    seed_snapshot, embedder, seed_settings
):
    question = "How often were social workers supervised?"
    found = retrieve(seed_snapshot, embedder, question, seed_settings)
    ranks = [ev.rank for ev in found.sentences]
    assert ranks == sorted(ranks, reverse=True)
    # The rank adds the chunk's coverage (between 0 and 1) to the score; the score is the sentence's own.
    assert all(ev.score <= ev.rank <= ev.score + CHUNK_COVERAGE_WEIGHT + 1e-9 for ev in found.sentences)
    usable = candidates(seed_snapshot, found)
    # The thresholds count the score alone: nothing below them is ever quoted as an answer, the reader's
    # floor with the reader on, the abstention threshold with it off.
    for settings, floor in (
        (seed_settings, seed_settings.read_floor),
        (seed_settings.model_copy(update={"read_budget": 0}), seed_settings.abstain_threshold),
    ):
        answer = ask(seed_snapshot, embedder, question, settings)
        if not answer.abstained:
            assert usable and all(c.score >= floor for c in answer.citations)
    strict = seed_settings.model_copy(update={"abstain_threshold": 10.0, "read_floor": 10.0})
    assert ask(seed_snapshot, embedder, question, strict).abstained


def test_answer_kinds():
    assert expected("When did it happen?") == DATE
    assert expected("In which month was it?") == DATE
    # Plural forms ask for dates too.
    assert expected("On which dates was the festival held?") == DATE
    assert expected("In which centuries did the city grow?") == DATE
    assert expected("Which days was the office closed?") == DATE
    assert expected("In which decades did the population fall?") == DATE
    # "dates" as a verb asks for no date.
    assert expected("What dates back to the 12th century?") is None
    assert expected("How many staff?") == NUMBER
    assert expected("Who leads the council?") == PERSON
    assert expected("Why did it fail?") is None
    assert offers(DATE, "It met on 27 February 2018.", "When did it meet?")
    assert not offers(DATE, "It met in 2018.", "When in 2018 did it meet?")
    # Years of the second millennium are dates, as this century's are; a plain count is not.
    assert offers(DATE, "In 1066, William conquered England.", "When was the Battle of Hastings?")
    assert offers(DATE, "Herve served in the 1050s.", "When did Herve serve?")
    assert not offers(DATE, "It had 250 staff.", "When did it open?")
    assert not offers(NUMBER, "It was founded in 1562.", "How many churches were founded?")
    assert offers(PERSON, "Council leader Peter Box said so.", "Who leads the council?")
    assert not offers(PERSON, "Wakefield Council said so.", "Who leads the council?")
    assert not offers(NUMBER, "There were high sickness rates.", "How many were off sick?")
    # Head nouns, units, date granularity and dates inside figures.
    assert expected("Which two inspectors carried out the visit?") == PERSON
    assert expected("What did inspectors find?") is None
    assert expected("Which council committee met on Wednesday?") == NAME
    assert offers(NAME, "It went to the overview and scrutiny committee.", "Which council committee met?")
    assert not offers(NAME, "It went to the committee.", "Which council committee met?")
    assert not offers(NUMBER, "Sickness rates are high, at 12 staff.", "What was the rate, as a percentage?")
    assert offers(NUMBER, "Sickness was 12% last year.", "What was the rate, as a percentage?")
    assert not offers(NUMBER, "They visited on 27 and 28 February 2018.", "How many cases were open?")
    assert not offers(NUMBER, "There were many such cases.", "Exactly how many cases were open?")
    assert not offers(DATE, "It was published in July.", "On which day of the week was it published?")
    assert offers(DATE, "It was published on Friday.", "On which day of the week was it published?")
    # "Which two", plural date parts, money and the thing a "how many" question counts.
    q = "Which two inspectors carried out the visit?"
    assert not offers(PERSON, "The lead inspector was Jane Smith.", q)
    assert offers(PERSON, "The inspectors were Jane Smith and Omar Khan.", q)
    assert not offers(DATE, "They came in August 2015.", "In which months did inspectors visit?")
    assert offers(DATE, "They came in September and October.", "In which months did inspectors visit?")
    assert expected("What extra money has the council allocated?") == NUMBER
    assert not offers(NUMBER, "It added two teams.", "What extra money has the council allocated?")
    assert offers(NUMBER, "It added £3.5m.", "What extra money has the council allocated?")
    assert offers(NUMBER, "It paid 6 million lira.", "How much money was paid?")
    assert expected("How did Ofsted rate the council?") == RATING
    assert expected("What overall rating did the council get?") == RATING
    assert not offers(RATING, "Ofsted found serious failures at the council.", "How did Ofsted rate it?")
    assert offers(RATING, 'The council was rated "inadequate".', "How did Ofsted rate it?")
    assert form_words("On which day of the week was it published?") == ["day", "week"]
    assert form_words("What body did the council set up?") == ["body"]
    assert form_words("What did the council set up?") == []
    assert form_words("What share price was quoted?") == []  # "share" modifies "price" here
    assert form_words("In which decades did the population fall?") == ["decades"]
    assert form_words("What share of contacts met the threshold?") == ["share"]
    # The noun "rate" asks for a figure, not a verdict; money is asked for as the question's head.
    assert expected("How has the crime rate changed since 2010?") is None
    assert expected("How was the council rated?") == RATING
    assert expected("Which grants did the charity apply for?") is None
    assert expected("How much funding did the school get?") == NUMBER
    # Two people, not one named twice; "two-thirds" is not a count of answers.
    assert not offers(PERSON, "Jane Smith spoke; Ms Smith later left.", q)
    assert expected("Which two-thirds majority passed it?") != PERSON
    assert counts("Some 3 men were there.", ["men"]) and not counts("It was mentioned 3 times.", ["men"])
    assert counted_nouns("How many focused visits do councils get?") == ["focused", "visits"]
    assert counted_nouns("When did it happen?") == []
    assert counts('Councils get at least one "focused" visit.', ["focused", "visits"])
    assert not counts("Councils get a one-week inspection every three years.", ["focused", "visits"])
    assert sub_questions("Who chaired it, and when?") == ["Who chaired it?", "When chaired it?"]
    assert sub_questions("Who led it and why?") == ["Who led it?", "Why led it?"]
    assert sub_questions("What did the council say?") == ["What did the council say?"]


# The first paragraph is hard-wrapped: a single line break inside a paragraph does not end it.
QUOTED = """Council reacts to the report

The council leader spoke after the meeting. Council leader Ann Hale said: “The report makes hard reading.
Budget cuts of £9m have made the work of the social care teams much harder.” The meeting ended at noon.

Deputy leader Tom Reed said: “We will publish a plan. It will be ready by the spring.

Nobody closed this quotation.

Treasurer Sam Oyelaran said: “The audit starts in May. It covers every team. It takes a year. \
It reports to the cabinet. It costs £2m.”
"""


def test_a_quotation_is_cited_whole(tmp_path, embedder):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "reaction.txt").write_text(QUOTED, encoding="utf-8")
    settings = Settings(home=tmp_path / "home", corpus=corpus)
    ingest(corpus, settings, embedder)
    snapshot = Store(settings).open()
    answer = ask(snapshot, embedder, "What did the council leader Ann Hale say about the report?", settings)
    quote = answer.citations[0].quote
    assert quote.startswith("Council leader Ann Hale said:") and quote.endswith("much harder.”")
    _invariants(snapshot, answer)
    # A quotation that never closes within its paragraph is cited sentence by sentence, as before.
    answer = ask(snapshot, embedder, "What did deputy leader Tom Reed say he would publish?", settings)
    assert answer.citations[0].quote == "Deputy leader Tom Reed said: “We will publish a plan."
    _invariants(snapshot, answer)
    # Nor is one that closes more than QUOTE_SENTENCES sentences on.
    answer = ask(snapshot, embedder, "When did treasurer Sam Oyelaran say the audit starts?", settings)
    assert answer.citations[0].quote == "Treasurer Sam Oyelaran said: “The audit starts in May."
    _invariants(snapshot, answer)


def test_a_one_sentence_document_answers_but_a_title_line_never_does(tmp_path, embedder):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    # The title of each document is its first line: the whole of the first, a headline above the second's text.
    alone = "The Harrowgate lantern pilot began on 4 May 1999 under the county clerk."
    (corpus / "pilot.txt").write_text(alone + "\n", encoding="utf-8")
    headline = "Harrowgate lantern pilot began on 4 May 1999."
    body = "The county clerk ran the lantern pilot for a year. Residents said the lanterns were bright."
    (corpus / "news.txt").write_text(f"{headline}\n\n{body}\n", encoding="utf-8")
    settings = Settings(home=tmp_path / "home", corpus=corpus)
    ingest(corpus, settings, embedder)
    snapshot = Store(settings).open()
    answer = ask(snapshot, embedder, "When did the Harrowgate lantern pilot begin?", settings)
    assert not answer.abstained
    assert [(c.doc_id, c.quote) for c in answer.citations] == [("pilot.txt", alone)]
    _invariants(snapshot, answer)


def test_a_sentence_a_whole_quotation_took_in_is_not_cited_again():
    whole = Evidence(row=3, doc=0, start=10, end=90, score=0.5, chunk=0)
    inside = Evidence(row=4, doc=0, start=50, end=90, score=0.6, chunk=0)
    elsewhere = Evidence(row=4, doc=1, start=50, end=90, score=0.4, chunk=1)
    twin = Evidence(row=3, doc=0, start=10, end=90, score=0.3, chunk=0)
    assert _unquoted([inside, whole, elsewhere, twin]) == [whole, elsewhere]


def _cli_ask(home, *args, check=True):
    """Run `citeqa ask` in a subprocess against the index at `home`."""
    return citeqa_cli(home, "ask", *args, check=check, text=True)


@pytest.mark.slow
def test_cli_ask_readable_and_json(seed_settings):
    out = _cli_ask(seed_settings.home, "When did the focused visit take place?").stdout
    assert "[1]" in out and "Sources:" in out and "Focused visit to Wakefield Council" in out
    raw = _cli_ask(seed_settings.home, "--json", "What is the capital of France?").stdout
    assert '"abstained":true' in raw
    missing = _cli_ask(seed_settings.home / "nowhere", "anything", check=False)
    assert missing.returncode == 2 and "citeqa ingest" in missing.stderr


def test_query_encoding_matches_batch_encoding(embedder):
    import numpy as np

    texts = ["When did the focused visit take place?", "Kirklees", "¿Qué pasó? 🙂 " * 40]
    batch = embedder.encode(texts)
    for text, row in zip(texts, batch, strict=True):
        assert np.allclose(embedder.encode_query(text), row, atol=1e-5)


def test_concurrent_queries_are_exact(embedder):
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    texts = [f"Question number {i} about social workers in Wakefield?" for i in range(24)]
    with ThreadPoolExecutor(8) as pool:
        vectors = list(pool.map(embedder.encode_query, texts))
    assert np.allclose(np.vstack(vectors), embedder.encode(texts), atol=1e-5)


def test_encoder_matches_sentence_transformers(embedder):
    """The ONNX export computes what the packaged sentence-transformers model computes, to float precision."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from app.store.embed import model_path

    reference = SentenceTransformer(str(model_path()), device="cpu")
    # Short, empty, non-Latin, and past both the tokenizer file's 128 and the model's 256 token limits.
    texts = ["Who inspected Wakefield?", "", "Ofsted’s café — 🙂 ¿Qué?", "inspection " * 150]
    expected = reference.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    assert np.allclose(embedder.encode(texts), expected, atol=1e-5)
    for text, row in zip(texts, expected, strict=True):
        assert np.allclose(embedder.encode_query(text), row, atol=1e-5)


def test_damaged_model_cache_is_exported_again(tmp_path, embedder):
    import numpy as np

    from app.store.embed import Embedder

    first = Embedder(tmp_path)
    assert first.onnx_file.parent == tmp_path and [p.name for p in tmp_path.iterdir()] == [
        first.onnx_file.name
    ]
    first.onnx_file.write_bytes(b"not a model")
    again = Embedder(tmp_path)
    assert np.allclose(again.encode_query("Kirklees"), embedder.encode_query("Kirklees"), atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == [first.onnx_file.name]


def test_unwritable_model_cache_is_a_clear_error(tmp_path):
    import pytest

    from app.errors import ModelUnavailable
    from app.store.embed import Embedder

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ModelUnavailable, match="CITEQA_MODEL_CACHE"):
        Embedder(blocker / "cache")
