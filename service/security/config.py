"""The security settings: flags (``service.process.security_options``) or ``TTA_SERVE_*``
variables -> ``SecurityConfig`` -> ``load()`` -> ``Security``, what the front ends are given.

Variables, read when a flag is not given (a container sets them; ``bentoml serve`` reads them):

=========================  ==========================  ===========================================
variable                   flag                        meaning
=========================  ==========================  ===========================================
TTA_SERVE_TLS_CERT         --tls-cert PEM              server certificate chain: TLS on both wires
TTA_SERVE_TLS_KEY          --tls-key PEM               its private key
TTA_SERVE_TLS_CLIENT_CA    --tls-client-ca PEM         mutual TLS: client certificates required
TTA_SERVE_TOKEN_FILE       --token-file FILE           bearer tokens, ``TOKEN SCOPE[,SCOPE]`` lines
TTA_SERVE_TOKENS           (none: never on a command line)  the same lines (or ``;``-separated)
TTA_SERVE_AUTH             --auth auto|required|off    auto: tokens on when given; required: refuse
                                                       to start without; off: never
TTA_SERVE_METRICS_AUTH     --metrics-auth open|admin   /metrics open, or an ``admin`` token
=========================  ==========================  ===========================================

``load`` checks everything before anything listens (a ValueError naming the file or variable:
the CLI prints it and exits 2): both of cert and key or neither, readable PEM files, a key that
fits, a certificate within its dates, a token file that parses.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from service.security.authorizer import Authorizer
from service.security.tls import WARN_EXPIRY_DAYS, TlsFiles
from service.security.tokens import FixedTokens, TokenFile

PREFIX = "TTA_SERVE_"
TOKENS_ENV = PREFIX + "TOKENS"
AUTH_MODES = ("auto", "required", "off")
METRICS_AUTH = ("open", "admin")


def env_name(field: str) -> str:
    return PREFIX + field.upper()


@dataclass(frozen=True)
class SecurityConfig:
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    token_file: Path | None = None
    auth: str = "auto"
    metrics_auth: str = "open"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 **given: object) -> SecurityConfig:
        """Each field from ``given`` when not None, else its variable, else the default.

        Tokens: a ``--token-file`` given wins, then ``$TTA_SERVE_TOKENS``, then
        ``$TTA_SERVE_TOKEN_FILE`` (so the container's default file path yields to the lines)."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            value = given.get(f.name)
            if f.name == "token_file" and environ.get(TOKENS_ENV, "").strip():
                pass  # the lines in $TTA_SERVE_TOKENS win over $TTA_SERVE_TOKEN_FILE
            elif value is None and environ.get(env_name(f.name)):
                value = environ[env_name(f.name)]
                value = Path(value) if f.type == "Path | None" else value
            if value is not None:
                values[f.name] = value
        return cls(**values)  # type: ignore[arg-type]

    def load(self, environ: Mapping[str, str] | None = None) -> Security:
        """Read and check every file; ValueError names what is wrong."""
        environ = os.environ if environ is None else environ
        if self.auth not in AUTH_MODES:
            raise ValueError(f"--auth / {env_name('auth')} is one of {', '.join(AUTH_MODES)}, "
                             f"not {self.auth!r}")
        if self.metrics_auth not in METRICS_AUTH:
            raise ValueError(f"--metrics-auth / {env_name('metrics_auth')} is one of "
                             f"{', '.join(METRICS_AUTH)}, not {self.metrics_auth!r}")
        tls, expires = self._tls()
        return Security(tls=tls, tls_expires=expires, authorizer=self._authorizer(environ),
                        metrics_open=self.metrics_auth == "open", auth_mode=self.auth)

    def tls_files(self) -> TlsFiles | None:
        """The TLS files named (unchecked); None = plaintext. ValueError for half a setting."""
        if self.tls_cert is None and self.tls_key is None:
            if self.tls_client_ca is not None:
                raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
            return None
        if self.tls_cert is None or self.tls_key is None:
            raise ValueError("TLS needs both --tls-cert and --tls-key (or TTA_SERVE_TLS_CERT "
                             "and TTA_SERVE_TLS_KEY)")
        return TlsFiles(Path(self.tls_cert), Path(self.tls_key),
                        Path(self.tls_client_ca) if self.tls_client_ca else None)

    def _tls(self) -> tuple[TlsFiles | None, dt.datetime | None]:
        files = self.tls_files()
        return (files, files.check()) if files is not None else (None, None)

    def _authorizer(self, environ: Mapping[str, str]) -> Authorizer | None:
        if self.auth == "off":
            return None
        if self.token_file is not None:
            return Authorizer(TokenFile(Path(self.token_file)))
        if environ.get(TOKENS_ENV, "").strip():
            return Authorizer(FixedTokens(environ[TOKENS_ENV], TOKENS_ENV))
        if self.auth == "required":
            raise ValueError("token authorisation is required (--auth required / TTA_SERVE_AUTH="
                             "required) but no tokens were given: mount a token file and name it "
                             "with --token-file or TTA_SERVE_TOKEN_FILE (docs/deploy.md), or "
                             "set TTA_SERVE_AUTH=off to serve without tokens")
        return None


@dataclass(frozen=True)
class Security:
    """What the front ends serve with: TLS files (None = plaintext) and the token check (None =
    anyone may call)."""

    tls: TlsFiles | None = None
    authorizer: Authorizer | None = None
    metrics_open: bool = True
    tls_expires: dt.datetime | None = None
    auth_mode: str = "auto"

    def describe(self) -> str:
        """The start-up line's part: what is protected, and how."""
        if self.tls is None:
            tls = "TLS off (plaintext)"
        else:
            mutual = ", mutual: client certificates required" if self.tls.mutual else ""
            tls = f"TLS on ({self.tls.cert}{mutual}; expires {self.tls_expires:%Y-%m-%d})"
        if self.authorizer is None:
            why = "--auth off" if self.auth_mode == "off" else "no --token-file"
            tokens = (f"token authorisation off ({why}): anyone who reaches the ports may call "
                      "every API")
        else:
            metrics = "/metrics open" if self.metrics_open else "/metrics needs admin"
            tokens = f"token authorisation on ({self.authorizer.describe()}; {metrics})"
        return f"{tls}; {tokens}"

    def expiry_warning(self, now: dt.datetime | None = None) -> str | None:
        """A warning when the certificate expires within WARN_EXPIRY_DAYS."""
        if self.tls_expires is None:
            return None
        left = self.tls_expires - (now or dt.datetime.now(dt.UTC))
        if left > dt.timedelta(days=WARN_EXPIRY_DAYS):
            return None
        return (f"the TLS certificate {self.tls.cert if self.tls else ''} expires in "
                f"{left.days} day(s), on {self.tls_expires:%Y-%m-%d %H:%M} UTC: renew it")


NO_SECURITY = Security()
