"""The BentoML/uvicorn/Starlette patches fail fast (issue 24): every target is checked at start-up,
and an upgrade that renames one stops the server with a message naming it.

An upgrade cannot be installed here (no network on CI), so each test renames the target the way
an upgrade would: ``monkeypatch`` removes it from the real third-party module (restored after).
"""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from types import MappingProxyType

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from service.core.errors import UnsupportedDependency
from service.http import patches

ROOT = Path(__file__).resolve().parents[2]


def _owner_and_name(path: str) -> tuple[object, str]:
    """Where the target's last name is defined (a class up the MRO for an inherited method)."""
    module_name, _, attrs = path.partition(":")
    *outer, name = attrs.split(".")
    owner: object = importlib.import_module(module_name)
    for attr in outer:
        owner = getattr(owner, attr)
    if inspect.isclass(owner):
        owner = next(k for k in inspect.getmro(owner) if name in vars(k))
    return owner, name


def test_the_installed_packages_fit_every_target():
    assert patches.problems() == []
    patches.check()  # raises nothing


@pytest.mark.parametrize("target", patches.TARGETS, ids=lambda t: t.path)
def test_a_renamed_target_refuses_to_serve_naming_it(target, monkeypatch):
    owner, name = _owner_and_name(target.path)
    monkeypatch.delattr(owner, name)
    with pytest.raises(UnsupportedDependency) as refused:
        patches.check()
    message = str(refused.value)
    version = patches.installed_version(target.package)
    # "is missing", or (a dunder method falls back to object's) "takes (...), expected (...)"
    assert re.search(f"{re.escape(target.path)} .* in {target.package} {re.escape(version)}",
                     message), message
    assert "refuses to serve" in message and "constraints.txt" in message


def test_a_target_of_another_shape_refuses_to_serve(monkeypatch):
    import uvicorn.server
    from _bentoml_impl import serde

    monkeypatch.setattr(uvicorn.server.Server, "handle_exit", lambda self, signum: None)
    monkeypatch.setattr(serde, "ALL_SERDE", MappingProxyType(dict(serde.ALL_SERDE)))
    found = patches.problems()
    assert any(p.startswith("uvicorn.server:Server.handle_exit takes (self, signum), expected "
                            "(self, sig, frame, ...)") for p in found), found
    assert any(p.startswith("_bentoml_impl.serde:ALL_SERDE is a mappingproxy, not a dict")
               for p in found), found


def test_serve_that_no_longer_calls_capture_signals_refuses(monkeypatch):
    import uvicorn.server

    async def serve(self, sockets=None):  # an upgrade that installs its handlers elsewhere
        return None

    monkeypatch.setattr(uvicorn.server.Server, "serve", serve)
    assert any("Server.serve no longer calls self.capture_signals(...)" in p
               for p in patches.problems())


def test_a_version_outside_the_supported_range_refuses(monkeypatch):
    real = patches.installed_version
    monkeypatch.setattr(patches, "installed_version",
                        lambda package: "0.99.0" if package == "uvicorn" else real(package))
    supported = patches.SUPPORTED["uvicorn"]
    with pytest.raises(UnsupportedDependency, match=re.escape(
            f"uvicorn 0.99.0 is outside the supported range uvicorn{supported}")):
        patches.check()


def test_pyproject_bounds_and_constraints_agree_with_the_supported_ranges():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bounds = {r.name: r.specifier for r in map(Requirement, project["dependencies"])}
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for package, supported in patches.SUPPORTED.items():
        assert bounds[package] == SpecifierSet(supported), package
        assert pins[package] in SpecifierSet(supported), (package, pins[package])


def test_tta_serve_http_stops_at_start_up_naming_the_missing_target(tmp_path):
    """What an upgrade that renamed uvicorn's ``Server.handle_exit`` does to ``tta-serve http``:
    exit code 2 and one line naming the target, before any model loads or port is bound."""
    script = textwrap.dedent("""
        import sys
        import uvicorn.server
        del uvicorn.server.Server.handle_exit  # as an upgrade renaming it would
        from service.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    done = subprocess.run(
        [sys.executable, "-c", script, "http", "--models-dir", str(tmp_path), "--port", "0"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("tta-serve: error: the HTTP front end refuses to serve"), last
    assert "uvicorn.server:Server.handle_exit is missing in uvicorn " in last
    assert "listening" not in done.stderr
