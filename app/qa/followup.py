"""Follow-up questions: turn "and in Kirklees?" or "who replaced him?" into a standalone search query."""

import re

from app.qa.retrieve import entities
from app.schemas import Message
from app.store.split import squash, terms

_LEAD = re.compile(r"^\s*(and|but|also|so|then|what about|how about|what of|and what about)\b[\s,]*", re.I)
_PRONOUN = re.compile(
    r"\b(he|she|him|her|his|hers|they|them|their|it|its|this|that|these|those|there)\b", re.I
)
_MARKER = re.compile(r"\[\d+\]")
_QUESTION_WORDS = {
    "who",
    "whom",
    "whose",
    "what",
    "when",
    "where",
    "which",
    "why",
    "how",
    "did",
    "does",
    "do",
    "is",
    "are",
    "was",
    "were",
    "can",
    "could",
    "has",
    "have",
    "had",
    "in",
    "on",
    "at",
    "for",
    "and",
}


def is_follow_up(question: str) -> bool:
    """A question that leans on the conversation: it opens with "and"/"what about", or uses a pronoun."""
    return bool(_LEAD.match(question) or _PRONOUN.search(question) or len(question.split()) <= 3)


def standalone(question: str, history: list[Message]) -> tuple[str, str]:
    """The query to search and its focus: the question itself, or the question completed from the last exchange.

    The focus is the part whose names must be found and whose answer kind counts: the whole query when a
    new subject replaced the old one, only the follow-up when the previous exchange is added as context.
    """
    users = [m.content for m in history if m.role == "user"]
    if not users or not is_follow_up(question):
        return question, question
    previous = users[-1].strip().rstrip("?")
    answers = [m.content for m in history if m.role == "assistant"]
    remainder = _LEAD.sub("", question).strip().rstrip("?").strip()
    named = [e for e in entities(remainder, skip_first=False) if e.lower() not in _QUESTION_WORDS]
    if named:
        # A new subject ("and in Kirklees?") replaces the previous question's names and figures.
        base = previous
        for name in entities(previous):
            base = re.sub(rf"(?<![\w'’]){re.escape(name)}(?:['’]s)?(?![\w'’])", "", base)
        query = squash(f"{base} {remainder}") + "?"
        return query, query
    # A pronoun ("who replaced him?") points at what was asked and answered last.
    said = _MARKER.sub("", answers[-1]) if answers else ""
    context = [e for e in entities(said, skip_first=False) if terms(e)][:6]
    query = squash(f"{remainder}? ({previous}; {' '.join(dict.fromkeys(context))})").replace("; )", ")")
    return query, remainder
