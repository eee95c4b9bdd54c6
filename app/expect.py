"""What kind of answer a question expects (a date, a number, a name) and whether a sentence offers one."""

import re

_MONTHS = "january|february|march|april|may|june|july|august|september|october|november|december"
_DAYS = "monday|tuesday|wednesday|thursday|friday|saturday|sunday"
_DATE = re.compile(
    rf"\b(?:{_MONTHS}|{_DAYS}|(?:1[6-9]|20)\d\d(?:s|'s)?|\d\d?(?:st|nd|rd|th)|(?:last|this|next|earlier this|later this)\s+"
    r"(?:week|month|year|spring|summer|autumn|winter)|yesterday|today|tomorrow|centur(?:y|ies)|decades?)\b",
    re.I,
)
_NUMBER_WORDS = (
    "one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|fifteen|twenty|thirty|forty|fifty|"
    "hundred|thousand|million|billion|half|dozen|double|doubling|twice|several|many|few|all|most|majority"
)
_NUMBER = re.compile(
    rf"(?:[£$€]\s?)?\d[\d,.]*\s*(?:%|per\s?cent|m\b|bn\b|k\b)?|\b(?:{_NUMBER_WORDS})\b", re.I
)
# Two or more capitalised words: a person's or organisation's name ("Beate Wagner", "Rotherham Council").
_NAME = re.compile(r"(?:[A-Z][a-z'’-]+|[A-Z]{2,})(?:\s+(?:of\s+|de\s+|van\s+)?(?:[A-Z][a-z'’-]+|[A-Z]{2,}))+")
_TITLED = re.compile(r"\b(?:Mr|Mrs|Ms|Miss|Dr|Prof|Coun|Cllr|Sir|Dame|Lord|Lady)\.?\s+[A-Z][a-z'’-]+")
# Words that make a capitalised run an institution or a heading rather than a person.
_INSTITUTION = {
    "council",
    "board",
    "committee",
    "service",
    "services",
    "department",
    "agency",
    "authority",
    "office",
    "government",
    "ministry",
    "court",
    "police",
    "hospital",
    "school",
    "university",
    "college",
    "trust",
    "children",
    "children's",
    "children’s",
    "local",
    "safeguarding",
    "inspection",
    "framework",
    "director",
    "plan",
    "report",
    "act",
    "county",
    "city",
    "metropolitan",
    "borough",
    "district",
    "hub",
    "centre",
    "team",
}

DATE, NUMBER, PERSON, NAME = "date", "number", "person", "name"


def expected(question: str) -> str | None:
    """The answer type the question asks for, if it names one."""
    q = question.lower().strip()
    if re.match(r"(?:and\s+)?when\b", q) or re.search(
        r"\b(?:what|which|in what|in which|on what|on which)\s+(?:year|month|date|day|decade|century|months|years)\b",
        q,
    ):
        return DATE
    if re.search(
        r"\bhow (?:many|much|long|old|often|far)\b|\b(?:what|which) (?:percentage|proportion|number|share)\b",
        q,
    ):
        return NUMBER
    if re.match(r"(?:and\s+)?(?:who|whom)\b", q) or re.search(
        r"\bwho (?:is|was|were|are|did|has|had)\b|\bname of\b", q
    ):
        return PERSON
    if re.search(
        r"\b(?:which|what) (?:firm|company|organisation|organization|council|body|charity|consultancy)\b", q
    ):
        return NAME
    return None


def offers(kind: str | None, sentence: str, question: str) -> bool:
    """Whether the sentence holds something of the expected kind that the question does not already say."""
    if kind is None:
        return True
    asked = question.lower()
    if kind == DATE:
        found = [m.group() for m in _DATE.finditer(sentence)]
    elif kind == NUMBER:
        found = [m.group() for m in _NUMBER.finditer(sentence)]
    elif kind == PERSON:
        found = [m.group() for m in _TITLED.finditer(sentence)]
        found += [m.group() for m in _NAME.finditer(sentence) if not _institution(m.group())]
    else:
        found = [m.group() for m in _NAME.finditer(sentence)]
    return any(not _said(f, asked) for f in found)


def _institution(name: str) -> bool:
    return any(w.lower() in _INSTITUTION for w in name.split())


def _said(found: str, asked: str) -> bool:
    """True when every word of the candidate already appears in the question."""
    return all(w in asked for w in re.findall(r"[\w'’£$€%]+", found.lower()))
