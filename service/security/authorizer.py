"""The one token check both wires call: an ``authorization`` header value and the scope a call
needs -> allowed, or ``Unauthenticated`` / ``PermissionDenied`` from the core's error table.

Messages say what to send and never contain the token (nor the header's value: a client that put
its token in the wrong place must not see it echoed either). Every refusal is logged at INFO
with the call, the peer and the reason, again without the token.
"""

from __future__ import annotations

import logging
from typing import Protocol

from service.core.errors import CoreError, PermissionDenied, Unauthenticated
from service.security.tokens import TokenTable

log = logging.getLogger(__name__)

HOW = "send the header 'authorization: Bearer TOKEN'"


class TokenSource(Protocol):
    def current(self) -> TokenTable: ...

    def describe(self) -> str: ...


class Authorizer:
    """Checks bearer tokens against a source (a token file, reloaded on change, or a variable)."""

    def __init__(self, source: TokenSource) -> None:
        self.source = source

    def describe(self) -> str:
        return self.source.describe()

    def check(self, authorization: str | None, scope: str, *, call: str, peer: str = "") -> None:
        """Return when the header carries a known token with ``scope``; raise (and log) if not."""
        refusal = self.refusal(authorization, scope, call)
        if refusal is not None:
            log_refusal(call, peer, *refusal)
            raise refusal[1]

    def refusal(self, authorization: str | None, scope: str,
                call: str) -> tuple[str, CoreError] | None:
        """None when allowed, else (the reason for the log, the error for the client)."""
        return self._refusal(authorization, scope, call)

    def _refusal(self, authorization: str | None, scope: str,
                 call: str) -> tuple[str, CoreError] | None:
        if authorization is None or not authorization.strip():
            return "no token", Unauthenticated(f"{call} needs a bearer token: {HOW}")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return "not a bearer token", Unauthenticated(
                f"{call} needs a bearer token, and the authorization header holds another "
                f"scheme or none: {HOW}")
        scopes = self.source.current().scopes_of(token)
        if scopes is None:
            return "unknown token", Unauthenticated(
                f"the bearer token is not valid (unknown, revoked or rotated): {call} needs a "
                "current token")
        if scope not in scopes:
            return f"lacks {scope}", PermissionDenied(
                f"{call} needs a token with the {scope!r} scope; this token has "
                f"{', '.join(sorted(scopes))}")
        return None


def log_refusal(call: str, peer: str, reason: str, error: CoreError) -> None:
    """One INFO line: the call, who asked, the outcome and why; never the token."""
    log.info("refused %s from %s: %s (%s)", call, peer or "?", error.kind, reason)
