"""The index on disk: immutable generations (Chroma + BM25 + sidecars) behind an atomic CURRENT pointer."""

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from app.errors import IndexDamaged, IndexMissing, IngestBusy
from app.settings import Settings
from app.store.split import terms

FORMAT = 1
_GENERATION = re.compile(r"^gen-(\d{6})$")
# The file naming this index among others that share a Chroma server.
INDEX_ID = "INDEX_ID"


@dataclass
class Document:
    """A document as indexed: metadata, cleaned text, sentence and chunk offsets."""

    doc_id: str
    path: str
    hash: str
    title: str
    publisher: str
    published: str
    url: str
    kind: str
    text: str
    removed_count: int
    removed_sample: list[str]
    sentences: list[tuple[int, int]]
    # (chunk_id, start, end, first sentence, sentence count)
    chunks: list[tuple[str, int, int, int, int]]
    sentence_terms: list[str] = field(default_factory=list)

    @property
    def source(self) -> str:
        """The publisher, or the file the text came from when the document names none."""
        return self.publisher or self.path

    def to_json(self) -> dict[str, Any]:
        """A plain dict for docs.json."""
        return dict(self.__dict__)


def chroma_client(settings: Settings, generation: Path) -> Any:
    """A Chroma client: the server at CITEQA_CHROMA_URL, or an embedded store inside the generation."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    chroma_settings = ChromaSettings(anonymized_telemetry=False)
    if settings.chroma_url:
        host, port, ssl = chroma_address(settings.chroma_url)
        return chromadb.HttpClient(host=host, port=port, ssl=ssl, settings=chroma_settings)
    return chromadb.PersistentClient(path=str(generation / "chroma"), settings=chroma_settings)


def chroma_address(chroma_url: str) -> tuple[str, int, bool]:
    """Host, port and whether to use TLS, from CITEQA_CHROMA_URL (Chroma's own default port is 8000)."""
    url = urlparse(chroma_url)
    ssl = url.scheme == "https"
    return url.hostname or "127.0.0.1", url.port or (443 if ssl else 8000), ssl


def _unreachable(settings: Settings, exc: Exception) -> str:
    """What to say when the vector store does not answer."""
    if settings.chroma_url:
        host, port, _ = chroma_address(settings.chroma_url)  # not the URL itself: it may carry credentials
        return (
            f"the Chroma server at {host}:{port} did not answer ({exc.__class__.__name__}: {exc}); "
            "check that it is running and that CITEQA_CHROMA_URL is right"
        )
    return f"the embedded vector store cannot be opened ({exc.__class__.__name__}: {exc})"


def collection_name(generation: Path) -> str:
    """One collection per generation, so a server can hold several generations at once.

    The index's own id is part of the name, so that two indexes on one Chroma server neither collide nor
    prune each other's collections; an index built before ids existed keeps its `citeqa-gen-NNNNNN` names.
    """
    try:
        index_id = (generation.parent / INDEX_ID).read_text().strip()
    except FileNotFoundError:
        index_id = ""
    return f"citeqa-{index_id}-{generation.name}" if index_id else f"citeqa-{generation.name}"


class Snapshot:
    """One published generation, opened read-only; requests hold a reference for their whole life."""

    def __init__(self, settings: Settings, generation: Path) -> None:
        self.generation = generation
        try:
            info = json.loads((generation / "generation.json").read_text())
            if info.get("format") != FORMAT:
                raise IndexDamaged(
                    f"index format {info.get('format')} is not {FORMAT}; run `citeqa ingest --rebuild`"
                )
            raw = json.loads((generation / "docs.json").read_text())
            self.vectors = np.load(generation / "sentences.npy", mmap_mode="r")
        except (OSError, ValueError, KeyError) as exc:
            raise IndexDamaged(
                f"the index at {generation} cannot be read ({exc.__class__.__name__}); "
                "run `citeqa ingest --rebuild`"
            ) from exc
        self.info = info
        self.docs: dict[str, Document] = {}
        starts: list[int] = []
        ends: list[int] = []
        sent_doc: list[int] = []
        chunk_doc: list[int] = []
        chunk_first: list[int] = []
        chunk_count: list[int] = []
        chunk_start: list[int] = []
        chunk_end: list[int] = []
        self.chunk_ids: list[str] = []
        self.sentence_terms: list[list[str]] = []
        for d, item in enumerate(raw):
            doc = Document(
                **{
                    **item,
                    "sentences": [tuple(s) for s in item["sentences"]],
                    "chunks": [tuple(c) for c in item["chunks"]],
                }
            )
            self.docs[doc.doc_id] = doc
            base = len(starts)
            for s, e in doc.sentences:
                starts.append(s)
                ends.append(e)
                sent_doc.append(d)
            self.sentence_terms.extend(t.split() for t in doc.sentence_terms)
            for cid, s, e, first, count in doc.chunks:
                self.chunk_ids.append(cid)
                chunk_doc.append(d)
                chunk_first.append(base + first)
                chunk_count.append(count)
                chunk_start.append(s)
                chunk_end.append(e)
        self.doc_list = list(self.docs.values())
        self.sent_start = np.array(starts, dtype=np.int64)
        self.sent_end = np.array(ends, dtype=np.int64)
        self.sent_doc = np.array(sent_doc, dtype=np.int64)
        self.chunk_doc = np.array(chunk_doc, dtype=np.int64)
        self.chunk_first = np.array(chunk_first, dtype=np.int64)
        self.chunk_count = np.array(chunk_count, dtype=np.int64)
        self.chunk_start = np.array(chunk_start, dtype=np.int64)
        self.chunk_end = np.array(chunk_end, dtype=np.int64)
        self.chunk_pos = {cid: i for i, cid in enumerate(self.chunk_ids)}
        if self.vectors.shape[0] != len(starts):
            raise IndexDamaged(f"the index at {generation} is inconsistent; run `citeqa ingest --rebuild`")
        self.idf: dict[str, float] = info.get("idf", {})
        self._settings = settings
        self._collection: Any = None
        self._bm25: Any = None
        self._title_terms: dict[int, set[str]] = {}
        self.open_searchers()

    def open_searchers(self) -> None:
        """Open the Chroma collection and the BM25 index."""
        import bm25s

        if not self.chunk_ids:
            return
        try:
            client = chroma_client(self._settings, self.generation)
        except Exception as exc:  # a server that is down or refuses us is not a damaged index
            raise IndexDamaged(_unreachable(self._settings, exc)) from exc
        try:
            self._collection = client.get_collection(
                collection_name(self.generation), embedding_function=None
            )
            self._bm25 = bm25s.BM25.load(str(self.generation / "bm25"), mmap=False)
        except Exception as exc:  # chromadb and bm25s raise many types for missing or damaged files
            raise IndexDamaged(
                f"the index at {self.generation} cannot be opened ({exc.__class__.__name__}: {exc}); "
                "run `citeqa ingest --rebuild`"
            ) from exc

    def check(self) -> None:
        """Make sure a Chroma server still holds this generation's vectors (embedded stores are local files)."""
        if not self._settings.chroma_url or not self.chunk_ids:
            return
        try:
            self._collection.count()
        except Exception as exc:  # connection errors and a dropped collection alike
            raise IndexDamaged(_unreachable(self._settings, exc)) from exc

    def title_terms(self, d: int) -> set[str]:
        """The terms of a document's title, computed once per snapshot."""
        if d not in self._title_terms:
            self._title_terms[d] = set(terms(self.doc_list[d].title))
        return self._title_terms[d]

    @property
    def n_chunks(self) -> int:
        """How many chunks are indexed."""
        return len(self.chunk_ids)

    def dense(self, query_vector: np.ndarray, n: int) -> list[tuple[int, float]]:
        """Nearest chunks by cosine similarity: (chunk position, similarity)."""
        if not self.chunk_ids:
            return []
        try:
            found = self._collection.query(
                query_embeddings=[query_vector.tolist()],
                n_results=min(n, self.n_chunks),
                include=["distances"],
            )
        except Exception as exc:  # the server went away, or lost the collection, after the snapshot opened
            if self._settings.chroma_url:
                raise IndexDamaged(_unreachable(self._settings, exc)) from exc
            raise
        return [
            (self.chunk_pos[cid], 1.0 - float(dist))
            for cid, dist in zip(found["ids"][0], found["distances"][0], strict=True)
            if cid in self.chunk_pos
        ]

    def lexical(self, query_terms: list[str], n: int) -> list[tuple[int, float]]:
        """Best chunks by BM25: (chunk position, score); only chunks sharing a term with the query."""
        known = [t for t in query_terms if t in self.idf]
        if not self.chunk_ids or not known:
            return []
        # n_threads=0 runs in this thread; any other value starts a thread pool for every query.
        ids, scores = self._bm25.retrieve([known], k=min(n, self.n_chunks), show_progress=False, n_threads=0)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if s > 0]


