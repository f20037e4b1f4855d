"""The serving commands' security flags and the SecurityConfig they make, with the ``TTA_SERVE_*``
variables (``service.security.config``) filling in what no flag gives: one set of settings for
both wires. No flag takes a token itself (a command line is visible to every user of the
machine in ``ps``): tokens come from a file or ``$TTA_SERVE_TOKENS``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

from service.security.config import AUTH_MODES, METRICS_AUTH, SecurityConfig, env_name


def add_security_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "TLS and tokens", "off by default; docs/deploy.md shows certificates, the token file "
                          "and rotation")
    g.add_argument("--tls-cert", type=Path, default=None, metavar="PEM",
                   help=f"serve gRPC and HTTP over TLS with this certificate chain "
                        f"(${env_name('tls_cert')})")
    g.add_argument("--tls-key", type=Path, default=None, metavar="PEM",
                   help=f"the certificate's private key (${env_name('tls_key')})")
    g.add_argument("--tls-client-ca", type=Path, default=None, metavar="PEM",
                   help=f"mutual TLS: require client certificates signed by these CAs "
                        f"(${env_name('tls_client_ca')})")
    g.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                   help=f"bearer tokens, one 'TOKEN SCOPE[,SCOPE]' a line (scopes: infer, "
                        f"admin), re-read when it changes (${env_name('token_file')}; or the "
                        f"lines themselves in $TTA_SERVE_TOKENS)")
    g.add_argument("--auth", choices=AUTH_MODES, default=None,
                   help=f"auto: tokens checked when given; required: refuse to start without; "
                        f"off: never checked (${env_name('auth')}; default: auto)")
    g.add_argument("--metrics-auth", choices=METRICS_AUTH, default=None,
                   help=f"/metrics open to scrapers, or for admin tokens only "
                        f"(${env_name('metrics_auth')}; default: open)")


def security_config_from_args(args: argparse.Namespace,
                              environ: Mapping[str, str] | None = None) -> SecurityConfig:
    """The flags given, the variables for the rest."""
    return SecurityConfig.from_env(
        os.environ if environ is None else environ,
        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
        token_file=args.token_file, auth=args.auth, metrics_auth=args.metrics_auth)
