"""Train citeqa's reader: a cross-encoder that scores (question, sentence) pairs, exported to ONNX.

Run: `make reader READER_DATA=DIR` (`python -m training.train --data DIR`). It reads open extractive-QA data
in SQuAD 2.0 JSON (the files named in DATA_FILES, from `--data`) plus the training articles of the vendored
SQuAD 2.0 split, mines negatives from citeqa's own retrieval over some of them, fine-tunes the layers above
FROZEN of the pretrained ms-marco-MiniLM-L-12-v2 cross-encoder (its float copy, training/convert.py), and
writes `models/reader/` (the int8 ONNX graph, its tokenizer and `metrics.json`), measured on QED dev
(vendored in evals/data/, never trained on). Fixed seeds; CPU only.
"""

import argparse
import json
import math
import random
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.qa.read import MAX_TOKENS, reads
from app.store.split import sentence_spans, terms
from evals.split import DEV, EVAL_ARTICLES, SQUAD, TRAIN_ARTICLES, holds_answer, title_of, write_corpus

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "models" / "reader"
DATA_FILES = ("qed-train.json", "squadshifts-new-wiki.json", "covid-qa.json", "squad2-dev-19-articles.json")
SEED = 13
# The embeddings and the first FROZEN of the 12 layers keep their pretrained weights: training the upper six
# costs about half of training all twelve here.
FROZEN = 6
HARD_NEGATIVES = 2
RANDOM_NEGATIVES = 1
# Sentences of other paragraphs of the same file that share the question's rarest words: the distractors
# retrieval brings from other documents, which a reader trained on one paragraph at a time never meets.
# A sentence holding a gold answer's text is never one of them.
OTHER_NEGATIVES = 1
# Words in more than this share of a file's sentences do not make a sentence a distractor.
COMMON_SHARE = 0.02
# Sentences of an unanswerable question's paragraph used as negatives, the most question-like first,
# each weighted up: the only pairs where the most question-like sentence is still no answer, and few.
IMPOSSIBLE_NEGATIVES = 3
IMPOSSIBLE_WEIGHT = 2.0
# COVID-QA contexts are whole papers: negatives come from this many sentences either side of the answer.
NEAR = 6
# Negatives mined from citeqa's own retrieval: MINED_FILES and the SQuAD training articles are indexed, each
# question asked, and the MINED_NEGATIVES best candidates holding no gold answer (app.qa.read.to_read) join it.
MINED_FILES = ("squad2-dev-19-articles.json",)
MINED_NEGATIVES = 2
# Questions per batch. Each answerable question's pairs are trained together, listwise (a softmax over
# them, the answer sentences the target) as well as pointwise: retrieval hands the reader one question's
# candidates to rank, and a pointwise loss alone never compares them with each other.
GROUPS = 4
LR = 3e-5
WARMUP = 0.06
DEV_QUESTIONS = 400
# Answerable questions trained on, drawn at random from all of them (about 20,000), each with its pairs;
# every unanswerable one (about 3,500) joins them: about 40,000 pairs, mined and trained in about 40 minutes on a
# 2-core CPU (models/reader/README.md has what each size bought).
QUESTIONS = 6_000


@dataclass
class Pair:
    """One training example."""

    question: str
    sentence: str
    label: float
    weight: float = 1.0


def paragraphs(path: Path, articles: Iterable[str] | None = None) -> Iterable[dict[str, Any]]:
    """The paragraphs of a SQuAD 2.0 JSON file, optionally only those of the named articles, each with its
    article's title."""
    wanted = set(articles) if articles is not None else None
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        if wanted is None or article.get("title") in wanted:
            yield from ({**para, "title": title_of(article)} for para in article["paragraphs"])


def _overlap(question: set[str], sentence: str) -> int:
    return len(question.intersection(terms(sentence)))


