"""CoreConfig <-> environment variables: settings for the HTTP service under ``bentoml serve``.

``tta-serve`` serves the HTTP service in its own process over its own core
(``service.process.runner``). Run by hand with ``bentoml serve``, the service starts in worker
processes of BentoML's, which take no command-line arguments of ours; the environment is what they
inherit. Every CoreConfig field has one variable, ``TTA_SERVE_`` + the field name in capitals
(``models_dir`` -> ``TTA_SERVE_MODELS_DIR``, the variable the CLI also reads), so ``bentoml serve
service.http.service:Classifier`` can be configured by hand. Unset variables keep the CoreConfig
defaults; the models folder defaults to ``default_models_dir()``, as for the CLI and ``training
export``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from service.core.config import CoreConfig, VersionPolicy

PREFIX = "TTA_SERVE_"
MODELS_DIR_ENV = PREFIX + "MODELS_DIR"
LOG_LEVEL_ENV = PREFIX + "LOG_LEVEL"


def default_models_dir() -> Path:
    """$TTA_SERVE_MODELS_DIR, else the repository's models/ beside the package, else ./models."""
    if os.environ.get(MODELS_DIR_ENV):
        return Path(os.environ[MODELS_DIR_ENV])
    beside_package = Path(__file__).resolve().parents[1] / "models"
    return beside_package if beside_package.is_dir() else Path("models")


def _models(text: str) -> tuple[str, ...] | None:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    return names or None


# Field -> parser of its variable; fields not listed take their default's type (int, float, str).
_PARSERS: dict[str, Callable[[str], Any]] = {
    "models_dir": Path,
    "models": _models,
    "version_policy": VersionPolicy.parse,
}


def env_name(field: str) -> str:
    return PREFIX + field.upper()


def core_config_to_env(config: CoreConfig) -> dict[str, str]:
    """Every field of ``config`` as a variable (``models`` comma-separated, "" = all).

    ``models_dir`` is made absolute here, against this process's working directory: BentoML's
    workers run in another one (``--working-dir``), where a relative path would name another
    folder than the one meant here.
    """
    env = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "models":
            value = ",".join(value or ())
        elif f.name == "models_dir":
            value = Path(value).resolve()
        env[env_name(f.name)] = str(value)
    return env


def core_config_from_env(environ: Mapping[str, str] | None = None) -> CoreConfig:
    """The CoreConfig the variables describe; ValueError names a variable that does not parse."""
    environ = os.environ if environ is None else environ
    defaults = CoreConfig(models_dir=Path("."))
    settings: dict[str, Any] = {}
    for f in dataclasses.fields(CoreConfig):
        name = env_name(f.name)
        if name not in environ:
            continue
        parse = _PARSERS.get(f.name) or type(getattr(defaults, f.name))
        try:
            settings[f.name] = parse(environ[name])
        except ValueError as e:
            raise ValueError(f"{name}={environ[name]!r} is not valid: {e}") from e
    settings.setdefault("models_dir", default_models_dir())
    return CoreConfig(**settings)
