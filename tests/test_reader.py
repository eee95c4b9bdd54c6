"""The reader: the committed model matches its card and ranks answers; its training code still runs."""

import hashlib
import io
import itertools
import json
import math
import random
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import yaml

import app.qa.answer
from app.errors import ModelUnavailable
from app.qa.answer import ExtractiveAnswerer, ask
from app.qa.expect import sub_questions
from app.qa.read import (
    IDLE_LANES,
    MODEL_DIR,
    TITLE_WORDS,
    Reader,
    get_reader,
    logits,
    read,
    reads,
    scored,
    to_read,
)
from app.qa.retrieve import retrieve
from evals.split import SQUAD, TRAIN_ARTICLES, write_corpus
from tests.conftest import ROOT
from training.train import (
    Group,
    Pair,
    batches,
    build,
    groups,
    held_out_questions,
    loss,
    mined,
    paragraphs,
    tokenizer,
)


def score(reader, question, sentences):
    """The reader's probabilities for one question's sentences."""
    return reader.score([(question, sentence) for sentence in sentences])


def assert_one_scale_per_output_channel(model_file):
    """Every int8 MatMul weight of the graph carries a zero point (and scale) per output column: one per
    tensor cost 5 points of in-paragraph precision on QED dev (models/reader/README.md)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model_file)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    quantised = [(inits[n.input[1]], inits[n.input[3]]) for n in graph.node if n.op_type == "MatMulInteger"]
    assert len(quantised) >= 6 * 12, "the 12 layers' 6 weight matrices each are quantised"
    for weight, zero_point in quantised:
        assert zero_point.shape == (weight.shape[1],)


def test_model_card_states_the_committed_files_checksum():
    card = (MODEL_DIR / "README.md").read_text(encoding="utf-8")
    stated = re.search(r"sha256 of `reader\.onnx` \| `([0-9a-f]{64})`", card)
    assert stated, "the model card must state reader.onnx's sha256"
    assert hashlib.sha256((MODEL_DIR / "reader.onnx").read_bytes()).hexdigest() == stated.group(1)


def test_committed_model_has_one_int8_scale_per_output_channel():
    assert_one_scale_per_output_channel(MODEL_DIR / "reader.onnx")


def test_committed_model_ranks_the_answer_above_a_distractor():
    reader = get_reader()
    question = "Which river flows through the old town?"
    sentences = [
        "The town hall was rebuilt in 1890 after a fire.",
        "The River Calder flows through the old town before joining the Aire.",
        "Tourists often visit the market on Saturdays.",
    ]
    scores = score(reader, question, sentences)
    assert scores.shape == (3,)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert int(np.argmax(scores)) == 1


def test_a_lone_call_takes_every_lane_and_no_score_depends_on_it():
    reader = get_reader()
    # A call that finds the reader idle spreads its pairs over IDLE_LANES sessions; one that overlaps it runs
    # on one. Each session has one thread.
    with reader.lanes.session() as first, reader.lanes.session() as second:
        assert len(first) == IDLE_LANES > 1 and len(second) == 1
        assert {s.get_session_options().intra_op_num_threads for s in first + second} == {1}
    with reader.lanes.session() as again:
        assert len(again) == IDLE_LANES
    # An answer must not depend on the load: the scores are the same either way, and the same as each pair
    # scored on its own, also with calls running at once.
    questions = random.Random(3).sample(held_out_questions(), 20)
    alone = [score(reader, question, texts) for question, texts, _ in questions]
    for (question, texts, _), scores in zip(questions, alone, strict=True):
        with reader.lanes.session():
            assert np.array_equal(score(reader, question, texts), scores)
        assert np.array_equal(scores, [score(reader, question, [text])[0] for text in texts])
    with ThreadPoolExecutor(4) as pool:
        at_once = list(pool.map(lambda q: score(reader, q[0], q[1]), questions))
    assert all(np.array_equal(a, b) for a, b in zip(at_once, alone, strict=True))


class _Recording:
    """An ONNX Runtime session that notes the threads that run it, and can fail instead. Given a barrier, its
    first run waits there, so that every lane of a call must start before any runs a pair."""

    def __init__(self, session, fail=False):
        self.session, self.fail, self.threads, self.runs, self.gate = session, fail, set(), 0, None

    def run(self, outputs, feed):
        if self.gate is not None:
            gate, self.gate = self.gate, None
            gate.wait()
        self.threads.add(threading.get_ident())
        self.runs += 1
        if self.fail:
            raise RuntimeError("session failed")
        return self.session.run(outputs, feed)


def _gated(recordings):
    gate = threading.Barrier(len(recordings), timeout=30)
    for recording in recordings:
        recording.gate = gate
    return recordings


def test_an_idle_call_runs_pairs_on_every_lane_and_a_failing_lane_raises():
    reader = get_reader()
    sessions = reader.lanes.sessions
    question, texts, _ = held_out_questions()[0]
    assert len(texts) >= IDLE_LANES
    try:
        reader.lanes.sessions = [_Recording(s) for s in sessions]
        expected = [score(reader, question, [text])[0] for text in texts]
        for recording in reader.lanes.sessions:
            recording.threads.clear()
        _gated(reader.lanes.sessions)
        assert np.array_equal(score(reader, question, texts), expected)
        # Each session ran, the first on this thread and the others on helpers.
        assert [r.threads for r in reader.lanes.sessions[:1]] == [{threading.get_ident()}]
        assert all(r.threads and threading.get_ident() not in r.threads for r in reader.lanes.sessions[1:])
        # A pair given twice is run once, and both get its score.
        before = sum(r.runs for r in reader.lanes.sessions)
        twice = reader.score([(question, texts[0]), (question, texts[1]), (question, texts[0])])
        assert sum(r.runs for r in reader.lanes.sessions) - before == 2
        assert np.array_equal(twice, [expected[0], expected[1], expected[0]])
        # A helper's failure reaches the caller, and the lanes are free again afterwards.
        reader.lanes.sessions = _gated([_Recording(s, fail=k > 0) for k, s in enumerate(sessions)])
        with pytest.raises(RuntimeError, match="session failed"):
            score(reader, question, texts)
        with reader.lanes.session() as lanes:
            assert len(lanes) == IDLE_LANES
        # Nothing to read runs nothing.
        runs = sum(r.runs for r in reader.lanes.sessions)
        assert reader.score([]).shape == (0,) and sum(r.runs for r in reader.lanes.sessions) == runs
    finally:
        reader.lanes.sessions = sessions


def test_committed_model_finds_the_answer_sentence_in_held_out_squad_paragraphs():
    # Articles the reader never trained on; a sentence picked at random would be right about a quarter of
    # the time, and the trained model (models/reader/metrics.json) more than eight times in ten.
    reader = get_reader()
    questions = random.Random(5).sample(held_out_questions(), 60)
    right = sum(int(np.argmax(score(reader, q, texts))) in gold for q, texts, gold in questions)
    assert right / len(questions) >= 0.75


def test_answers_with_the_reader_on_keep_their_citations_exact(seed_snapshot, embedder, seed_settings):
    question = "How many agency staff had senior managers recruited?"
    answer = ask(seed_snapshot, embedder, question, seed_settings)
    assert seed_settings.read_budget > 0 and "read" in answer.timings_ms
    assert answer.citations
    for c in answer.citations:
        assert seed_snapshot.docs[c.doc_id].text[c.start : c.end] == c.quote
        assert 0 <= c.score <= 1
    off = ask(seed_snapshot, embedder, question, seed_settings.model_copy(update={"read_budget": 0}))
    assert "read" not in off.timings_ms


def test_a_read_sentence_is_quoted_only_when_its_confidence_reaches_the_answer_threshold(
    seed_snapshot, embedder, seed_settings
):
    question = "How many agency staff had senior managers recruited?"
    found = retrieve(seed_snapshot, embedder, question, seed_settings)
    read(get_reader(), seed_snapshot, [found], seed_settings.read_budget, seed_settings.read_floor)
    text, abstained, evidence = ExtractiveAnswerer().compose(seed_snapshot, found, seed_settings)
    assert not abstained
    read_ones = [ev for ev in evidence if ev.confidence is not None]
    assert read_ones and all(ev.confidence >= seed_settings.answer_threshold for ev in read_ones)
    assert 0 < read_ones[0].confidence < 1
    # Just above the best read sentence's confidence, nothing read may be quoted, so the answer abstains...
    best = max(ev.confidence for ev in found.sentences if ev.confidence is not None)
    strict = seed_settings.model_copy(update={"answer_threshold": float(np.nextafter(best, 1))})
    assert ask(seed_snapshot, embedder, question, strict).abstained
    # ...while with the reader off the threshold does not apply.
    off = strict.model_copy(update={"read_budget": 0})
    assert not ask(seed_snapshot, embedder, question, off).abstained


def test_read_puts_its_ranked_pool_first_and_keeps_every_sentence_and_score(
    seed_snapshot, embedder, seed_settings
):
    found = retrieve(seed_snapshot, embedder, "When did the focused visit take place?", seed_settings)
    before = {ev.row: ev.score for ev in found.sentences}
    pool = {ev.row for ev in to_read(found, seed_settings.read_budget)}
    assert 0 < len(pool) < len(before)
    read(get_reader(), seed_snapshot, [found], seed_settings.read_budget, -math.inf)
    # Nothing dropped and no score changed: abstention and support see what they would without the reader.
    assert {ev.row: ev.score for ev in found.sentences} == before and len(found.sentences) == len(before)
    head = found.sentences[: len(pool)]
    assert {ev.row for ev in head} == pool
    assert [ev.rank for ev in head] == sorted((ev.rank for ev in head), reverse=True)


def test_parts_read_together_rank_as_each_read_alone(seed_snapshot, embedder, seed_settings):
    # A coordinated question's parts are read in one call; each part's sentences rank as if read alone.
    reader, budget = get_reader(), seed_settings.read_budget
    parts = ["Who leads Kirklees Council?", "When did the focused visit take place?"]

    def found_for(part):
        return retrieve(seed_snapshot, embedder, part, seed_settings, focus=part)

    together = [found_for(part) for part in parts]
    read(reader, seed_snapshot, together, budget, -math.inf)
    for part, joint in zip(parts, together, strict=True):
        alone = found_for(part)
        read(reader, seed_snapshot, [alone], budget, -math.inf)
        assert [(ev.row, ev.rank) for ev in joint.sentences] == [(ev.row, ev.rank) for ev in alone.sentences]
    # The reader ranked something in each part (so the comparison above is not between hybrid orders).
    assert all(
        [ev.row for ev in found.sentences[:budget]] != [ev.row for ev in found_for(part).sentences[:budget]]
        for part, found in zip(parts, together, strict=True)
    )
    read(reader, seed_snapshot, [], budget, -math.inf)  # nothing to read
    # The one call's time is counted once.
    assert together[0].timings_ms["read"] > 0 and together[1].timings_ms["read"] == 0


def test_a_coordinated_question_cites_what_its_parts_cite_alone(
    seed_snapshot, embedder, seed_settings, monkeypatch
):
    # Its parts are searched side by side and read together; each part's evidence is what it would be alone.
    # The confidence is left out: the Kirklees rating's sentence does not name Kirklees, nor does its
    # document's title, so the reader's confidence turns that part away (docs/answers.md, Abstention).
    seed_settings = seed_settings.model_copy(update={"answer_threshold": 0.0})
    question = "When was Kirklees rated inadequate, and who became its commissioner?"
    parts = sub_questions(question)
    assert len(parts) == 2
    searched = {}

    def noted(snapshot, embedder, query, *args):
        searched[query] = threading.current_thread().name
        return retrieve(snapshot, embedder, query, *args)

    monkeypatch.setattr(app.qa.answer, "retrieve", noted)
    answer = ask(seed_snapshot, embedder, question, seed_settings)
    monkeypatch.undo()
    # The first part on the asking thread, the second on the helper.
    assert searched == {parts[0]: threading.current_thread().name, parts[1]: "citeqa-part_0"}
    alone = [ask(seed_snapshot, embedder, part, seed_settings) for part in parts]
    assert not answer.abstained and not any(a.abstained for a in alone)
    assert {(c.doc_id, c.start, c.end) for c in answer.citations} == {
        (c.doc_id, c.start, c.end) for a in alone for c in a.citations
    }


def test_the_budget_goes_to_sentences_that_may_be_quoted_and_only_read_ones_may_lead(
    seed_snapshot, embedder, seed_settings
):
    # A floor as high as the abstention threshold, so that it turns sentences away on these questions.
    settings = seed_settings.model_copy(update={"read_floor": seed_settings.abstain_threshold})
    reader, floor, answerer = get_reader(), settings.read_floor, ExtractiveAnswerer()
    skipped = 0
    for budget, question in itertools.product(
        range(1, settings.read_budget + 1),
        [
            "What did inspectors find about Wakefield's front door?",
            "Who leads Kirklees Council?",
            "Why was Wakefield rated inadequate?",
            "Who were the two inspectors?",
            "What is the population of Wakefield?",
        ],
    ):
        found = retrieve(seed_snapshot, embedder, question, settings)
        quotable = [ev for ev in found.sentences if ev.offers and ev.score >= floor]
        # The first `budget` that offer the asked-for kind and clear the threshold are read; none below it.
        assert to_read(found, budget, floor) == quotable[:budget]
        skipped += sum(ev.score < floor for ev in to_read(found, budget))
        read(reader, seed_snapshot, [found], budget, floor)
        assert all((ev.confidence is not None) == (ev in quotable[:budget]) for ev in found.sentences)
        text, abstained, evidence = answerer.compose(seed_snapshot, found, settings)
        # An answer is led by a sentence the reader read and found confident enough.
        if not abstained:
            assert evidence and any(ev.confidence is not None for ev in evidence)
            assert all(ev.confidence is None or ev.confidence >= settings.answer_threshold for ev in evidence)
        if budget == settings.read_budget:
            assert ask(seed_snapshot, embedder, question, settings).answer == text
    # Without the floor the budget would have gone to sentences that may not be quoted.
    assert skipped > 0


def test_a_sentences_score_is_the_same_whatever_is_read_with_it():
    reader = get_reader()
    question = "Which council was rated inadequate?"
    sentences = [
        "Wakefield [SEP] Ofsted rated Wakefield's children's services inadequate.",
        "Kirklees [SEP] The council said it accepted the findings in full and would act on them at once.",
        "Wakefield [SEP] The inspection took place over two weeks in the autumn.",
    ]
    together = score(reader, question, sentences)
    assert np.array_equal(together, [score(reader, question, [s])[0] for s in sentences])
    assert np.array_equal(together[::-1], score(reader, question, sentences[::-1]))


def test_reader_refuses_a_missing_or_damaged_model(tmp_path):
    with pytest.raises(ModelUnavailable, match="missing"):
        Reader(tmp_path / "reader.onnx", MODEL_DIR / "tokenizer.json")
    (tmp_path / "reader.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelUnavailable, match="cannot be loaded"):
        Reader(tmp_path / "reader.onnx", MODEL_DIR / "tokenizer.json")


def test_groups_label_answer_sentences_and_every_sentence_of_unanswerable_questions():
    context = "Alpha is a city. It lies on a river called Beta. Gamma is its mayor. Delta is far away."
    para = {
        "context": context,
        "qas": [
            {
                "id": "a",
                "question": "Which river is Alpha on?",
                "is_impossible": False,
                "answers": [{"text": "Beta", "answer_start": context.index("Beta")}],
            },
            {"id": "b", "question": "Who founded Alpha?", "is_impossible": True, "answers": []},
        ],
    }
    out = groups([para], random.Random(0))
    answerable = out["a"].pairs
    assert out["a"].answerable and not out["b"].answerable
    assert [p.sentence for p in answerable if p.label == 1.0] == ["It lies on a river called Beta."]
    assert len([p for p in answerable if p.label == 0.0]) == 3
    impossible = out["b"].pairs
    assert impossible and all(p.label == 0.0 and p.weight > 1 for p in impossible)


def _three_paragraphs() -> list[dict]:
    first = "Alpha is a city. It lies on a river called Beta. Gamma is its mayor."
    return [
        {
            "context": first,
            "qas": [
                {
                    "id": "a",
                    "question": "Which river flows by the Alpha museum in spring?",
                    "is_impossible": False,
                    "answers": [{"text": "Beta", "answer_start": first.index("Beta")}],
                },
                {
                    "id": "b",
                    "question": "Which sea does the Alpha river reach?",
                    "is_impossible": True,
                    "answers": [],
                },
            ],
        },
        {"context": "The river Beta floods Alpha in spring. Alpha has a river museum.", "qas": []},
        {"context": "Omega is a town. Its river is small.", "qas": []},
    ]


def test_groups_take_a_distractor_from_another_paragraph_but_never_one_holding_the_answer():
    negatives = [
        p.sentence for p in groups(_three_paragraphs(), random.Random(0))["a"].pairs if p.label == 0.0
    ]
    assert "Alpha has a river museum." in negatives
    assert "The river Beta floods Alpha in spring." not in negatives


def test_mined_negatives_come_from_retrieval_and_never_hold_the_answer(tmp_path):
    source = tmp_path / "tiny.json"
    source.write_text(json.dumps({"data": [{"title": "Alpha", "paragraphs": _three_paragraphs()}]}))
    log = io.StringIO()
    out = mined(source, None, tmp_path / "work", log)
    assert "Alpha [SEP] Alpha has a river museum." in [p.sentence for p in out["a"]]
    assert all("Beta" not in p.sentence for p in out["a"]) and 0 < len(out["a"]) <= 3
    assert out["b"] and all(p.weight > 1 for p in out["b"])
    assert all(p.label == 0.0 for pairs in out.values() for p in pairs)
    assert "mined tiny.json: 2 questions" in log.getvalue()


def test_training_pairs_and_benchmark_documents_carry_their_articles_title(tmp_path):
    assert reads("Steam engine", "It ran on coal.") == "Steam engine [SEP] It ran on coal."
    assert reads("", "It ran on coal.") == "It ran on coal."
    assert reads(" ".join(["word"] * 30), "S.") == " ".join(["word"] * TITLE_WORDS) + " [SEP] S."
    source = tmp_path / "tiny.json"
    source.write_text(json.dumps({"data": [{"title": "River_towns", "paragraphs": _three_paragraphs()}]}))
    pairs = groups(paragraphs(source), random.Random(0))["a"].pairs
    assert [p.sentence for p in pairs if p.label == 1.0] == [
        "River towns [SEP] It lies on a river called Beta."
    ]
    assert all(p.sentence.startswith("River towns [SEP] ") for p in pairs)
    # The benchmarks' documents state the same title, so the reader reads them in use as it was trained.
    write_corpus(source, tmp_path / "corpus")
    manifest = yaml.safe_load((tmp_path / "corpus" / "manifest.yaml").read_text())
    assert manifest["documents"]["river-towns-000.txt"] == {"title": "River towns"}


def test_the_reader_reads_each_candidate_after_its_documents_title(seed_snapshot, embedder, seed_settings):
    reader = get_reader()
    found = retrieve(
        seed_snapshot, embedder, "Which council's services were rated inadequate?", seed_settings
    )
    [pool] = scored(reader, seed_snapshot, [found], 8)
    titled = [reads(seed_snapshot.doc_list[ev.doc].title, text) for ev, text, _ in pool]
    assert len(pool) == 8 and all(" [SEP] " in t for t in titled)
    assert np.array_equal([logit for _, _, logit in pool], logits(score(reader, found.query, titled)))
    # The title is read: the same sentences alone score otherwise.
    alone = logits(score(reader, found.query, [text for _, text, _ in pool]))
    assert not np.allclose(alone, [logit for _, _, logit in pool], atol=0.05)


def test_group_keeps_one_pair_per_sentence():
    group = Group("Q?", [Pair("Q?", "A.", 1.0)])
    group.add([Pair("Q?", "A.", 0.0), Pair("Q?", "B.", 0.0), Pair("Q?", "B.", 0.0)])
    assert [(p.sentence, p.label) for p in group.pairs] == [("A.", 1.0), ("B.", 0.0)]


def test_loss_is_pointwise_everywhere_and_listwise_within_each_answerable_question():
    import torch

    answerable = Group(
        "Which river?", [Pair("Which river?", "The Calder.", 1.0), Pair("Which river?", "A town.", 0.0)]
    )
    unanswerable = Group("Who?", [Pair("Who?", "A city.", 0.0, 2.0), Pair("Who?", "A mayor.", 0.0, 2.0)])
    [batch] = batches(tokenizer(), [answerable, unanswerable], 2, random.Random(0))
    labels, weights = torch.from_numpy(batch["labels"]), torch.from_numpy(batch["weights"])
    positive = int(np.flatnonzero(batch["labels"] == 1.0)[0])
    [negative] = [i for i in np.flatnonzero(batch["group"] == batch["group"][positive]) if i != positive]
    logits = torch.tensor([0.3, -1.2, 2.0, 0.7])
    pointwise = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, labels, weight=weights, reduction="sum"
    )
    listwise = torch.logsumexp(logits[[positive, negative]], 0) - logits[positive]
    assert float(loss(logits, batch)) == pytest.approx(float(pointwise / weights.sum() + listwise), rel=1e-5)
    # Raising the answer above its own question's negative lowers the loss.
    raised = logits.clone()
    raised[positive] += 1.0
    assert float(loss(raised, batch)) < float(loss(logits, batch))
    # A batch of unanswerable questions only has no listwise term.
    [alone] = batches(tokenizer(), [unanswerable], 1, random.Random(0))
    two = torch.tensor([0.5, -0.5])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(two, torch.zeros(2))
    assert float(loss(two, alone)) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.slow
def test_training_runs_end_to_end_on_a_tiny_sample(tmp_path):
    examples = list(groups(paragraphs(SQUAD, TRAIN_ARTICLES[:1]), random.Random(0)).values())[:8]
    log = io.StringIO()
    model = build(examples, frozen=11, epochs=1.0, out=tmp_path, log=log)
    assert "step 2/2" in log.getvalue()
    reader = Reader(model, tmp_path / "tokenizer.json")
    scores = score(reader, "Who wrote it?", ["A sentence.", "Another, longer sentence about a book."])
    assert scores.shape == (2,) and np.isfinite(scores).all()
    assert_one_scale_per_output_channel(model)


def test_training_data_is_recorded_in_the_card():
    card = (MODEL_DIR / "README.md").read_text(encoding="utf-8")
    metrics = json.loads((MODEL_DIR / "metrics.json").read_text())
    for name in ("qed-train.json", "squadshifts-new-wiki.json", "covid-qa.json", *TRAIN_ARTICLES):
        assert name in card
    assert str(metrics["pairs"]) in card.replace(",", "")
    assert (ROOT / "Makefile").read_text().count("training.train") == 1


def test_fitted_values_are_read_from_the_params_file_beside_the_reader(monkeypatch):
    from app.qa import read as read_module
    from app.qa import retrieve as retrieve_module
    from app.settings import Settings

    params = json.loads((MODEL_DIR / "params.json").read_text(encoding="utf-8"))
    assert set(params["fitted_by"]) == set(params) - {"fitted_by"}
    loaded = {
        "rank_weights": read_module.RANK_WEIGHTS,
        "frame_penalty": retrieve_module.FRAME_PENALTY,
        "chunk_coverage_weight": retrieve_module.CHUNK_COVERAGE_WEIGHT,
        "dense_weight": retrieve_module.DENSE_WEIGHT,
        "lexical_weight": retrieve_module.LEXICAL_WEIGHT,
        "abstain_threshold": Settings().abstain_threshold,
        "read_floor": Settings().read_floor,
        "answer_threshold": Settings().answer_threshold,
    }
    assert loaded == {name: params[name] for name in loaded}
    monkeypatch.setenv("CITEQA_ABSTAIN_THRESHOLD", "0.5")
    assert Settings().abstain_threshold == 0.5
