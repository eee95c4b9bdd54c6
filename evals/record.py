"""A question set that grows from use: a question and the sentence that answers it (or "not in the
documents") appended to a question file of the same format as evals/questions.yaml."""

import fcntl
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

from app.errors import BadInput, Duplicate, NotFound
from app.store.index import Snapshot
from app.store.split import squash
from evals.run import load_questions

# Quote marks and apostrophes may be straight or curly in the index: they match any character.
_MARKS = re.compile(r"['‘’\"“”]")


def pattern(sentence: str) -> str:
    """The sentence as a regex that finds it in an answer or a quote: spaces as \\s+, quote marks as '.'."""
    return r"\s+".join(_MARKS.sub(".", re.escape(word)) for word in sentence.split())


def located(snapshot: Snapshot, doc_id: str, sentence: str) -> str:
    """The sentence as the document has it; BadInput unless the document holds it (spacing aside)."""
    doc = snapshot.docs.get(doc_id)
    if doc is None:
        raise NotFound(f"no document with id {doc_id[:200]!r}")
    wanted = squash(sentence).strip()
    if not wanted:
        raise BadInput("the sentence that answers is empty")
    if not re.search(pattern(wanted), doc.text):
        raise BadInput(
            f"{doc.title!r} has no sentence {wanted[:200]!r}: give its words as the document has them"
        )
    return wanted


def record(
    path: Path,
    question: str,
    sentence: str | None,
    doc_id: str,
    tags: list[str],
    history: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Append one question to the file (made if missing): answered by `sentence` of `doc_id`, or, when
    `sentence` is None, one the documents do not answer. Returns the item as written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        known = {q.id for q in load_questions(path)} if path.is_file() else set()
        slug = re.sub(r"[^a-z0-9]+", "-", question.lower()).strip("-")[:48] or "question"
        qid = f"recorded-{slug}-{hashlib.sha256(question.encode()).hexdigest()[:6]}"
        if qid in known:
            raise Duplicate(f"the question set already has this question ({qid})")
        item: dict[str, Any] = {"id": qid, "question": question}
        if sentence is None:
            item |= {"answer": [], "evidence": "", "unanswerable": True}
            source = "# source: none (the documents do not answer; confirmed in use)\n"
        else:
            item |= {"answer": [pattern(sentence)], "evidence": pattern(sentence), "unanswerable": False}
            source = f"# source: {doc_id} {sentence[:300]!r}\n"
        item["tags"] = ["recorded", *tags]
        if history:
            item["history"] = history
        before = path.read_text(encoding="utf-8") if path.is_file() else "# Questions recorded from use.\n"
        text = (
            before.rstrip("\n")
            + "\n\n"
            + source
            + yaml.safe_dump([item], allow_unicode=True, sort_keys=False)
        )
        handle, partial = tempfile.mkstemp(dir=path.parent, prefix=".partial-", suffix=".yaml")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
            os.chmod(partial, 0o644)  # as a file written by hand would be, not mkstemp's 0600
            load_questions(Path(partial))  # the file stays one `citeqa eval --questions` reads
            os.replace(partial, path)
        finally:
            Path(partial).unlink(missing_ok=True)
        return item
