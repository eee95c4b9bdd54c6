"""POST /documents and DELETE /documents/{doc_id}: documents added and removed over HTTP."""

import json
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Response, UploadFile

from app.errors import BadInput, NotFound
from app.schemas import IngestSummary
from app.settings import Settings
from app.web.deps import WRITE_ERRORS, EmbedderDep, LiveDep, SettingsDep, may_write, stamp
from ingest.load import SUPPORTED
from ingest.upload import UPLOADS, Upload, add, remove

_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    **WRITE_ERRORS,
    409: {"description": "Another ingest or upload is running; nothing was changed. Try again."},
    503: {"description": "The index cannot be read, or the model cannot be loaded."},
}


def _upload_errors(settings: Settings) -> dict[int | str, dict[str, Any]]:
    return {
        400: {
            "description": "The body is not valid multipart form data, or its Content-Length is not a number."
        },
        413: {
            "description": f"A file is over {settings.max_file_bytes:,} bytes, or the whole body over "
            f"{settings.max_upload_bytes:,} (`CITEQA_MAX_FILE_BYTES`, `CITEQA_MAX_UPLOAD_BYTES`)."
        },
        415: {
            "description": f"A file is of a type citeqa does not read (it reads {' '.join(sorted(SUPPORTED))})."
        },
        422: {
            "description": "No files, too many, a name with a folder, a leading dot or control characters, the "
            "same name twice, an empty, encrypted or unreadable file, one with no text, a zip bomb, or "
            "metadata that is not as described; `detail` names the file. Nothing was changed."
        },
        **_WRITE_ERRORS,
    }


def document_routes(app: FastAPI, settings: Settings) -> None:
    """Register the routes that change the corpus; each checks `may_write` first."""

    @app.post(
        "/documents",
        response_model=IngestSummary,
        tags=["documents"],
        dependencies=[Depends(may_write)],
        responses=_upload_errors(settings),
        description=(
            f"Add or replace documents: up to {settings.max_upload_files} files "
            f"({' '.join(sorted(SUPPORTED))}), each at most {settings.max_file_bytes:,} bytes. They are kept in "
            f"the corpus folder's `{UPLOADS}/` with their fields in its manifest.yaml, so `citeqa ingest` and a "
            "restart see them, and indexed at once: answers switch to the new index when it is whole. The "
            "same bytes again (with no new fields) change nothing; a changed file is embedded again alone; fields "
            "sent for a file replace its fields, and a file sent without any keeps its own. Every file is checked "
            "before any is written: one bad file refuses the request and changes nothing."
        ),
    )
    def add_documents(
        settings: SettingsDep,
        live: LiveDep,
        embedder: EmbedderDep,
        response: Response,
        files: Annotated[
            list[UploadFile],
            File(
                description="The documents, each under its own file name.",
                min_length=1,
                max_length=settings.max_upload_files,
            ),
        ],
        metadata: Annotated[
            str,
            Form(
                description='JSON object from file name to its fields, e.g. {"report.pdf": {"title": "...", '
                '"publisher": "Ofsted", "published": "2018-03-22", "url": "", "kind": "official letter"}}; '
                "a field left out or empty stays empty. A file not named here keeps the fields it has."
            ),
        ] = "{}",
    ) -> IngestSummary:
        """Add documents to the corpus and index them."""
        try:
            fields = json.loads(metadata)
        except (ValueError, RecursionError):
            raise BadInput("metadata must be a JSON object from file name to its fields") from None
        if not isinstance(fields, dict):
            raise BadInput("metadata must be a JSON object from file name to its fields")
        names = [f.filename or "" for f in files]
        unknown = set(fields) - set(names)
        if unknown:
            raise BadInput(f"metadata names files that were not sent: {', '.join(sorted(map(str, unknown)))}")
        # One byte over the limit is enough to know a file is too large, without holding all of it.
        uploads = [
            Upload(name, f.file.read(settings.max_file_bytes + 1), fields.get(name))
            for name, f in zip(names, files, strict=True)
        ]
        summary = add(settings.corpus, uploads, settings, embedder)
        stamp(response, live.get())
        return summary

    @app.delete(
        "/documents/{doc_id}",
        response_model=IngestSummary,
        tags=["documents"],
        dependencies=[Depends(may_write)],
        responses={404: {"description": "No document has this id."}, **_WRITE_ERRORS},
        description="Remove a document: its file leaves the corpus folder and the index is brought in line.",
    )
    def remove_document(
        doc_id: str, settings: SettingsDep, live: LiveDep, embedder: EmbedderDep, response: Response
    ) -> IngestSummary:
        """Delete a document's file from the corpus and index without it."""
        doc = live.get().docs.get(doc_id)
        if doc is None:
            raise NotFound(f"no document with id {doc_id[:200]!r}")
        summary = remove(settings.corpus, doc.path, settings, embedder)
        stamp(response, live.get())
        return summary
