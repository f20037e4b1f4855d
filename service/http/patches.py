"""Every place the HTTP front end reaches into BentoML, uvicorn or Starlette past their public API,
checked at start-up: a renamed target refuses to serve instead of silently serving unguarded.

Why a check: each correction below replaces or subclasses something private. If an upgrade
renames it, Python does not complain: the assignment adds a new attribute nobody calls, the
subclass overrides a method nobody calls, and the server starts with URL fetching (SSRF) back
on, or without the SIGTERM drain. ``require()`` (run by ``install()``, by ``HttpServer`` before
anything listens, and by ``bentoml serve`` importing the service) checks every target's
existence and shape, and the installed versions against ``SUPPORTED`` (pyproject.toml says the
same; ``tests/http/test_patches.py`` checks both). A mismatch raises ``UnsupportedDependency``
naming the target, the installed version and the supported range.

The patches, what each corrects (the implementations: ``service.http.hardening``) and what
would retire it:

1. ``TimeoutMiddleware.__call__`` (bentoml): BentoML schedules a timer per request and never
   cancels it, keeping each request's context alive for the whole traffic timeout. Retire when
   BentoML's ``traffic.py`` cancels it (unchanged through 1.4.39; no upstream issue found,
   bentoml/BentoML#5642 is about the same middleware's timeouts).
2. ``ALL_SERDE`` entries (bentoml): file fields given as text are downloaded (SSRF) and client
   mistakes answered 500. Retire when BentoML stops fetching URLs for file inputs and answers
   malformed bodies 400 (no upstream issue found; 1.4.39 still calls ``ensure_file``).
3. The ``bentoml._internal.server.http_app`` logger (bentoml): a traceback per client error
   becomes one INFO line (and ``form_limits`` drops the 413's). Retire when BentoML logs 4xx
   without the stack.
4. ``Server.handle_exit`` (uvicorn, under ``bentoml serve``) and ``Server.capture_signals``
   (``QuietUvicorn``, in tta-serve's process): uvicorn's shutdown closes idle keep-alive
   connections at once, resetting requests on their way (the "empty reply" of
   Kludex/uvicorn#669, closed unfixed), so the front end drains first. Retire when uvicorn
   drains keep-alive connections itself.
5. Private reads, not patches, checked the same way because a rename breaks them as silently:
   ``BentoMLContainer`` (``bentoml._internal.configuration.containers``), ``PrometheusClient``
   (``multiproc=False``), ``server_context`` and ``join_paths``: what BentoML's worker sets up
   before ``Service.to_asgi()``, which ``HttpServer`` does in-process; ``_bentoml_sdk``'s
   typing helpers and ``Payload`` for the serdes; Starlette's ``Request.form`` limits read by
   ``form_limits``. Retire when BentoML offers an in-process ASGI app.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import inspect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from packaging.specifiers import SpecifierSet

from service.core.errors import UnsupportedDependency

# What the targets below were checked against (pyproject.toml bounds the same; constraints.txt
# pins inside). Outside it the server refuses to start even if every target looks right.
SUPPORTED = {"bentoml": ">=1.4,<1.5", "uvicorn": ">=0.30,<0.55", "starlette": ">=0.40,<2"}
HTTP_APP_LOGGER = "bentoml._internal.server.http_app"


@dataclass(frozen=True)
class Target:
    """``module:attr.path`` in ``package``, and what it must look like (None = it fits)."""

    path: str
    package: str
    shape: Callable[[Any], str | None]

    def resolve(self) -> Any:
        module_name, _, attrs = self.path.partition(":")
        found: Any = importlib.import_module(module_name)
        for attr in attrs.split("."):
            found = getattr(found, attr)
        return found


def _params(*names: str) -> Callable[[Any], str | None]:
    """A callable whose parameters start with ``names`` (a method: ``self`` first)."""

    def check(target: Any) -> str | None:
        if not callable(target):
            return f"is a {type(target).__name__}, not callable"
        got = list(inspect.signature(target).parameters)
        return None if got[:len(names)] == list(names) else (
            f"takes ({', '.join(got)}), expected ({', '.join(names)}, ...)")

    return check


def _async_params(*names: str) -> Callable[[Any], str | None]:
    def check(target: Any) -> str | None:
        if not inspect.iscoroutinefunction(target):
            return "is not an async function"
        return _params(*names)(target)

    return check


def _has(*attrs: str) -> Callable[[Any], str | None]:
    def check(target: Any) -> str | None:
        missing = [a for a in attrs if not hasattr(target, a)]
        return f"has no {', '.join(missing)}" if missing else None

    return check


def _serde_table(table: Any) -> str | None:
    if not isinstance(table, dict):  # patched in place: BentoML looks the type up per request
        return f"is a {type(table).__name__}, not a dict"
    wanted = ("application/json", "multipart/form-data", "application/x-www-form-urlencoded")
    missing = [t for t in wanted if t not in table]
    return f"has no entry for {', '.join(missing)}" if missing else None


def _calls(call: str) -> Callable[[Any], str | None]:
    """A function whose source still makes ``call``: overriding the method it calls (or
    ``capture_signals``, which ``Server.serve`` calls) only helps while it is called."""

    def check(function: Any) -> str | None:
        return None if call in inspect.getsource(function) else f"no longer calls {call}...)"

    return check


def _logger_named(logger: Any) -> str | None:
    name = getattr(logger, "name", None)
    return None if name == HTTP_APP_LOGGER else f"is named {name!r}, not {HTTP_APP_LOGGER!r}"


def _connections(state_class: Any) -> str | None:
    return None if isinstance(getattr(state_class(), "connections", None), set) else (
        "has no 'connections' set")


def _multiproc(init: Any) -> str | None:
    return None if "multiproc" in inspect.signature(init).parameters else "takes no multiproc"


def _form_limits(form: Any) -> str | None:
    params = inspect.signature(form).parameters
    missing = [p for p in ("max_files", "max_fields")
               if p not in params or not isinstance(params[p].default, int)]
    return f"has no integer default for {', '.join(missing)}" if missing else None


_TRAFFIC = "bentoml._internal.server.http.traffic"
TARGETS = (
    Target(f"{_TRAFFIC}:TimeoutMiddleware.__call__", "bentoml",
           _async_params("self", "scope", "receive", "send")),
    Target(f"{_TRAFFIC}:TimeoutMiddleware._set_timer_out", "bentoml", _params("self", "waiter")),
    Target(f"{_TRAFFIC}:TimeoutMiddleware.__init__", "bentoml", _params("self", "app", "timeout")),
    Target("_bentoml_impl.serde:ALL_SERDE", "bentoml", _serde_table),
    # What BentoML calls on a serde (our subclasses override it) and what NoFetchJSON calls.
    Target("_bentoml_impl.serde:Serde.parse_request", "bentoml",
           _async_params("self", "request", "cls")),
    Target("_bentoml_sdk.io_models:IODescriptor.from_http_request", "bentoml",
           _calls("serde.parse_request(")),
    Target("_bentoml_impl.serde:Serde.deserialize_model", "bentoml",
           _params("self", "payload", "cls")),
    Target("_bentoml_impl.serde:JSONSerde", "bentoml", _has("parse_request")),
    Target("_bentoml_impl.serde:MultipartSerde", "bentoml", _has("parse_request")),
    Target("_bentoml_sdk.io_models:IODescriptor.multipart_fields", "bentoml", _has("__iter__")),
    Target("_bentoml_impl.serde:Payload", "bentoml", _params("data", "metadata")),
    Target("_bentoml_sdk.typing_utils:get_args", "bentoml", _params()),
    Target("_bentoml_sdk.typing_utils:is_list_type", "bentoml", _params()),
    Target("_bentoml_sdk.typing_utils:is_union_type", "bentoml", _params()),
    Target(f"{HTTP_APP_LOGGER}:logger", "bentoml", _logger_named),
    Target("bentoml._internal.configuration.containers:BentoMLContainer", "bentoml",
           _has("metrics_client", "development_mode")),
    Target("bentoml._internal.server.metrics.prometheus:PrometheusClient.__init__", "bentoml",
           _multiproc),
    Target("bentoml._internal.context:server_context", "bentoml",
           _has("service_type", "service_name", "service_routes", "bento_name")),
    Target("bentoml._internal.utils.uri:join_paths", "bentoml", _params()),
    Target("uvicorn.server:Server.handle_exit", "uvicorn", _params("self", "sig", "frame")),
    Target("uvicorn.server:Server.capture_signals", "uvicorn", _params("self")),
    Target("uvicorn.server:Server.serve", "uvicorn", _calls("self.capture_signals(")),
    Target("uvicorn.server:ServerState", "uvicorn", _connections),
    Target("starlette.requests:Request.form", "starlette", _form_limits),
)




def installed_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def problems() -> list[str]:
    """What is wrong with the installed packages, one line each; [] = the patches fit."""
    found = []
    for package, supported in SUPPORTED.items():
        version = installed_version(package)
        if version == "not installed" or version not in SpecifierSet(supported):
            found.append(f"{package} {version} is outside the supported range {package}"
                         f"{supported}")
    for target in TARGETS:
        version = installed_version(target.package)
        try:
            resolved = target.resolve()
        except (ImportError, AttributeError) as e:
            found.append(f"{target.path} is missing in {target.package} {version} ({e})")
            continue
        try:
            shape = target.shape(resolved)
        except (TypeError, ValueError, OSError) as e:  # no signature, no source to read
            shape = f"cannot be checked ({e})"
        if shape:
            found.append(f"{target.path} {shape} in {target.package} {version}")
    return found


def check() -> None:
    """Raise ``UnsupportedDependency`` naming every target that does not fit."""
    found = problems()
    if found:
        raise UnsupportedDependency(
            f"the HTTP front end refuses to serve: {'; '.join(found)}. It corrects these "
            "BentoML/uvicorn/Starlette internals (service/http/patches.py says why); install "
            "the versions in constraints.txt")


@functools.cache
def require() -> None:
    """``check()`` once per process (a failure is not cached: it raises every time)."""
    check()


_installed = False


def install() -> None:
    """Check, then apply patches 1-4 in this process (idempotent), when it imports the service."""
    global _installed
    if _installed:
        return
    require()
    from _bentoml_impl import serde
    from bentoml._internal.server.http import traffic

    from service.http import form_limits, hardening  # private imports: once they are checked

    traffic.TimeoutMiddleware.__call__ = hardening.timeout_call  # type: ignore[method-assign]
    table: Any = serde.ALL_SERDE
    table["application/json"] = hardening.NoFetchJSON
    table["multipart/form-data"] = hardening.UploadsOnlyMultipart
    table["application/x-www-form-urlencoded"] = hardening.UploadsOnlyMultipart
    logging.getLogger(HTTP_APP_LOGGER).addFilter(hardening.QuietClientErrors())
    logging.getLogger(HTTP_APP_LOGGER).addFilter(form_limits.QuietTooManyFormParts())
    uvicorn.Server.handle_exit = hardening.drain_then_exit(  # type: ignore[method-assign]
        uvicorn.Server.handle_exit)
    _installed = True


class QuietUvicorn(uvicorn.Server):
    """uvicorn without signal handlers of its own: the process's owner stops it (patch 4)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def in_process_app(service: Any) -> Any:
    """``service``'s ASGI app as BentoML's worker builds it (patch 5): single-process
    Prometheus (no multiprocess files), production mode, the worker's server context."""
    require()
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.context import server_context
    from bentoml._internal.server.metrics.prometheus import PrometheusClient
    from bentoml._internal.utils.uri import join_paths

    BentoMLContainer.metrics_client.set(PrometheusClient(multiproc=False))
    BentoMLContainer.development_mode.set(False)
    server_context.service_type = "entry_service"
    server_context.service_name = service.name
    server_context.service_routes = [join_paths(service.path_prefix, api.route)
                                     for api in service.apis.values()]
    server_context.bento_name = service.name
    return service.to_asgi(is_main=True)
