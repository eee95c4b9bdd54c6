"""The error hierarchy; translated to HTTP, CLI and UI messages only at the edges."""


class CiteqaError(Exception):
    """Base of every error citeqa raises on purpose."""

    status = 500


class BadInput(CiteqaError):
    """The caller sent something citeqa cannot use."""

    status = 422


class TooLarge(CiteqaError):
    """Something sent is over a size limit."""

    status = 413


class UnsupportedType(CiteqaError):
    """A file of a type citeqa does not read."""

    status = 415


class NotFound(CiteqaError):
    """A named thing does not exist."""

    status = 404


class IndexMissing(CiteqaError):
    """No index has been built yet."""

    status = 503


class IndexDamaged(CiteqaError):
    """The index folder exists but cannot be read."""

    status = 503


class Duplicate(CiteqaError):
    """What is to be added is there already."""

    status = 409


class IngestBusy(CiteqaError):
    """Another ingest holds the lock."""

    status = 409


class CitationInvalid(CiteqaError):
    """An answer failed its citation checks and was not sent."""

    status = 500


class ModelUnavailable(CiteqaError):
    """The embedding model cannot be loaded or exported."""

    status = 503
