"""``tta-serve all`` with mutual TLS and tokens, as a deployment runs it, reached from outside
with real clients: httpx, ``tta-serve predict --url grpcs://|https://``, NVIDIA's tritonclient
(grpc and http, token in the headers); the token file rotated while it serves."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from http_testkit import START_TIMEOUT_S, ServerProcess, free_port
from service_testkit import FixtureModel
from tls_testkit import ADMIN_TOKEN, INFER_TOKEN, Pki

from service.cli import main


@dataclass
class Served:
    process: ServerProcess
    http_url: str
    grpc_target: str
    tokens: Path  # the server's token file: tests may rotate it
    pki: Pki

    def context(self, *, ca: bool = True, cert: bool = True) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.pki.ca if ca else None)
        if cert:
            context.load_cert_chain(self.pki.client.cert, self.pki.client.key)
        return context

    def http(self, token: str | None = None, **kwargs: bool) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token else None
        return httpx.Client(base_url=self.http_url, verify=self.context(**kwargs),
                            headers=headers, timeout=60, trust_env=False)


@pytest.fixture(scope="module")
def served(digits_model: FixtureModel, pki: Pki,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("served-tls")
    tokens = work / "tokens"
    shutil.copy(pki.tokens, tokens)
    http_port, grpc_port = free_port(), free_port()
    process = ServerProcess(
        ["all", "--host", "127.0.0.1", "--http-port", str(http_port), "--grpc-port",
         str(grpc_port), "--models-dir", str(digits_model.repo_root), "--device", "cpu",
         "--intra-op-threads", "1", "--grace-s", "2", "--metrics-auth", "admin"], work,
        env={"TTA_SERVE_TLS_CERT": str(pki.server.cert), "TTA_SERVE_TLS_KEY": str(pki.server.key),
             "TTA_SERVE_TLS_CLIENT_CA": str(pki.ca), "TTA_SERVE_TOKEN_FILE": str(tokens)})
    server = Served(process, f"https://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", tokens,
                    pki)
    try:
        _wait_ready(server)
        yield server
    finally:
        code = process.terminate()
    assert code == 0, process.log


def _wait_ready(server: Served) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with server.http() as client:
        while time.monotonic() < deadline:
            if server.process.process.poll() is not None:
                pytest.fail(f"server exited:\n{server.process.log}")
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
    pytest.fail(f"not ready:\n{server.process.log}")


def test_the_start_up_line_says_what_is_protected(served: Served):
    line = next(x for x in served.process.log.splitlines() if "listening on" in x)
    assert "mutual: client certificates required" in line
    assert f"token authorisation on (2 token(s) from {served.tokens}" in line
    assert "/metrics needs admin" in line


def test_https_refuses_a_client_without_the_ca_or_without_a_certificate(served: Served):
    with served.http(INFER_TOKEN, ca=False) as client, \
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        client.get("/readyz")
    with served.http(INFER_TOKEN, cert=False) as client, \
            pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        client.get("/readyz")
    with pytest.raises(httpx.HTTPError):  # plaintext to the TLS port
        httpx.get(served.http_url.replace("https:", "http:") + "/readyz", timeout=10)


def test_http_routes_and_their_scopes(served: Served, digits_model: FixtureModel):
    image, label = digits_model.samples[2]
    files = {"image": ("x.png", image, "image/png")}
    with served.http() as anonymous:
        for path in ("/livez", "/readyz", "/v2/health/ready", "/v2/models/digits/ready",
                     "/ui/"):
            assert anonymous.get(path).status_code == 200, path
        refused = anonymous.post("/predict", files=files)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == 'Bearer realm="tta-serve"'
        assert refused.json()["kind"] == "unauthenticated"
        assert anonymous.get("/metrics").status_code == 401  # --metrics-auth admin
    with served.http("bogus-token-that-is-long-enough") as wrong:
        refused = wrong.post("/predict", files=files)
        assert refused.status_code == 401 and "invalid_token" in refused.headers[
            "www-authenticate"]
        assert "bogus" not in refused.text
    with served.http(INFER_TOKEN) as infer:
        assert infer.post("/predict", files=files).json()["label"] == label
        assert infer.get("/models").status_code == 200
        assert infer.get("/v2/models/digits").status_code == 200
        for method, path in (("POST", "/evaluate"), ("POST", "/v2/repository/index"),
                             ("GET", "/v2/models/stats"), ("GET", "/metrics")):
            refused = infer.request(method, path)
            assert refused.status_code == 403, path
            assert 'error="insufficient_scope", scope="admin"' in refused.headers[
                "www-authenticate"]
    with served.http(ADMIN_TOKEN) as admin:
        assert admin.get("/metrics").status_code == 200
        assert admin.post("/v2/repository/index").status_code == 200
        evaluated = admin.post("/evaluate", files={"images": ("x.png", image, "image/png")},
                               data={"labels": json.dumps([label])})
        assert evaluated.status_code == 200 and evaluated.json()["n"] == 1
    log = served.process.log
    assert "refused POST /predict from 127.0.0.1" in log
    assert "bogus-token" not in log and INFER_TOKEN not in log


def test_a_caller_without_a_token_is_refused_before_its_body(served: Served):
    url = urlsplit(served.http_url)
    connection = http.client.HTTPSConnection(url.hostname, url.port, timeout=10,
                                             context=served.context())
    connection.putrequest("POST", "/predict")  # the hot route, which reads bodies itself
    connection.putheader("Content-Type", "multipart/form-data; boundary=x")
    connection.putheader("Content-Length", "100000")
    connection.endheaders()  # and the body never comes
    response = connection.getresponse()
    assert response.status == 401
    assert json.loads(response.read())["kind"] == "unauthenticated"
    connection.close()


def test_the_container_healthcheck_probes_over_mutual_tls(served: Served, pki: Pki):
    from service.process.runner import healthcheck
    from service.security.tls import TlsFiles

    tls = TlsFiles(pki.server.cert, pki.server.key, pki.ca)
    closed = f"127.0.0.1:{free_port()}"
    ready = served.http_url.replace("https:", "http:") + "/readyz"  # made https by the probe
    assert healthcheck(served.grpc_target, f"http://{closed}/readyz", tls=tls) == 0
    assert healthcheck(closed, ready, tls=tls) == 0
    assert healthcheck(closed, f"http://{closed}/readyz", tls=tls) == 1
    assert healthcheck(served.grpc_target, ready) == 1  # plaintext probes fail on TLS ports


def _predict(served: Served, url: str, folder: Path, token_file: Path,
             capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(["predict", str(folder), "--url", url, "--format", "csv",
                 "--ca-cert", str(served.pki.ca), "--client-cert", str(served.pki.client.cert),
                 "--client-key", str(served.pki.client.key), "--token-file", str(token_file)])
    out, err = capsys.readouterr()
    return code, out, err


def test_tta_serve_predict_over_grpcs_and_https(served: Served, digits_model: FixtureModel,
                                                tmp_path: Path,
                                                capsys: pytest.CaptureFixture):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, (image, _) in enumerate(digits_model.samples):
        (folder / f"{i}.png").write_bytes(image)
    token_file = tmp_path / "token"
    token_file.write_text(INFER_TOKEN + "\n")
    expected = [label for _, label in digits_model.samples]
    for url in (f"grpcs://{served.grpc_target}", served.http_url):
        code, out, err = _predict(served, url, folder, token_file, capsys)
        assert code == 0, err
        rows = [line.split(",") for line in out.splitlines()[1:]]
        labels = {Path(r[0]).stem: r[1] for r in rows}
        assert [labels[str(i)] for i in range(len(expected))] == expected, out
    token_file.write_text("not-the-token-but-long-enough\n")
    code, out, err = _predict(served, f"grpcs://{served.grpc_target}", folder, token_file,
                              capsys)
    assert code == 2 and "not valid" in err and "not-the-token" not in err


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tritonclient_sends_the_token_in_its_headers(served: Served, protocol: str,
                                                     digits_model: FixtureModel, tmp_path: Path):
    image, label = digits_model.samples[3]
    (tmp_path / "x.png").write_bytes(image)
    (tmp_path / "token").write_text(INFER_TOKEN)
    address = served.grpc_target if protocol == "grpc" else served.http_url.removeprefix(
        "https://")
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("triton_tokens.py")), protocol, address,
         str(served.pki.ca), str(served.pki.client.cert), str(served.pki.client.key),
         str(tmp_path / "token"), str(tmp_path / "x.png")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "no_proxy": "*"})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["ready_without_token"] == {"ok": True}
    assert result["infer_with_token"] == {"ok": int(label)}
    assert result["metadata_with_token"] == {"ok": "digits"}
    unauthenticated = "StatusCode.UNAUTHENTICATED" if protocol == "grpc" else "401"
    denied = "StatusCode.PERMISSION_DENIED" if protocol == "grpc" else "403"
    assert result["infer_without_token"]["status"] == unauthenticated, result
    assert result["index_with_infer_token"]["status"] == denied, result


def test_perf_analyzer_over_https_with_a_client_certificate_and_the_token(
        served: Served, digits_model: FixtureModel, tmp_path: Path):
    """perf_analyzer's ``-H`` adds the token over HTTP (it reads statistics: an admin token).
    Its gRPC client sends no headers (``-H`` is ignored for gRPC), so over gRPC it cannot pass
    a token check: docs/oip.md says so."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_perf_analyzer", Path(__file__).parents[2] / "bench" / "perf_analyzer.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    done = subprocess.run(["bash", str(Path(__file__).parents[2] / "bench" / "perf_analyzer.sh"),
                           "install"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    binary = done.stdout.strip().splitlines()[-1]
    inputs = bench.write_inputs(tmp_path, digits_model.repo_root, "digits",
                                {"bytes": [image for image, _ in digits_model.samples]})
    pki = served.pki
    tls = ["--ssl-https-ca-certificates-file", str(pki.ca),
           "--ssl-https-client-certificate-file", str(pki.client.cert),
           "--ssl-https-private-key-file", str(pki.client.key)]
    url = served.http_url  # https://127.0.0.1:PORT
    result = bench.run(binary, model="digits", protocol="http", url=url,
                       input_file=inputs["bytes"], concurrency=1, request_count=50,
                       timeout_s=120, extra=[*tls, "-H", f"authorization:Bearer {ADMIN_TOKEN}"])
    assert result.returncode == 0 and result.errors == [], result.output[-3000:]
    assert result.rows and result.rows[0]["throughput"] > 0
    refused = bench.run(binary, model="digits", protocol="http", url=url,
                        input_file=inputs["bytes"], concurrency=1, request_count=10,
                        timeout_s=120, extra=tls)
    assert refused.returncode != 0 and "bearer token" in refused.output, refused.output[-2000:]


