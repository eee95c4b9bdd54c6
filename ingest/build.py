"""Incremental ingest: scan the corpus, embed only new text, write a new generation, publish it."""

import hashlib
import json
import math
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from app.errors import BadInput, IndexDamaged, IndexMissing
from app.schemas import IngestSummary, Skipped
from app.settings import Settings
from app.store.embed import Embedder
from app.store.index import FORMAT, Document, Snapshot, Store, chroma_client, collection_name
from app.store.split import terms
from ingest.chunk import bounded_sentences, chunk
from ingest.clean import clean
from ingest.load import SUPPORTED, load

MANIFEST = "manifest.yaml"
# Bump when loading, cleaning or chunking changes, so every document is processed again.
# 2: the sentence splitter keeps dotted initials and "Capt." inside a sentence.
# 3: a paragraph of short unpunctuated lines (an address, a sign-off) is one unit (app/store/split.py).
PIPELINE_VERSION = "3"
META_FIELDS = ("title", "publisher", "published", "url", "kind")
# Neighbours Chroma's HNSW explores per query (default 100): at 100 two processes opening one index could
# return different dense tails, so answers changed between runs; at 400 they agree, in about the same time.
HNSW_EF_SEARCH = 400

Progress = Callable[[str, int, int], None]


@dataclass
class Source:
    """A corpus file that passed the scan."""

    doc_id: str
    rel: str
    path: Path
    meta: dict[str, str]


def doc_id_for(rel: str) -> str:
    """A stable, URL-safe id from the path inside the corpus."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", rel.lower().replace("/", "--")).strip("-.")
    return slug or "document"


def read_manifest(root: Path, skipped: list[Skipped] | None = None) -> dict[str, dict[str, str]]:
    """Per-file metadata from the `documents` map of a folder's manifest.yaml, keyed by path inside the
    folder; a broken manifest is reported."""
    try:
        data = _manifest(root)
        documents = data.get("documents") or {}
        if not isinstance(documents, dict):
            raise ValueError("`documents` is not a mapping of file name to fields")
        return {
            str(name): {k: "" if fields.get(k) is None else str(fields.get(k)) for k in META_FIELDS}
            for name, fields in documents.items()
            if isinstance(fields, dict)
        }
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        if skipped is not None:
            skipped.append(Skipped(path=MANIFEST, reason=f"manifest ignored: {exc}".splitlines()[0][:300]))
        return {}


def read_examples(root: Path) -> list[str]:
    """The starter questions listed under `examples` in corpus/manifest.yaml, if any."""
    try:
        examples = _manifest(root).get("examples") or []
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):
        return []
    return (
        [str(q) for q in examples if isinstance(q, str | int | float)] if isinstance(examples, list) else []
    )


def _manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError("the manifest is not a mapping")
    return data


def scan(root: Path, settings: Settings, skipped: list[Skipped]) -> list[Source]:
    """Every supported file under root; everything else is listed in `skipped` with a reason. A folder's
    manifest.yaml describes the files below it; the root's wins where both name one."""
    root = root.resolve()
    manifest: dict[str, dict[str, str]] = {}
    sources: list[Source] = []
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(folder).relative_to(root).as_posix()
        if MANIFEST in files and here != ".":
            found: list[Skipped] = []
            manifest.update(
                {f"{here}/{name}": meta for name, meta in read_manifest(Path(folder), found).items()}
            )
            skipped.extend(Skipped(path=f"{here}/{s.path}", reason=s.reason) for s in found)
        for name in sorted(files):
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if name.startswith(".") or name == MANIFEST:
                continue
            reason = _unusable(root, path, settings)
            if reason:
                skipped.append(Skipped(path=rel, reason=reason))
                continue
            doc_id = base = doc_id_for(rel)
            n = 2
            while doc_id in seen:
                doc_id, n = f"{base}-{n}", n + 1
            seen.add(doc_id)
            sources.append(Source(doc_id, rel, path, {}))
    manifest.update(read_manifest(root, skipped))
    for source in sources:
        source.meta = manifest.get(source.rel, {})
    return sources


def _unusable(root: Path, path: Path, settings: Settings) -> str:
    if path.is_symlink():
        target = path.resolve()
        if not target.is_relative_to(root):
            return "symlink leads outside the corpus (not followed)"
    if path.suffix.lower() not in SUPPORTED:
        return f"unsupported file type {path.suffix or '(none)'}"
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"cannot read: {exc.strerror}"
    if not path.is_file():
        return "not a regular file"
    if size == 0:
        return "empty file"
    if size > settings.max_file_bytes:
        return f"larger than the {settings.max_file_bytes:,}-byte limit"
    return ""


