"""The token check on HTTP: ASGI middleware in front of the whole app (BentoML's routes, the
mounted GET routes, the ``/v2`` Open Inference Protocol routes and ``/metrics``).

A refused request is answered before its body is read: 401 with ``WWW-Authenticate: Bearer``
(RFC 6750; ``error="invalid_token"`` when a token was sent) or 403 with
``error="insufficient_scope"`` and the scope needed, and the JSON body every error of this server
has (``{"error": ..., "kind": ...}``), its status from the core's error table.

Which authorizer: the one ``provide()`` was given (``tta-serve``'s process, before it builds the
app), else the ``TTA_SERVE_*`` variables (``bentoml serve service.http.service:Classifier``).
"""

from __future__ import annotations

import json
from typing import Any

from service.core.errors import CoreError, Unauthenticated
from service.security.config import Security, SecurityConfig
from service.security.scopes import http_scope

_provided: Security | None = None


def provide(security: Security | None) -> None:
    """The settings the next app built in this process serves with (None: the variables)."""
    global _provided
    _provided = security


def _current() -> Security:
    if _provided is not None:
        return _provided
    return SecurityConfig.from_env().load()


class BearerAuth:
    """ASGI middleware: the token check of ``service.security.authorizer`` for each request."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.security = _current()  # built with the app: a bad setting fails its start

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        security = self.security
        if scope["type"] != "http" or security.authorizer is None:
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        need = http_scope(path, metrics_open=security.metrics_open)
        if need is None:
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope.get("headers", ())
                       if k == b"authorization"), None)
        client = scope.get("client") or ("?", 0)
        try:
            security.authorizer.check(header, need, call=f"{scope.get('method', '')} {path}",
                                      peer=f"{client[0]}:{client[1]}")
        except CoreError as e:
            await _refuse(send, e, need, token_sent=header is not None)
            return
        await self.app(scope, receive, send)


async def _refuse(send: Any, error: CoreError, scope: str, *, token_sent: bool) -> None:
    if isinstance(error, Unauthenticated):
        challenge = 'Bearer realm="tta-serve"' + (', error="invalid_token"' if token_sent else "")
    else:
        challenge = f'Bearer realm="tta-serve", error="insufficient_scope", scope="{scope}"'
    body = json.dumps({"error": str(error), "kind": error.kind}).encode()
    await send({"type": "http.response.start", "status": error.status.http_status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"www-authenticate", challenge.encode())]})
    await send({"type": "http.response.body", "body": body})
