"""Pydantic models shared by the API, UI, CLI and evals."""

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, Field, StrictInt, create_model

# A question must hold a character that str.strip() keeps: one of only white space is as empty as "".
# Spelled out, because `\S` differs between Python (the server) and ECMA-262 (JSON Schema's patterns):
# Python counts U+001C-U+001F and U+0085 as white space, ECMA-262 does not, and the other way round U+FEFF.
NOT_BLANK = r"[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"


def _integral(value: object) -> object:
    """A float with no fraction as the integer it is; anything else unchanged, for StrictInt to judge."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# JSON Schema counts 5.0 as an integer, so the schema's clients may send it; "5" and true stay refused.
WholeNumber = Annotated[StrictInt, BeforeValidator(_integral)]


def _numeric(value: object) -> object:
    """Refuse what JSON Schema's number is not (true, "5"), which pydantic's lax mode would convert."""
    if isinstance(value, bool | str | bytes):
        raise ValueError("must be a number")
    return value


# Numbers a client sends back (POST /briefing's answers): the server's own values, numpy's included, pass.
Number = Annotated[float, BeforeValidator(_numeric)]
Offset = Annotated[int, BeforeValidator(_numeric)]


class Message(BaseModel):
    """One turn of a conversation."""

    role: Literal["user", "assistant"]
    content: str = Field(max_length=20_000)


class Citation(BaseModel):
    """A verbatim quote: `document.text[start:end] == quote`."""

    n: Offset
    doc_id: str
    title: str
    source: str
    published: str
    url: str
    quote: str
    start: Offset
    end: Offset
    score: Number


class Answer(BaseModel):
    """An answer whose every `[n]` marker refers to `citations[n-1]`."""

    # Never empty: an abstention says so in words. POST /briefing refuses an empty one, and the schema says so.
    answer: str = Field(min_length=1, pattern=NOT_BLANK)
    abstained: bool
    citations: list[Citation]
    query: str
    timings_ms: dict[str, Number] = Field(default_factory=dict)


class Passage(BaseModel):
    """A retrieved chunk with its offsets into the document text."""

    doc_id: str
    title: str
    source: str
    text: str
    start: int
    end: int
    score: float


class AskRequest(BaseModel):
    """Body of POST /ask."""

    question: str = Field(examples=["When did the focused visit take place?"])
    top_k: WholeNumber | None = Field(None, examples=[5])
    history: list[Message] = Field(default_factory=list)


Tag = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")]


class AnsweringSentence(BaseModel):
    """The sentence of a document that answers a question, in the document's own words."""

    doc_id: str = Field(
        min_length=1, max_length=300, examples=["ofsted-focused-visit-letter-wakefield-2018-03-22.md"]
    )
    sentence: str = Field(
        min_length=1,
        max_length=2000,
        pattern=NOT_BLANK,
        examples=[
            "This letter summarises the findings of a focused visit to Wakefield Council on 27 and 28 February 2018."
        ],
    )


class RecordRequest(BaseModel):
    """Body of POST /questions: a question and the sentence that answers it, or none for a question the
    documents do not answer; appended to the question set that grows from use."""

    question: str = Field(examples=["When did the focused visit take place?"])
    answered_by: AnsweringSentence | None = None
    tags: list[Tag] = Field(default_factory=list, max_length=10, examples=[["wakefield"]])
    history: list[Message] = Field(default_factory=list)


class Recorded(BaseModel):
    """A question as it was added to the question file."""

    id: str
    questions_file: str
    unanswerable: bool
    evidence: str = Field(
        description="The regex some citation's quote must match; empty for an unanswerable question."
    )


class RetrieveRequest(BaseModel):
    """Body of POST /retrieve."""

    question: str = Field(examples=["social workers caseloads"])
    top_k: WholeNumber | None = Field(None, examples=[5])


class RetrieveResponse(BaseModel):
    """Body returned by POST /retrieve."""

    passages: list[Passage]


class DocumentInfo(BaseModel):
    """A document's metadata."""

    doc_id: str
    path: str
    title: str
    publisher: str
    published: str
    url: str
    kind: str
    chars: int
    chunks: int
    removed_count: int = Field(description="Lines cleaning removed (page furniture, banners, widgets).")


class DocumentDetail(DocumentInfo):
    """A document's metadata with its cleaned text and what cleaning removed."""

    text: str
    removed_sample: list[str]


class Health(BaseModel):
    """Body of GET /health."""

    status: str
    documents: int
    chunks: int


class Skipped(BaseModel):
    """A file ingest passed over, and why."""

    path: str
    reason: str


class IngestSummary(BaseModel):
    """What one ingest run changed."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    chunks_embedded: int = 0
    skipped: list[Skipped] = Field(default_factory=list)


BriefingFormat = Literal["md", "docx", "json"]


class BriefingItem(BaseModel):
    """One question of a briefing, with the /ask answer the client holds, or none to have it answered now."""

    question: str = Field(examples=["When did the focused visit take place?"])
    answer: Answer | None = None


class BriefingRequest(BaseModel):
    """Body of POST /briefing: the client holds the list, the server checks and renders it."""

    title: str = Field(examples=["Children's services in Wakefield"])
    format: BriefingFormat = "md"
    items: list[BriefingItem]


def briefing_request_model(
    max_items: int, max_title_chars: int, max_question_chars: int
) -> type[BriefingRequest]:
    """BriefingRequest with the server's limits in its schema, so OpenAPI states what the route accepts."""
    # NOT_BLANK: a title or question of only white space is empty, as for POST /ask; JSON Schema patterns
    # search, as pydantic's do, and the plain character class reads alike in Python, Rust and ECMA-262.
    question = Field(
        min_length=1,
        max_length=max_question_chars,
        pattern=NOT_BLANK,
        description=f"At most {max_question_chars:,} characters, at least one of them not white space.",
    )
    item = create_model("BriefingItem", __base__=BriefingItem, question=(str, question))
    return create_model(
        "BriefingRequest",
        __base__=BriefingRequest,
        title=(str, Field(min_length=1, max_length=max_title_chars, pattern=NOT_BLANK)),
        items=(list[item], Field(min_length=1, max_length=max_items)),
    )


class Note(BaseModel):
    """A numbered note: one distinct quoted span, and what its document states about itself."""

    n: int
    doc_id: str
    title: str
    publisher: str
    published: str
    url: str
    quote: str
    start: int
    end: int


class Statement(BaseModel):
    """One statement of an answer: the verbatim quote it is, and the notes that cite it."""

    text: str
    notes: list[int]


class BriefingSection(BaseModel):
    """An answered question of a briefing; `item` is its position in the request."""

    item: int
    question: str
    statements: list[Statement]


class Unanswered(BaseModel):
    """A question the sources do not answer; `item` is its position in the request."""

    item: int
    question: str


class Briefing(BaseModel):
    """A briefing: answered questions, questions the sources do not answer, and the numbered notes."""

    title: str
    created: str
    generation: str
    sections: list[BriefingSection]
    not_answered: list[Unanswered]
    notes: list[Note]