def _hash(data: bytes, meta: dict[str, str]) -> str:
    digest = hashlib.sha256(data)
    digest.update(json.dumps([meta, PIPELINE_VERSION], sort_keys=True).encode())
    return digest.hexdigest()


def _title(meta: dict[str, str], text: str, rel: str) -> str:
    if meta.get("title"):
        return meta["title"]
    first = text.strip().split("\n", 1)[0].strip()
    return first[:200] if first else Path(rel).stem


def build_document(source: Source, data: bytes, content_hash: str) -> Document:
    """Load, clean, split and chunk one file."""
    text, removed = clean(load(source.path, data))
    sentences = bounded_sentences(text)
    if not sentences:
        raise BadInput("no text after cleaning")
    chunks = []
    occurrences: Counter[str] = Counter()
    for start, end, first, count in chunk(sentences):
        digest = hashlib.sha256(f"{source.doc_id}\x1f{text[start:end]}".encode()).hexdigest()[:24]
        occurrences[digest] += 1
        chunk_id = digest if occurrences[digest] == 1 else f"{digest}-{occurrences[digest]}"
        chunks.append((chunk_id, start, end, first, count))
    return Document(
        doc_id=source.doc_id,
        path=source.rel,
        hash=content_hash,
        title=_title(source.meta, text, source.rel),
        publisher=source.meta.get("publisher", ""),
        published=source.meta.get("published", ""),
        url=source.meta.get("url", ""),
        kind=source.meta.get("kind", ""),
        text=text,
        removed_count=len(removed),
        removed_sample=[r[:200] for r in removed[:5]],
        sentences=sentences,
        chunks=chunks,
        sentence_terms=[" ".join(terms(text[s:e])) for s, e in sentences],
    )


def _previous(store: Store, rebuild: bool) -> Snapshot | None:
    if rebuild:
        return None
    try:
        return store.open()
    except IndexMissing:
        return None
    except IndexDamaged as exc:
        raise IndexDamaged(f"{exc}") from exc


def ingest(
    corpus: Path,
    settings: Settings,
    embedder: Embedder,
    rebuild: bool = False,
    progress: Progress | None = None,
) -> IngestSummary:
    """Bring the index in line with the corpus folder; the live index changes only at the final swap."""
    if not corpus.is_dir():
        raise BadInput(f"corpus folder {corpus} does not exist")
    store = Store(settings)
    with store.lock():
        return ingest_locked(store, corpus, embedder, rebuild, progress)


def ingest_locked(
    store: Store,
    corpus: Path,
    embedder: Embedder,
    rebuild: bool = False,
    progress: Progress | None = None,
) -> IngestSummary:
    """`ingest` for a caller that already holds the store's lock (one that changed the corpus under it)."""
    settings = store.settings
    previous = _previous(store, rebuild)
    summary = IngestSummary()
    sources = scan(corpus, settings, summary.skipped)
    old_docs = previous.docs if previous else {}
    documents: list[Document] = []
    for source in sources:
        try:
            data = source.path.read_bytes()
        except OSError as exc:
            summary.skipped.append(Skipped(path=source.rel, reason=f"cannot read: {exc.strerror}"))
            _keep_old(old_docs, source, documents)
            continue
        content_hash = _hash(data, source.meta)
        old = old_docs.get(source.doc_id)
        if old is not None and old.hash == content_hash:
            documents.append(old)
            summary.unchanged += 1
            continue
        try:
            documents.append(build_document(source, data, content_hash))
        except BadInput as exc:
            summary.skipped.append(Skipped(path=source.rel, reason=str(exc)))
            _keep_old(old_docs, source, documents)
            continue
        if old is None:
            summary.added += 1
        else:
            summary.updated += 1
    kept = {d.doc_id for d in documents}
    summary.removed = sum(1 for doc_id in old_docs if doc_id not in kept)
    if previous is not None and not (summary.added or summary.updated or summary.removed):
        return summary
    vectors, summary.chunks_embedded = _vectors(documents, previous, embedder, progress)
    generation = store.new_generation()
    try:
        _write(settings, generation, documents, vectors, progress)
    except BaseException:
        shutil.rmtree(generation, ignore_errors=True)
        store.drop_collection(generation)
        raise
    store.publish(generation)
    store.prune()
    return summary


def _keep_old(old_docs: dict[str, Document], source: Source, documents: list[Document]) -> None:
    """A file that became unreadable keeps its last good version rather than vanishing."""
    if source.doc_id in old_docs:
        documents.append(old_docs[source.doc_id])


