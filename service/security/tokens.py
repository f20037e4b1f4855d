"""Bearer tokens with scopes: the token file, its reload, and the constant-time check.

The token file (``--token-file`` / ``$TTA_SERVE_TOKEN_FILE``; or the same text in
``$TTA_SERVE_TOKENS``, never a command-line argument, where ``ps`` would show it) has one token
a line::

    # TOKEN                              SCOPES (comma-separated: infer, admin)
    3q2+7wP1Yb0oJt8nS0k4e6x5uVd9Qm2Lr7c  infer
    Zr8vK1mWq3Ns6Tb0Yc4Xe7Ud2Pa9Lf5Hg1j  infer,admin

Blank lines and lines starting with ``#`` are ignored. A token is 16 or more characters of the
RFC 6750 ``b64token`` alphabet (``A-Z a-z 0-9 - . _ ~ + /``, then optional ``=``), e.g.
``python -c "import secrets; print(secrets.token_urlsafe(32))"``. A line that breaks these rules
is an error naming the file and line (never the token): the server does not start, and a reload
keeps the previous tokens.

Rotation without a restart: the file's modification time, size and inode are looked at, at most
once a second, on the next call that needs a token; when they changed the file is read again
(Kubernetes replaces a mounted Secret's file by a new one: that counts). Tokens from
``$TTA_SERVE_TOKENS`` change with a restart.

The check hashes the presented token (SHA-256) and compares the digest with every known token's
digest with ``hmac.compare_digest``, without stopping at a match: the time taken does not depend
on how much of a token was right, or on which line it is.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

INFER = "infer"
ADMIN = "admin"
SCOPES = (INFER, ADMIN)
MIN_TOKEN_CHARS = 16
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
RELOAD_CHECK_S = 1.0


class TokenFileError(ValueError):
    """A token file the server cannot use; the message names the file and line, not the token."""


@dataclass(frozen=True)
class TokenTable:
    """Digests of the known tokens and their scopes."""

    entries: tuple[tuple[bytes, frozenset[str]], ...]

    def scopes_of(self, token: str) -> frozenset[str] | None:
        """The scopes of ``token``, None when unknown; the same work whichever line matches."""
        digest = _digest(token)
        found: frozenset[str] | None = None
        for known, scopes in self.entries:
            if hmac.compare_digest(known, digest):
                found = scopes
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def parse_tokens(text: str, source: str) -> TokenTable:
    """``TOKEN SCOPE[,SCOPE]`` lines -> a TokenTable; TokenFileError names ``source`` and line."""
    entries = []
    for number, line in enumerate(text.replace(";", "\n").splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        where = f"{source}, line {number}"
        if len(fields) != 2:
            raise TokenFileError(f"{where}: expected 'TOKEN SCOPE[,SCOPE]' (two fields), got "
                                 f"{len(fields)}")
        token, scope_text = fields
        if len(token) < MIN_TOKEN_CHARS or not TOKEN_PATTERN.fullmatch(token):
            raise TokenFileError(f"{where}: a token is {MIN_TOKEN_CHARS}+ characters of "
                                 "A-Z a-z 0-9 - . _ ~ + / (then optional =)")
        scopes = frozenset(s for s in scope_text.split(",") if s)
        unknown = sorted(scopes - set(SCOPES))
        if unknown or not scopes:
            raise TokenFileError(f"{where}: unknown scope(s) {', '.join(unknown) or '(none)'}; "
                                 f"scopes are {', '.join(SCOPES)}")
        entries.append((_digest(token), scopes))
    if not entries:
        raise TokenFileError(f"{source} holds no tokens; one 'TOKEN SCOPE[,SCOPE]' per line")
    return TokenTable(tuple(entries))


class TokenFile:
    """A token file, read again when it changed (checked at most every RELOAD_CHECK_S)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._signature = self._stat()
        self.table = self._read()
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int, int]:
        try:
            info = os.stat(self.path)
        except OSError as e:
            raise TokenFileError(f"cannot read the token file {self.path}: "
                                 f"{e.strerror or e}") from None
        return info.st_mtime_ns, info.st_size, info.st_ino

    def _read(self) -> TokenTable:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TokenFileError(f"cannot read the token file {self.path}: {e}") from None
        return parse_tokens(text, str(self.path))

    def current(self) -> TokenTable:
        """The table, reloaded first when the file changed; a bad new file keeps the old one."""
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_S or not self._lock.acquire(blocking=False):
            return self.table
        try:
            self._checked = now
            signature = self._stat()
            if signature != self._signature:
                self._signature = signature
                self.table = self._read()
                log.info("token file %s reloaded: %d token(s)", self.path,
                         len(self.table.entries))
        except TokenFileError as e:
            log.error("token file not reloaded, the previous tokens stay in force: %s", e)
        finally:
            self._lock.release()
        return self.table

    def describe(self) -> str:
        return f"{len(self.table.entries)} token(s) from {self.path}, reloaded when it changes"


class FixedTokens:
    """Tokens given in a variable ($TTA_SERVE_TOKENS): fixed for the life of the process."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.table = parse_tokens(text, source)

    def current(self) -> TokenTable:
        return self.table

    def describe(self) -> str:
        return f"{len(self.table.entries)} token(s) from ${self.source}"
