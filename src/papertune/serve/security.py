"""Who may use ``papertune serve``: the API key, and the checks that keep other web pages out.

- :func:`resolve_api_key`: the key from the environment variable ``serve.api_key_env`` names; a server on
  anything but a loopback address refuses to start without one.
- :class:`AccessGuard`: ASGI middleware in front of every endpoint. A ``Host`` header naming neither the bound
  host, a loopback name nor one of ``serve.allowed_hosts`` gets 421 (DNS rebinding); a request with an
  ``Origin`` other than the server's own or one of ``serve.allowed_origins`` gets 403 (other web pages driving
  a visitor's browser); with a key, a request without ``Authorization: Bearer KEY`` gets 401, except the chat
  page and ``/health``. Refusals are OpenAI-style error bodies.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from papertune.config import ServeConfig
from papertune.errors import ConfigError
from papertune.serve.protocol import ApiError

log = logging.getLogger(__name__)

MIN_API_KEY_LENGTH = 16
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
OPEN_PATHS = frozenset({"/", "/health"})  # the chat page (it asks for the key) and the health check


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is this machine only."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_api_key(settings: ServeConfig, environ: Mapping[str, str] = os.environ) -> str | None:
    """The API key clients must send, None for none; a ``ConfigError`` naming the setting when the key is
    missing or too short, or when a non-loopback ``serve.host`` has no key."""
    if not settings.api_key_env:
        if not is_loopback(settings.host):
            raise ConfigError(
                f"serve.host={settings.host!r} is not a loopback address, so anyone who can reach it could use the "
                "model: set serve.api_key_env to the name of an environment variable holding an API key (e.g. "
                "--set serve.api_key_env=PAPERTUNE_API_KEY after `export PAPERTUNE_API_KEY=$(openssl rand -hex 24)`); "
                "clients then send `Authorization: Bearer KEY`")
        return None
    key = environ.get(settings.api_key_env, "").strip()
    if len(key) < MIN_API_KEY_LENGTH:
        state = "is not set" if not key else f"holds a key of {len(key)} characters"
        raise ConfigError(f"serve.api_key_env names {settings.api_key_env}, but that environment variable {state}: "
                          f"export {settings.api_key_env} with a key of at least {MIN_API_KEY_LENGTH} characters "
                          f"(e.g. `export {settings.api_key_env}=$(openssl rand -hex 24)`)")
    return key


def host_name(host_header: str) -> str:
    """The name in a ``Host`` header, without the port: ``[::1]:8000`` -> ``::1``."""
    host_header = host_header.strip().lower()
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    if host_header.count(":") == 1:
        return host_header.partition(":")[0]
    return host_header


class AccessGuard:
    """ASGI middleware: the Host, Origin and API-key checks described in the module docstring."""

    def __init__(self, app: Any, *, bound_host: str, allowed_hosts: Iterable[str], allowed_origins: Iterable[str],
                 api_key: str | None) -> None:
        self.app = app
        allowed_hosts = list(allowed_hosts)
        # Bound to every address (0.0.0.0, ::) the names it is reached by are unknown: any Host is answered
        # (a key is required there) unless serve.allowed_hosts lists them.
        self.any_host = bound_host in WILDCARD_HOSTS and not allowed_hosts
        self.hosts = {"localhost", "127.0.0.1", "::1", *(h.strip("[]").lower() for h in [bound_host, *allowed_hosts])}
        self.origins = {o.lower() for o in allowed_origins}
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.datastructures import Headers
        from starlette.responses import JSONResponse

        headers = Headers(scope=scope)
        error = self.refusal(scope["method"], scope["path"], headers)
        if error is None:
            await self.app(scope, receive, send)
            return
        log.info("%s %s -> %d: %s", scope["method"], scope["path"], error.status, error.message)
        extra = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        await JSONResponse(error.body(), status_code=error.status, headers=extra)(scope, receive, send)

    def refusal(self, method: str, path: str, headers: Mapping[str, str]) -> ApiError | None:
        """The error a request gets, None when it may go on."""
        host = headers.get("host")
        if host is not None and not self.any_host and host_name(host) not in self.hosts:
            return ApiError(421, f"this server does not answer for the host {host_name(host)!r}; add it to "
                            "serve.allowed_hosts to allow it", code="host_not_allowed")
        origin = headers.get("origin")
        if origin is not None and not self._origin_allowed(origin.lower(), (host or "").lower()):
            return ApiError(403, f"requests from web pages of {origin!r} are not allowed; add the origin to "
                            "serve.allowed_origins to allow it", code="origin_not_allowed")
        if self.api_key is None or path in OPEN_PATHS or method == "OPTIONS":  # OPTIONS: CORS preflights
            return None
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return ApiError(401, "this server needs an API key: send the header `Authorization: Bearer KEY`",
                            code="invalid_api_key")
        if not hmac.compare_digest(given.strip().encode(), self.api_key):
            return ApiError(401, "the API key is not valid", code="invalid_api_key")
        return None

    def _origin_allowed(self, origin: str, host_header: str) -> bool:
        if origin in self.origins:
            return True
        scheme, _, netloc = origin.partition("://")
        return scheme in ("http", "https") and bool(host_header) and netloc == host_header  # same origin