def _vectors(
    documents: list[Document], previous: Snapshot | None, embedder: Embedder, progress: Progress | None
) -> tuple[np.ndarray, int]:
    """Sentence vectors for every document, reusing the previous generation's for text it already had."""
    known: dict[str, np.ndarray] = {}
    if previous is not None:
        for doc in previous.docs.values():
            row = _first_row(previous, doc.doc_id)
            for i, (s, e) in enumerate(doc.sentences):
                known.setdefault(doc.text[s:e], previous.vectors[row + i])
    # Shortest first: each batch then pads to similar lengths, which saves a quarter of the encoding time.
    wanted = sorted({doc.text[s:e] for doc in documents for s, e in doc.sentences} - known.keys(), key=len)
    fresh_chunks = sum(
        1
        for doc in documents
        for _, _, _, first, count in doc.chunks
        if any(doc.text[s:e] not in known for s, e in doc.sentences[first : first + count])
    )
    batch = 256
    for lo in range(0, len(wanted), batch):
        encoded = embedder.encode(wanted[lo : lo + batch])
        known.update(zip(wanted[lo : lo + batch], encoded, strict=True))
        if progress:
            progress("embedding", min(lo + batch, len(wanted)), len(wanted))
    rows = [known[doc.text[s:e]] for doc in documents for s, e in doc.sentences]
    matrix = np.vstack(rows).astype(np.float32) if rows else np.zeros((0, 384), dtype=np.float32)
    return matrix, fresh_chunks


def _first_row(snapshot: Snapshot, doc_id: str) -> int:
    row = 0
    for doc in snapshot.doc_list:
        if doc.doc_id == doc_id:
            return row
        row += len(doc.sentences)
    raise KeyError(doc_id)


def _write(
    settings: Settings,
    generation: Path,
    documents: list[Document],
    vectors: np.ndarray,
    progress: Progress | None,
) -> None:
    """Write every file of a generation; nothing points at it until `publish`."""
    import bm25s
    from llama_index.core.schema import BaseNode, TextNode
    from llama_index.vector_stores.chroma import ChromaVectorStore

    nodes: list[BaseNode] = []
    chunk_terms: list[list[str]] = []
    row = 0
    for doc in documents:
        for chunk_id, start, end, first, count in doc.chunks:
            # MiniLM mean-pools its tokens, so a chunk is well represented by the mean of its sentences.
            mean = vectors[row + first : row + first + count].mean(axis=0)
            nodes.append(
                TextNode(
                    id_=chunk_id,
                    text=doc.text[start:end],
                    embedding=(mean / (np.linalg.norm(mean) or 1.0)).tolist(),
                    metadata={"doc_id": doc.doc_id, "start": start, "end": end},
                    excluded_embed_metadata_keys=["doc_id", "start", "end"],
                    excluded_llm_metadata_keys=["doc_id", "start", "end"],
                )
            )
            chunk_terms.append(
                [t for line in doc.sentence_terms[first : first + count] for t in line.split()]
            )
        row += len(doc.sentences)
    if nodes:
        client = chroma_client(settings, generation)
        collection = client.create_collection(
            collection_name(generation),
            embedding_function=None,
            configuration={"hnsw": {"space": "cosine", "ef_search": HNSW_EF_SEARCH}},
        )
        store = ChromaVectorStore(chroma_collection=collection)
        batch = 2000
        for lo in range(0, len(nodes), batch):
            store.add(nodes[lo : lo + batch])
            if progress:
                progress("indexing", min(lo + batch, len(nodes)), len(nodes))
        bm25 = bm25s.BM25()
        bm25.index([t or [""] for t in chunk_terms], show_progress=False)
        bm25.save(str(generation / "bm25"), show_progress=False)
    np.save(generation / "sentences.npy", vectors)
    with open(generation / "docs.json", "w", encoding="utf-8") as handle:
        json.dump([d.to_json() for d in documents], handle, ensure_ascii=False)
    df = Counter(t for ts in chunk_terms for t in set(ts))
    n = len(chunk_terms)
    info: dict[str, Any] = {
        "format": FORMAT,
        "documents": len(documents),
        "chunks": n,
        "sentences": int(vectors.shape[0]),
        "idf": {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()},
    }
    (generation / "generation.json").write_text(json.dumps(info))
    for name in ("generation.json", "docs.json", "sentences.npy"):
        with open(generation / name, "rb") as handle:
            os.fsync(handle.fileno())
