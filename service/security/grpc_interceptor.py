"""The token check on gRPC: a server interceptor in front of every service on the port
(``tta_serve.v1.Classifier``, the Open Inference Protocol, reflection; health stays open).

A refused call is answered with the core error's status (UNAUTHENTICATED or PERMISSION_DENIED)
by a handler of the same shape as the one it replaces, so the servicer never runs and the
request stream is never read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from service.core.errors import CoreError
from service.security.authorizer import Authorizer, log_refusal
from service.security.scopes import grpc_scope

_FIELDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Lets a call through when its ``authorization`` metadata carries a token with the scope
    ``service.security.scopes`` names for its method."""

    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer

    async def intercept_service(self, continuation: Callable[..., Awaitable[Any]],
                                handler_call_details: Any) -> Any:
        method = handler_call_details.method
        scope = grpc_scope(method)
        if scope is None:
            return await continuation(handler_call_details)
        header = next((value for key, value in handler_call_details.invocation_metadata or ()
                       if key == "authorization"), None)
        if isinstance(header, bytes):
            header = header.decode("latin-1")
        call = method.rsplit("/", 1)[-1]
        refusal = self.authorizer.refusal(header, scope, call)
        handler = await continuation(handler_call_details)
        if refusal is None or handler is None:
            return handler
        return refusing(handler, call, *refusal)


def refusing(handler: Any, call: str, reason: str, error: CoreError) -> Any:
    """A handler of ``handler``'s shape that logs the refusal (with the peer, known only here)
    and answers ``error``'s status and message."""
    code = grpc.StatusCode[error.status.name]
    message = str(error)
    if handler.unary_unary or handler.stream_unary:
        async def refuse(request: Any, context: Any) -> Any:
            log_refusal(call, context.peer(), reason, error)
            await context.abort(code, message)
    else:
        async def refuse(request: Any, context: Any) -> Any:  # type: ignore[misc]
            log_refusal(call, context.peer(), reason, error)
            await context.abort(code, message)
            yield  # an async generator, as a streaming behaviour must be

    field = next(name for name in _FIELDS if getattr(handler, name))
    return handler._replace(**{field: refuse})