def test_rotating_the_token_file_takes_effect_without_a_restart(served: Served,
                                                               digits_model: FixtureModel):
    from service.client import Client, Unauthenticated

    new_token = "rotated-token-0123456789abcdefgh"
    image, label = digits_model.samples[4]
    pid = served.process.process.pid
    replacement = served.tokens.with_suffix(".new")
    replacement.write_text(f"{new_token} infer,admin\n")
    os.replace(replacement, served.tokens)  # as a Secret update does: a new file
    time.sleep(1.5)  # the file is looked at once a second at most
    kwargs = dict(ca_cert=served.pki.ca, client_cert=served.pki.client.cert,
                  client_key=served.pki.client.key, retries=0)
    with Client(f"grpcs://{served.grpc_target}", token=new_token, **kwargs) as client:
        assert client.predict(image).label == label
    with Client(f"grpcs://{served.grpc_target}", token=INFER_TOKEN, **kwargs) as client, \
            pytest.raises(Unauthenticated):
        client.predict(image)
    with served.http(new_token) as http:
        assert http.get("/models").status_code == 200
    with served.http(INFER_TOKEN) as http:
        assert http.get("/models").status_code == 401
    assert served.process.process.pid == pid and served.process.process.poll() is None
    assert "reloaded: 1 token(s)" in served.process.log
    shutil.copy(served.pki.tokens, served.tokens)  # back, for any test after this one
    time.sleep(1.5)
    with served.http(INFER_TOKEN) as http:
        assert http.get("/models").status_code == 200
