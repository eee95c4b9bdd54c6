"""The HTTP API (/health, /ask, /retrieve, /documents, /briefing, /ingest) with the Gradio UI mounted at /ui."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Annotated, Any

import anyio
from fastapi import Body, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from fastapi_offline import FastAPIOffline
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app.briefing.brief import assemble
from app.briefing.export import MEDIA_TYPES, export, filename
from app.errors import BadInput, CiteqaError, IndexDamaged, IndexMissing, NotFound
from app.qa.answer import ask, passages, validate_question
from app.qa.read import get_reader
from app.schemas import (
    NOT_BLANK,
    Answer,
    AskRequest,
    Briefing,
    BriefingRequest,
    DocumentDetail,
    DocumentInfo,
    Health,
    IngestSummary,
    RetrieveRequest,
    RetrieveResponse,
    briefing_request_model,
)
from app.settings import Settings, get_settings
from app.store.embed import get_embedder
from app.store.index import Document, Live
from app.web.deps import (
    GENERATION_HEADER,
    EmbedderDep,
    LiveDep,
    SettingsDep,
    SnapshotDep,
    bearer,
    check_token,
    is_local,
    stamp,
)
from app.web.documents import document_routes
from app.web.questions import question_routes

UI_PATH = "/ui"
NO_INDEX = "no index has been built yet; run `citeqa ingest` (or POST /ingest) and try again"
# Gradio routes that store a caller's files on the server (the documents panel's file picker).
_UPLOAD_PATHS = {f"{UI_PATH}/gradio_api/upload", f"{UI_PATH}/upload"}

_STAMPED: dict[str, Any] = {
    "headers": {
        GENERATION_HEADER: {
            "description": "The index generation (`gen-NNNNNN`) this response was computed from.",
            "schema": {"type": "string", "pattern": "^gen-[0-9]{6}$"},
        }
    }
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    200: _STAMPED,
    400: {"description": "The body is not valid UTF-8, or its Content-Length is not a number."},
    413: {"description": "The body is larger than the server's limit (`CITEQA_MAX_BODY_BYTES`)."},
    422: {
        "description": "The request is malformed or outside the limits the schema states (an empty or blank "
        "question, one over the length limit, `top_k` out of range, too long a history, text that is not "
        "valid Unicode); `detail` says what is wrong."
    },
    503: {"description": "No index is built yet (run `citeqa ingest`), or it cannot be read."},
}

_ASK_EXAMPLES = {
    "question": {"summary": "A question", "value": {"question": "When did the focused visit take place?"}},
    "follow-up": {
        "summary": "A follow-up, with the conversation so far",
        "value": {
            "question": "Who were the inspectors?",
            "top_k": 5,
            "history": [
                {"role": "user", "content": "When did the focused visit take place?"},
                {"role": "assistant", "content": "The visit took place on 27 and 28 February 2018. [1]"},
            ],
        },
    },
}
_RETRIEVE_EXAMPLES = {
    "passages": {"summary": "Search", "value": {"question": "social workers caseloads", "top_k": 3}}
}


class BodyTooLarge(HTTPException):
    """A body over the limit; an HTTPException, so FastAPI re-raises it instead of reporting a parse error."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than the {limit:,}-byte limit")


class BodyLimit:
    """Reject bodies over `limit` bytes with 413: by Content-Length, then by what streams in."""

    def __init__(
        self, app: ASGIApp, limit: int, exempt: str = UI_PATH, routes: dict[str, int] | None = None
    ) -> None:
        self.app, self.limit, self.exempt = app, limit, exempt
        self.routes = routes or {}  # paths with a limit of their own

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        # The mounted UI posts its own component state; Gradio applies its own limits there.
        if scope["type"] != "http" or path == self.exempt or path.startswith(self.exempt + "/"):
            await self.app(scope, receive, send)
            return
        limit = self.routes.get(path, self.limit)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await JSONResponse({"detail": "Content-Length is not a number"}, 400)(scope, receive, send)
                return
            if int(declared) > limit:
                await JSONResponse({"detail": BodyTooLarge(limit).detail}, 413)(scope, receive, send)
                return
        seen = 0
        started = False

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watched(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, watched)
        except BodyTooLarge as exc:
            if started:
                raise
            await JSONResponse({"detail": exc.detail}, 413)(scope, receive, send)


