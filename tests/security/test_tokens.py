"""The token file, its reload, the constant-time table, the scope table and the settings:
unit-sized, on real files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from service.core.errors import PermissionDenied, Unauthenticated
from service.security import tokens
from service.security.authorizer import Authorizer
from service.security.config import SecurityConfig
from service.security.scopes import GRPC_METHODS, grpc_scope, http_scope
from service.security.tokens import FixedTokens, TokenFile, TokenFileError, parse_tokens

INFER_TOKEN = "infer-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789abcdef"
TEXT = f"# comment\n\n{INFER_TOKEN} infer\n{ADMIN_TOKEN}   infer,admin\n"


def test_the_file_format_and_its_errors_name_the_line_never_the_token():
    table = parse_tokens(TEXT, "tokens.txt")
    assert table.scopes_of(INFER_TOKEN) == {"infer"}
    assert table.scopes_of(ADMIN_TOKEN) == {"infer", "admin"}
    assert table.scopes_of(INFER_TOKEN + "x") is None
    assert table.scopes_of("") is None
    secret = "short-secret"
    bad = {f"{secret} infer": "line 1: a token is 16+ characters",
           f"{secret}-long-enough superuser": "unknown scope(s) superuser",
           f"{secret}-long-enough": "expected 'TOKEN SCOPE[,SCOPE]'",
           "välid-looking-token-here infer": "A-Z a-z 0-9",
           "# only comments": "holds no tokens"}
    for text, fragment in bad.items():
        with pytest.raises(TokenFileError, match="tokens.txt") as e:
            parse_tokens(text, "tokens.txt")
        assert fragment in str(e.value)
        assert secret not in str(e.value) and "välid" not in str(e.value)


def test_the_variable_takes_semicolon_separated_entries():
    fixed = FixedTokens(f"{INFER_TOKEN} infer; {ADMIN_TOKEN} admin", "TTA_SERVE_TOKENS")
    assert fixed.current().scopes_of(ADMIN_TOKEN) == {"admin"}
    assert fixed.describe() == "2 token(s) from $TTA_SERVE_TOKENS"


def test_the_table_compares_with_every_entry_in_constant_time(monkeypatch):
    """Every known digest is compared with hmac.compare_digest, also after a match."""
    calls = []
    real = tokens.hmac.compare_digest
    monkeypatch.setattr(tokens.hmac, "compare_digest",
                        lambda a, b: calls.append((a, b)) or real(a, b))
    table = parse_tokens(TEXT, "t")
    assert table.scopes_of(INFER_TOKEN) == {"infer"}  # the first line matches
    assert len(calls) == 2
    assert all(len(a) == len(b) == 32 for a, b in calls)  # digests: the length never leaks


def test_a_changed_file_rotates_tokens_and_a_broken_one_keeps_the_old(tmp_path, monkeypatch,
                                                                        caplog):
    monkeypatch.setattr(tokens, "RELOAD_CHECK_S", 0.0)
    path = tmp_path / "tokens"
    path.write_text(f"{INFER_TOKEN} infer\n")
    source = TokenFile(path)
    auth = Authorizer(source)
    auth.check(f"Bearer {INFER_TOKEN}", "infer", call="Predict")
    # rotation as Kubernetes does it: a new file replaces the old one
    new = tmp_path / "tokens.new"
    new.write_text(f"{ADMIN_TOKEN} infer,admin\n")
    os.replace(new, path)
    with pytest.raises(Unauthenticated, match="not valid"):
        auth.check(f"Bearer {INFER_TOKEN}", "infer", call="Predict")
    auth.check(f"Bearer {ADMIN_TOKEN}", "admin", call="Evaluate")
    # a broken file: logged, the tokens in force stay
    path.write_text("garbage-without-scope-here\n")
    stamp = time.time() + 5
    os.utime(path, (stamp, stamp))
    auth.check(f"Bearer {ADMIN_TOKEN}", "admin", call="Evaluate")
    assert "token file not reloaded" in caplog.text
    assert "garbage" not in caplog.text


def test_refusals_say_what_to_send_and_never_echo_the_header(caplog):
    auth = Authorizer(FixedTokens(TEXT, "TTA_SERVE_TOKENS"))
    caplog.set_level("INFO")
    wrong = "wrong-token-aaaaaaaaaaaaaaaaaaaaaa"
    cases = [(None, Unauthenticated, "needs a bearer token"),
             ("", Unauthenticated, "needs a bearer token"),
             (f"Basic {wrong}", Unauthenticated, "another scheme"),
             (wrong, Unauthenticated, "another scheme"),
             ("Bearer", Unauthenticated, "another scheme"),
             (f"Bearer {wrong}", Unauthenticated, "not valid"),
             (f"bearer {INFER_TOKEN}", PermissionDenied, "'admin' scope; this token has infer")]
    for header, kind, fragment in cases:
        with pytest.raises(kind) as e:
            auth.check(header, "admin", call="Evaluate", peer="10.0.0.7:5555")
        assert fragment in str(e.value)
        assert wrong not in str(e.value) and INFER_TOKEN not in str(e.value)
    assert caplog.text.count("refused Evaluate from 10.0.0.7:5555") == len(cases)
    assert wrong not in caplog.text and INFER_TOKEN not in caplog.text
    auth.check(f"Bearer {ADMIN_TOKEN}", "admin", call="Evaluate")  # any case of "Bearer"
    auth.check(f"BEARER  {ADMIN_TOKEN} ", "infer", call="Predict")


def test_every_rpc_of_both_services_is_placed_and_health_is_open():
    from service._proto.inference import grpc_predict_v2_pb2 as v2
    from service._proto.tta_serve.v1 import classifier_pb2 as pb

    for descriptor, name in ((pb.DESCRIPTOR, "Classifier"),
                             (v2.DESCRIPTOR, "GRPCInferenceService")):
        service = descriptor.services_by_name[name]
        for method in service.methods:
            assert f"/{service.full_name}/{method.name}" in GRPC_METHODS, method.name
    assert grpc_scope("/grpc.health.v1.Health/Check") is None
    assert grpc_scope("/grpc.health.v1.Health/Watch") is None
    assert grpc_scope("/tta_serve.v1.Classifier/Evaluate") == "admin"
    assert grpc_scope("/inference.GRPCInferenceService/RepositoryModelLoad") == "admin"
    assert grpc_scope("/inference.GRPCInferenceService/ModelInfer") == "infer"
    assert grpc_scope("/some.New/Method") == "admin"  # closed until placed


@pytest.mark.parametrize("path, need", [
    ("/livez", None), ("/readyz", None), ("/v2/health/ready", None), ("/v2/health/live", None),
    ("/v2/models/digits/ready", None), ("/v2/models/digits/versions/2/ready", None),
    ("/ui/", None), ("/ui/ui.js", None), ("/", None), ("/docs.json", None), ("/healthz", None),
    ("/static_content/swagger-ui-bundle.js", None),
    ("/predict", "infer"), ("/predict_batch", "infer"), ("/models", "infer"),
    ("/models/digits", "infer"), ("/v2", "infer"), ("/v2/models/digits", "infer"),
    ("/v2/models/digits/infer", "infer"), ("/v2/models/digits/versions/1/infer", "infer"),
    ("/v2/models/digits/config", "infer"),
    ("/evaluate", "admin"), ("/evaluations/abc/confusion.png", "admin"),
    ("/v2/models/stats", "admin"), ("/v2/models/digits/stats", "admin"),
    ("/v2/models/digits/versions/1/stats", "admin"), ("/v2/repository/index", "admin"),
    ("/v2/repository/models/digits/load", "admin"), ("/anything/else", "admin"),
    ("/ui/../evaluate", "admin"),
])
def test_http_paths(path: str, need: str | None):
    assert http_scope(path) == need


def test_metrics_follow_the_flag():
    assert http_scope("/metrics", metrics_open=True) is None
    assert http_scope("/metrics", metrics_open=False) == "admin"


def test_settings_from_variables_and_flags(tmp_path: Path):
    path = tmp_path / "tokens"
    path.write_text(f"{INFER_TOKEN} infer\n")
    env = {"TTA_SERVE_TOKEN_FILE": str(path), "TTA_SERVE_METRICS_AUTH": "admin"}
    security = SecurityConfig.from_env(env).load(env)
    assert security.authorizer is not None and not security.metrics_open
    assert "token authorisation on (1 token(s) from" in security.describe()
    assert "/metrics needs admin" in security.describe()
    # a flag wins over its variable
    assert SecurityConfig.from_env(env, auth="off").load(env).authorizer is None
    both = {**env, "TTA_SERVE_TOKENS": f"{ADMIN_TOKEN} admin"}  # the lines win over the file
    assert "from $TTA_SERVE_TOKENS" in SecurityConfig.from_env(both).load(both).describe()
    flag = SecurityConfig.from_env(both, token_file=path).load(both)  # a flag wins over both
    assert f"from {path}" in flag.describe()
    off = SecurityConfig().load({})
    assert off.describe() == ("TLS off (plaintext); token authorisation off (no --token-file): "
                              "anyone who reaches the ports may call every API")
    with pytest.raises(ValueError, match="required .* no tokens were given"):
        SecurityConfig(auth="required").load({})
    with pytest.raises(ValueError, match="cannot read the token file"):
        SecurityConfig(token_file=tmp_path / "missing").load({})
    with pytest.raises(ValueError, match="both --tls-cert and --tls-key"):
        SecurityConfig(tls_cert=path).load({})
    with pytest.raises(ValueError, match="needs --tls-cert"):
        SecurityConfig(tls_client_ca=path).load({})
