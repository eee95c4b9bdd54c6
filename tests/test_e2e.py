"""End to end: `citeqa serve` as a real uvicorn process on a free port, asked over real HTTP."""

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.settings import Settings
from bench.serve import CITEQA, citeqa_env, free_port, stop

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
LETTER = "ofsted-focused-visit-letter"
SEED_QUESTION = "When did the focused visit take place?"
STARTUP_S = 120
JSON_TYPE = {"content-type": "application/json"}


def serve(
    home: Path, corpus: Path, log: Path, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `citeqa serve` on a free port and wait until /health answers 200."""
    port = free_port()
    env = citeqa_env(home, corpus) | (extra_env or {})
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(CITEQA), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"citeqa serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop(proc)
    raise RuntimeError(f"citeqa serve did not become healthy in {STARTUP_S}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server(seed_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A served copy of the seed index (a copy, so the session index stays untouched by another process)."""
    home = tmp_path_factory.mktemp("e2e") / "home"
    shutil.copytree(seed_settings.home, home)
    proc, base = serve(home, seed_settings.corpus, home.parent / "server.log")
    try:
        yield base
    finally:
        stop(proc)
    assert proc.returncode is not None


def check_invariant(base: str, answer: dict[str, Any]) -> None:
    """Every marker has a citation, and every quote is exactly its document's text[start:end]."""
    markers = {int(n) for n in re.findall(r"\[(\d+)\]", answer["answer"])}
    assert markers == {c["n"] for c in answer["citations"]}
    for c in answer["citations"]:
        doc = httpx.get(f"{base}/documents/{c['doc_id']}", timeout=30).json()
        assert doc["text"][c["start"] : c["end"]] == c["quote"]


def test_health_and_documents(server: str) -> None:
    health = httpx.get(f"{server}/health", timeout=30).json()
    assert health["status"] == "ok" and health["documents"] > 0 and health["chunks"] > 0
    docs = httpx.get(f"{server}/documents", timeout=30).json()
    assert len(docs) == health["documents"]


def test_ask_over_http_keeps_the_citation_invariant(server: str) -> None:
    answer = httpx.post(f"{server}/ask", json={"question": SEED_QUESTION}, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert not body["abstained"]
    check_invariant(server, body)
    assert any(c["doc_id"].startswith(LETTER) for c in body["citations"]), body


def test_follow_up_and_abstention_over_http(server: str) -> None:
    first = httpx.post(f"{server}/ask", json={"question": SEED_QUESTION}, timeout=60)
    history = [
        {"role": "user", "content": SEED_QUESTION},
        {"role": "assistant", "content": first.json()["answer"]},
    ]
    follow = httpx.post(
        f"{server}/ask", json={"question": "Who carried it out?", "history": history}, timeout=60
    )
    assert follow.status_code == 200, follow.text
    check_invariant(server, follow.json())
    france = httpx.post(f"{server}/ask", json={"question": "What is the capital of France?"}, timeout=60)
    assert france.json()["abstained"]
    check_invariant(server, france.json())


def test_limits_hold_on_the_real_server(server: str) -> None:
    big = httpx.post(f"{server}/ask", json={"question": "x" * 1_000_000}, timeout=60)
    assert big.status_code == 413 and big.json()["detail"]
    chunked = httpx.post(
        f"{server}/ask",
        content=(b"x" * 8192 for _ in range(20)),
        headers=JSON_TYPE,
        timeout=60,
    )
    assert chunked.status_code == 413 and chunked.json()["detail"]
    garbage = httpx.post(f"{server}/ask", content=b"\xff\xfe\x00", headers=JSON_TYPE)
    assert garbage.status_code == 400 and garbage.json()["detail"]
    assert httpx.get(f"{server}/documents/..%2f..%2fetc%2fpasswd", timeout=30).status_code == 404
    assert httpx.post(f"{server}/ingest", timeout=30).status_code == 404


def test_ui_and_docs_are_served(server: str) -> None:
    root = httpx.get(f"{server}/", timeout=30)
    assert root.status_code in (302, 307) and root.headers["location"].endswith("/ui/")
    ui = httpx.get(f"{server}/ui/", timeout=30)
    assert ui.status_code == 200 and "<html" in ui.text.lower()
    assert httpx.get(f"{server}/docs", timeout=30).status_code == 200
