"""The briefing panel of the UI: add answers, reorder or remove them, download Markdown or Word."""

import shutil
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr

from app.briefing.export import filename
from app.settings import Settings
from app.store.split import squash
from app.web.ui.client import ApiError, as_text, call_api

DEFAULT_TITLE = "Briefing"
_EMPTY = '<div class="cq-empty">Add answers with “Add to briefing”; they are collected here.</div>'

CSS = """
.cq-add { font-size: 0.85em; font-weight: 600; text-decoration: none; display: inline-block; margin-top: 8px; }
.cq-brief-row { align-items: center; gap: 4px !important; }
.cq-brief-item { font-size: 0.92em; }
.cq-brief-item .cq-meta { margin-left: 4px; }
"""


def add_link(turn: int) -> str:
    """The "Add to briefing" action under an answer; a click presses that answer's button in the panel."""
    return f'<div><a class="cq-add" href="#cq-add-{turn}">+ Add to briefing</a></div>'


def item_html(position: int, item: dict[str, Any]) -> str:
    """One briefing entry: its position, the question (escaped), and how many quotes it brings."""
    answer = item["answer"]
    if answer["abstained"]:
        what = "not answered by the sources"
    else:
        count = len(answer["citations"])
        what = f"{count} quote{'s' if count != 1 else ''}"
    return (
        f'<div class="cq-brief-item cq-brief-entry">{position}. '
        f'<span class="cq-brief-q">{as_text(item["question"])}</span>'
        f'<span class="cq-meta">— {what}</span></div>'
    )


def status_html(items: list[dict[str, Any]], title: str, ready: bool) -> str:
    """What the downloads hold, or that they could not be made."""
    if not items:
        return ""
    questions = f"{len(items)} question{'s' if len(items) != 1 else ''}"
    if not ready:
        return f'<div class="cq-warn">{questions}; the briefing could not be made (see the message).</div>'
    # One note per distinct quoted span, as the briefing numbers them.
    notes = len(
        {
            (c["doc_id"], c["start"], c["end"])
            for item in items
            if not item["answer"]["abstained"]
            for c in item["answer"]["citations"]
        }
    )
    return (
        f'<div class="cq-meta" id="cq-brief-ready">“{as_text(title)}”: {questions}, '
        f"{notes} note{'s' if notes != 1 else ''}, ready to download.</div>"
    )


def _moved(items: list[dict[str, Any]], k: int, step: int) -> list[dict[str, Any]]:
    out = list(items)
    j = k + step
    if 0 <= k < len(out) and 0 <= j < len(out):
        out[k], out[j] = out[j], out[k]
    return out


def _remove(folder: str | None) -> None:
    """Delete a folder of briefing files, if there is one."""
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def briefing_panel(settings: Settings, chat: gr.State) -> None:
    """The panel's components and events, placed in the current Blocks layout; the briefing lives in the session."""
    brief = gr.State([])
    # The folder holding the files last offered for download. Gradio drops a session's state an hour after
    # its tab closes, and the folder goes with it, so a long-running server does not collect one per visitor.
    built = gr.State(None, delete_callback=_remove)
    with gr.Column(elem_id="cq-briefing"):
        gr.Markdown("### Briefing")
        title = gr.Textbox(
            DEFAULT_TITLE,
            label="Title",
            elem_id="cq-brief-title",
            max_length=settings.max_briefing_title_chars,
            max_lines=1,
        )

        @gr.render(inputs=[chat, brief])
        def panel(state: dict[str, Any], items: list[dict[str, Any]]) -> None:
            asked = [m["content"] for m in state["history"] if m["role"] == "user"]
            if state["answers"]:
                gr.HTML('<div class="cq-cards-label">Answers in this conversation</div>')
            for turn, (question, answer) in enumerate(zip(asked, state["answers"], strict=False), 1):
                added = any(item["answer"] == answer for item in items)
                with gr.Row(elem_classes="cq-brief-row"):
                    gr.HTML(f'<div class="cq-brief-item">{turn}. {as_text(question)}</div>')
                    add = gr.Button(
                        "Added" if added else "Add to briefing",
                        elem_id=f"cq-add-{turn}",
                        size="sm",
                        scale=0,
                        min_width=130,
                        interactive=not added,
                    )

                def on_add(current: list[dict[str, Any]], q: str = question, a: Any = answer) -> Any:
                    if any(item["answer"] == a for item in current):
                        return gr.skip()
                    return [*current, {"question": q, "answer": a}]

                add.click(on_add, [brief], [brief], concurrency_limit=None)

            gr.HTML('<div class="cq-cards-label">In the briefing</div>')
            if not items:
                gr.HTML(_EMPTY)
            for k, item in enumerate(items):
                with gr.Row(elem_classes="cq-brief-row"):
                    gr.HTML(item_html(k + 1, item))
                    up = gr.Button(
                        "↑", elem_id=f"cq-brief-up-{k}", size="sm", scale=0, min_width=36, interactive=k > 0
                    )
                    down = gr.Button(
                        "↓",
                        elem_id=f"cq-brief-down-{k}",
                        size="sm",
                        scale=0,
                        min_width=36,
                        interactive=k < len(items) - 1,
                    )
                    remove = gr.Button(
                        "Remove", elem_id=f"cq-brief-remove-{k}", size="sm", scale=0, min_width=80
                    )
                up.click(lambda cur, k=k: _moved(cur, k, -1), [brief], [brief], concurrency_limit=None)
                down.click(lambda cur, k=k: _moved(cur, k, 1), [brief], [brief], concurrency_limit=None)
                remove.click(
                    lambda cur, k=k: cur[:k] + cur[k + 1 :], [brief], [brief], concurrency_limit=None
                )

        status = gr.HTML("", elem_id="cq-brief-status")
        with gr.Row():
            markdown = gr.DownloadButton(
                "Download Markdown", elem_id="cq-brief-md", interactive=False, size="sm"
            )
            word = gr.DownloadButton("Download Word", elem_id="cq-brief-docx", interactive=False, size="sm")

    async def on_change(
        items: list[dict[str, Any]], name: str, previous: str | None, request: gr.Request
    ) -> tuple[Any, ...]:
        off = gr.update(value=None, interactive=False)
        # Gradio copied the previous files into its own cache when it sent them; ours are no longer needed.
        _remove(previous)
        if not items:
            return "", off, off, None
        title = squash(name or "") or DEFAULT_TITLE
        files: dict[str, Path] = {}
        folder = Path(tempfile.mkdtemp(prefix="citeqa-briefing-"))
        try:
            for fmt in ("md", "docx"):
                body = {"title": title, "format": fmt, "items": items}
                content = await call_api(settings, request, "POST", "/briefing", raw=True, json=body)
                files[fmt] = folder / filename(title, fmt)
                files[fmt].write_bytes(content)
        except ApiError as exc:
            exc.show()
            return status_html(items, title, False), off, off, str(folder)
        on = {fmt: gr.update(value=str(path), interactive=True) for fmt, path in files.items()}
        return status_html(items, title, True), on["md"], on["docx"], str(folder)

    # Every change rebuilds the files (a re-check of the quotes, no model call), so a download is never stale;
    # `always_last` runs only the latest while someone types the title.
    for event in (brief.change, title.change):
        event(
            on_change,
            [brief, title, built],
            [status, markdown, word, built],
            concurrency_limit=None,
            trigger_mode="always_last",
            show_progress="hidden",
        )