@dataclass
class Group:
    """One question's pairs. An answerable question's are trained listwise and pointwise; an unanswerable
    one's, all negatives, pointwise only."""

    question: str
    pairs: list[Pair]

    @property
    def answerable(self) -> bool:
        return any(p.label > 0 for p in self.pairs)

    def add(self, more: Iterable[Pair]) -> None:
        """Join pairs whose sentence the group does not hold yet."""
        seen = {p.sentence for p in self.pairs}
        for pair in more:
            if pair.sentence not in seen:
                seen.add(pair.sentence)
                self.pairs.append(pair)


def groups(paras: Iterable[dict[str, Any]], rng: random.Random) -> dict[str, Group]:
    """Each question's group by its id: positives (sentences holding an answer start) with hard, random and
    other-paragraph negatives, or an unanswerable question's negatives."""
    paras = list(paras)
    out: dict[str, Group] = {}
    others = _Distractors(paras)
    for number, para in enumerate(paras):
        context, title = para["context"], para.get("title", "")
        spans = sentence_spans(context)
        if not spans:
            continue
        for qa in para["qas"]:
            question = qa["question"].strip()
            asked = set(terms(question))
            group = Group(question, [])
            if qa.get("is_impossible"):
                ranked = sorted(spans, key=lambda s: -_overlap(asked, context[s[0] : s[1]]))
                group.add(
                    Pair(question, reads(title, context[s:e]), 0.0, IMPOSSIBLE_WEIGHT)
                    for s, e in ranked[:IMPOSSIBLE_NEGATIVES]
                )
                out[qa["id"]] = group
                continue
            starts = {a["answer_start"] for a in qa["answers"]}
            hits = [i for i, (s, e) in enumerate(spans) if any(s <= a < e for a in starts)]
            if not hits:
                continue
            group.add(Pair(question, reads(title, context[spans[i][0] : spans[i][1]]), 1.0) for i in hits)
            pool = [
                i
                for i in range(max(0, hits[0] - NEAR), min(len(spans), hits[-1] + NEAR + 1))
                if i not in hits
            ]
            hard = sorted(pool, key=lambda i: -_overlap(asked, context[spans[i][0] : spans[i][1]]))
            chosen = hard[:HARD_NEGATIVES]
            rest = [i for i in pool if i not in chosen]
            chosen += rng.sample(rest, min(RANDOM_NEGATIVES, len(rest)))
            group.add(Pair(question, reads(title, context[spans[i][0] : spans[i][1]]), 0.0) for i in chosen)
            golds = [a["text"].lower() for a in qa["answers"] if a["text"].strip()]
            group.add(Pair(question, text, 0.0) for text in others.near(asked, number, golds))
            out[qa["id"]] = group
    return out


class _Distractors:
    """The sentences of a set of paragraphs, searchable by IDF-weighted overlap with a question's terms."""

    def __init__(self, paras: list[dict[str, Any]]) -> None:
        self.texts: list[str] = []
        self.titles: list[str] = []
        self.owner: list[int] = []
        postings: defaultdict[str, list[int]] = defaultdict(list)
        for number, para in enumerate(paras):
            for s, e in sentence_spans(para["context"]):
                for term in set(terms(para["context"][s:e])):
                    postings[term].append(len(self.texts))
                self.texts.append(para["context"][s:e])
                self.titles.append(para.get("title", ""))
                self.owner.append(number)
        limit = max(2, COMMON_SHARE * len(self.texts))
        self.postings = {t: rows for t, rows in postings.items() if len(rows) <= limit}
        self.idf = {t: math.log(len(self.texts) / len(rows)) for t, rows in self.postings.items()}

    def near(self, asked: set[str], para: int, golds: list[str]) -> list[str]:
        """The OTHER_NEGATIVES sentences outside paragraph `para` sharing most of the question's rare terms."""
        score: defaultdict[int, float] = defaultdict(float)
        for term in asked & self.postings.keys():
            for row in self.postings[term]:
                score[row] += self.idf[term]
        out: list[str] = []
        for row, _ in sorted(score.items(), key=lambda kv: (-kv[1], kv[0])):
            if len(out) == OTHER_NEGATIVES:
                break
            text = self.texts[row]
            if self.owner[row] != para and not any(g in text.lower() for g in golds):
                out.append(reads(self.titles[row], text))
        return out


