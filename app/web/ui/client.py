"""The UI's client of the API: calls over HTTP, errors as toasts, text made safe to render."""

import html
from typing import Any

import gradio as gr
import httpx

from app.settings import Settings
from app.store.split import squash
from app.web.deps import is_local

TIMEOUT_S = 120.0
# HTML specials and what markdown (or KaTeX) could read as syntax: as numeric entities they are only text.
_ENTITY_CHARS = set("&<>\"'\\`*_{}[]()#+-.!|~$:")


def as_text(value: object) -> str:
    """Text made safe where markdown and HTML are rendered: escaped, markdown syntax as entities, one line."""
    return "".join(f"&#{ord(ch)};" if ch in _ENTITY_CHARS else ch for ch in squash(str(value)))


class ApiError(Exception):
    """The API could not be reached or refused the request; `message` is safe to show after escaping."""

    def __init__(self, message: str, title: str) -> None:
        super().__init__(message)
        self.message, self.title = message, title

    def show(self) -> None:
        """Show the failure as a warning toast; the message is escaped because Gradio renders it as HTML."""
        gr.Warning(html.escape(self.message), title=self.title)


def api_base(settings: Settings, request: gr.Request | None) -> str:
    """The API's base URL: CITEQA_API_URL, else the address this connection reached (not the Host header)."""
    if settings.api_url:
        return settings.api_url.rstrip("/")
    raw = getattr(request, "request", None) if request is not None else None
    server = raw.scope.get("server") if raw is not None else None
    if raw is None or not server:
        raise ApiError("The UI cannot tell where the API is; set CITEQA_API_URL.", "No API")
    host, port = server
    host = f"[{host}]" if ":" in str(host) else host
    return f"{raw.scope.get('scheme', 'http')}://{host}:{port}"


def _detail(response: httpx.Response) -> str:
    """The API's `detail` as one readable line."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):
        detail = "; ".join(
            f"{'.'.join(str(x) for x in d.get('loc', [])[1:])}: {d.get('msg', '')}".lstrip(": ")
            for d in detail
            if isinstance(d, dict)
        )
    return str(detail or f"the API answered HTTP {response.status_code}")


async def call_api(
    settings: Settings, request: gr.Request | None, method: str, path: str, raw: bool = False, **kwargs: Any
) -> Any:
    """One API call's JSON (or, with `raw`, its bytes); a failure raises ApiError with the API's own message."""
    base = api_base(settings, request)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT_S) as client:
            response = await client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise ApiError(f"Could not reach the API at {base} ({type(exc).__name__}).", "No API") from None
    if response.status_code >= 400:
        title = "No index" if response.status_code == 503 else "Could not answer"
        raise ApiError(_detail(response), title)
    if raw:
        return response.content
    try:
        return response.json()
    except ValueError:
        raise ApiError(f"The API at {base} did not answer with JSON.", "No API") from None


# Headers a proxy adds; passed on, so the API judges the browser's origin and not this server's.
_FORWARDED = ("forwarded", "x-forwarded-for", "x-real-ip")


def on_behalf(request: gr.Request | None) -> dict[str, str]:
    """Headers for a call that changes something: the browser's own origin, so that the API's rule on who
    may write (this machine only, without a token) judges the browser, and another site's page that posts
    to this UI, never this server's own loopback call."""
    if request is None:
        return {"X-Forwarded-For": "unknown"}
    passed = {name: request.headers[name] for name in _FORWARDED if name in request.headers}
    host = request.client.host if request.client else ""
    if not is_local(host, request.headers):
        passed["x-forwarded-for"] = ", ".join(
            filter(None, [passed.get("x-forwarded-for"), host or "unknown"])
        )
    return passed
