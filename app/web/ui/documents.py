"""The documents panel of the UI: what is indexed, files added from the browser, documents removed."""

import html
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import gradio as gr

from app.briefing.export import nice_date
from app.settings import Settings
from app.web.ui.client import ApiError, as_text, call_api, on_behalf
from ingest.load import SUPPORTED

_LOADING = '<div class="cq-empty">Loading…</div>'


def docs_html(docs: list[dict[str, Any]]) -> str:
    """The indexed documents as a short list: title, publisher, date, kind and size in chunks."""
    items = []
    for d in docs:
        meta = [d["publisher"], nice_date(d["published"]) if d["published"] else "", d.get("kind") or ""]
        meta.append(f"{d['chunks']} chunk{'s' if d['chunks'] != 1 else ''}")
        if d.get("removed_count"):
            meta.append(
                f"{d['removed_count']} line{'s' if d['removed_count'] != 1 else ''} removed in cleaning"
            )
        items.append(
            f'<li><span class="cq-title">{html.escape(d["title"])}</span> '
            f'<span class="cq-meta">{as_text(" · ".join(m for m in meta if m))}</span></li>'
        )
    if not items:
        return '<div class="cq-empty">The index holds no documents.</div>'
    return f'<ul class="cq-docs">{"".join(items)}</ul>'


def summary_html(summary: dict[str, Any]) -> str:
    """What an upload or removal changed, and each file skipped with its reason."""
    counts = ", ".join(f"{summary[k]} {k}" for k in ("added", "updated", "removed", "unchanged"))
    skipped = "".join(f"<li>{as_text(s['path'])}: {as_text(s['reason'])}</li>" for s in summary["skipped"])
    return f'<div class="cq-meta" id="cq-docs-done">Done: {counts}.</div>' + (
        f'<ul class="cq-warn">{skipped}</ul>' if skipped else ""
    )


def documents_panel(settings: Settings) -> tuple[Callable[..., Awaitable[tuple[Any, Any]]], list[Any]]:
    """The panel's components and events, placed in the current layout; returns what the page runs when it
    loads (the listing and the remove picker filled from the API) and the components it fills."""
    with gr.Accordion("Documents", open=False, elem_id="cq-docs-panel"):
        listing = gr.HTML(_LOADING, elem_id="cq-documents")
        files = gr.File(
            label="Add documents (" + " ".join(sorted(SUPPORTED)) + ")",
            file_count="multiple",
            file_types=sorted(SUPPORTED),
            elem_id="cq-upload",
        )
        with gr.Row():
            title = gr.Textbox(label="Title (one file)", max_lines=1, elem_id="cq-upload-title")
            publisher = gr.Textbox(label="Publisher", max_lines=1, elem_id="cq-upload-publisher")
        with gr.Row():
            published = gr.Textbox(
                label="Date", placeholder="YYYY-MM-DD", max_lines=1, elem_id="cq-upload-date"
            )
            kind = gr.Textbox(label="Kind", placeholder="news article", max_lines=1, elem_id="cq-upload-kind")
        add = gr.Button("Add to the index", variant="primary", size="sm", elem_id="cq-upload-add")
        with gr.Row():
            which = gr.Dropdown(choices=[], label="Remove a document", elem_id="cq-remove-pick", scale=3)
            remove = gr.Button("Remove", size="sm", elem_id="cq-remove", scale=1)
        result = gr.HTML("", elem_id="cq-docs-result")

    async def on_add(
        paths: list[str] | None, name: str, source: str, date: str, what: str, request: gr.Request
    ) -> tuple[Any, ...]:
        if not paths:
            gr.Warning("Choose one or more files first.")
            return (gr.skip(),) * 4
        shared = {"publisher": source, "published": date, "kind": what}
        fields = {**shared, "title": name} if len(paths) == 1 else shared
        sent = [("files", (Path(p).name, Path(p).read_bytes())) for p in paths]
        given = {k: v.strip() for k, v in fields.items() if v and v.strip()}
        # Fields only when some were given: a file sent again without them keeps those it has.
        metadata = {Path(p).name: given for p in paths} if given else {}
        try:
            summary = await call_api(
                settings,
                request,
                "POST",
                "/documents",
                files=sent,
                data={"metadata": json.dumps(metadata)},
                headers=on_behalf(request),
            )
        except ApiError as exc:
            exc.show()
            return f'<div class="cq-warn">{html.escape(exc.message)}</div>', gr.skip(), gr.skip(), gr.skip()
        shown, picker = await refresh(request)
        return summary_html(summary), shown, picker, None

    async def on_remove(doc_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        if not doc_id:
            gr.Warning("Choose a document to remove.")
            return (gr.skip(),) * 3
        path = f"/documents/{quote(doc_id, safe='')}"
        try:
            summary = await call_api(settings, request, "DELETE", path, headers=on_behalf(request))
        except ApiError as exc:
            exc.show()
            return f'<div class="cq-warn">{html.escape(exc.message)}</div>', gr.skip(), gr.skip()
        shown, picker = await refresh(request)
        return summary_html(summary), shown, picker

    async def refresh(request: gr.Request) -> tuple[Any, Any]:
        try:
            docs = await call_api(settings, request, "GET", "/documents")
        except ApiError as exc:
            return f'<div class="cq-warn">{html.escape(exc.message)}</div>', gr.skip()
        choices = [(f"{d['title']} ({d['doc_id']})", d["doc_id"]) for d in docs]
        return docs_html(docs), gr.update(choices=choices, value=None)

    add.click(on_add, [files, title, publisher, published, kind], [result, listing, which, files])
    remove.click(on_remove, [which], [result, listing, which])
    return refresh, [listing, which]
