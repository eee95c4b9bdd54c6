"""Load with a live re-ingest (`python -m bench.load`): no request fails, no answer mixes two generations.

A `citeqa serve` on a free loopback port answers /ask from an index of a copy of the corpus while many
clients ask at once. Part way through, one document of the copy is edited (a paragraph is put in front, so
every offset in it moves and one probe question gets a new answer) and `POST /ingest` publishes a new
generation. Every response names the generation it used (X-Citeqa-Generation); each cited quote must equal
`text[start:end]` of its document in exactly that generation.
"""

import argparse
import json
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.serve import CITEQA, citeqa_env, free_port, stop

ROOT = Path(__file__).resolve().parent.parent
HEADER = "X-Citeqa-Generation"
_GENERATION = re.compile(r"^gen-\d{6}$")
_MARKER = re.compile(r"\[(\d+)\]")
# The edit: a paragraph the old generation cannot contain, and a question only it answers.
PROBE_FACT = "The Brackenridge harbour master recorded {n} sailing ships at the quay in 1911."
PROBE_QUESTION = "How many sailing ships did the Brackenridge harbour master record at the quay in 1911?"
FALLBACK_QUESTIONS = ["What did the inspectors find?", "Who wrote the report?", "When did it happen?"]


@dataclass
class Server:
    """A `citeqa serve` subprocess on loopback."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    token: str

    def stop(self) -> None:
        """Ask uvicorn to shut down; kill it if it will not."""
        stop(self.proc)


def serve(
    home: Path, corpus: Path, log: Path, token: str = "", workers: int = 1, timeout: float = 180.0
) -> Server:
    """Start `citeqa serve` on a free loopback port; return once it answers /health at all (503 counts)."""
    port = free_port()
    env = citeqa_env(home, corpus)
    if token:
        env["CITEQA_ADMIN_TOKEN"] = token
    command = [str(CITEQA), "serve", "--host", "127.0.0.1", "--port", str(port)]
    if workers > 1:
        command += ["--workers", str(workers)]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}", log, token)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"citeqa serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/health", timeout=5).status_code in (200, 503):
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"citeqa serve did not answer in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def post_ingest(server: Server, timeout: float = 600.0) -> dict[str, Any]:
    """POST /ingest with the admin token; the summary, or an error naming the status."""
    reply = httpx.post(
        f"{server.url}/ingest", headers={"Authorization": f"Bearer {server.token}"}, timeout=timeout
    )
    if reply.status_code != 200:
        raise RuntimeError(f"POST /ingest answered {reply.status_code}: {reply.text[:500]}")
    return reply.json()  # type: ignore[no-any-return]


def questions_for(corpus: Path) -> list[str]:
    """The eval set's questions when present, else the corpus manifest's examples, else a few generic ones."""
    found: list[str] = []
    evals = ROOT / "evals" / "questions.yaml"
    try:
        items = yaml.safe_load(evals.read_text(encoding="utf-8")) or []
        found = [str(i["question"]) for i in items if isinstance(i, dict) and i.get("question")]
    except (OSError, yaml.YAMLError):
        pass
    if not found:
        try:
            manifest = yaml.safe_load((corpus / "manifest.yaml").read_text(encoding="utf-8")) or {}
            found = [str(q) for q in manifest.get("examples") or []]
        except (OSError, yaml.YAMLError, AttributeError):
            pass
    return found or FALLBACK_QUESTIONS


def edit_target(corpus: Path) -> Path:
    """The largest plain-text or markdown document: the one whose moved offsets touch the most answers."""
    candidates = [p for p in corpus.rglob("*") if p.suffix.lower() in {".txt", ".md"} and p.is_file()]
    if not candidates:
        raise RuntimeError(f"{corpus} has no .txt or .md document to edit")
    return max(candidates, key=lambda p: (p.stat().st_size, p.name))


def edit(corpus: Path, n: int) -> tuple[Path, str]:
    """Put a new first paragraph in front of a document: every offset in it moves by the paragraph's length."""
    target = edit_target(corpus)
    fact = PROBE_FACT.format(n=n)
    target.write_text(f"{fact}\n\n{target.read_text(encoding='utf-8')}", encoding="utf-8")
    return target, fact