class Store:
    """The index folder: generations, the CURRENT pointer and the ingest lock."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home

    @property
    def pointer(self) -> Path:
        """The file naming the live generation."""
        return self.home / "CURRENT"

    def current(self) -> Path | None:
        """The live generation's folder, or None before the first ingest."""
        try:
            name = self.pointer.read_text().strip()
        except FileNotFoundError:
            return None
        if not _GENERATION.match(name):
            raise IndexDamaged(f"{self.pointer} is damaged; run `citeqa ingest --rebuild`")
        return self.home / name

    def version(self) -> tuple[int, int]:
        """A cheap fingerprint of the pointer, to notice another process publishing."""
        try:
            st = self.pointer.stat()
        except FileNotFoundError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_ino)

    def open(self) -> Snapshot:
        """Open the live generation."""
        generation = self.current()
        if generation is None:
            raise IndexMissing(f"no index in {self.home}; run `citeqa ingest` first")
        if not generation.is_dir():
            raise IndexDamaged(f"{generation} is missing; run `citeqa ingest --rebuild`")
        return Snapshot(self.settings, generation)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the ingest lock; a second ingest fails at once rather than interleaving."""
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / "ingest.lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise IngestBusy("another ingest is running on this index") from exc
            yield

    def new_generation(self) -> Path:
        """Create an empty folder for the next generation, first clearing what a killed ingest left."""
        generations = sorted(p for p in self.home.iterdir() if _GENERATION.match(p.name))
        # The caller holds the lock, so folders newer than the live one are a killed ingest's leftovers. They
        # go now, so that `prune` keeps the real previous generation rather than a half-written one; their
        # numbers are not reused, so a name never means two different sets of vectors on a Chroma server.
        try:
            live = self.current()
            leftovers = [g for g in generations if live is None or g.name > live.name]
        except IndexDamaged:
            leftovers = []  # a damaged pointer says nothing about which folders are whole; `--rebuild` fixes it
        for leftover in leftovers:
            self.drop_collection(leftover)
            shutil.rmtree(leftover, ignore_errors=True)
        if not generations and not (self.home / INDEX_ID).exists():
            tmp = self.home / f"{INDEX_ID}.tmp"
            tmp.write_text(secrets.token_hex(6) + "\n")
            os.replace(tmp, self.home / INDEX_ID)
        last = max((int(g.name[4:]) for g in generations), default=0)
        generation = self.home / f"gen-{last + 1:06d}"
        generation.mkdir()
        return generation

    def publish(self, generation: Path) -> None:
        """Make a fully written generation live in one atomic rename."""
        tmp = self.home / "CURRENT.tmp"
        with open(tmp, "w") as handle:
            handle.write(generation.name + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.pointer)
        dir_fd = os.open(self.home, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def prune(self, keep: int = 2) -> None:
        """Delete all but the newest `keep` published generations, and any a crashed ingest left behind."""
        live = self.current()
        if live is None:
            return
        generations = sorted(p for p in self.home.iterdir() if _GENERATION.match(p.name))
        older = [g for g in generations if g.name < live.name]
        # The previous generation stays: a server may still be finishing requests on it.
        doomed = older[: max(0, len(older) - (keep - 1))]
        # Folders newer than the live one belong to a crashed ingest (the lock is held, so none is running).
        doomed += [g for g in generations if g.name > live.name]
        for generation in doomed:
            self.drop_collection(generation)
            shutil.rmtree(generation, ignore_errors=True)

    def drop_collection(self, generation: Path) -> None:
        """Remove a generation's collection from a Chroma server (embedded stores go with the folder)."""
        if not self.settings.chroma_url:
            return
        # Already gone, or the server is down: the folder goes either way.
        with contextlib.suppress(Exception):
            chroma_client(self.settings, generation).delete_collection(collection_name(generation))


