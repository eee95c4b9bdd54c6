"""Pydantic models shared by the API, UI, CLI and evals."""

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, Field, StrictInt


def _integral(value: object) -> object:
    """A float with no fraction as the integer it is; anything else unchanged, for StrictInt to judge."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# JSON Schema counts 5.0 as an integer, so the schema's clients may send it; "5" and true stay refused.
WholeNumber = Annotated[StrictInt, BeforeValidator(_integral)]


class Message(BaseModel):
    """One turn of a conversation."""

    role: Literal["user", "assistant"]
    content: str = Field(max_length=20_000)


class Citation(BaseModel):
    """A verbatim quote: `document.text[start:end] == quote`."""

    n: int
    doc_id: str
    title: str
    source: str
    published: str
    url: str
    quote: str
    start: int
    end: int
    score: float


class Answer(BaseModel):
    """An answer whose every `[n]` marker refers to `citations[n-1]`."""

    answer: str
    abstained: bool
    citations: list[Citation]
    query: str
    timings_ms: dict[str, float] = Field(default_factory=dict)


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


class DocumentDetail(DocumentInfo):
    """A document's metadata with its cleaned text and what cleaning removed."""

    text: str
    removed_count: int
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
