"""Follow-up questions: turn "and in Kirklees?" or "who replaced him?" into a standalone search query."""

import re

from app.retrieve import entities
from app.schemas import Message
from app.split import terms

_LEAD = re.compile(r"^\s*(and|but|also|so|then|what about|how about|what of|and what about)\b[\s,]*", re.I)
_PRONOUN = re.compile(r"\b(he|she|him|her|his|hers|they|them|their|it|its|this|that|these|those|there)\b", re.I)
_MARKER = re.compile(r"\[\d+\]")


def is_follow_up(question: str) -> bool:
    """A question that leans on the conversation: it opens with "and"/"what about", or uses a pronoun."""
    return bool(_LEAD.match(question) or _PRONOUN.search(question) or len(question.split()) <= 3)


def standalone(question: str, history: list[Message]) -> str:
    """The query to search: the question itself, or the question completed from the last exchange."""
    users = [m.content for m in history if m.role == "user"]
    if not users or not is_follow_up(question):
        return question
    previous = users[-1].strip().rstrip("?")
    answers = [m.content for m in history if m.role == "assistant"]
    remainder = _LEAD.sub("", question).strip().rstrip("?").strip()
    named = entities(" " + remainder)
    if named:
        # A new subject ("and in Kirklees?") replaces the previous question's names and figures.
        base = previous
        for name in entities(previous):
            base = re.sub(rf"(?<![\w'’]){re.escape(name)}(?:['’]s)?(?![\w'’])", "", base)
        return _squash(f"{base} {remainder}") + "?"
    # A pronoun ("who replaced him?") points at what was asked and answered last.
    said = _MARKER.sub("", answers[-1]) if answers else ""
    context = [e for e in entities(" " + said) if terms(e)][:6]
    return _squash(f"{remainder}? ({previous}; {' '.join(dict.fromkeys(context))})").replace("; )", ")")


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()
