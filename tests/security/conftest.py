"""Certificates for the security tests (made here, ``tls_testkit``), and token files."""

from __future__ import annotations

import pytest
from tls_testkit import ADMIN_TOKEN, INFER_TOKEN, CertificateAuthority, Pki


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
