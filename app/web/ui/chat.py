"""The chat UI at /ui: a Gradio front end that talks to the API over HTTP, so it can front a remote server."""

import html
import re
from typing import Any
from urllib.parse import quote

import gradio as gr

from app.briefing.export import nice_date
from app.settings import Settings
from app.store.split import squash
from app.web.ui.briefing import add_link, briefing_panel
from app.web.ui.client import ApiError, as_text, call_api
from app.web.ui.documents import documents_panel
from app.web.ui.questions import question_panel

EXAMPLE_COUNT = 4
_MARKER = re.compile(r"\[(\d+)\]")
_NO_SOURCE = (
    '<div class="cq-empty">Choose a citation to open its document, with the quoted words highlighted.</div>'
)

CSS = """
#cq-chat .cq-answer { line-height: 1.6; }
#cq-chat .cq-badge { display: inline-block; font-weight: 600; font-size: 0.85em; padding: 1px 8px;
  border-radius: 999px; background: var(--color-accent-soft); margin-bottom: 6px; }
#cq-chat .cq-badge.cq-abstain { background: #fdecc8; color: #6b4500; }
.cq-marker { text-decoration: none; font-weight: 600; }
#cq-chat .cq-cards-label { margin-top: 10px; font-size: 0.85em; font-weight: 600; opacity: 0.75; }
#cq-chat .cq-card { font-size: 0.92em; border: 1px solid var(--border-color-primary);
  border-left: 3px solid var(--color-accent); border-radius: 6px; padding: 6px 10px; margin-top: 6px;
  background: var(--background-fill-secondary); }
#cq-chat .cq-closest .cq-card { border-left-color: #c9a227; opacity: 0.9; }
#cq-chat .cq-card.cq-flash { outline: 2px solid var(--color-accent); }
.cq-title { font-weight: 600; }
.cq-meta { font-size: 0.85em; opacity: 0.8; }
#cq-chat .cq-quote { margin: 4px 0 0 0; padding: 0; border: none; font-style: italic; }
.cq-src-head { margin-bottom: 8px; }
.cq-src-text { position: relative; white-space: pre-wrap; max-height: 60vh; overflow-y: auto; padding: 10px;
  border: 1px solid var(--border-color-primary); border-radius: 6px; line-height: 1.55; font-size: 0.95em; }
.cq-src-text mark { background: #ffe066; color: inherit; padding: 0 1px; }
.cq-warn { color: #8a1c1c; margin: 6px 0; }
.cq-empty { opacity: 0.7; font-style: italic; padding: 8px 0; }
.cq-docs { font-size: 0.9em; margin: 0; padding-left: 1.2em; }
.cq-docs li { margin: 2px 0; }
.cq-docs .cq-title { font-weight: 500; }
"""

# Clicking an [n] marker scrolls to its citation card and flashes it, instead of changing the page URL;
# clicking "Add to briefing" under an answer presses that answer's button in the briefing panel.
HEAD = """
<script>
document.addEventListener("click", (event) => {
  const add = event.target.closest && event.target.closest("a.cq-add");
  if (add) {
    event.preventDefault();
    // The panel may still be drawing the button of an answer that has only just arrived.
    const id = (add.getAttribute("href") || "").slice(1);
    const press = (tries) => {
      const button = document.getElementById(id);
      if (button) button.click();
      else if (tries > 0) setTimeout(() => press(tries - 1), 100);
    };
    press(50);
    return;
  }
  const marker = event.target.closest && event.target.closest("a.cq-marker");
  if (!marker) return;
  event.preventDefault();
  const card = document.getElementById((marker.getAttribute("href") || "").slice(1));
  if (!card) return;
  card.scrollIntoView({ block: "nearest", behavior: "smooth" });
  card.classList.add("cq-flash");
  setTimeout(() => card.classList.remove("cq-flash"), 1500);
});
</script>
"""

# Keep the highlighted quote in view whenever the source panel changes.
_SCROLL_JS = """
const scroll = () => {
  const box = element.querySelector(".cq-src-text");
  const mark = element.querySelector(".cq-src-text mark");
  if (box && mark) box.scrollTop = Math.max(0, mark.offsetTop - box.clientHeight / 3);
};
watch("value", scroll);
scroll();
"""


