"""Hostile input on every surface, secrets kept out of logs, the UI serving only itself, and crash faults."""

import fcntl
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli import main as cli_main
from app.errors import IngestBusy
from app.settings import Settings, get_settings
from app.store.embed import Embedder
from app.store.index import Store
from bench.load import Server, check_answer, post_ingest, run, serve
from ingest.build import ingest
from tests.conftest import CORPUS, ROOT, make_settings

CITEQA = Path(sys.executable).with_name("citeqa")
TRACE_MARKERS = ("Traceback", 'File "', "site-packages")
JSON_TYPE = {"content-type": "application/json"}


def raw_get(base: str, path: str) -> tuple[int, bytes]:
    """GET a path byte for byte as given (httpx would resolve `..` segments before sending)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, seed_settings: Settings) -> Iterator[Server]:
    """A real `citeqa serve` with an admin token, over a copy of the seed index and corpus."""
    work = tmp_path_factory.mktemp("secure")
    shutil.copytree(seed_settings.home, work / "home")
    shutil.copytree(CORPUS, work / "corpus")
    server = serve(work / "home", work / "corpus", work / "server.log", token=secrets.token_urlsafe(24))
    try:
        yield server
    finally:
        server.stop()


# --- the UI serves its own files and nothing else ------------------------------------------------------------

SECRET_PATHS = [
    "/ui/file=/etc/passwd",
    "/ui/gradio_api/file=/etc/passwd",
    "/ui/gradio_api/file=/proc/self/environ",
    "/ui/file=../../corpus/manifest.yaml",
    "/ui/gradio_api/file=../../corpus/manifest.yaml",
    "/ui/gradio_api/file=corpus/manifest.yaml",
    f"/ui/gradio_api/file={ROOT}/pyproject.toml",
    "/ui/gradio_api/file=pyproject.toml",
    "/ui/gradio_api/file=..%2f..%2fetc%2fpasswd",
    "/ui/gradio_api/file=%2fetc%2fpasswd",
    "/ui/static/../../../../etc/passwd",
    "/ui/assets/..%2f..%2f..%2fpyproject.toml",
    "/ui/gradio_api/static/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/ui/../corpus/manifest.yaml",
    "/ui/gradio_api/proxy=http://127.0.0.1:1/",
]


@pytest.mark.slow
@pytest.mark.parametrize("path", SECRET_PATHS)
def test_ui_file_routes_serve_no_files(served: Server, path: str) -> None:
    status, body = raw_get(served.url, path)
    assert 400 <= status < 500, (status, body[:200])
    for leak in (b"root:", b"[project]", b"documents:", b"CITEQA_", b"PATH="):
        assert leak not in body, body[:200]


@pytest.mark.slow
def test_the_environment_file_never_leaks_the_token(served: Server) -> None:
    for path in ("/ui/gradio_api/file=/proc/self/environ", "/ui/file=/proc/self/environ"):
        status, body = raw_get(served.url, path)
        assert status >= 400 and served.token.encode() not in body


@pytest.mark.slow
def test_the_page_takes_files_from_this_machine_only(served: Server) -> None:
    page = b"<script>alert(document.cookie)</script>"
    for path in ("/ui/gradio_api/upload", "/ui/gradio_api/upload/", "/ui/upload"):
        reply = httpx.post(
            f"{served.url}{path}",
            files={"files": ("x.html", page, "text/html")},
            headers={"X-Forwarded-For": "203.0.113.9"},
            timeout=30,
        )
        assert reply.status_code == 403 and "POST /documents" in reply.json()["detail"], reply.text
    # On this machine the documents panel's file picker works; its files wait in Gradio's cache, not the corpus.
    reply = httpx.post(
        f"{served.url}/ui/gradio_api/upload", files={"files": ("x.txt", b"text", "text/plain")}
    )
    assert reply.status_code == 200, reply.text
    assert httpx.get(f"{served.url}/ui/", timeout=30).status_code == 200


# --- no stack traces for bad input, and no secrets in the log -----------------------------------------------------

BAD_BODIES: list[tuple[str, bytes]] = [
    ("/ask", b'{"question": '),
    ("/ask", b"[" * 30000 + b"]" * 30000),
    ("/ask", b'{"question": "q", "history": ' + b"[" * 20000 + b"]" * 20000 + b"}"),
    ("/ask", b'{"question": "q", "top_k": ' + b"9" * 5000 + b"}"),
    ("/ask", b'{"question": "q", "top_k": NaN}'),
    ("/ask", b'{"question": "q", "top_k": 1e999}'),
    ("/ask", b'{"question": "\\ud800 lone surrogate"}'),
    ("/ask", b'{"question": "\\udc80"}'),
    ("/ask", b'{"question": "q", "history": [{"role": "user", "content": "\\ud800"}]}'),
    ("/ask", b'{"question": "\xff\xfe"}'),
    ("/ask", b"null"),
    ("/retrieve", b'{"question": "\\ud800", "top_k": 3}'),
    ("/retrieve", b'{"question": {"$ne": null}}'),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("route", "body"), BAD_BODIES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(BAD_BODIES)]
)
def test_bad_input_gets_a_4xx_without_a_stack_trace(served: Server, route: str, body: bytes) -> None:
    reply = httpx.post(f"{served.url}{route}", content=body, headers=JSON_TYPE, timeout=60)
    assert 400 <= reply.status_code < 500, reply.text[:300]
    assert reply.json()["detail"]
    assert not any(marker in reply.text for marker in TRACE_MARKERS), reply.text[:500]


@pytest.mark.slow
def test_deep_history_and_huge_top_k_are_422(served: Server) -> None:
    turn = [{"role": "user", "content": "and?"}, {"role": "assistant", "content": "no [1]"}]
    deep = httpx.post(f"{served.url}/ask", json={"question": "hi", "history": turn * 500}, timeout=60)
    assert deep.status_code == 422 and "history" in deep.text and "1000" in deep.text, deep.text
    for top_k in (21, 10**6, 2**63, 10**40, -(2**63)):
        reply = httpx.post(f"{served.url}/ask", json={"question": "hi", "top_k": top_k}, timeout=60)
        assert reply.status_code == 422 and "top_k" in reply.text, reply.text


@pytest.mark.slow
def test_tokens_never_reach_the_log(served: Server) -> None:
    wrong = "wrong-" + secrets.token_urlsafe(16)
    right = {"Authorization": f"Bearer {served.token}"}
    assert httpx.post(f"{served.url}/ingest", headers=right, timeout=300).status_code == 200
    for headers in ({"Authorization": f"Bearer {wrong}"}, {"Authorization": f"Basic {wrong}"}, {}):
        assert httpx.post(f"{served.url}/ingest", headers=headers, timeout=60).status_code in (401, 403)
    reply = httpx.post(f"{served.url}/ingest", headers={"Authorization": f"Bearer {wrong}"}, timeout=60)
    assert wrong not in reply.text and served.token not in reply.text
    time.sleep(0.5)  # let the access log flush
    log = served.log.read_text(errors="replace")
    assert "POST /ingest" in log  # the log is there, and it is the right one
    assert served.token not in log and wrong not in log


# --- the command line ---------------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(seed_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`citeqa` in this process, answering from the seed index."""
    monkeypatch.setenv("CITEQA_HOME", str(seed_settings.home))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["ask", ""], "empty"),
        (["ask", "   \n\t"], "empty"),
        (["ask", "x" * 1_000_000], "longer than"),
        (["ask", "When did the focused visit take place?", "--top-k", "0"], "top_k"),
        (["ask", "When did the focused visit take place?", "--top-k", "1000000"], "top_k"),
    ],
)
def test_cli_bad_questions_are_one_clear_line(
    cli_env: None, capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    assert cli_main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("citeqa: ") and words in err, err


@pytest.mark.slow
def test_cli_ingest_of_a_missing_folder_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITEQA_")}
    env["CITEQA_HOME"] = str(tmp_path / "home")
    done = subprocess.run(
        [str(CITEQA), "ingest", str(tmp_path / "no-such-folder")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2
    # The model loader may draw a progress bar first; what citeqa itself says is one line.
    said = [line for line in done.stderr.splitlines() if not line.startswith(("Loading weights", "\r"))]
    said = [line.split("\r")[-1] for line in said if line.split("\r")[-1].strip()]
    assert said == [f"citeqa: corpus folder {tmp_path / 'no-such-folder'} does not exist"], done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not (tmp_path / "home").exists() or not list((tmp_path / "home").glob("gen-*"))


@pytest.mark.slow
def test_cli_non_utf8_argv_is_a_clear_error(seed_settings: Settings) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITEQA_")}
    env["CITEQA_HOME"] = str(seed_settings.home)
    done = subprocess.run([str(CITEQA), "ask", b"When was the visit \xff\xfe?"], env=env, capture_output=True)
    assert done.returncode == 2, done.stderr[-2000:]
    assert b"Traceback" not in done.stderr and b"not valid UTF-8" in done.stderr


# --- faults: the server killed mid-ingest, a stale lock file ------------------------------------------------------


def _squad_paragraphs(folder: Path, n: int) -> None:
    data = json.loads((ROOT / "evals" / "data" / "squad-dev-split.json").read_text())["data"]
    for i, text in enumerate([p["context"] for a in data for p in a["paragraphs"]][:n]):
        (folder / f"squad-{i:03d}.txt").write_text(text)


@pytest.mark.slow
def test_server_killed_during_ingest_keeps_the_old_index(tmp_path: Path, seed_settings: Settings) -> None:
    home, corpus = tmp_path / "home", tmp_path / "corpus"
    shutil.copytree(seed_settings.home, home)
    shutil.copytree(CORPUS, corpus)
    live = Store(make_settings(home)).current()
    assert live is not None
    _squad_paragraphs(corpus, 60)  # enough new text that the ingest takes seconds
    token = secrets.token_urlsafe(24)
    server = serve(home, corpus, tmp_path / "server.log", token=token)
    try:
        posted: dict[str, Any] = {}

        def send() -> None:
            try:
                posted["reply"] = post_ingest(server)
            except (httpx.HTTPError, RuntimeError) as exc:
                posted["error"] = exc

        sender = threading.Thread(target=send)
        sender.start()
        # Kill the server the moment the new generation's folder appears: it is being written, not published.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not any(g.name > live.name for g in home.glob("gen-*")):
            time.sleep(0.01)
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=30)
        sender.join(timeout=60)
    finally:
        server.stop()
    assert "error" in posted, "the ingest finished before the kill; make the corpus larger"
    assert Store(make_settings(home)).current() == live  # CURRENT never moved
    assert any(g.name > live.name for g in home.glob("gen-*"))  # the half-written generation is there

    restarted = serve(home, corpus, tmp_path / "server2.log", token=token)
    try:
        health = httpx.get(f"{restarted.url}/health", timeout=30)
        assert health.status_code == 200 and health.headers["x-citeqa-generation"] == live.name
        answer = httpx.post(
            f"{restarted.url}/ask", json={"question": "When did the focused visit take place?"}, timeout=60
        )
        assert answer.status_code == 200 and answer.headers["x-citeqa-generation"] == live.name
        summary = post_ingest(restarted)
        assert summary["added"] == 60
        health = httpx.get(f"{restarted.url}/health", timeout=30)
        new = health.headers["x-citeqa-generation"]
        assert new > live.name and health.json()["documents"] == len(generation_docs(home, new))
    finally:
        restarted.stop()
    # The killed run's folder is gone; the generation before the new one is the one that was live.
    assert sorted(g.name for g in home.glob("gen-*")) == [live.name, new]


def generation_docs(home: Path, generation: str) -> list[dict[str, Any]]:
    """The documents of a generation, read from its folder."""
    return json.loads((home / generation / "docs.json").read_text())  # type: ignore[no-any-return]


def test_a_stale_lock_file_does_not_block_ingest(tmp_path: Path, embedder: Embedder) -> None:
    settings = make_settings(tmp_path / "home")
    settings.home.mkdir()
    # A process takes the lock the way ingest does, then dies by SIGKILL without cleaning up.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            f"handle = open({str(settings.home / 'ingest.lock')!r}, 'w')\n"
            "fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "print('locked', flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        # While it lives, the lock holds: a second ingest is refused at once, not interleaved.
        with pytest.raises(IngestBusy):
            ingest(CORPUS, settings, embedder)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert (settings.home / "ingest.lock").exists()  # the stale file is still there ...
    summary = ingest(CORPUS, settings, embedder)  # ... and does not matter: flock died with its process
    assert summary.added == len([p for p in CORPUS.iterdir() if p.name != "manifest.yaml"])


def test_the_lock_is_exclusive_within_one_process_too(tmp_path: Path) -> None:
    store = Store(make_settings(tmp_path / "home"))
    with store.lock():
        with pytest.raises(IngestBusy), store.lock():
            pass
        handle = open(store.home / "ingest.lock")  # noqa: SIM115 - checked and closed below
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            handle.close()
    with store.lock():
        pass


# --- load with a live re-ingest: every answer wholly from one generation ---------------------------------------------


@pytest.mark.slow
def test_answers_under_load_never_mix_generations(tmp_path: Path) -> None:
    result = run(CORPUS, tmp_path, requests=200, concurrency=8, reingest_at=0.3, seconds=300)
    assert result.ok, result.summary()
    assert result.errors == 0 and result.mixed == 0 and len(result.generations) == 2
    assert result.refutable > 0  # the edit moved offsets: a mixed answer could not have passed the check


def test_the_mix_check_catches_a_quote_from_another_generation() -> None:
    from bench.load import Reply

    old = {"d": "Alpha beta. Gamma delta."}
    new = {"d": "New first line. Alpha beta. Gamma delta."}
    body = {
        "answer": "Gamma delta. [1]",
        "citations": [{"n": 1, "doc_id": "d", "start": 12, "end": 24, "quote": "Gamma delta."}],
    }
    reply = Reply("q", 200, 1.0, 0.0, "gen-000001", body)
    assert check_answer(reply, old) == ""
    assert re.search(r"is not d\[12:24\]", check_answer(reply, new))