def mined(path: Path, articles: Iterable[str] | None, work: Path, log: Any) -> dict[str, list[Pair]]:
    """Negatives from citeqa's own retrieval (see MINED_NEGATIVES), by question id: the file's paragraphs
    (optionally the named articles' only) are indexed under `work` and its questions asked of them. An
    unanswerable question's are weighted as its paragraph's are."""
    from app.qa.read import texts_of, to_read
    from app.qa.retrieve import retrieve
    from app.settings import Settings
    from app.store.embed import get_embedder
    from app.store.index import Store
    from ingest.build import ingest

    embedder = get_embedder()
    answerable, unanswerable = write_corpus(path, work / "corpus", articles)
    budget = Settings.model_fields["read_budget"].default
    settings = Settings(home=work / "index", corpus=work / "corpus", read_budget=budget)
    ingest(work / "corpus", settings, embedder)
    snapshot = Store(settings).open()
    out: dict[str, list[Pair]] = {}
    for item, weight in [(i, 1.0) for i in answerable] + [(i, IMPOSSIBLE_WEIGHT) for i in unanswerable]:
        found = retrieve(snapshot, embedder, item["question"], settings)
        texts = texts_of(snapshot, to_read(found, budget))
        wrong = [read_as for t, read_as in texts if not holds_answer(t, item["answers"])][:MINED_NEGATIVES]
        out[item["id"]] = [Pair(item["question"], read_as, 0.0, weight) for read_as in wrong]
    print(f"mined {path.name}: {len(out)} questions", file=log, flush=True)
    return out


def training_groups(data: Path, limit: int | None, seed: int = SEED, log: Any = sys.stdout) -> list[Group]:
    """The training questions in a fixed-seed order: `limit` answerable ones drawn at random (all when
    None) and every unanswerable one, each with its mined negatives where its file is mined."""
    rng = random.Random(seed)
    sources: list[tuple[Path, Iterable[str] | None]] = [(data / name, None) for name in DATA_FILES]
    sources.append((SQUAD, TRAIN_ARTICLES))
    found: list[Group] = []
    with tempfile.TemporaryDirectory(prefix="citeqa-mine-") as work:
        for number, (path, articles) in enumerate(sources):
            by_id = groups(paragraphs(path, articles), rng)
            if path.name in MINED_FILES or path == SQUAD:
                for qid, negatives in mined(path, articles, Path(work) / str(number), log).items():
                    if qid in by_id:
                        by_id[qid].add(negatives)
            found.extend(by_id.values())
    answerable = [g for g in found if g.answerable]
    rng.shuffle(answerable)
    out = answerable[:limit] + [g for g in found if not g.answerable]
    rng.shuffle(out)
    return out


def tokenizer(max_tokens: int = MAX_TOKENS) -> Any:
    """The pretrained model's WordPiece tokenizer, truncating the longer of question and sentence from its
    end and padding per batch."""
    from training.weights import tokenizer as pretrained_tokenizer

    tok = pretrained_tokenizer(max_tokens)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


def batches(tok: Any, examples: list[Group], size: int, rng: random.Random) -> list[dict[str, np.ndarray]]:
    """Batches of `size` questions, bucketed by length and in random order: each batch pads to nearly its
    own length. `group` numbers each row's question within its batch."""
    lengths = [sum(len(p.question) + len(p.sentence) for p in g.pairs) / len(g.pairs) for g in examples]
    order = sorted(range(len(examples)), key=lambda i: lengths[i])
    chunks = [order[i : i + size] for i in range(0, len(order), size)]
    rng.shuffle(chunks)
    out: list[dict[str, np.ndarray]] = []
    for chunk in chunks:
        rows = [(n, pair) for n, i in enumerate(chunk) for pair in examples[i].pairs]
        enc = tok.encode_batch([(p.question, p.sentence) for _, p in rows])
        out.append(
            {
                "input_ids": np.asarray([e.ids for e in enc], dtype=np.int64),
                "attention_mask": np.asarray([e.attention_mask for e in enc], dtype=np.int64),
                "token_type_ids": np.asarray([e.type_ids for e in enc], dtype=np.int64),
                "labels": np.asarray([p.label for _, p in rows], dtype=np.float32),
                "weights": np.asarray([p.weight for _, p in rows], dtype=np.float32),
                "group": np.asarray([n for n, _ in rows], dtype=np.int64),
            }
        )
    return out


