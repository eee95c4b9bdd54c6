"""The `citeqa` command: ingest, ask, brief, serve, eval."""

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from app.errors import BadInput, CiteqaError
from app.settings import get_settings


def _progress_bar() -> Callable[[str, int, int], None] | None:
    """A tqdm bar per stage when stderr is a terminal, nothing otherwise."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def update(stage: str, done: int, total: int) -> None:
        bar = bars.setdefault(stage, tqdm(total=total, desc=stage, unit="item", leave=True))
        bar.update(done - bar.n)

    return update


def cmd_ingest(args: argparse.Namespace) -> int:
    """Bring the index in line with a corpus folder."""
    from app.store.embed import get_embedder
    from ingest.build import ingest

    settings = get_settings()
    corpus = Path(args.dir or settings.corpus)
    if not corpus.is_dir():
        # Say so before spending seconds loading the model.
        raise BadInput(f"corpus folder {corpus} does not exist")
    summary = ingest(corpus, settings, get_embedder(settings.model_cache), args.rebuild, _progress_bar())
    if args.json:
        print(summary.model_dump_json())
        return 0
    print(
        f"added {summary.added}, updated {summary.updated}, removed {summary.removed}, "
        f"unchanged {summary.unchanged}; {summary.chunks_embedded} chunks embedded; index in {settings.home}"
    )
    for item in summary.skipped:
        print(f"skipped {item.path}: {item.reason}")
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    """Answer one question from the index, then exit without the interpreter teardown."""
    status = _answer(args)
    # A read-only one-shot command: nothing is left to flush once stdout is, and skipping the interpreter's
    # teardown of ONNX Runtime and Chroma saves part of the wait.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _answer(args: argparse.Namespace) -> int:
    """Print the answer to one question."""
    from app.qa.answer import ask
    from app.store.embed import get_embedder
    from app.store.index import Store

    settings = get_settings()
    snapshot = Store(settings).open()
    answer = ask(snapshot, get_embedder(settings.model_cache), args.question, settings, top_k=args.top_k)
    if args.json:
        print(answer.model_dump_json())
        return 0
    print(answer.answer)
    print()
    print("Closest material (not an answer):" if answer.abstained else "Sources:")
    for c in answer.citations:
        where = ", ".join(x for x in (c.source, c.published) if x)
        print(f"[{c.n}] {c.title} ({where})")
        print(f"    “{c.quote}”")
    return 0


def read_questions(path: Path) -> tuple[list[str], str]:
    """Questions from a file, one a line (`#` comments), or YAML: a list of questions or of {question: ...},
    or {title, questions}; with the title the file gives, if any."""
    import yaml

    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read questions file {path} ({exc.__class__.__name__})") from None
    title = ""
    if path.suffix.lower() in {".yaml", ".yml"}:
        try:
            data = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise BadInput(f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
        if isinstance(data, dict):
            title = str(data.get("title") or "")
            data = data.get("questions")
        if not isinstance(data, list):
            raise BadInput(f"{path} must hold a list of questions, or a mapping with `questions:`")
        questions = []
        for i, entry in enumerate(data):
            text = entry.get("question") if isinstance(entry, dict) else entry
            if not isinstance(text, str):
                raise BadInput(
                    f"{path}: entry {i + 1} is not a question (a string, or a mapping with `question:`)"
                )
            questions.append(text)
    else:
        questions = [
            line.strip() for line in raw.splitlines() if line.strip() and not line.lstrip().startswith("#")
        ]
    if not questions:
        raise BadInput(f"{path} holds no questions")
    return questions, title


def cmd_brief(args: argparse.Namespace) -> int:
    """Answer a file of questions and write the briefing: Markdown, Word or JSON."""
    from app.briefing.brief import assemble
    from app.briefing.export import export
    from app.schemas import BriefingFormat, BriefingItem
    from app.store.embed import get_embedder
    from app.store.index import Store

    path = Path(args.questions_file)
    questions, file_title = read_questions(path)
    out = Path(args.output) if args.output else None
    by_suffix: dict[str, BriefingFormat] = {".docx": "docx", ".json": "json"}
    fmt: BriefingFormat = args.format or by_suffix.get(out.suffix.lower() if out else "", "md")
    if fmt == "docx" and out is None and sys.stdout.isatty():
        raise BadInput("a Word file is binary; write it with -o FILE (or redirect stdout)")
    settings = get_settings()
    snapshot = Store(settings).open()
    items = [BriefingItem(question=q) for q in questions]
    title = args.title or file_title or path.stem.replace("-", " ").replace("_", " ").strip() or "Briefing"
    made = assemble(snapshot, get_embedder(settings.model_cache), settings, title, items, _progress_bar())
    content = export(made, fmt)
    if out is None:
        sys.stdout.buffer.write(content)
        sys.stdout.flush()
        return 0
    try:
        out.write_bytes(content)
    except OSError as exc:
        raise BadInput(f"cannot write {out} ({exc.__class__.__name__}: {exc.strerror})") from None
    print(
        f"wrote {out}: {len(made.sections)} answered, {len(made.not_answered)} not answered by the sources, "
        f"{len(made.notes)} notes",
        file=sys.stderr,
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the API and the UI."""
    import uvicorn

    uvicorn.run("app.web.api:create_app", factory=True, host=args.host, port=args.port, workers=args.workers)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Run the evaluation set and gate on the baseline."""
    from evals.run import main as run_evals

    return run_evals(args)


def parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    root = argparse.ArgumentParser(prog="citeqa", description="Cited answers from a document corpus.")
    sub = root.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ingest", help="index a corpus folder (incremental)")
    p.add_argument("dir", nargs="?", help="corpus folder (default: CITEQA_CORPUS or corpus/)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--rebuild", action="store_true", help="ignore the existing index and build afresh")
    p.set_defaults(func=cmd_ingest)
    p = sub.add_parser("ask", help="answer a question with citations")
    p.add_argument("question")
    p.add_argument("--json", action="store_true", help="print the /ask response body")
    p.add_argument("--top-k", type=int, default=None)
    p.set_defaults(func=cmd_ask)
    p = sub.add_parser("brief", help="answer a file of questions and write a briefing with footnotes")
    p.add_argument("questions_file", help="one question a line, or YAML (a list, or {title, questions})")
    p.add_argument("--title", default=None, help="the briefing's title (default: the file's, or its name)")
    p.add_argument(
        "--format", choices=["md", "docx", "json"], default=None, help="default: from -o's suffix, else md"
    )
    p.add_argument("-o", "--output", default=None, help="write here instead of stdout")
    p.set_defaults(func=cmd_brief)
    p = sub.add_parser("serve", help="serve the API at / and the UI at /ui")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("eval", help="run the evaluation set; exit 1 when a gate fails")
    p.add_argument("--questions", default="evals/questions.yaml")
    p.add_argument("--report", default="evals/reports")
    p.add_argument("--json", dest="json_out", default=None, help="also write the metrics JSON here")
    p.add_argument("--url", default=None, help="evaluate a running server instead of in-process")
    p.add_argument(
        "--baseline",
        default=None,
        help="default: evals/baseline.json for evals/questions.yaml, else FILE.baseline.json beside --questions",
    )
    p.add_argument("--corpus", default=None, help="corpus folder to index (default: CITEQA_CORPUS)")
    p.add_argument("--update-baseline", action="store_true", help="rewrite --baseline from this run")
    p.add_argument(
        "--squad", action="store_true", help="also run, report and gate the SQuAD benchmark (in-process)"
    )
    p.add_argument(
        "--natural",
        action="store_true",
        help="also run, report and gate the natural-question benchmark (in-process)",
    )
    p.set_defaults(func=cmd_eval)
    return root


def main(argv: list[str] | None = None) -> int:
    """Entry point; errors become one clear line on stderr and exit status 2."""
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CiteqaError as exc:
        print(f"citeqa: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