def _link(url: str) -> str:
    """A link for http(s) URLs only; anything else (javascript:, data:) stays text."""
    if not re.match(r"^https?://", url, re.I):
        return as_text(url)
    href = html.escape(url, quote=True)
    return f'<a href="{href}" target="_blank" rel="noopener noreferrer">{as_text(url)}</a>'


def _meta(source: str, published: str, url: str) -> str:
    parts = [as_text(source) if source else "", as_text(nice_date(published)) if published else ""]
    parts.append(_link(url) if url else "")
    return " · ".join(p for p in parts if p)


def card_html(citation: dict[str, Any], turn: int) -> str:
    """One citation card: number, title, source, date and the exact quote."""
    c = citation
    return (
        f'<div class="cq-card" id="cq-c{turn}-{int(c["n"])}">'
        f'<div><span class="cq-marker">[{int(c["n"])}]</span> '
        f'<span class="cq-title">{as_text(c["title"])}</span></div>'
        f'<div class="cq-meta">{_meta(c["source"], c["published"], c["url"])}</div>'
        f'<blockquote class="cq-quote">“{as_text(c["quote"])}”</blockquote></div>'
    )


def answer_html(answer: dict[str, Any], turn: int) -> str:
    """An answer with its [n] markers linked to its citation cards; an abstention is labelled as one."""
    numbers = {int(c["n"]) for c in answer["citations"]}
    parts, last = [], 0
    for m in _MARKER.finditer(answer["answer"]):
        parts.append(as_text(answer["answer"][last : m.start()]))
        n = int(m.group(1))
        parts.append(
            f' <a class="cq-marker" href="#cq-c{turn}-{n}">[{n}]</a> '
            if n in numbers
            else as_text(m.group(0))
        )
        last = m.end()
    parts.append(as_text(answer["answer"][last:]))
    body = f'<div class="cq-answer">{"".join(parts).strip()}</div>'
    cards = "".join(card_html(c, turn) for c in answer["citations"])
    if answer["abstained"]:
        badge = '<span class="cq-badge cq-abstain">Not answered by the documents</span>'
        label, kind = "Closest material — not an answer", "cq-cards cq-closest"
    else:
        badge, label, kind = "", "Sources", "cq-cards"
    section = f'<div class="cq-cards-label">{label}</div><div class="{kind}">{cards}</div>' if cards else ""
    return f"{badge}{body}{section}"


def citation_line(citation: dict[str, Any], doc: dict[str, Any]) -> str:
    """A briefing-ready line: “quote” — title, publisher, date, URL (each where the document states it)."""
    known = [
        doc.get("title", ""),
        doc.get("publisher", ""),
        nice_date(doc.get("published", "")),
        doc.get("url", ""),
    ]
    where = ", ".join(squash(str(k)) for k in known if k)
    return f"“{squash(citation['quote'])}” — {where}"


def source_html(citation: dict[str, Any], doc: dict[str, Any]) -> str:
    """The whole document as escaped text with the quoted span inside a <mark>."""
    text, start, end = doc["text"], int(citation["start"]), int(citation["end"])
    head = (
        f'<div class="cq-src-head"><div class="cq-title">{html.escape(doc["title"])}</div>'
        f'<div class="cq-meta">{_meta(doc["publisher"], doc["published"], doc["url"])}</div></div>'
    )
    if text[start:end] != citation["quote"]:
        warning = (
            '<div class="cq-warn">The index changed since this answer; the quote is no longer there.</div>'
        )
        return f'{head}{warning}<div class="cq-src-text">{html.escape(text)}</div>'
    marked = (
        f"{html.escape(text[:start])}<mark>{html.escape(text[start:end])}</mark>{html.escape(text[end:])}"
    )
    return f'{head}<div class="cq-src-text">{marked}</div>'


def example_questions(settings: Settings) -> list[str]:
    """Starter questions: `settings.example_questions` if set, else the corpus manifest's `examples`."""
    from ingest.build import read_examples

    return (settings.example_questions or read_examples(settings.corpus))[:EXAMPLE_COUNT]


def _new_state() -> dict[str, Any]:
    return {"history": [], "answers": [], "display": []}


def _choices(answer: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f"[{c['n']}] {c['title']} — {c['source']}", str(c["n"])) for c in answer["citations"]]