def loss(logits: Any, batch: dict[str, np.ndarray]) -> Any:
    """Weighted binary cross-entropy over every pair, plus the mean over answerable questions of the
    softmax cross-entropy of their pairs, with the target spread evenly over the answer sentences."""
    import torch

    labels, weights = torch.from_numpy(batch["labels"]), torch.from_numpy(batch["weights"])
    pointwise = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    total = (pointwise * weights).sum() / weights.sum()
    listwise = []
    for n in np.unique(batch["group"]):
        rows = torch.from_numpy(np.flatnonzero(batch["group"] == n))
        target = labels[rows]
        if target.sum() > 0:
            listwise.append(torch.logsumexp(logits[rows], 0) - (target * logits[rows]).sum() / target.sum())
    return total + torch.stack(listwise).mean() if listwise else total


def trainable(name: str, frozen: int) -> bool:
    """Whether a parameter trains: the embeddings and the first `frozen` layers keep their weights."""
    if name.startswith("bert.embeddings."):
        return False
    if name.startswith("bert.encoder.layer."):
        return int(name.split(".")[3]) >= frozen
    return True


def train(examples: list[Group], frozen: int, epochs: float, seed: int, log: Any) -> Any:
    """Fine-tune the pretrained cross-encoder's layers above `frozen`, its pooler and head, on `loss`."""
    import torch

    from training.convert import float_model

    torch.manual_seed(seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = float_model()
    model.train()
    for name, parameter in model.named_parameters():
        parameter.requires_grad = trainable(name, frozen)
    params = [p for p in model.parameters() if p.requires_grad]
    rng = random.Random(seed)
    plan = batches(tokenizer(), examples, GROUPS, rng)
    steps = max(1, int(len(plan) * epochs))
    plan = (plan * math.ceil(epochs))[:steps]
    optimiser = torch.optim.AdamW(params, lr=LR, weight_decay=0.01)
    warmup = max(1, int(steps * WARMUP))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    started, running = time.perf_counter(), 0.0
    for step, batch in enumerate(plan, 1):
        feed = {k: torch.from_numpy(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}
        logits = model(**feed).logits.squeeze(-1)
        value = loss(logits, batch)
        value.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        schedule.step()
        optimiser.zero_grad()
        running = 0.98 * running + 0.02 * value.item() if step > 1 else value.item()
        if step % 50 == 0 or step == steps:
            elapsed = time.perf_counter() - started
            print(
                f"step {step}/{steps} loss {running:.4f} {elapsed / 60:.1f} min "
                f"(eta {(steps - step) * elapsed / step / 60:.1f} min)",
                file=log,
                flush=True,
            )
    return model.eval()


def export(model: Any, target: Path) -> None:
    """Trace the model with a sigmoid on its logit into ONNX, dynamic in batch and length."""
    import torch

    from app.store.embed import trace

    class Probability(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            logits = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).logits
            return torch.sigmoid(logits.squeeze(-1))

    # A pair ([CLS] q [SEP] s [SEP]) and a shorter padded one, so the traced graph sees both shapes.
    trace(Probability(), [[101, 7592, 102, 2088, 102], [101, 7592, 102, 102, 0]], target, "probability")


def quantise(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of the weights, one scale per output channel (activations are quantised per
    call): a quarter of the size, and within 0.01 of the float model's precision where one scale per tensor
    lost 0.06 (models/reader/README.md)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)


def dev_questions(limit: int = DEV_QUESTIONS) -> list[tuple[str, list[str], set[int]]]:
    """Held-out questions (QED dev): each with its paragraph's sentences and the answering ones."""
    out = _located(paragraphs(DEV))
    return random.Random(SEED).sample(out, min(limit, len(out)))


def held_out_questions() -> list[tuple[str, list[str], set[int]]]:
    """The answerable questions of the SQuAD evaluation articles, located as dev_questions does."""
    return _located(paragraphs(SQUAD, EVAL_ARTICLES))


def _located(paras: Iterable[dict[str, Any]]) -> list[tuple[str, list[str], set[int]]]:
    """Each answerable question of a paragraph of two or more sentences, with its sentences and the
    answering ones."""
    out = []
    for para in paras:
        spans = sentence_spans(para["context"])
        texts = [reads(para["title"], para["context"][s:e]) for s, e in spans]
        for qa in para["qas"]:
            starts = {a["answer_start"] for a in qa["answers"]}
            gold = {i for i, (s, e) in enumerate(spans) if any(s <= a < e for a in starts)}
            if gold and len(texts) > 1 and not qa.get("is_impossible"):
                out.append((qa["question"], texts, gold))
    return out


def precision_at_1(model_file: Path, questions: list[tuple[str, list[str], set[int]]]) -> float:
    """Share of held-out questions whose top-scored sentence in their own paragraph holds the answer."""
    from app.qa.read import Reader

    reader = Reader(model_file, model_file.parent / "tokenizer.json")
    right = 0
    for question, sentences, gold in questions:
        right += int(np.argmax(reader.score([(question, s) for s in sentences]))) in gold
    return right / max(1, len(questions))


def build(examples: list[Group], frozen: int, epochs: float, out: Path, log: Any) -> Path:
    """Train, export and quantise into `out` (with the tokenizer beside the model); return the int8 file."""
    from training.weights import TOKENIZER_FILE, pretrained_dir

    model = train(examples, frozen, epochs, SEED, log)
    out.mkdir(parents=True, exist_ok=True)
    export(model, out / "reader-fp32.onnx")
    quantise(out / "reader-fp32.onnx", out / "reader.onnx")
    shutil.copyfile(pretrained_dir() / TOKENIZER_FILE, out / "tokenizer.json")
    return out / "reader.onnx"


def main(argv: list[str] | None = None) -> int:
    """Build the pairs, train, export, quantise, measure and write models/reader/."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--data", type=Path, required=True, help="folder of the QA files models/reader/README.md lists"
    )
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--limit", type=int, default=QUESTIONS, help="train on at most this many answerable questions"
    )
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--frozen", type=int, default=FROZEN, help="pretrained layers kept as they are")
    parser.add_argument("--dev", type=int, default=DEV_QUESTIONS, help="held-out QED questions measured")
    args = parser.parse_args(argv)
    missing = [n for n in DATA_FILES if not (args.data / n).is_file()]
    if missing:
        print(f"citeqa: training data missing in {args.data}: {', '.join(missing)}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    examples = training_groups(args.data, args.limit)
    answerable = sum(g.answerable for g in examples)
    pairs = sum(len(g.pairs) for g in examples)
    positives = sum(p.label > 0 for g in examples for p in g.pairs)
    print(
        f"{len(examples)} questions ({answerable} answerable), {pairs} pairs ({positives} positive)",
        flush=True,
    )
    int8 = build(examples, args.frozen, args.epochs, args.out, sys.stdout)
    minutes = (time.perf_counter() - started) / 60
    dev = dev_questions(args.dev)
    held_out = held_out_questions()
    metrics = {
        "questions": len(examples),
        "answerable_questions": answerable,
        "pairs": pairs,
        "positives": positives,
        "frozen_layers": args.frozen,
        "epochs": args.epochs,
        "max_tokens": MAX_TOKENS,
        "train_minutes": round(minutes, 1),
        "qed_dev_questions": len(dev),
        "qed_dev_p_at_1_fp32": round(precision_at_1(args.out / "reader-fp32.onnx", dev), 4),
        "qed_dev_p_at_1_int8": round(precision_at_1(int8, dev), 4),
        "squad_held_out_questions": len(held_out),
        "squad_held_out_p_at_1_int8": round(precision_at_1(int8, held_out), 4),
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
