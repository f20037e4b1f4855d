"""TLS, mutual TLS and tokens on a real gRPC server on 127.0.0.1 (in this process), reached by
the public client over real handshakes, with certificates the tests make."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from service_testkit import FixtureModel, RunningServer, core_config
from tls_testkit import ADMIN_TOKEN, INFER_TOKEN, Pki

from service.client import Client, PermissionDenied, Unauthenticated, Unavailable
from service.security.authorizer import Authorizer
from service.security.config import Security
from service.security.tls import TlsFiles
from service.security.tokens import TokenFile


def _serve(model: FixtureModel, tls: TlsFiles, pki: Pki | None = None) -> RunningServer:
    auth = Authorizer(TokenFile(pki.tokens)) if pki else None
    return RunningServer(core_config(model.repo_root), security=Security(tls=tls,
                                                                          authorizer=auth))


@pytest.fixture(scope="module")
def tls_server(digits_model: FixtureModel, pki: Pki) -> Iterator[RunningServer]:
    server = _serve(digits_model, TlsFiles(pki.server.cert, pki.server.key), pki)
    yield server
    server.close()


def _client(server: RunningServer, **kwargs: object) -> Client:
    return Client(f"grpcs://127.0.0.1:{server.port}", retries=1, backoff_s=0.01,
                  **kwargs)  # type: ignore[arg-type]


def test_tls_with_the_ca_and_a_token_predicts(tls_server, pki, digits_model):
    image, label = digits_model.samples[0]
    with _client(tls_server, ca_cert=pki.ca, token=INFER_TOKEN) as client:
        assert client.predict(image).label == label
        assert [m.name for m in client.models()] == ["digits"]


def test_a_client_without_the_ca_is_refused_and_told_why(tls_server, digits_model):
    with _client(tls_server, token=INFER_TOKEN) as client, \
            pytest.raises(Unavailable) as e:
        client.predict(digits_model.samples[0][0])
    assert "TLS with 127.0.0.1" in str(e.value)
    assert "unable to get local issuer certificate" in str(e.value)


def test_a_plaintext_client_is_refused(tls_server, digits_model):
    with Client(f"127.0.0.1:{tls_server.port}", retries=0) as client, \
            pytest.raises(Unavailable, match="grpcs://"):
        client.predict(digits_model.samples[0][0])


def test_tokens_and_scopes_over_tls(tls_server, pki, digits_model):
    image = digits_model.samples[0][0]
    with _client(tls_server, ca_cert=pki.ca) as client, \
            pytest.raises(Unauthenticated, match="needs a bearer token"):
        client.predict(image)
    with _client(tls_server, ca_cert=pki.ca, token="x" * 40) as client, \
            pytest.raises(Unauthenticated, match="not valid") as e:
        client.predict(image)
    assert "x" * 40 not in str(e.value)
    items = [(image, digits_model.samples[0][1])]
    with _client(tls_server, ca_cert=pki.ca, token=INFER_TOKEN) as client, \
            pytest.raises(PermissionDenied, match="'admin' scope"):
        client.evaluate(items)
    with _client(tls_server, ca_cert=pki.ca, token=ADMIN_TOKEN) as client:
        assert client.evaluate(items).n == 1
        results = list(client.predict_many([s[0] for s in digits_model.samples]))
        assert [r.label for r in results] == [s[1] for s in digits_model.samples]


def test_health_stays_open_under_tokens(tls_server, pki):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    creds = grpc.ssl_channel_credentials(pki.ca.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{tls_server.port}", creds) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_mutual_tls_refuses_clients_without_a_certificate_of_its_ca(digits_model, pki):
    server = _serve(digits_model, TlsFiles(pki.server.cert, pki.server.key, pki.ca))
    try:
        image, label = digits_model.samples[1]
        with _client(server, ca_cert=pki.ca) as client, pytest.raises(Unavailable) as e:
            client.predict(image)
        assert "requires a client certificate" in str(e.value)
        with _client(server, ca_cert=pki.ca, client_cert=pki.stranger.cert,
                     client_key=pki.stranger.key) as client, pytest.raises(Unavailable) as e:
            client.predict(image)
        assert "TLS with" in str(e.value)
        with _client(server, ca_cert=pki.ca, client_cert=pki.client.cert,
                     client_key=pki.client.key) as client:
            assert client.predict(image).label == label
    finally:
        server.close()


def test_an_expired_server_certificate_is_reported_by_the_client(digits_model, pki):
    """The server refuses to start with it (below); served anyway, the client says why."""
    server = _serve(digits_model, TlsFiles(pki.expired_server.cert, pki.expired_server.key))
    try:
        with _client(server, ca_cert=pki.ca) as client, pytest.raises(Unavailable) as e:
            client.models()
        assert "the server's certificate is not accepted: certificate has expired" in str(e.value)
    finally:
        server.close()


def test_the_server_refuses_to_start_with_an_expired_certificate(digits_model, pki):
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "grpc", "--host", "127.0.0.1", "--port", "0",
         "--models-dir", str(digits_model.repo_root), "--tls-cert",
         str(pki.expired_server.cert), "--tls-key", str(pki.expired_server.key)],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"the TLS certificate {pki.expired_server.cert} is not usable: certificate has " \
           "expired" in done.stderr
    assert "Traceback" not in done.stderr
