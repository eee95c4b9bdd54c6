"""Shared fixtures: the real embedding model once per session, real indexes in temporary folders."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.qa.answer import ask, passages
from app.schemas import Answer
from app.settings import Settings
from app.store.embed import Embedder, get_embedder
from app.store.index import Snapshot, Store
from ingest.build import ingest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpus"


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The real all-MiniLM-L6-v2, loaded once."""
    return get_embedder()


def check_citations(snapshot: Snapshot, embedder: Embedder, settings: Settings, question: str) -> Answer:
    """Ask, and check every quote and passage against the snapshot's text."""
    answer = ask(snapshot, embedder, question, settings)
    assert answer.citations
    for c in answer.citations:
        assert snapshot.docs[c.doc_id].text[c.start : c.end] == c.quote
    for p in passages(snapshot, embedder, question, settings, 5):
        assert snapshot.docs[p.doc_id].text[p.start : p.end] == p.text
    return answer


def citeqa_cli(home: Path, *args: str, check: bool = True, text: bool = False) -> subprocess.CompletedProcess:
    """Run a `citeqa` subcommand in a subprocess against the index at `home`, with no other CITEQA_ setting."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env={"CITEQA_HOME": str(home), "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        capture_output=True,
        text=text,
        check=check,
    )


def make_settings(home: Path, **overrides: object) -> Settings:
    """Settings pointing at a temporary index folder."""
    return Settings(home=home, corpus=CORPUS, **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def seed_settings(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Settings:
    """Settings of a session-wide index of the seed corpus (read-only: tests must not ingest into it)."""
    settings = make_settings(tmp_path_factory.mktemp("seed-index"))
    ingest(CORPUS, settings, embedder)
    return settings


@pytest.fixture(scope="session")
def seed_snapshot(seed_settings: Settings) -> Snapshot:
    """The seed index, opened."""
    return Store(seed_settings).open()


@pytest.fixture
def corpus_copy(tmp_path: Path) -> Path:
    """A writable copy of the seed corpus."""
    target = tmp_path / "corpus"
    shutil.copytree(CORPUS, target)
    for path in target.iterdir():
        path.chmod(0o644)
    return target
