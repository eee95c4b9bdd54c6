"""The vendored SQuAD 2.0 split and QED dev by use, and a SQuAD file written out as a corpus to index."""

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from app.store.split import squash

DATA = Path(__file__).resolve().parent / "data"
SQUAD = DATA / "squad-dev-split.json"
# QED dev, held out from training: measured by training/train.py, and the natural-question benchmark (evals/squad.py).
DEV = DATA / "qed-dev.json"
# SQuAD 2.0 articles by use: the reader trains on the first group (its only source of unanswerable
# questions), the abstention threshold is calibrated on the second, and the benchmark measures the third.
# Articles, not questions, are kept apart: a model that saw an article's paragraphs would flatter it.
TRAIN_ARTICLES = ("Computational_complexity_theory", "Steam_engine", "Packet_switching")
CALIBRATION_ARTICLES = ("European_Union_law", "Normans")
EVAL_ARTICLES = ("Huguenot", "1973_oil_crisis", "Harvard_University")


def title_of(article: dict[str, Any]) -> str:
    """An article's title as its documents state it ("Steam engine" for "Steam_engine"; none for COVID-QA)."""
    return (article.get("title") or "").replace("_", " ")


def write_corpus(
    path: Path, folder: Path, articles: Iterable[str] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Write one file per paragraph of a SQuAD 2.0 JSON file (optionally of the named articles only), titled by
    its article in the folder's manifest; return its (answerable, unanswerable) questions, each with its
    document id and gold answer texts."""
    from ingest.build import MANIFEST

    wanted = set(articles) if articles is not None else None
    folder.mkdir(parents=True, exist_ok=True)
    answerable: list[dict[str, Any]] = []
    unanswerable: list[dict[str, Any]] = []
    titles: dict[str, dict[str, str]] = {}
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        if wanted is not None and article.get("title") not in wanted:
            continue
        name = re.sub(r"[^a-z0-9]+", "-", article["title"].lower()).strip("-")
        for i, para in enumerate(article["paragraphs"]):
            stem = f"{name}-{i:03d}"
            (folder / f"{stem}.txt").write_text(para["context"], encoding="utf-8")
            titles[f"{stem}.txt"] = {"title": title_of(article)}
            for qa in para["qas"]:
                item = {
                    "id": qa["id"],
                    "article": article["title"],
                    "question": qa["question"],
                    "doc_id": f"{stem}.txt",
                    "answers": sorted({a["text"] for a in qa["answers"]}),
                }
                (unanswerable if qa.get("is_impossible") else answerable).append(item)
    (folder / MANIFEST).write_text(yaml.safe_dump({"documents": titles}), encoding="utf-8")
    return answerable, unanswerable


def holds_answer(text: str, answers: Iterable[str]) -> bool:
    """Whether `text` contains one of the gold answer texts, case and spacing aside."""
    squashed = squash(text.lower())
    return any(squash(a.lower()) in squashed for a in answers if a.strip())
