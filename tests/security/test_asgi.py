"""The ASGI middleware as ``bentoml serve service.http.service:Classifier`` gets it: no settings
provided by tta-serve's process, so the ``TTA_SERVE_*`` variables decide."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from service.security import asgi

TOKEN = "asgi-token-0123456789abcdefghij"


async def _ok(scope, receive, send) -> None:  # noqa: ANN001
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _get(app, path: str, token: str | None = None) -> httpx.Response:  # noqa: ANN001
    async def go() -> httpx.Response:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://test") as client:
            return await client.get(path, headers=headers)

    return asyncio.run(go())


def test_settings_from_the_variables_when_none_are_provided(monkeypatch):
    monkeypatch.setattr(asgi, "_provided", None)
    monkeypatch.setenv("TTA_SERVE_TOKENS", f"{TOKEN} infer")
    monkeypatch.setenv("TTA_SERVE_METRICS_AUTH", "admin")
    app = asgi.BearerAuth(_ok)
    assert _get(app, "/models").status_code == 401
    assert _get(app, "/models", TOKEN).text == "ok"
    assert _get(app, "/livez").text == "ok"
    denied = _get(app, "/metrics", TOKEN)
    assert denied.status_code == 403 and denied.json()["kind"] == "permission_denied"


def test_no_tokens_no_check(monkeypatch):
    monkeypatch.setattr(asgi, "_provided", None)
    for name in ("TTA_SERVE_TOKENS", "TTA_SERVE_TOKEN_FILE", "TTA_SERVE_AUTH"):
        monkeypatch.delenv(name, raising=False)
    assert _get(asgi.BearerAuth(_ok), "/evaluate").text == "ok"


def test_a_bad_setting_fails_when_the_app_is_built(monkeypatch):
    monkeypatch.setattr(asgi, "_provided", None)
    monkeypatch.setenv("TTA_SERVE_AUTH", "required")
    monkeypatch.delenv("TTA_SERVE_TOKENS", raising=False)
    monkeypatch.delenv("TTA_SERVE_TOKEN_FILE", raising=False)
    with pytest.raises(ValueError, match="no tokens were given"):
        asgi.BearerAuth(_ok)