class Texts:
    """Document texts per generation, each fetched once over HTTP (or read from the kept generation folder)."""

    def __init__(self, url: str, home: Path) -> None:
        self.url, self.home = url, home
        self.by_generation: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def fetch(self, client: httpx.Client) -> str:
        """Fetch every document of the generation the server serves now; return that generation's name."""
        listing = client.get(f"{self.url}/documents")
        listing.raise_for_status()
        generation = listing.headers[HEADER]
        texts: dict[str, str] = {}
        for info in listing.json():
            reply = client.get(f"{self.url}/documents/{info['doc_id']}")
            reply.raise_for_status()
            if reply.headers[HEADER] != generation:
                return self.fetch(client)  # published in between: start again on the new one
            texts[info["doc_id"]] = reply.json()["text"]
        with self._lock:
            self.by_generation.setdefault(generation, texts)
        return generation

    def get(self, generation: str) -> dict[str, str]:
        """The texts of a generation; one never fetched over HTTP is read from its folder, which prune keeps."""
        with self._lock:
            if generation not in self.by_generation:
                raw = json.loads((self.home / generation / "docs.json").read_text(encoding="utf-8"))
                self.by_generation[generation] = {d["doc_id"]: d["text"] for d in raw}
            return self.by_generation[generation]


@dataclass
class Reply:
    """One /ask as the client saw it."""

    question: str
    status: int
    ms: float
    started: float
    generation: str = ""
    body: dict[str, Any] = field(default_factory=dict)
    error: str = ""


@dataclass
class Result:
    """What a load run saw."""

    requests: int
    errors: int
    mixed: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    rps: float
    generations: dict[str, int]
    ingest: dict[str, Any]
    ingest_seconds: float
    during_ingest: int
    probe: dict[str, dict[str, int]]
    refutable: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        """No failed request, no mixed answer, both generations served and the edit visible in the new one."""
        return not self.problems

    def summary(self) -> str:
        """The printed report."""
        gens = ", ".join(f"{g}: {n}" for g, n in sorted(self.generations.items()))
        probe = "; ".join(
            f"{g}: {v['cited_edit']}/{v['asked']} cited the edit" for g, v in sorted(self.probe.items())
        )
        lines = [
            f"requests          {self.requests}",
            f"errors            {self.errors}",
            f"p50 / p95 / p99   {self.p50_ms:.0f} / {self.p95_ms:.0f} / {self.p99_ms:.0f} ms (max {self.max_ms:.0f})",
            f"requests/s        {self.rps:.1f} over {self.seconds:.1f} s",
            f"generations seen  {len(self.generations)} ({gens})",
            f"mixed answers     {self.mixed} ({self.refutable} answers would fail against the other generation)",
            f"re-ingest         {self.ingest_seconds:.1f} s, updated {self.ingest.get('updated')}, "
            f"{self.during_ingest} requests in flight while it ran",
            f"probe question    {probe}",
        ]
        lines += [f"PROBLEM: {p}" for p in self.problems]
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def check_answer(reply: Reply, texts: dict[str, str]) -> str:
    """Why an answer is not wholly from its generation, or "" when every quote is that generation's text."""
    body = reply.body
    numbers = [c["n"] for c in body.get("citations", [])]
    if {int(n) for n in _MARKER.findall(body.get("answer", ""))} != set(numbers):
        return f"markers do not match citations {numbers}"
    for c in body["citations"]:
        text = texts.get(c["doc_id"])
        if text is None:
            return f"{c['doc_id']} is not in {reply.generation}"
        if text[c["start"] : c["end"]] != c["quote"]:
            return f"[{c['n']}] is not {c['doc_id']}[{c['start']}:{c['end']}] of {reply.generation}"
    return ""


