"""Documents added and removed over HTTP: checked whole before anything is written, kept in the corpus
folder (so `citeqa ingest` and a restart see them), indexed under the ingest lock, undone if indexing fails."""

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from app.errors import BadInput, NotFound, TooLarge, UnsupportedType
from app.schemas import IngestSummary
from app.settings import Settings
from app.store.embed import Embedder
from app.store.index import Store
from ingest.build import MANIFEST, META_FIELDS, Source, build_document, doc_id_for, ingest_locked
from ingest.load import SUPPORTED

# Uploads land in this sub-folder of the corpus, described by its own manifest.yaml (citeqa's to rewrite).
UPLOADS = "uploads"
MAX_NAME_CHARS = 200
MAX_META_CHARS = 300


@dataclass
class Upload:
    """One file as received: its name, its bytes and the manifest fields given for it."""

    name: str
    data: bytes
    # None: no fields sent, so a file already there keeps its own.
    meta: dict[str, str] | None = None


def checked_name(name: str) -> str:
    """The file name if it is a plain, supported name; BadInput or UnsupportedType says what is wrong."""
    if not name or len(name) > MAX_NAME_CHARS or len(name.encode()) > 255:
        raise BadInput(f"a file name must have 1 to {MAX_NAME_CHARS} characters (255 bytes)")
    if any(ch < " " or ch == "\x7f" for ch in name):
        raise BadInput(f"the file name {name!r} has control characters")
    if "/" in name or "\\" in name or name.startswith("."):
        raise BadInput(f"the file name {name!r} must be a plain name, with no folder and no leading dot")
    suffix = Path(name).suffix.lower()
    if suffix not in SUPPORTED:
        kinds = " ".join(sorted(SUPPORTED))
        raise UnsupportedType(f"{name!r}: unsupported file type {suffix or '(none)'}; citeqa reads {kinds}")
    return name


def checked_meta(name: str, meta: Any) -> dict[str, str]:
    """The manifest fields given for a file: known names, short one-line strings, empty ones dropped."""
    if not isinstance(meta, dict):
        raise BadInput(f"the metadata for {name!r} must be an object of {', '.join(META_FIELDS)}")
    unknown = set(meta) - set(META_FIELDS)
    if unknown:
        raise BadInput(f"unknown metadata field(s) for {name!r}: {', '.join(sorted(map(str, unknown)))}")
    out = {}
    for key, value in meta.items():
        if not isinstance(value, str) or len(value) > MAX_META_CHARS or any(ch < " " for ch in value):
            raise BadInput(f"{name!r}: {key} must be one line of text of at most {MAX_META_CHARS} characters")
        if value.strip():
            out[key] = value.strip()
    return out


def check(uploads: list[Upload], settings: Settings) -> None:
    """Every file readable, within the limits and named once, before any is written."""
    if not uploads:
        raise BadInput("no files were sent")
    if len(uploads) > settings.max_upload_files:
        raise BadInput(f"{len(uploads)} files sent; at most {settings.max_upload_files} per request")
    names = [checked_name(u.name) for u in uploads]
    if len(set(names)) < len(names):
        raise BadInput("the same file name is sent twice")
    for upload in uploads:
        if upload.meta is not None:
            upload.meta = checked_meta(upload.name, upload.meta)
        if not upload.data:
            raise BadInput(f"{upload.name!r} is empty")
        if len(upload.data) > settings.max_file_bytes:
            raise TooLarge(f"{upload.name!r} is larger than the {settings.max_file_bytes:,}-byte limit")
        try:
            build_document(Source("check", upload.name, Path(upload.name), {}), upload.data, "")
        except BadInput as exc:
            raise BadInput(f"{upload.name!r}: {exc}") from None


