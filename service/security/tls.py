"""TLS (and mutual TLS) settings for both wires from one set of files, checked before anything
listens.

``TlsFiles`` names the server's certificate chain and key (PEM) and, for mutual TLS, the CA
bundle that client certificates must chain to. ``check()`` refuses, with one line naming the
file, what would otherwise fail at the first handshake or silently: a missing file, a key that is
not the certificate's, and a certificate that has expired or is not valid yet. The gRPC server
gets ``grpc_credentials()`` (grpcio's SSL server credentials), uvicorn ``uvicorn_options()``:
the same files, so both wires present the same certificate.

Why a loopback handshake for the date check: the standard library has no public certificate
parser, and a handshake between an in-memory server and a client that trusts the server's own
chain (``VERIFY_X509_PARTIAL_CHAIN``) makes OpenSSL verify exactly what a client will: validity
dates, key match and chain order, with OpenSSL's own message ("certificate has expired").
"""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WARN_EXPIRY_DAYS = 14  # the start-up log warns when the certificate expires sooner


class TlsError(ValueError):
    """A TLS setting the server cannot start with; the message names the file and the fix."""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path  # PEM: the server certificate, then any intermediates
    key: Path  # PEM: its private key (unencrypted)
    client_ca: Path | None = None  # PEM CA bundle: set = mutual TLS, client certificates required

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def read(self, path: Path) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as e:
            raise TlsError(f"cannot read {path}: {e.strerror or e}") from None

    def check(self) -> dt.datetime:
        """Refuse unusable files (TlsError naming them); the certificate's expiry (UTC)."""
        for path in (self.cert, self.key, self.client_ca):
            if path is not None:
                self.read(path)
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            server.load_cert_chain(self.cert, self.key)
        except ssl.SSLError as e:
            raise TlsError(f"the TLS key {self.key} does not fit the certificate {self.cert}, "
                           f"or one of them is not PEM ({e.reason or e})") from None
        if self.client_ca is not None:
            try:
                server.load_verify_locations(cafile=self.client_ca)
            except ssl.SSLError as e:
                raise TlsError(f"the client CA bundle {self.client_ca} is not PEM certificates "
                               f"({e.reason or e})") from None
        peer = _loopback_peer(server, self.cert)
        return dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(peer["notAfter"]), dt.UTC)

    def server_name(self) -> str:
        """A DNS name (else the common name) the certificate was issued for."""
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(self.cert, self.key)
        peer = _loopback_peer(server, self.cert)
        names = [v for k, v in peer.get("subjectAltName", ()) if k in ("DNS", "IP Address")]
        common = [v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"]
        return (names + common + ["localhost"])[0]

    def grpc_credentials(self) -> Any:
        """grpcio's SSL server credentials; mutual TLS requires and verifies client certs."""
        import grpc

        return grpc.ssl_server_credentials(
            [(self.read(self.key), self.read(self.cert))],
            root_certificates=self.read(self.client_ca) if self.client_ca else None,
            require_client_auth=self.mutual)

    def probe_context(self) -> ssl.SSLContext:
        """For this process's own health probe on loopback (the container's HEALTHCHECK): no
        verification, the certificate was checked when the server started; under mutual TLS the
        server's own certificate is presented (accepted when the client CA issued it too)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if self.mutual:
            context.load_cert_chain(self.cert, self.key)
        return context

    def grpc_probe(self) -> tuple[Any, list[tuple[str, Any]]]:
        """Channel credentials and options for the same probe over gRPC: grpcio always verifies,
        so the chain file (+ the client CAs) is trusted and the certificate's own name used."""
        import grpc

        roots = self.read(self.cert) + (self.read(self.client_ca) if self.client_ca else b"")
        mutual = (self.read(self.key), self.read(self.cert)) if self.mutual else (None, None)
        credentials = grpc.ssl_channel_credentials(roots, *mutual)
        return credentials, [("grpc.ssl_target_name_override", self.server_name())]

    def uvicorn_options(self) -> dict[str, Any]:
        """``uvicorn.Config`` keyword arguments serving the same files."""
        return {"ssl_certfile": str(self.cert), "ssl_keyfile": str(self.key),
                "ssl_ca_certs": str(self.client_ca) if self.client_ca else None,
                "ssl_cert_reqs": ssl.CERT_REQUIRED if self.mutual else ssl.CERT_NONE}


def _loopback_peer(server: ssl.SSLContext, chain: Path) -> dict[str, Any]:
    """Handshake in memory with a client trusting ``chain``: the certificate as the client saw
    it (``getpeercert()``); TlsError with OpenSSL's reason when the client refuses it."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.load_verify_locations(cafile=chain)
    client.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the leaf itself may be the anchor
    wires = [ssl.MemoryBIO() for _ in range(4)]
    ends = [client.wrap_bio(wires[0], wires[1]),
            server.wrap_bio(wires[2], wires[3], server_side=True)]
    done = [False, False]
    for _ in range(8):
        for i, end in enumerate(ends):
            if done[i]:
                continue
            try:
                end.do_handshake()
                done[i] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLCertVerificationError as e:
                raise TlsError(f"the TLS certificate {chain} is not usable: {e.verify_message}"
                               f"{_dates(chain)}") from None
        wires[2].write(wires[1].read())
        wires[0].write(wires[3].read())
        if all(done):
            break
    else:
        raise TlsError(f"the TLS certificate {chain} and its key do not complete a handshake")
    return ends[0].getpeercert()


def _dates(chain: Path) -> str:
    """" (valid from A to B)" for the first certificate of ``chain``, when it can be read."""
    try:
        info = ssl._ssl._test_decode_cert(str(chain))  # type: ignore[attr-defined]
    except Exception:  # a private helper: its absence only shortens the message
        return ""
    return f" (valid from {info['notBefore']} to {info['notAfter']})"
