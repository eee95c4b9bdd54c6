"""What kind of answer a question expects (a date, a number, a name) and whether a sentence offers one."""

import re
from collections.abc import Callable

from app.store.split import is_stopword

_MONTHS = "january|february|march|april|may|june|july|august|september|october|november|december"
_DAYS = "monday|tuesday|wednesday|thursday|friday|saturday|sunday"
# A year of the second millennium or this century: 1066 as well as 2018.
_YEAR = r"(?:1\d|20)\d\d"
_DATE = re.compile(
    rf"\b(?:{_MONTHS}|{_DAYS}|{_YEAR}(?:s|'s)?|\d\d?(?:st|nd|rd|th)|(?:last|this|next|earlier this|later this)\s+"
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
_NAME = re.compile(
    r"(?:[A-Z][a-z'’-]+|[A-Z]{2,})(?:\s+(?:of\s+|de\s+|van\s+|[A-Z]\.\s+)?(?:[A-Z][a-z'’-]+|[A-Z]{2,}))+"
)
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

DATE, NUMBER, PERSON, NAME, RATING = "date", "number", "person", "name", "rating"

# Nouns that denote people: "which two inspectors" asks for names as "who" does (the HUM:individual class
# of Li and Roth's 2002 question taxonomy, which keys on the head noun after "which"/"what").
_PERSON_NOUNS = (
    "person|people|man|men|woman|women|individuals?|inspectors?|officers?|officials?|directors?|ministers?|"
    "leaders?|managers?|chairs?|chairman|chairwoman|presidents?|commissioners?|councillors?|mayors?|mps?|"
    "authors?|writers?|players?|kings?|queens?|emperors?|scientists?|artists?|composers?|actors?|"
    "politicians?|spokes(?:man|woman|person)|executives?|founders?|inventors?|architects?"
)
# Nouns that denote organisations: the answer is a name or a noun phrase headed by such a noun.
_ORG_NOUNS = (
    "firms?|compan(?:y|ies)|organi[sz]ations?|councils?|bod(?:y|ies)|charit(?:y|ies)|consultanc(?:y|ies)|"
    "committees?|boards?|groups?|teams?|agenc(?:y|ies)|departments?|panels?|parties|party|authorit(?:y|ies)|"
    "institutions?|universit(?:y|ies)|schools?|newspapers?|businesses|business|banks?|ministr(?:y|ies)|"
    "government|courts?|services?"
)
# "How did Ofsted rate it?", "what overall rating": a verdict is answered by a sentence that gives one.
# Only the verb counts ("how did they rate it", "how was it rated"): the noun "rate" ("how has the crime rate
# changed") asks for a figure, not a verdict.
_RATING_Q = re.compile(
    r"\bhow (?:did|do|does) (?:[\w'’-]+ ){1,4}?(?:rate|grade|rank|judge)\b(?! of\b)"
    r"|\bhow (?:was|were|is|are|has|have|had)(?: been)? (?:[\w'’-]+ ){0,4}?(?:rated|graded|ranked|judged)\b"
    r"|\b(?:what|which) (?:[\w'’-]+ )?(?:rating|verdict|judge?ment)s?\b",
    re.I,
)
_RATING = re.compile(
    r"\b(?:rat(?:ed|ing|ings)|grad(?:ed|es?|ing)|scored?|ranked|judged|judge?ments?|verdicts?|deemed)\b", re.I
)
# "Which two inspectors", "in which months": the answer names that many distinct values, not one.
_COUNTS = {"two": 2, "three": 3, "four": 4, "five": 5, "2": 2, "3": 3, "4": 4, "5": 5}
_COUNT_Q = re.compile(r"\b(?:which|what)\s+(two|three|four|five|[2-5])\b(?!-)", re.I)
_PLURAL_GRANULE_Q = re.compile(r"\b(?:which|what)\s+(?:months|years|days)\b", re.I)
_MONEY = re.compile(
    r"[£$€¥₹]\s?\d|(?<![\d,.])\d[\d,.]*\s*(?:(?:million|billion|thousand|m|bn)\s+)?(?:pounds?|dollars?|euros?|lira|lire|"
    r"francs?|marks?|yen|yuan|rupees?|pesos?|roubles?|rubles?|kron(?:a|or|er)|shillings?|guineas?|pence|cents?)\b",
    re.I,
)
# Up to two modifiers may stand between "which" and the noun ("which two inspectors"), never a verb.
_AUX = r"(?:did|does|do|is|was|were|are|has|have|had|will|would|can|could|should|may|might|must)\b"
_GENERIC_ORG = r"bod(?:y|ies)|organi[sz]ations?|groups?|institutions?"
# Money asked for by name, as the question's head ("what extra money has ...", "how much funding did ..."):
# only an amount of money answers it.
_MONEY_Q = re.compile(
    rf"\b(?:what|which|how much)\s+(?:(?:extra|additional|new|more|further|total)\s+)?"
    rf"(?:money|funding|funds|cash)\s+{_AUX}",
    re.I,
)
_WHICH = rf"\b(?:which|what)\s+(?:(?!{_AUX})[\w'’-]+\s+){{0,2}}"
_PERSON_Q = re.compile(rf"{_WHICH}(?:{_PERSON_NOUNS})\b", re.I)
_ORG_Q = re.compile(rf"{_WHICH}(?P<head>{_ORG_NOUNS})\b", re.I)
# An explicit unit ("as a percentage", "in pounds") makes only a figure in that unit an answer.
_PERCENT_Q = re.compile(r"\b(?:as a |what |which )?percentage\b|\bper\s?cent\b|\bin percent\b", re.I)
_PERCENT = re.compile(r"\d\s*%|\d\s*per\s?cent\b", re.I)
_CURRENCY_Q = {
    re.compile(r"\bin (?:pounds|sterling)\b|\bhow many pounds\b", re.I): re.compile(
        r"£\s?\d|\d\s*pounds\b", re.I
    ),
    re.compile(r"\bin dollars\b|\bhow many dollars\b", re.I): re.compile(r"\$\s?\d|\d\s*dollars\b", re.I),
    re.compile(r"\bin euros\b|\bhow many euros\b", re.I): re.compile(r"€\s?\d|\d\s*euros\b", re.I),
}
# "Exactly how many" asks for a precise figure: "many" or "a large number" does not answer it.
_EXACT_Q = re.compile(r"\b(?:exactly|precisely)\b", re.I)
_VAGUE = {"several", "many", "few", "all", "most", "majority", "half", "dozen", "double", "doubling", "twice"}
# A figure inside a date ("27 and 28 February 2018", "in 2016") dates something; it does not count it.
_DAY = r"\d\d?(?:st|nd|rd|th)?"
_DATE_FIGURES = re.compile(
    rf"\b{_DAY}(?:\s*(?:and|to|-|–)\s*{_DAY})?\s+(?:{_MONTHS})(?:,?\s+\d{{4}})?\b"
    rf"|\b(?:{_MONTHS})\s+{_DAY}(?:,?\s+\d{{4}})?\b|\b(?:{_MONTHS})\s+\d{{4}}\b"
    rf"|\b(?:in|since|by|until|from|of|during|before|after)\s+{_YEAR}\b",
    re.I,
)
# Date granularity: "which month" is answered by a month, "which year" by a year, "day of the week" by a day.
_MONTH_Q = re.compile(r"\b(?:which|what)\s+months?\b", re.I)
_YEAR_Q = re.compile(r"\b(?:which|what)\s+years?\b", re.I)
_WEEKDAY_Q = re.compile(r"\bday of the week\b", re.I)
# The nouns that ask for a date after "which", "what", "in which" (and that name only the answer's kind).
_DATE_NOUNS = r"years?|months?|dates?|days?|decades?|centur(?:y|ies)"
_GRANULE = {
    "month": re.compile(rf"\b(?:{_MONTHS})\b", re.I),
    "year": re.compile(rf"\b{_YEAR}\b"),
    "weekday": re.compile(rf"\b(?:{_DAYS})\b", re.I),
}


def expected(question: str) -> str | None:
    """The answer type the question asks for, if it names one."""
    q = question.lower().strip()
    if re.match(r"(?:and\s+)?when\b", q) or re.search(
        # "dates back to", "dates from": the verb, not the noun.
        rf"\b(?:what|which|in what|in which|on what|on which)\s+(?!dates\s+(?:back|from)\b)(?:{_DATE_NOUNS})\b",
        q,
    ):
        return DATE
    if re.search(
        r"\bhow (?:many|much|long|old|often|far)\b|\b(?:what|which) (?:percentage|proportion|number|share)\b",
        q,
    ) or _unit(q):
        return NUMBER
    if (
        re.match(r"(?:and\s+)?(?:who|whom)\b", q)
        or re.search(r"\bwho (?:is|was|were|are|did|has|had)\b|\bname of\b", q)
        or _PERSON_Q.search(q)
    ):
        return PERSON
    if _ORG_Q.search(q):
        return NAME
    if _RATING_Q.search(q):
        return RATING
    return None


# Words of the question's form, not its content ("which day of the week", "what body"): the answer need not
# repeat them. A noun is form only as the wh-phrase's head ("what share of", not "what share price").
_FORM_NOUNS = (
    rf"{_DATE_NOUNS}|weeks?|time|percentage|proportion|share|number|amount|body|bodies|organi[sz]ation|group|"
    "institution|kind|type|sort|name"
)
_FORM_Q = re.compile(
    rf"\b(?:which|what|how many|how much)\s+(?:(?P<count>two|three|four|five)\b"
    rf"|(?P<noun>{_FORM_NOUNS})(?=\s+(?:of\b|{_AUX})|\s*[?,.;]|\s*$))",
    re.I,
)


def form_words(question: str) -> list[str]:
    """The words of the question that only name the kind of answer it wants."""
    found = [(m.group("count") or m.group("noun")).lower() for m in _FORM_Q.finditer(question)]
    if _WEEKDAY_Q.search(question):
        found += [w for w in ("day", "week") if w not in found]
    return found


def offers(
    kind: str | None, sentence: str, question: str, proper: Callable[[str], bool] | None = None
) -> bool:
    """Whether the sentence holds something of the expected kind that the question does not already say.

    `proper` tells whether a capitalised word that opens a sentence is a proper noun (the document uses it
    capitalised mid-sentence too, Mikheev's 1999 document-centred test); without it such words never count.
    """
    if kind is None:
        return True
    asked = question.lower()
    if kind == RATING:
        return bool(_RATING.search(sentence))
    if kind == DATE:
        granule = _granule(asked)
        found = [m.group() for m in (granule or _DATE).finditer(sentence)]
    elif kind == NUMBER:
        found = _figures(sentence, asked)
    elif kind == PERSON:
        found = [m.group() for m in _TITLED.finditer(sentence)]
        found += [m.group() for m in _NAME.finditer(sentence) if not _institution(m.group())]
    else:
        found = [m.group() for m in _NAME.finditer(sentence)]
        found += _proper_words(sentence, proper)
        head = _ORG_Q.search(question)
        if head:
            # A generic head ("what body") is answered by any organisation noun it covers ("board").
            generic = re.fullmatch(_GENERIC_ORG, head.group("head"), re.I)
            for noun in (
                re.findall(rf"\b(?:{_ORG_NOUNS})\b", sentence, re.I) if generic else [head.group("head")]
            ):
                found += _headed_phrases(sentence, noun)
    new = [f for f in found if not _said(f, asked)]
    if kind == PERSON:
        # "Jane Smith" and "Ms Smith" are one person: people are told apart by surname.
        return len({f.split()[-1].lower().strip(".'’") for f in new}) >= _count(asked)
    return len({f.lower() for f in new}) >= _count(asked)


def _count(asked: str) -> int:
    """How many distinct values the question asks for: one unless it says ("which two") or a plural date part."""
    m = _COUNT_Q.search(asked)
    if m:
        return _COUNTS[m.group(1).lower()]
    return 2 if _PLURAL_GRANULE_Q.search(asked) else 1


# "How many focused visits ...": the words after "how many", up to the verb or preposition, name what is counted.
_HOW_MANY = re.compile(r"\bhow many\s+((?:[\w'’-]+\s*){1,2})", re.I)
_COUNT_STOP = re.compile(
    rf"^(?:{_AUX}|of|in|on|at|for|to|from|by|with|per|out|there|than|more|fewer|other|such)$", re.I
)


def counted_nouns(question: str) -> list[str]:
    """The (at most two) words naming what a "how many" question counts, before any verb or preposition."""
    m = _HOW_MANY.search(question)
    if not m:
        return []
    nouns: list[str] = []
    for word in m.group(1).split():
        if _COUNT_STOP.match(word) or is_stopword(word):
            break
        nouns.append(word.lower())
    return nouns


def counts(sentence: str, nouns: list[str]) -> bool:
    """Whether a figure of the sentence counts one of the nouns: it stands at most three words before it."""
    text = _DATE_FIGURES.sub(" ", sentence)
    for m in _NUMBER.finditer(text):
        after = re.findall(r"[\w'’-]+", text[m.end() : m.end() + 60].lower())[:3]
        if any(_same_word(w, n) for w in after for n in nouns):
            return True
    return False


def _same_word(word: str, noun: str) -> bool:
    """A form of the noun: its root (all but the last three letters, at least four) or, for a short noun,
    the noun itself or its plural ("visits" for "visit"; "men", but not "mentioned")."""
    if len(noun) > 4:
        return word.startswith(noun[: max(4, len(noun) - 3)])
    return word in {noun, noun + "s", noun + "es"} or noun in {word + "s", word + "es"}


def _unit(asked: str) -> re.Pattern[str] | None:
    """The pattern a figure must match when the question names its unit."""
    if _PERCENT_Q.search(asked):
        return _PERCENT
    if _MONEY_Q.search(asked):
        return _MONEY
    return next((figure for q, figure in _CURRENCY_Q.items() if q.search(asked)), None)


def _granule(asked: str) -> re.Pattern[str] | None:
    if _WEEKDAY_Q.search(asked):
        return _GRANULE["weekday"]
    if _MONTH_Q.search(asked):
        return _GRANULE["month"]
    if _YEAR_Q.search(asked):
        return _GRANULE["year"]
    return None


def _figures(sentence: str, asked: str) -> list[str]:
    """The figures of a sentence that can answer a "how many" question: dates masked, units enforced."""
    unit = _unit(asked)
    if unit is not None:
        return [m.group() for m in unit.finditer(sentence)]
    text = _DATE_FIGURES.sub(" ", sentence)
    found = [m.group() for m in _NUMBER.finditer(text)]
    if _EXACT_Q.search(asked):
        found = [f for f in found if f.strip().lower() not in _VAGUE]
    return found


def _proper_words(sentence: str, proper: Callable[[str], bool] | None) -> list[str]:
    """Single capitalised words: names unless they only open the sentence (then `proper` decides)."""
    out = []
    for m in re.finditer(r"(?<![\w'’])[A-Z][a-z'’-]+", sentence):
        word = m.group().rstrip("'’").removesuffix("'s").removesuffix("’s")
        opening = not sentence[: m.start()].strip(" \"'“‘(")
        if is_stopword(word):
            continue
        if not opening or (proper is not None and proper(word)):
            out.append(word)
    return out


def _headed_phrases(sentence: str, head: str) -> list[str]:
    """The modifiers of noun phrases ending in the question's head noun ("overview and scrutiny committee")."""
    stem = re.escape(head.lower().rstrip("s")[:5])
    found = []
    for m in re.finditer(rf"((?:[\w'’-]+\s+){{1,4}}){stem}\w*", sentence, re.I):
        modifiers: list[str] = []
        # Walk back from the head to the determiner, possessive or verb that opens the phrase.
        for word in reversed(m.group(1).lower().split()):
            if word in _PHRASE_STOPS or word.endswith(("'s", "’s")):
                break
            modifiers.insert(0, word)
        while modifiers and modifiers[0] in {"and", "or"}:
            modifiers.pop(0)
        if modifiers:
            found.append(" ".join(modifiers))
    return found


_PHRASE_STOPS = {
    "a",
    "an",
    "the",
    "its",
    "their",
    "his",
    "her",
    "this",
    "that",
    "these",
    "those",
    "of",
    "to",
    "by",
    "for",
    "in",
    "on",
    "at",
    "from",
    "with",
    "as",
    "is",
    "was",
    "are",
    "were",
    "be",
    "been",
    "has",
    "have",
    "had",
    "which",
    "who",
}


def _institution(name: str) -> bool:
    return any(w.lower().removesuffix("'s").removesuffix("’s") in _INSTITUTION for w in name.split())


def _said(found: str, asked: str) -> bool:
    """True when every word of the candidate already appears in the question."""
    return all(w in asked for w in re.findall(r"[\w'’£$€%]+", found.lower()))


_WH = r"(?:who|whom|when|where|what|which|how|why)\b"
_PART = re.compile(rf",?\s+and\s+(?={_WH})", re.I)


def sub_questions(question: str) -> list[str]:
    """The questions a coordinated question asks ("Who ..., and who ...?"), each to be answered on its own.

    An elliptical part ("..., and when?") borrows the rest of the longest part, with its own question word.
    """
    body = question.strip().rstrip("?").strip()
    parts = [p.strip() for p in _PART.split(body) if p.strip()]
    if len(parts) < 2:
        return [question]
    main = max(parts, key=len)
    out = []
    for part in parts:
        if len(part.split()) <= 2 and re.match(_WH, part, re.I) and re.match(_WH, main, re.I):
            part = re.sub(rf"^{_WH}", part, main, count=1, flags=re.I)
        out.append(part[0].upper() + part[1:] + "?")
    return out