def add(corpus: Path, uploads: list[Upload], settings: Settings, embedder: Embedder) -> IngestSummary:
    """Check the files, write them (and their fields) into the corpus's uploads folder, and index."""
    check(uploads, settings)
    folder = corpus / UPLOADS
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise BadInput(f"{folder} must be a plain folder (not a link) to take uploads")
    store = Store(settings)
    with store.lock(), _journal() as changes:
        folder.mkdir(parents=True, exist_ok=True)
        manifest = _read(folder)
        there = {
            doc_id_for(f"{UPLOADS}/{p.name}"): p.name
            for p in folder.iterdir()
            if p.name != MANIFEST and not p.name.startswith(".")
        }
        for upload in uploads:
            other = there.get(doc_id_for(f"{UPLOADS}/{upload.name}"), upload.name)
            if other != upload.name:
                raise BadInput(f"{upload.name!r} would take the id of {other!r}, already uploaded: rename it")
            target = folder / upload.name
            if target.is_symlink():
                raise BadInput(f"{upload.name!r} is a link in the uploads folder; remove it by hand first")
            if not (target.is_file() and target.read_bytes() == upload.data):
                changes.write(target, upload.data)
            if upload.meta is not None:
                manifest[upload.name] = upload.meta
            manifest.setdefault(upload.name, {})
        changes.write(folder / MANIFEST, _dump(manifest))
        return ingest_locked(store, corpus, embedder)


def remove(corpus: Path, path: str, settings: Settings, embedder: Embedder) -> IngestSummary:
    """Delete a document's file (a path inside the corpus, as the index records it) and index."""
    root = corpus.resolve()
    target = root / path
    store = Store(settings)
    with store.lock(), _journal() as changes:
        if not target.parent.resolve().is_relative_to(root) or not target.is_file():
            raise NotFound(f"the file {path!r} is not in the corpus folder")
        if target.is_symlink():
            raise BadInput(f"{path!r} is a link; remove it from the corpus folder by hand")
        changes.delete(target)
        if target.parent.resolve() == (root / UPLOADS).resolve():
            manifest = _read(target.parent)
            if manifest.pop(target.name, None) is not None:
                changes.write(target.parent / MANIFEST, _dump(manifest))
        return ingest_locked(store, corpus, embedder)


def _read(folder: Path) -> dict[str, dict[str, str]]:
    """The uploads manifest's documents; BadInput if it is there but broken, rather than overwrite it."""
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BadInput(f"{path} is not valid YAML; fix or remove it ({type(exc).__name__})") from None
    documents = data.get("documents", {}) if isinstance(data, dict) else None
    if not isinstance(documents, dict):
        raise BadInput(f"{path} must map `documents` from file name to fields; fix or remove it")
    return dict(documents)


def _dump(manifest: dict[str, dict[str, str]]) -> bytes:
    return yaml.safe_dump({"documents": manifest}, allow_unicode=True).encode()


def _write(target: Path, data: bytes) -> None:
    """Write beside the target and rename, so a reader never sees half a file."""
    handle, partial = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.chmod(partial, 0o644)  # mkstemp's 0600 would hide the file from other readers of the corpus
        os.replace(partial, target)
    finally:
        Path(partial).unlink(missing_ok=True)


class _Changes:
    """Files written or deleted, each with what it held before, so that the lot can be undone."""

    def __init__(self) -> None:
        self.before: dict[Path, bytes | None] = {}

    def _remember(self, target: Path) -> None:
        if target not in self.before:
            self.before[target] = target.read_bytes() if target.is_file() else None

    def write(self, target: Path, data: bytes) -> None:
        self._remember(target)
        _write(target, data)

    def delete(self, target: Path) -> None:
        self._remember(target)
        target.unlink()

    def undo(self) -> None:
        """Put back every file, even when one of them fails; the first failure is raised after."""
        failed: OSError | None = None
        for target, data in self.before.items():
            try:
                if data is None:
                    target.unlink(missing_ok=True)
                else:
                    _write(target, data)
            except OSError as exc:
                failed = failed or exc
        if failed is not None:
            raise failed


@contextmanager
def _journal() -> Iterator[_Changes]:
    """Changes to the corpus that are undone if the block fails, so the corpus still matches the old index."""
    changes = _Changes()
    try:
        yield changes
    except BaseException:
        changes.undo()
        raise