def run(
    corpus: Path,
    work: Path,
    requests: int = 2000,
    concurrency: int = 32,
    reingest_at: float = 0.3,
    seconds: float = 900.0,
    workers: int = 1,
    probe_every: int = 10,
    log: Any = None,
) -> Result:
    """Copy the corpus, serve it, load it with one re-ingest part way, and check every answer."""
    say = log or (lambda _msg: None)
    copy = work / "corpus"
    shutil.copytree(corpus, copy)
    for path in copy.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    home = work / "home"
    token = secrets.token_urlsafe(24)
    questions = questions_for(copy)
    say(f"serving a copy of {corpus} ({len(questions)} questions) ...")
    server = serve(home, copy, work / "server.log", token=token, workers=workers)
    try:
        t0 = time.perf_counter()
        post_ingest(server)
        say(f"first ingest in {time.perf_counter() - t0:.1f} s")
        texts = Texts(server.url, home)
        with httpx.Client(timeout=60) as client:
            first = texts.fetch(client)
        return _load(
            server,
            texts,
            copy,
            questions,
            first,
            requests,
            concurrency,
            reingest_at,
            seconds,
            probe_every,
            say,
        )
    finally:
        server.stop()


def _load(
    server: Server,
    texts: Texts,
    corpus: Path,
    questions: list[str],
    first: str,
    requests: int,
    concurrency: int,
    reingest_at: float,
    seconds: float,
    probe_every: int,
    say: Any,
) -> Result:
    replies: list[Reply] = []
    lock = threading.Lock()
    issued = 0
    started = time.perf_counter()
    deadline = started + seconds
    ingest_state: dict[str, Any] = {}
    probe_n = 1000 + secrets.randbelow(9000)

    def next_index() -> int | None:
        nonlocal issued
        with lock:
            if issued >= requests or time.perf_counter() > deadline:
                return None
            issued += 1
            return issued - 1

    def client_loop() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            while (i := next_index()) is not None:
                question = PROBE_QUESTION if i % probe_every == 0 else questions[i % len(questions)]
                t = time.perf_counter()
                reply = Reply(question, 0, 0.0, t - started)
                try:
                    response = client.post("/ask", json={"question": question})
                    reply.status = response.status_code
                    reply.generation = response.headers.get(HEADER, "")
                    if response.status_code == 200:
                        reply.body = response.json()
                    else:
                        reply.error = response.text[:300]
                except httpx.HTTPError as exc:
                    reply.error = f"{type(exc).__name__}: {exc}"
                reply.ms = (time.perf_counter() - t) * 1000
                with lock:
                    replies.append(reply)

    def reingest() -> None:
        # Wait for the load to be well under way, then change the corpus and publish a new generation.
        done = 0
        while time.perf_counter() < deadline:
            with lock:
                done = len(replies)
            if done >= requests * reingest_at:
                break
            time.sleep(0.02)
        target, fact = edit(corpus, probe_n)
        ingest_state.update(target=target.name, fact=fact, sent=time.perf_counter() - started)
        say(f"edited {target.name}; POST /ingest after {done} requests ...")
        try:
            ingest_state["summary"] = post_ingest(server)
            with httpx.Client(timeout=60) as client:
                ingest_state["generation"] = texts.fetch(client)
        except (httpx.HTTPError, RuntimeError, KeyError) as exc:
            ingest_state["error"] = f"{type(exc).__name__}: {exc}"
        ingest_state["done"] = time.perf_counter() - started
        say(f"re-ingest finished in {ingest_state['done'] - ingest_state['sent']:.1f} s")

    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    admin = threading.Thread(target=reingest)
    for thread in [*threads, admin]:
        thread.start()
    for thread in [*threads, admin]:
        thread.join()
    elapsed = time.perf_counter() - started
    return _verify(replies, texts, first, ingest_state, requests, elapsed)