class LocalUploads:
    """Gradio's upload routes (the documents panel's file picker) for clients on this machine only: an open
    upload route stores anyone's files. Other machines add documents with POST /documents and the token."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path", "").rstrip("/") in _UPLOAD_PATHS:
            client = scope.get("client") or ("", 0)
            if not is_local(str(client[0]), Headers(scope=scope)):
                detail = "files can be added in the page only on this machine; elsewhere use POST /documents"
                await JSONResponse({"detail": detail}, 403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class DocsFromHere:
    """Give the API docs pages a Content-Security-Policy that lets them load nothing from other hosts."""

    # ReDoc's sidebar shows a logo from cdn.redoc.ly (hidden when it fails to load); offline machines cannot
    # reach it and online ones need not tell Redocly who reads the docs. Inline script and style are the
    # pages' own start-up code; ReDoc's search runs in a blob: worker.
    POLICY = (
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'self'"
    )

    def __init__(self, app: ASGIApp, paths: tuple[str, ...] = ("/docs", "/redoc")) -> None:
        self.app, self.paths = app, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "") not in self.paths:
            await self.app(scope, receive, send)
            return

        async def with_policy(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"content-security-policy", self.POLICY.encode()),
                ]
            await send(message)

        await self.app(scope, receive, with_policy)


def _check_limits(question: str, top_k: int | None, history_len: int, settings: Settings) -> str:
    """Every input limit, checked before the index is touched so bad input never waits on a model."""
    question = validate_question(question, settings)
    if top_k is not None and not 1 <= top_k <= settings.max_top_k:
        raise BadInput(f"top_k must be between 1 and {settings.max_top_k}")
    if history_len > settings.max_history_turns:
        raise BadInput(
            f"history has {history_len} messages; at most {settings.max_history_turns} are allowed"
        )
    return question


def _info(doc: Document) -> dict[str, Any]:
    return {
        "doc_id": doc.doc_id,
        "path": doc.path,
        "title": doc.title,
        "publisher": doc.publisher,
        "published": doc.published,
        "url": doc.url,
        "kind": doc.kind,
        "chars": len(doc.text),
        "chunks": len(doc.chunks),
        "removed_count": doc.removed_count,
    }


def _routes(app: FastAPI) -> None:
    """Register the API endpoints."""

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(UI_PATH + "/")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/health", response_model=Health, tags=["status"], responses={200: _STAMPED, 503: _ERRORS[503]})
    def health(snapshot: SnapshotDep, response: Response) -> Health:
        """Whether an index is loaded (and its vector store answers), and how big it is."""
        stamp(response, snapshot)
        snapshot.check()
        return Health(status="ok", documents=len(snapshot.docs), chunks=snapshot.n_chunks)

    @app.post("/ask", response_model=Answer, tags=["answers"], responses=_ERRORS)
    def ask_route(
        body: Annotated[AskRequest, Body(openapi_examples=_ASK_EXAMPLES)],
        settings: SettingsDep,
        live: LiveDep,
        embedder: EmbedderDep,
        response: Response,
    ) -> Answer:
        """Answer a question with `[n]` markers, each backed by a verbatim quote from a document."""
        question = _check_limits(body.question, body.top_k, len(body.history), settings)
        snapshot = stamp(response, live.get())
        return ask(snapshot, embedder, question, settings, history=body.history, top_k=body.top_k)

    @app.post("/retrieve", response_model=RetrieveResponse, tags=["answers"], responses=_ERRORS)
    def retrieve_route(
        body: Annotated[RetrieveRequest, Body(openapi_examples=_RETRIEVE_EXAMPLES)],
        settings: SettingsDep,
        live: LiveDep,
        embedder: EmbedderDep,
        response: Response,
    ) -> RetrieveResponse:
        """The best passages for a question, best first, without composing an answer."""
        question = _check_limits(body.question, body.top_k, 0, settings)
        snapshot = stamp(response, live.get())
        return RetrieveResponse(passages=passages(snapshot, embedder, question, settings, body.top_k))

    @app.get(
        "/documents",
        response_model=list[DocumentInfo],
        tags=["documents"],
        responses={200: _STAMPED, 503: _ERRORS[503]},
    )
    def documents(snapshot: SnapshotDep, response: Response) -> list[DocumentInfo]:
        """Every indexed document's metadata."""
        stamp(response, snapshot)
        return [DocumentInfo(**_info(doc)) for doc in snapshot.doc_list]

    @app.get(
        "/documents/{doc_id}",
        response_model=DocumentDetail,
        tags=["documents"],
        responses={200: _STAMPED, 404: {"description": "No document has this id."}, 503: _ERRORS[503]},
    )
    def document(doc_id: str, snapshot: SnapshotDep, response: Response) -> DocumentDetail:
        """A document's cleaned text (what citation offsets index into) and what cleaning removed."""
        stamp(response, snapshot)
        # A lookup in the index, never a filesystem path: ids like `../../etc/passwd` simply do not exist.
        doc = snapshot.docs.get(doc_id)
        if doc is None:
            raise NotFound(f"no document with id {doc_id[:200]!r}")
        return DocumentDetail(**_info(doc), text=doc.text, removed_sample=doc.removed_sample)

    @app.post(
        "/ingest",
        response_model=IngestSummary,
        tags=["admin"],
        responses={
            200: _STAMPED,
            400: _ERRORS[400],
            401: {"description": "No bearer token was sent."},
            403: {"description": "The bearer token is wrong."},
            404: {"description": "Ingest over HTTP is disabled (CITEQA_ADMIN_TOKEN is not set)."},
            409: {"description": "Another ingest is running."},
            413: _ERRORS[413],
        },
    )
    def ingest_route(
        settings: SettingsDep,
        live: LiveDep,
        embedder: EmbedderDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        response: Response,
    ) -> IngestSummary:
        """Bring the index in line with the server's corpus folder; answers switch to it once published."""
        from ingest.build import ingest

        if not settings.admin_token:
            raise NotFound("ingest over HTTP is disabled on this server (CITEQA_ADMIN_TOKEN is not set)")
        check_token(credentials, settings.admin_token)
        summary = ingest(settings.corpus, settings, embedder)
        stamp(response, live.get())  # the generation now live, opened before the next request needs it
        return summary


