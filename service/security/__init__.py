"""Who may reach the server: TLS on both wires (``tls``), bearer tokens with scopes (``tokens``),
what each call needs (``scopes``), the settings from flags and variables (``config``), and the
two wire adapters the front ends hook in at one place each: a gRPC server interceptor
(``grpc_interceptor``) and an ASGI middleware (``asgi``).

Imports only ``service.core.errors`` (the one error table: UNAUTHENTICATED / 401,
PERMISSION_DENIED / 403) and libraries; the front ends import it, never the other way round.
"""
