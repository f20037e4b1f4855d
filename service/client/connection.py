"""How the client reaches a server: ``grpc://`` or ``grpcs://`` (TLS), the CA to check the server
with, a client certificate for mutual TLS, and a bearer token sent on every call.

A failed TLS handshake reaches grpcio's callers as a vague UNAVAILABLE ("failed to connect to all
addresses"), which a client would retry. ``tls_problem`` asks the standard library for the
reason (OpenSSL's "certificate has expired", "unable to get local issuer certificate", the
server's "certificate required" alert) so the error says what to fix, and is not retried: a
certificate does not become valid by waiting.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

TOKEN_ENV = "TTA_SERVE_CLIENT_TOKEN"


@dataclass(frozen=True)
class Credentials:
    """TLS files (PEM) and a bearer token; all optional."""

    ca_cert: Path | None = None  # None with TLS = the system's trusted CAs
    client_cert: Path | None = None  # mutual TLS
    client_key: Path | None = None
    token: str | None = None

    def __repr__(self) -> str:  # never the token, in a traceback or a log
        return (f"Credentials(ca_cert={self.ca_cert}, client_cert={self.client_cert}, "
                f"token={'set' if self.token else None})")

    @staticmethod
    def token_from(path: Path | None = None) -> str | None:
        """The token in ``path`` (the first word of its first line that is not a ``#``
        comment), else ``$TTA_SERVE_CLIENT_TOKEN``, else None."""
        if path is not None:
            words = [line.split()[0] for line in Path(path).read_text(encoding="utf-8")
                     .splitlines() if line.strip() and not line.lstrip().startswith("#")]
            if not words:
                raise ValueError(f"the token file {path} holds no token")
            return words[0]
        return os.environ.get(TOKEN_ENV) or None


def parse_url(url: str) -> tuple[str, bool]:
    """``grpc://host:port``, ``grpcs://host:port`` or ``host:port`` -> (host:port, TLS?)."""
    secure = url.startswith("grpcs://")
    for scheme in ("grpcs://", "grpc://"):
        url = url.removeprefix(scheme)
    if not url or "/" in url.rstrip("/"):
        raise ValueError(f"{url!r} is not a gRPC address; use host:port, grpc://host:port or "
                         "grpcs://host:port (TLS)")
    return url.rstrip("/"), secure


def _read(path: Path | None) -> bytes | None:
    return Path(path).read_bytes() if path is not None else None


def open_channel(target: str, secure: bool, credentials: Credentials,
                 options: list[tuple[str, Any]]) -> grpc.Channel:
    """A channel to ``target``: TLS when ``secure``, the token on every call when given."""
    if secure:
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(
            root_certificates=_read(credentials.ca_cert),
            private_key=_read(credentials.client_key),
            certificate_chain=_read(credentials.client_cert)), options=options)
    else:
        if credentials.client_cert or credentials.ca_cert:
            raise ValueError(f"TLS files were given for a plaintext address ({target}); use "
                             f"grpcs://{target}")
        channel = grpc.insecure_channel(target, options=options)
    if credentials.token:
        channel = grpc.intercept_channel(channel, BearerToken(credentials.token))
    return channel


def tls_problem(target: str, credentials: Credentials, timeout_s: float = 5.0) -> str | None:
    """Why a TLS handshake with ``target`` fails, in OpenSSL's words; None if it succeeds."""
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    context = ssl.create_default_context(cafile=credentials.ca_cert)
    if credentials.client_cert:
        context.load_cert_chain(credentials.client_cert, credentials.client_key)
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            # TLS 1.3: a refused client certificate shows after the handshake, as an alert or a
            # closed connection where an HTTP/2 server would send its SETTINGS at once.
            tls.settimeout(1.0)
            try:
                closed = tls.recv(1) == b""
            except TimeoutError:
                closed = False
    except ssl.SSLCertVerificationError as e:
        return f"the server's certificate is not accepted: {e.verify_message}"
    except ssl.SSLError as e:
        closed, reason = True, f" ({e.reason or e})"
    except OSError:
        return None
    else:
        reason = ""
    if not closed:
        return None
    if credentials.client_cert is None:
        return (f"the server ended the TLS connection{reason}: it requires a client "
                "certificate (mutual TLS: --client-cert/--client-key)")
    return (f"the server ended the TLS connection{reason}: it does not accept the client "
            f"certificate {credentials.client_cert}")


class BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                  grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer TOKEN`` to every call's metadata."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def __repr__(self) -> str:
        return "BearerToken(***)"

    def _with_token(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            getattr(details, "wait_for_ready", None),
                            getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation: Callable, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Callable, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Callable, details: Any,
                               request_iterator: Any) -> Any:
        return continuation(self._with_token(details), request_iterator)

    def intercept_stream_stream(self, continuation: Callable, details: Any,
                                request_iterator: Any) -> Any:
        return continuation(self._with_token(details), request_iterator)


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any