class Live:
    """The snapshot a server answers from; swapped whole when a new generation is published."""

    # After a failed switch, how long to keep answering from the old snapshot before trying again.
    RETRY_S = 1.0

    def __init__(self, settings: Settings) -> None:
        self.store = Store(settings)
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._version: tuple[int, int] = (0, 0)
        self._failed: tuple[tuple[int, int], float] | None = None

    def get(self) -> Snapshot:
        """The newest published snapshot; a request keeps the one it got, so it never sees a mix."""
        version = self.store.version()
        if self._snapshot is None or version != self._version:
            with self._lock:
                if self._snapshot is None or version != self._version:
                    self._switch(version)
        assert self._snapshot is not None
        return self._snapshot

    def _switch(self, version: tuple[int, int]) -> None:
        """Open the generation CURRENT names; if it cannot be opened, keep serving the one already open.

        A host whose CITEQA_HOME is a synced copy may see CURRENT before the generation it names has
        arrived in full: its answers stay on the old generation until the new one opens.
        """
        if self._snapshot is not None and self._failed is not None:
            failed_version, at = self._failed
            if failed_version == version and time.monotonic() - at < self.RETRY_S:
                return
        try:
            snapshot = self.store.open()
        except (IndexMissing, IndexDamaged):
            if self._snapshot is None:
                raise
            self._failed = (version, time.monotonic())
            return
        self._snapshot, self._version, self._failed = snapshot, version, None
