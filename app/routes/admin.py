"""Admin operations, behind a bearer token (GENSERVE_ADMIN_TOKEN); absent (404) when no token is set,
except on a server bound to loopback only, which takes a reload from its own machine without one.

On loopback only, whoever can reach the port is on the machine already (they could restart the
server); a server bound to any other address, or a request relayed by a proxy, keeps the token rule.
The bind is read from the process's own listening sockets (/proc/self/net), not from a setting, so
`uvicorn --host 0.0.0.0` with GENSERVE_HOST unset is not mistaken for a loopback server.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field

from app.routes.deps import RegistryDep, SettingsDep, WorkerDep
from app.routes.health import readiness
from app.schemas import ErrorDetail, Readiness

router = APIRouter(prefix="/v1/admin", tags=["admin"])
bearer = HTTPBearer(auto_error=False)
# Headers a proxy adds: a request that carries one may come from anywhere.
RELAYED = ("forwarded", "x-forwarded-for", "x-real-ip")
LISTEN = "0A"  # a TCP socket's state in /proc/net/tcp


class ReloadAnswer(Readiness):
    status: str = Field(description='"ready" when every checkpoint folder loaded; otherwise which failed and why '
                                    '(a model whose new version failed keeps serving its previous one)')
    detail: str | None = Field(None, description="the status again, in an answer other than 200")


def require_admin(request: Request, settings: SettingsDep,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    if settings.admin_token is None:
        if from_this_machine_to_loopback_only(request):
            return
        raise HTTPException(404, "Not Found")
    expected = settings.admin_token.get_secret_value().encode()
    if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), expected):
        raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})


def from_this_machine_to_loopback_only(request: Request) -> bool:
    """The request came over loopback, unrelayed, to a process that listens on loopback only."""
    server, client = request.scope.get("server"), request.scope.get("client")
    if not (server and client and _loopback(server[0]) and _loopback(client[0])):
        return False
    if any(name in request.headers for name in RELAYED):
        return False
    addresses = listening_addresses()
    return bool(addresses) and all(_loopback(address) for address in addresses)


def _loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def listening_addresses() -> list[str]:
    """The addresses this process's TCP sockets listen on (Linux; none elsewhere, which keeps the
    token rule)."""
    try:
        descriptors = os.listdir("/proc/self/fd")
    except OSError:
        return []
    sockets = set()
    for fd in descriptors:
        try:
            sockets.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # closed meanwhile (the listing's own descriptor, say)
            continue
    addresses = []
    for table, decode in (("tcp", _ipv4), ("tcp6", _ipv6)):
        try:
            rows = Path(f"/proc/self/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == LISTEN and f"socket:[{fields[9]}]" in sockets:
                addresses.append(decode(fields[1].split(":")[0]))
    return addresses


def _ipv4(hex_address: str) -> str:
    return str(ipaddress.IPv4Address(bytes.fromhex(hex_address)[::-1]))


def _ipv6(hex_address: str) -> str:
    # Four 32-bit words, each in the host's (little-endian) byte order.
    raw = bytes.fromhex(hex_address)
    return str(ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))))


@router.post("/reload", response_model=ReloadAnswer, dependencies=[Depends(require_admin)],
             responses={401: {"model": ErrorDetail, "description": "no or a wrong bearer token"},
                        404: {"model": ErrorDetail, "description": "admin is off"},
                        409: {"model": ReloadAnswer, "description": "reloaded, but some checkpoint folders failed "
                              "(listed with the reason; a model whose new version failed serves its previous one)"},
                        503: {"model": ReloadAnswer, "description": "reloaded, but no model loaded"}})
async def reload(registry: RegistryDep, worker: WorkerDep, settings: SettingsDep) -> JSONResponse:
    """Load the weights directory again (say after new weights land); requests in flight finish on
    the models they started with. A reload asked for while one runs waits for the next one, which
    reads the folders afresh, so the answer reflects every change made before the request. Answers
    like /readyz, with a status in words: 200 when every folder loaded, 409 when some failed, 503
    when no model serves. Without GENSERVE_ADMIN_TOKEN it exists only on a server bound to loopback
    only, for requests from that machine."""
    await registry.reload()
    ready, body = readiness(registry, worker, settings)
    if not ready:
        status, code = "not ready: no model loaded", 503
    elif registry.failed:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in sorted(registry.failed.items()))
        status, code = f"ready, but {len(registry.failed)} checkpoint folder(s) failed to load: {reasons}", 409
    else:
        return JSONResponse({**body, "status": "ready"})
    # "detail", as in every error answer of the service, for clients that read only that.
    return JSONResponse({**body, "status": status, "detail": status}, status_code=code)
