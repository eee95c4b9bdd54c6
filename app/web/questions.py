"""POST /questions: a question and what answers it, added to the question set that grows from use."""

from fastapi import Depends, FastAPI

from app.errors import BadInput
from app.qa.answer import validate_question
from app.schemas import Recorded, RecordRequest
from app.web.deps import WRITE_ERRORS, SettingsDep, SnapshotDep, may_write
from evals.record import located, record


def question_routes(app: FastAPI) -> None:
    """Register the route that grows the question file (`CITEQA_QUESTIONS_FILE`)."""

    @app.post(
        "/questions",
        response_model=Recorded,
        tags=["evaluation"],
        dependencies=[Depends(may_write)],
        responses={
            400: {"description": "The body is not valid UTF-8, or its Content-Length is not a number."},
            **WRITE_ERRORS,
            413: {"description": "The body is larger than the server's limit (`CITEQA_MAX_BODY_BYTES`)."},
            404: {"description": "No document has the `doc_id` given."},
            409: {"description": "The question file already has this question."},
            422: {
                "description": "A question outside the limits, a document that does not hold the sentence, or a "
                "question file that is not valid; `detail` says which."
            },
            503: {"description": "No index is built yet, or it cannot be read."},
        },
        description="Append a question to the question file: answered by `answered_by.sentence`, which must be "
        "the words of document `answered_by.doc_id`, or, with no `answered_by`, one the documents do not answer. "
        "`citeqa eval --questions FILE` runs the file.",
    )
    def add_question(body: RecordRequest, settings: SettingsDep, snapshot: SnapshotDep) -> Recorded:
        """Record a question and the sentence that answers it (or none) in the question file."""
        question = validate_question(body.question, settings)
        if len(body.history) > settings.max_history_turns:
            raise BadInput(f"history has {len(body.history)} messages; at most {settings.max_history_turns}")
        found = body.answered_by
        sentence = located(snapshot, found.doc_id, found.sentence) if found is not None else None
        history = [m.model_dump() for m in body.history]
        doc_id = found.doc_id if found is not None else ""
        item = record(settings.questions_file, question, sentence, doc_id, body.tags, history)
        return Recorded(
            id=item["id"],
            questions_file=str(settings.questions_file),
            unanswerable=item["unanswerable"],
            evidence=item["evidence"],
        )