def build_ui(settings: Settings) -> gr.Blocks:
    """The Blocks app: chat on the left, the cited sources on the right."""
    unchanged = (gr.skip(),) * 6

    async def on_ask(question: str, state: dict[str, Any], request: gr.Request) -> tuple[Any, ...]:
        asked = (question or "").strip()
        if not asked:
            gr.Warning("Type a question first.")
            return unchanged
        history = state["history"][-settings.max_history_turns :]
        try:
            answer = await call_api(
                settings, request, "POST", "/ask", json={"question": asked, "history": history}
            )
        except ApiError as exc:
            exc.show()
            return unchanged
        turn = len(state["answers"]) + 1
        display = [
            *state["display"],
            {"role": "user", "content": as_text(asked)},
            {"role": "assistant", "content": answer_html(answer, turn) + add_link(turn)},
        ]
        new_state = {
            "history": [
                *state["history"],
                {"role": "user", "content": asked},
                {"role": "assistant", "content": answer["answer"]},
            ],
            "answers": [*state["answers"], answer],
            "display": display,
        }
        pick = gr.update(choices=_choices(answer), value=None, visible=bool(answer["citations"]))
        return display, new_state, "", pick, "", _NO_SOURCE

    async def on_pick(choice: str | None, state: dict[str, Any], request: gr.Request) -> tuple[Any, Any]:
        cited = {str(c["n"]): c for c in state["answers"][-1]["citations"]} if state["answers"] else {}
        citation = cited.get(str(choice))
        if citation is None:
            return gr.skip(), gr.skip()
        try:
            doc = await call_api(settings, request, "GET", f"/documents/{quote(citation['doc_id'], safe='')}")
        except ApiError as exc:
            exc.show()
            return gr.skip(), gr.skip()
        return citation_line(citation, doc), source_html(citation, doc)

    def on_clear() -> tuple[Any, ...]:
        return [], _new_state(), "", gr.update(choices=[], value=None, visible=False), "", _NO_SOURCE

    examples = example_questions(settings)
    # Downloads (the briefing files) are copied into Gradio's cache; files a day old are removed, hourly.
    with gr.Blocks(title="citeqa", analytics_enabled=False, delete_cache=(3600, 86400)) as ui:
        state = gr.State(_new_state())
        gr.Markdown(
            "## citeqa\nAsk about the documents: every statement in an answer quotes its source verbatim."
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                chat = gr.Chatbot(
                    label="Conversation",
                    elem_id="cq-chat",
                    height=560,
                    latex_delimiters=[],
                    feedback_options=None,
                    # Copy buttons would copy the rendering's HTML; "Copy citation" gives the briefing text.
                    buttons=[],
                    placeholder="Answers appear here, each statement followed by [n] linking to its quote.",
                )
                with gr.Row():
                    question = gr.Textbox(
                        placeholder="Ask a question, or a follow-up…",
                        show_label=False,
                        elem_id="cq-question",
                        scale=6,
                        max_lines=4,
                        autofocus=True,
                    )
                    ask_button = gr.Button("Ask", variant="primary", elem_id="cq-ask", scale=1)
                if examples:
                    gr.Examples(
                        examples=[[q] for q in examples], inputs=[question], label="Example questions"
                    )
                clear = gr.Button("New conversation", size="sm", variant="secondary", elem_id="cq-clear")
            with gr.Column(scale=2):
                gr.Markdown("### Sources")
                pick = gr.Radio(
                    choices=[],
                    label="Citations of the latest answer",
                    info="Choose one to open its document and get a citation to copy.",
                    elem_id="cq-pick",
                    visible=False,
                )
                citation = gr.Textbox(
                    label="Copy citation",
                    elem_id="cq-citation",
                    buttons=["copy"],
                    interactive=False,
                    lines=3,
                    placeholder="A briefing-ready citation appears here.",
                )
                source = gr.HTML(_NO_SOURCE, elem_id="cq-source", js_on_load=_SCROLL_JS)
                refresh_documents, listed = documents_panel(settings)
                answered_by = question_panel(settings, state)
                briefing_panel(settings, state)

        async def on_load(request: gr.Request) -> tuple[Any, ...]:
            shown, picker = await refresh_documents(request)
            return shown, picker, picker

        outputs = [chat, state, question, pick, citation, source]
        ask_button.click(on_ask, [question, state], outputs, concurrency_limit=None)
        question.submit(on_ask, [question, state], outputs, concurrency_limit=None)
        pick.input(on_pick, [pick, state], [citation, source], concurrency_limit=None)
        clear.click(on_clear, None, outputs)
        chat.clear(on_clear, None, outputs)
        ui.load(on_load, None, [*listed, answered_by])
    return ui
