"""What the API's routes share: the app state as dependencies, the bearer token, the generation stamp, and
who may change the corpus."""

import hmac
import ipaddress
from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from app.settings import Settings
from app.store.embed import Embedder
from app.store.index import Live, Snapshot

# Names the generation a response was computed from, so a caller can check quotes against that very text.
GENERATION_HEADER = "X-Citeqa-Generation"
# The answers of a route guarded by may_write, for its OpenAPI responses.
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "No bearer token was sent (a server with CITEQA_ADMIN_TOKEN set)."},
    403: {
        "description": "The bearer token is wrong; or, with no CITEQA_ADMIN_TOKEN set, the client is not on "
        "this machine (or came through a proxy)."
    },
}
# Headers a proxy adds: a request that carries one came from further away than the proxy's own address.
_FORWARDED = ("forwarded", "x-forwarded-for", "x-real-ip")


# Accessors of app state are `async`: FastAPI runs a sync dependency in the thread pool, a hop per
# dependency per request for what is only an attribute read.
async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _live(request: Request) -> Live:
    return request.app.state.live


async def _embedder(request: Request) -> Embedder:
    return request.app.state.embedder


def _snapshot(live: Annotated[Live, Depends(_live)]) -> Snapshot:
    return live.get()


SettingsDep = Annotated[Settings, Depends(_settings)]
LiveDep = Annotated[Live, Depends(_live)]
EmbedderDep = Annotated[Embedder, Depends(_embedder)]
SnapshotDep = Annotated[Snapshot, Depends(_snapshot)]
bearer = HTTPBearer(auto_error=False, description="The server's CITEQA_ADMIN_TOKEN.")


def stamp(response: Response, snapshot: Snapshot) -> Snapshot:
    """Name the snapshot's generation in the response, and hand the snapshot on."""
    response.headers[GENERATION_HEADER] = snapshot.generation.name
    return snapshot


def check_token(credentials: HTTPAuthorizationCredentials | None, token: str) -> None:
    """401 without a bearer token, 403 with a wrong one."""
    if credentials is None:
        raise HTTPException(401, "send Authorization: Bearer <token>", headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
        raise HTTPException(403, "the bearer token is wrong")


def may_write(
    request: Request,
    settings: Annotated[Settings, Depends(_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """Who may add or remove documents: with CITEQA_ADMIN_TOKEN set, whoever sends it; without, only a
    client on this machine (loopback, not through a proxy), so `make run` works with no configuration."""
    if settings.admin_token:
        check_token(credentials, settings.admin_token)
        return
    if not is_local(request.client.host if request.client else "", request.headers):
        raise HTTPException(
            403, "documents can be changed only from this machine unless the server sets CITEQA_ADMIN_TOKEN"
        )


def is_local(host: str, headers: Mapping[str, str]) -> bool:
    """Whether a request comes from this machine, on its own: a loopback client, no proxy's forwarding
    header, a loopback name in Host (not a rebound DNS name), and no other site's page behind it (Origin,
    Sec-Fetch-Site), since any page a local browser opens can post to 127.0.0.1."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
    if not loopback or any(name in headers for name in _FORWARDED):
        return False
    served = headers.get("host", "")
    if not _loopback_name(urlsplit(f"//{served}").hostname):
        return False
    origin = headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != served:
        return False
    return headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")


def _loopback_name(name: str | None) -> bool:
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name or "").is_loopback
    except ValueError:
        return False