def _body_models(schema: dict[str, Any]) -> set[str]:
    """Names of the component schemas that the operations' JSON request bodies refer to."""
    names = set()
    for item in schema["paths"].values():
        for operation in item.values():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            if ref := body.get("schema", {}).get("$ref"):
                names.add(ref.rsplit("/", 1)[-1])
    return names


def _state_the_limits(app: FastAPI, settings: Settings) -> None:
    """Write this server's input limits and ingest rule into its OpenAPI schema, so it says what is enforced."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        models = schema["components"]["schemas"]
        # Every JSON request body, so an endpoint that takes a question (checked by _check_limits) is covered.
        for name in sorted(_body_models(schema)):
            fields = models[name].get("properties", {})
            if fields.get("question", {}).get("type") == "string":
                fields["question"].update(
                    minLength=1,
                    maxLength=settings.max_question_chars,
                    pattern=NOT_BLANK,
                    description=f"At most {settings.max_question_chars:,} characters, at least one of them "
                    "not white space.",
                )
            for branch in fields.get("top_k", {}).get("anyOf", []):
                if branch.get("type") == "integer":
                    branch.update(minimum=1, maximum=settings.max_top_k)
                    fields["top_k"]["description"] = (
                        f"How many citations or passages at most; {settings.default_top_k} when left out."
                    )
            if fields.get("history", {}).get("type") == "array":
                fields["history"]["maxItems"] = settings.max_history_turns
        ingest = schema["paths"]["/ingest"]["post"]
        if settings.admin_token:
            del ingest["responses"]["404"]
        else:
            # No token can be right here, so none is asked for: every call is the documented 404.
            del ingest["security"]
            for status in ("401", "403", "409"):
                del ingest["responses"][status]
            ingest["description"] += " Disabled on this server (CITEQA_ADMIN_TOKEN is not set): 404."
            # Documents and the question file are changed without a token here, from this machine only
            # (app/web/deps.py, may_write).
            writers = [("/documents", "post"), ("/documents/{doc_id}", "delete"), ("/questions", "post")]
            for operation in (schema["paths"][path][method] for path, method in writers):
                operation.pop("security", None)
                del operation["responses"]["401"]
                operation["description"] += (
                    " No CITEQA_ADMIN_TOKEN is set on this server: only clients on this machine may call it (403)."
                )
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _methods(request: Request) -> set[str]:
    """Every method some route serves at the request's path."""
    return {
        method
        for route in request.app.routes
        if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE
        for method in route.methods or ()
    }