def _verify(
    replies: list[Reply],
    texts: Texts,
    first: str,
    ingest_state: dict[str, Any],
    requests: int,
    elapsed: float,
) -> Result:
    problems: list[str] = []
    errors = [r for r in replies if r.status != 200 or not _GENERATION.match(r.generation)]
    failed = {id(r) for r in errors}
    mixed: list[tuple[Reply, str]] = []
    probe: dict[str, dict[str, int]] = {}
    fact = ingest_state.get("fact", "\0")
    for reply in replies:
        if id(reply) in failed:
            continue
        why = check_answer(reply, texts.get(reply.generation))
        if why:
            mixed.append((reply, why))
        if reply.question == PROBE_QUESTION:
            seen = probe.setdefault(reply.generation, {"asked": 0, "cited_edit": 0})
            seen["asked"] += 1
            seen["cited_edit"] += any(fact in c["quote"] for c in reply.body["citations"])
    generations = Counter(r.generation for r in replies if id(r) not in failed)
    # The check has teeth: answers that the other generation's text would refute (the edit moved offsets).
    refutable = 0
    for reply in replies:
        others = [g for g in generations if g != reply.generation]
        if id(reply) not in failed and others and check_answer(reply, texts.get(others[0])):
            refutable += 1
    latencies = [r.ms for r in replies]
    if len(replies) < requests:
        problems.append(f"only {len(replies)} of {requests} requests ran before the time limit")
    if errors:
        sample = errors[0]
        problems.append(f"{len(errors)} failed requests, e.g. {sample.status} {sample.error[:200]}")
    if mixed:
        problems.append(f"{len(mixed)} answers not wholly from one generation, e.g. {mixed[0][1]}")
    if "error" in ingest_state:
        problems.append(f"re-ingest failed: {ingest_state['error']}")
    new = ingest_state.get("generation", "")
    if len(generations) != 2 or first not in generations or new not in generations:
        problems.append(f"expected answers from {first} and the new generation, saw {dict(generations)}")
    if probe.get(first, {}).get("cited_edit"):
        problems.append(f"{first} cited text that was only added later")
    if new and not probe.get(new, {}).get("cited_edit"):
        problems.append(f"no answer from {new} cited the edit: the change did not show")
    sent, done = ingest_state.get("sent", 0.0), ingest_state.get("done", 0.0)
    return Result(
        requests=len(replies),
        errors=len(errors),
        mixed=len(mixed),
        seconds=elapsed,
        p50_ms=_percentile(latencies, 50),
        p95_ms=_percentile(latencies, 95),
        p99_ms=_percentile(latencies, 99),
        max_ms=max(latencies, default=float("nan")),
        rps=len(replies) / elapsed if elapsed else 0.0,
        generations=dict(generations),
        ingest=ingest_state.get("summary", {}),
        ingest_seconds=done - sent,
        during_ingest=sum(1 for r in replies if r.started < done and r.started + r.ms / 1000 > sent),
        probe=probe,
        refutable=refutable,
        problems=problems,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the load and print the summary; exit 1 on any failed request or mixed answer."""
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--reingest-at", type=float, default=0.3, help="share of requests done before it")
    parser.add_argument("--seconds", type=float, default=900.0, help="stop issuing requests after this")
    parser.add_argument("--workers", type=int, default=1, help="`citeqa serve --workers`")
    parser.add_argument("--corpus", type=Path, default=ROOT / "corpus")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (index, server log)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="citeqa-load-"))
    try:
        result = run(
            args.corpus,
            work,
            requests=args.requests,
            concurrency=args.concurrency,
            reingest_at=args.reingest_at,
            seconds=args.seconds,
            workers=args.workers,
            log=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"load: {args.requests} x POST /ask at concurrency {args.concurrency}, "
        f"{args.workers} worker(s), one re-ingest at {args.reingest_at:.0%}"
    )
    print(result.summary())
    if args.json:
        args.json.write_text(json.dumps(result.__dict__, indent=2, default=str))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
