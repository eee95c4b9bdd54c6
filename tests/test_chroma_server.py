"""Scale-out: vectors on a real Chroma server (CITEQA_CHROMA_URL), and several server workers on one index."""

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from app.store.embed import Embedder
from app.store.index import Live, Store, chroma_address, chroma_client, collection_name
from app.web.api import create_app
from bench.load import post_ingest, serve
from bench.serve import free_port, stop
from ingest.build import HNSW_EF_SEARCH, ingest
from tests.conftest import CORPUS, check_citations, make_settings

pytestmark = pytest.mark.slow

CHROMA = Path(sys.executable).with_name("chroma")
STARTUP_S = 60
EDITED = "kirklees-widespread-failings.txt"
FACT = "The Brackenridge ferry carried {n} passengers across the estuary in 1923."
PROBE = "How many passengers did the Brackenridge ferry carry across the estuary in 1923?"


class ChromaServer:
    """`chroma run` on a free loopback port, with its data in a temporary folder."""

    def __init__(self, path: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(CHROMA), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(self.port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"chroma run exited with {self.proc.returncode}:\n{log.read_text()[-2000:]}"
                )
            try:
                if httpx.get(f"{self.url}/api/v2/heartbeat", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"chroma run did not answer its heartbeat in {STARTUP_S}s")

    def stop(self) -> None:
        """Terminate the server and wait for it."""
        stop(self.proc, signal.SIGTERM, timeout=20)


@pytest.fixture(scope="module")
def chroma(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    """A Chroma server for this module's tests."""
    folder = tmp_path_factory.mktemp("chroma-server")
    server = ChromaServer(folder / "data", folder / "chroma.log")
    try:
        yield server
    finally:
        server.stop()


def collections(url: str) -> set[str]:
    """The names of the collections the server holds."""
    settings = Settings(chroma_url=url)
    return {c.name for c in chroma_client(settings, Path("unused")).list_collections()}


def test_chroma_address_reads_the_url() -> None:
    assert chroma_address("http://10.0.0.5:9000") == ("10.0.0.5", 9000, False)
    assert chroma_address("https://vectors.example") == ("vectors.example", 443, True)
    assert chroma_address("http://chroma") == ("chroma", 8000, False)


def test_ingest_ask_and_reingest_against_a_chroma_server(
    tmp_path: Path, corpus_copy: Path, embedder: Embedder, chroma: ChromaServer
) -> None:
    settings = make_settings(tmp_path / "home", chroma_url=chroma.url)
    first = ingest(corpus_copy, settings, embedder)
    assert first.added == 5
    store = Store(settings)
    gen1 = store.current()
    assert gen1 is not None
    # The vectors live on the server: no embedded store anywhere under CITEQA_HOME.
    assert not list(settings.home.rglob("chroma")) and not list(settings.home.rglob("*.sqlite3"))
    snapshot = store.open()
    assert collection_name(gen1) in collections(chroma.url)
    assert snapshot._collection.count() == snapshot.n_chunks
    assert snapshot._collection.configuration_json["hnsw"]["ef_search"] == HNSW_EF_SEARCH
    answer = check_citations(snapshot, embedder, settings, "When did the focused visit take place?")
    assert not answer.abstained and any(c.doc_id.startswith("ofsted") for c in answer.citations)
    check_citations(snapshot, embedder, settings, "What is the capital of France?")

    # The API over the same settings: every quote is GET /documents/{id} text[start:end].
    with TestClient(create_app(settings)) as client:
        reply = client.post("/ask", json={"question": "Why was a commissioner appointed in Kirklees?"})
        assert reply.status_code == 200 and reply.headers["x-citeqa-generation"] == gen1.name
        for c in reply.json()["citations"]:
            text = client.get(f"/documents/{c['doc_id']}").json()["text"]
            assert text[c["start"] : c["end"]] == c["quote"]

    # An edit: a new generation with its own collection; the previous one stays for requests still on it.
    target = corpus_copy / EDITED
    target.write_text(FACT.format(n=412) + "\n\n" + target.read_text())
    second = ingest(corpus_copy, settings, embedder)
    assert (second.updated, second.unchanged) == (1, 4)
    gen2 = store.current()
    assert gen2 is not None and gen2.name > gen1.name
    assert {collection_name(gen1), collection_name(gen2)} <= collections(chroma.url)
    new = store.open()
    answer = check_citations(new, embedder, settings, PROBE)
    assert any("412 passengers" in c.quote for c in answer.citations), answer
    # The old snapshot still answers from its own collection while requests hold it.
    check_citations(snapshot, embedder, settings, "When did the focused visit take place?")

    # A third generation: prune drops the oldest generation's folder and its collection.
    target.write_text(target.read_text().replace("412 passengers", "413 passengers"))
    ingest(corpus_copy, settings, embedder)
    gen3 = store.current()
    assert gen3 is not None
    names = collections(chroma.url)
    assert collection_name(gen1) not in names and not gen1.exists()
    assert {collection_name(gen2), collection_name(gen3)} <= names
    answer = check_citations(store.open(), embedder, settings, PROBE)
    assert any("413 passengers" in c.quote for c in answer.citations), answer


def test_a_killed_ingest_leaves_nothing_behind_on_the_server(
    tmp_path: Path, corpus_copy: Path, embedder: Embedder, chroma: ChromaServer
) -> None:
    settings = make_settings(tmp_path / "home", chroma_url=chroma.url)
    ingest(corpus_copy, settings, embedder)
    store = Store(settings)
    live = store.current()
    assert live is not None
    # What an ingest killed mid-write leaves: a newer folder and a half-filled collection on the server.
    crashed = settings.home / "gen-000002"
    crashed.mkdir()
    chroma_client(settings, crashed).create_collection(collection_name(crashed), embedding_function=None)
    assert store.open().generation == live  # never published, never served
    (corpus_copy / EDITED).write_text("A short replacement text about ferries.\n")
    ingest(corpus_copy, settings, embedder)
    names = collections(chroma.url)
    assert collection_name(crashed) not in names and not crashed.exists()
    assert store.current() == settings.home / "gen-000003"  # numbers are never reused
    assert {collection_name(live), collection_name(settings.home / "gen-000003")} <= names


def test_two_indexes_share_one_chroma_server(
    tmp_path: Path, corpus_copy: Path, embedder: Embedder, chroma: ChromaServer
) -> None:
    one = make_settings(tmp_path / "one", chroma_url=chroma.url)
    two = make_settings(tmp_path / "two", chroma_url=chroma.url)
    ingest(corpus_copy, one, embedder)
    small = tmp_path / "small"
    small.mkdir()
    for n in range(3):  # enough generations that prune drops one of index two's collections
        (small / "timetable.txt").write_text(f"The ferry timetable was revised {n + 2} times in 1923.\n")
        ingest(small, two, embedder)
    first, last = Store(one).open(), Store(two).open()
    assert collection_name(first.generation) != collection_name(last.generation)
    assert first.n_chunks == first._collection.count() and EDITED in first.docs
    assert EDITED not in last.docs
    check_citations(first, embedder, one, "Why was a commissioner appointed in Kirklees?")


def test_a_chroma_server_that_goes_away_is_a_clear_503(
    tmp_path: Path, corpus_copy: Path, embedder: Embedder
) -> None:
    server = ChromaServer(tmp_path / "data", tmp_path / "chroma.log")
    try:
        settings = make_settings(tmp_path / "home", chroma_url=server.url)
        ingest(corpus_copy, settings, embedder)
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            assert client.post("/ask", json={"question": "Who inspected Wakefield?"}).status_code == 200
            server.stop()
            reply = client.post("/ask", json={"question": "Who inspected Wakefield?"})
            assert reply.status_code == 503, reply.text
            assert "Chroma server" in reply.json()["detail"] and "CITEQA_CHROMA_URL" in reply.json()["detail"]
            health = client.get("/health")  # a load balancer takes this host out of rotation
            assert health.status_code == 503 and "Chroma server" in health.json()["detail"]
            assert client.get("/documents").status_code == 200  # what needs no vectors still works
    finally:
        server.stop()
    with pytest.raises(Exception, match="Chroma server at 127.0.0.1"):
        Store(settings).open()


# --- several workers on one machine: one generation on disk, opened read-only by each, following CURRENT --------


def mapped_generations(proc: psutil.Process) -> set[str]:
    """The generations whose sentence vectors a worker has memory-mapped: the ones it has opened."""
    try:
        return {Path(m.path).parent.name for m in proc.memory_maps() if m.path.endswith("sentences.npy")}
    except psutil.Error:
        return set()


def test_two_workers_share_the_index_and_follow_current(tmp_path: Path, seed_settings: Settings) -> None:
    home, corpus = tmp_path / "home", tmp_path / "corpus"
    shutil.copytree(seed_settings.home, home)
    shutil.copytree(CORPUS, corpus)
    for path in corpus.iterdir():
        path.chmod(0o644)
    server = serve(home, corpus, tmp_path / "server.log", token="workers-test-token", workers=2)
    try:
        # Both workers must be up: each loads the model and opens the live generation in its lifespan.
        deadline = time.monotonic() + 120
        workers: list[psutil.Process] = []
        while time.monotonic() < deadline and len(workers) < 2:
            time.sleep(0.5)
            children = psutil.Process(server.proc.pid).children(recursive=True)
            workers = [w for w in children if mapped_generations(w)]
        assert len(workers) == 2 and all(mapped_generations(w) == {"gen-000001"} for w in workers)
        texts: dict[str, dict[str, str]] = {}

        def asked(question: str) -> str:
            # A new connection each time, so the kernel hands requests to either worker.
            reply = httpx.post(f"{server.url}/ask", json={"question": question}, timeout=60)
            assert reply.status_code == 200, reply.text
            generation = reply.headers["x-citeqa-generation"]
            if generation not in texts:
                texts[generation] = {d["doc_id"]: d["text"] for d in generation_docs(server.url, generation)}
            for c in reply.json()["citations"]:
                assert texts[generation][c["doc_id"]][c["start"] : c["end"]] == c["quote"]
            return generation

        assert {asked("When did the focused visit take place?") for _ in range(6)} == {"gen-000001"}

        target = corpus / EDITED
        target.write_text(FACT.format(n=977) + "\n\n" + target.read_text())
        assert post_ingest(server)["updated"] == 1  # one worker ingests; the other only sees CURRENT move
        seen: set[str] = set()
        for _ in range(60):
            seen.add(asked(PROBE))
            if all("gen-000002" in mapped_generations(w) for w in workers):
                break
        assert seen == {"gen-000002"}
        assert all("gen-000002" in mapped_generations(w) for w in workers), [
            mapped_generations(w) for w in workers
        ]
    finally:
        server.stop()


def generation_docs(url: str, generation: str) -> list[dict[str, Any]]:
    """Every document of the generation the server serves, checked to be that generation."""
    docs = []
    for info in httpx.get(f"{url}/documents", timeout=30).json():
        reply = httpx.get(f"{url}/documents/{info['doc_id']}", timeout=30)
        assert reply.headers["x-citeqa-generation"] == generation
        docs.append(reply.json())
    return docs


# --- many hosts: a synced copy of CITEQA_HOME ------------------------------------------------------------------


def test_a_host_that_sees_current_before_its_generation_keeps_serving(
    tmp_path: Path, seed_settings: Settings, corpus_copy: Path, embedder: Embedder
) -> None:
    source, replica = tmp_path / "source", tmp_path / "replica"
    shutil.copytree(seed_settings.home, source)
    shutil.copytree(seed_settings.home, replica)
    live = Live(make_settings(replica))
    live.RETRY_S = 0.0
    old = live.get()
    (corpus_copy / EDITED).write_text(FACT.format(n=31) + "\n\n" + (corpus_copy / EDITED).read_text())
    ingest(corpus_copy, make_settings(source), embedder)
    new = (source / "CURRENT").read_text().strip()
    # A sync in the wrong order: the pointer arrives before the generation it names.
    shutil.copy2(source / "CURRENT", replica / "CURRENT")
    assert live.get() is old
    (replica / new).mkdir()
    shutil.copy2(source / new / "generation.json", replica / new / "generation.json")  # half of it
    assert live.get() is old
    shutil.rmtree(replica / new)
    shutil.copytree(source / new, replica / new)
    switched = live.get()
    assert switched.generation.name == new and switched is not old
    answer = check_citations(switched, embedder, make_settings(replica), PROBE)
    assert any("31 passengers" in c.quote for c in answer.citations)
    # A server that has never opened an index still says clearly what is wrong.
    (replica / "CURRENT").write_text("gen-000099\n")
    with pytest.raises(Exception, match="rebuild"):
        Live(make_settings(replica)).get()