def _handlers(app: FastAPI) -> None:
    """Translate errors to JSON responses with a `detail`, at this one edge."""

    @app.exception_handler(CiteqaError)
    async def citeqa_error(request: Request, exc: CiteqaError) -> JSONResponse:
        detail = NO_INDEX if isinstance(exc, IndexMissing) else str(exc)
        return JSONResponse({"detail": detail}, exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes the input back, which fails on non-UTF-8 bytes; loc and msg say enough.
        errors = []
        for error in exc.errors():
            msg = str(error.get("msg", "invalid"))
            if error.get("type") == "json_invalid" and "error" in (error.get("ctx") or {}):
                msg = f"{msg}: {error['ctx']['error']}"
            errors.append({"loc": list(error.get("loc", ())), "msg": msg, "type": str(error.get("type", ""))})
        return JSONResponse({"detail": errors}, 422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        detail: Any = exc.detail
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            detail = "request body is not valid UTF-8 JSON"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the first route's methods; a path served by two routes has both.
            headers["Allow"] = ", ".join(sorted(_methods(request)))
        return JSONResponse({"detail": detail}, exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Still a bug, and uvicorn logs its traceback; the caller gets JSON and no trace of the internals.
        return JSONResponse({"detail": "internal error; the server log has the details"}, 500)


_BRIEFING_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The briefing: Markdown with `[^n]` footnotes, a Word file with footnotes, or JSON.",
        "model": Briefing,
        "content": {
            MEDIA_TYPES["md"].split(";")[0]: {"schema": {"type": "string"}},
            MEDIA_TYPES["docx"]: {"schema": {"type": "string", "format": "binary"}},
        },
        "headers": {
            **_STAMPED["headers"],
            "Content-Disposition": {
                "description": "`attachment` with a file name made from the title (Markdown and Word).",
                "schema": {"type": "string"},
            },
        },
    },
    400: _ERRORS[400],
    413: {"description": "The body is larger than the briefing limit (`CITEQA_MAX_BRIEFING_BODY_BYTES`)."},
    422: {
        "description": (
            "The request is malformed or outside the limits, or an item's answer no longer matches the index "
            "(unknown document, offsets out of range, a quote or statement that differs from the text); "
            "`detail` names the item."
        )
    },
    503: _ERRORS[503],
}
_BRIEFING_EXAMPLES = {
    "questions": {
        "summary": "Questions, answered now",
        "value": {
            "title": "Wakefield children's services",
            "format": "md",
            "items": [
                {"question": "When did the focused visit take place?"},
                {"question": "What is the capital of France?"},
            ],
        },
    },
}


def _briefing_route(app: FastAPI) -> None:
    """Register POST /briefing, its request schema stating this server's limits."""
    limits: Settings = app.state.settings
    briefing_body = briefing_request_model(
        limits.max_briefing_items, limits.max_briefing_title_chars, limits.max_question_chars
    )

    @app.post("/briefing", tags=["briefings"], response_class=Response, responses=_BRIEFING_RESPONSES)
    def briefing_route(
        body: Annotated[briefing_body, Body(openapi_examples=_BRIEFING_EXAMPLES)],  # type: ignore[valid-type]
        settings: SettingsDep,
        live: LiveDep,
        embedder: EmbedderDep,
    ) -> Response:
        """A briefing of cited answers: items without an answer are answered now, every quote is re-checked."""
        request: BriefingRequest = body
        snapshot = live.get()
        made = assemble(snapshot, embedder, settings, request.title, request.items)
        headers = {GENERATION_HEADER: snapshot.generation.name}
        if request.format != "json":
            headers["Content-Disposition"] = f'attachment; filename="{filename(made.title, request.format)}"'
        return Response(export(made, request.format), media_type=MEDIA_TYPES[request.format], headers=headers)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API with the UI mounted at /ui; the embedder and index holder are created once, in the lifespan."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.embedder = await anyio.to_thread.run_sync(get_embedder, settings.model_cache)
        if settings.read_budget:
            # The reader is loaded once here; `ask` then finds it in get_reader's cache.
            await anyio.to_thread.run_sync(get_reader, settings.reader_dir)
        app.state.live = Live(settings)
        # Open the index now so the first request does not pay for it; a server with no index still starts.
        with suppress(IndexMissing, IndexDamaged):
            await anyio.to_thread.run_sync(app.state.live.get)
        yield

    # Swagger UI and ReDoc from files in the installed fastapi-offline package, not a CDN: /docs and /redoc
    # must work on machines with no internet.
    app = FastAPIOffline(
        title="citeqa",
        version="0.1.0",
        summary="Answers in plain English, every statement backed by a verbatim, checkable quote.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_middleware(
        BodyLimit,
        limit=settings.max_body_bytes,
        routes={
            "/briefing": max(settings.max_body_bytes, settings.max_briefing_body_bytes),
            "/documents": max(settings.max_body_bytes, settings.max_upload_bytes),
        },
    )
    app.add_middleware(LocalUploads)
    app.add_middleware(DocsFromHere)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    _handlers(app)
    _routes(app)
    document_routes(app, settings)
    question_routes(app)
    _briefing_route(app)
    _state_the_limits(app, settings)

    import gradio as gr

    from app.web.ui.briefing import CSS as BRIEF_CSS
    from app.web.ui.chat import CSS, HEAD, build_ui

    # The documents panel's files go through Gradio's upload route first: held to the per-file limit.
    return gr.mount_gradio_app(
        app,
        build_ui(settings),
        path=UI_PATH,
        footer_links=[],
        css=CSS + BRIEF_CSS,
        head=HEAD,
        show_error=True,
        max_file_size=settings.max_file_bytes,
    )
