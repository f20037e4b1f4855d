"""The client's addresses, token sources and credentials: what reaches the server, and what
never shows (the token in a repr)."""

from __future__ import annotations

import pytest

from service.client.connection import BearerToken, Credentials, parse_url

TOKEN = "client-token-0123456789abcdef"


def test_addresses():
    assert parse_url("grpcs://host:50051") == ("host:50051", True)
    assert parse_url("grpc://host:50051/") == ("host:50051", False)
    assert parse_url("127.0.0.1:1") == ("127.0.0.1:1", False)
    with pytest.raises(ValueError, match="grpcs://host:port"):
        parse_url("https://host:3000/x")


def test_token_sources(tmp_path, monkeypatch):
    path = tmp_path / "token"
    path.write_text(f"# mine\n\n{TOKEN} infer\n")  # a server-format line works too
    assert Credentials.token_from(path) == TOKEN
    path.write_text("# nothing\n")
    with pytest.raises(ValueError, match="holds no token"):
        Credentials.token_from(path)
    monkeypatch.setenv("TTA_SERVE_CLIENT_TOKEN", TOKEN)
    assert Credentials.token_from() == TOKEN
    monkeypatch.delenv("TTA_SERVE_CLIENT_TOKEN")
    assert Credentials.token_from() is None


def test_the_token_never_shows_in_a_repr():
    assert TOKEN not in repr(Credentials(token=TOKEN))
    assert TOKEN not in repr(BearerToken(TOKEN))


def test_tls_files_on_a_plaintext_address_are_a_mistake(tmp_path):
    from service.client import Client

    with pytest.raises(ValueError, match="grpcs://"):
        Client("127.0.0.1:1", ca_cert=tmp_path / "ca.pem")
