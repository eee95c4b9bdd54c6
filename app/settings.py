"""Configuration: the one place that reads the environment."""

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

READER_DIR = Path(__file__).resolve().parent.parent / "models" / "reader"


@lru_cache
def fitted() -> dict[str, Any]:
    """Values fitted on data (rank weights, penalties, the abstention threshold), from the reader's params.json."""
    return json.loads((READER_DIR / "params.json").read_text(encoding="utf-8"))


class Settings(BaseSettings):
    """Every tunable of citeqa, read from CITEQA_* environment variables."""

    model_config = SettingsConfigDict(env_prefix="CITEQA_", extra="ignore")

    home: Path = Field(Path(".citeqa"), description="Folder holding the index generations.")
    model_cache: Path = Field(
        default_factory=lambda: Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "citeqa",
        description="Folder for the embedding model exported to ONNX on first use.",
    )
    reader_dir: Path = Field(
        READER_DIR,
        description="Folder of the reader model (reader.onnx and tokenizer.json).",
    )
    corpus: Path = Field(Path("corpus"), description="Folder ingested by default.")
    questions_file: Path = Field(
        Path("evals/recorded.yaml"),
        description='Question file that POST /questions (the UI\'s "Add to question set") appends to.',
    )
    admin_token: str = Field("", description="Bearer token that enables POST /ingest; empty disables it.")
    chroma_url: str = Field(
        "", description="http(s)://host:port of a Chroma server; empty uses the embedded store."
    )
    api_url: str = Field("", description="Base URL of the API the UI talks to; empty means this server.")
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS; none by default."
    )
    example_questions: list[str] = Field(
        default_factory=list,
        description="Starter questions for the UI; empty uses the manifest's `examples`.",
    )

    # Limits on what a caller may send.
    max_question_chars: int = 2000
    max_top_k: int = 20
    default_top_k: int = 5
    max_history_turns: int = 20
    max_body_bytes: int = 64 * 1024
    max_file_bytes: int = 20 * 1024 * 1024
    # POST /documents: files per request, and the whole multipart body.
    max_upload_files: int = 10
    max_upload_bytes: int = 50 * 1024 * 1024
    # A briefing carries whole answers (a few KiB each with their quotes), so its route has its own body limit.
    max_briefing_items: int = 50
    max_briefing_title_chars: int = 200
    max_briefing_body_bytes: int = 1024 * 1024

    # Retrieval.
    candidates: int = 40
    rrf_k: int = 60
    max_answer_sentences: int = 3
    # Sentences the reader may score per question, the best by the hybrid rank; 0 leaves the reader out. The
    # best 8 hold an answer sentence for 0.917 of the SQuAD calibration articles' answerable questions.
    read_budget: int = 8
    # A sentence the reader did not read (all of them with the reader off) answers only when it scores this
    # much (fitted: models/reader/params.json).
    abstain_threshold: float = Field(default_factory=lambda: float(fitted()["abstain_threshold"]))
    # With the reader on, the sentences read are those scoring at least read_floor, and one answers when its
    # confidence (app/qa/read.py) reaches answer_threshold (both fitted: models/reader/params.json).
    read_floor: float = Field(default_factory=lambda: float(fitted()["read_floor"]))
    answer_threshold: float = Field(default_factory=lambda: float(fitted()["answer_threshold"]))


@lru_cache
def get_settings() -> Settings:
    """Return the process-wide settings."""
    return Settings()
