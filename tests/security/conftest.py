"""Certificates for the security tests (made here, ``tls_testkit``), and token files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from tls_testkit import CertificateAuthority, Pair

INFER_TOKEN = "infer-token-0123456789abcdefghij"
ADMIN_TOKEN = "admin-token-0123456789abcdefghij"


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA that signed server and client
    server: Pair
    expired_server: Pair
    client: Pair
    stranger: Pair  # a client certificate from another CA
    tokens: Path  # INFER_TOKEN infer, ADMIN_TOKEN infer,admin


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(folder / "ca")
    other = CertificateAuthority(folder / "other", name="another CA")
    tokens = folder / "tokens"
    tokens.write_text(f"# tests\n{INFER_TOKEN} infer\n{ADMIN_TOKEN} infer,admin\n")
    return Pki(ca=ca.path, server=ca.issue("server"),
               expired_server=ca.issue("expired", days=(-40, -10)),
               client=ca.issue("client", server=False),
               stranger=other.issue("stranger", server=False), tokens=tokens)
