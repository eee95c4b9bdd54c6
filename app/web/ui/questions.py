"""The question-set panel of the UI: the latest answer recorded as right, or as wrong with the sentence that
does answer, in the question file `citeqa eval --questions` runs."""

import html
from typing import Any

import gradio as gr

from app.settings import Settings
from app.web.ui.client import ApiError, as_text, call_api, on_behalf


def record_body(state: dict[str, Any], tag: str, answered_by: dict[str, str] | None) -> dict[str, Any]:
    """POST /questions' body for the latest question, with the turns before it as its history."""
    body: dict[str, Any] = {
        "question": state["history"][-2]["content"],
        "answered_by": answered_by,
        "history": state["history"][:-2],
    }
    if tag.strip():
        body["tags"] = [tag.strip().lower()]
    return body


def question_panel(settings: Settings, chat: gr.State) -> gr.Dropdown:
    """The panel's components and events; returns its document picker, which the page fills when it loads."""
    with gr.Accordion("Question set", open=False, elem_id="cq-qset"):
        gr.Markdown(
            "Record the latest answer in the question set that `citeqa eval --questions` runs: as right "
            "(its first quote, or *not in the documents* for an abstention), or as wrong with the sentence "
            "that does answer."
        )
        tag = gr.Textbox(label="Tag (optional)", max_lines=1, placeholder="wakefield", elem_id="cq-qset-tag")
        keep = gr.Button("Add to question set", size="sm", elem_id="cq-qset-add")
        doc = gr.Dropdown(choices=[], label="Document that answers", elem_id="cq-qset-doc")
        sentence = gr.Textbox(
            label="The sentence that answers, as the document has it", lines=2, elem_id="cq-qset-sentence"
        )
        wrong = gr.Button("Mark wrong and record this sentence", size="sm", elem_id="cq-qset-wrong")
        status = gr.HTML("", elem_id="cq-qset-status")

    async def send(body: dict[str, Any], request: gr.Request) -> str:
        try:
            done = await call_api(
                settings, request, "POST", "/questions", json=body, headers=on_behalf(request)
            )
        except ApiError as exc:
            exc.show()
            return f'<div class="cq-warn">{html.escape(exc.message)}</div>'
        what = "not in the documents" if done["unanswerable"] else "answered by its sentence"
        return (
            f'<div class="cq-meta" id="cq-qset-done">Recorded {as_text(done["id"])} ({what}) in '
            f"{as_text(done['questions_file'])}; run <code>citeqa eval --questions "
            f"{as_text(done['questions_file'])}</code>.</div>"
        )

    async def on_keep(state: dict[str, Any], label: str, request: gr.Request) -> str:
        if not state["answers"]:
            gr.Warning("Ask a question first.")
            return gr.skip()
        answer = state["answers"][-1]
        first = None if answer["abstained"] else answer["citations"][0]
        answered_by = None if first is None else {"doc_id": first["doc_id"], "sentence": first["quote"]}
        return await send(record_body(state, label, answered_by), request)

    async def on_wrong(
        state: dict[str, Any], doc_id: str | None, words: str, label: str, request: gr.Request
    ) -> str:
        if not state["answers"]:
            gr.Warning("Ask a question first.")
            return gr.skip()
        if not doc_id or not words.strip():
            gr.Warning("Choose the document and give the sentence that answers.")
            return gr.skip()
        return await send(record_body(state, label, {"doc_id": doc_id, "sentence": words}), request)

    keep.click(on_keep, [chat, tag], [status])
    wrong.click(on_wrong, [chat, doc, sentence, tag], [status])
    return doc
