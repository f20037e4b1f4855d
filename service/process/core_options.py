"""The core options every ``tta-serve`` sub-command shares, and the CoreConfig they make.

Its own module so that the serving commands (``service.cli``) and the predict/evaluate commands
(``service.predict.cli``, which runs a core in-process without ``--url``) parse the same flags
without importing each other.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.core.config import DEVICES, CoreConfig, VersionPolicy
from service.process.serve_env import MODELS_DIR_ENV, default_models_dir


def _version_policy(text: str) -> VersionPolicy:
    try:
        return VersionPolicy.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


@dataclass(frozen=True)
class CoreFlag:
    """One ``tta-serve`` option that sets one CoreConfig field (its default is the field's)."""

    field: str  # CoreConfig's
    flag: str
    group: str  # the --help section
    help: str
    type: Callable[[str], Any] | None = None
    choices: Sequence[str] | None = None
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


MODELS, LIMITS = "models and inference", "batching and limits"
# The one list of core options: the parser, core_config_from_args and the tests' flags for a
# CoreConfig (tests/support/http_testkit.cli_flags) are all made from it.
CORE_FLAGS = (
    CoreFlag("models_dir", "--models-dir", MODELS, type=Path,
             help=f"model repository, NAME/VERSION/{{model.onnx,model.json}} (default: "
                  f"${MODELS_DIR_ENV} or the repository's models/)"),
    CoreFlag("default_model", "--model", MODELS,
             help="default model, used when a request names none (default: the only model in "
                  "the repository, else cifar10 when it is there)"),
    CoreFlag("version_policy", "--version-policy", MODELS, type=_version_policy,
             metavar="latest|pinned:N",
             help="serve the newest valid version (hot-reloading new ones) or one pinned "
                  "version (default: latest)"),
    CoreFlag("variant", "--variant", MODELS, metavar="int8|fp16|NAME=KIND,...",
             help="serve the reduced-precision variant training export recorded in model.json "
                  "(--int8/--fp16) instead of model.onnx: for every model that has one, or per "
                  "model (NAME=KIND, required) (default: model.onnx)"),
    CoreFlag("device", "--device", MODELS, choices=DEVICES,
             help="auto = CUDA when usable, else CPU; cuda refuses to start without a GPU "
                  "(default: %(default)s)"),
    CoreFlag("intra_op_threads", "--intra-op-threads", MODELS, type=int,
             help="ONNX Runtime threads per model (default: %(default)s)"),
    CoreFlag("poll_interval_s", "--poll-interval-s", MODELS, type=float,
             help="seconds between model repository scans for new versions; 0 = off "
                  "(default: %(default)s)"),
    CoreFlag("max_batch_size", "--max-batch-size", LIMITS, type=int,
             help="rows per forward pass (an image is 1 row, V with TTA); 1 = batching off "
                  "(default: %(default)s)"),
    CoreFlag("max_wait_ms", "--max-wait-ms", LIMITS, type=float,
             help="how long a batch waits for more images (default: %(default)s)"),
    CoreFlag("max_pending", "--max-pending", LIMITS, type=int,
             help="requests in flight before new ones get 'overloaded' (default: %(default)s)"),
    CoreFlag("decode_threads", "--decode-threads", LIMITS, type=int,
             help="threads decoding images (default: %(default)s)"),
    CoreFlag("max_image_bytes", "--max-image-bytes", LIMITS, type=int,
             help="largest encoded image accepted, bytes (default: %(default)s)"),
    CoreFlag("max_pixels", "--max-pixels", LIMITS, type=int,
             help="largest image accepted, width x height (default: %(default)s)"),
)


def add_core_options(parser: argparse.ArgumentParser) -> None:
    """The options every front end shares; they map one-to-one onto CoreConfig (CORE_FLAGS)."""
    defaults = CoreConfig(models_dir=Path("."))  # the defaults, in one place
    groups = {name: parser.add_argument_group(name) for name in (MODELS, LIMITS)}
    for option in CORE_FLAGS:
        # --models-dir: None, so that $TTA_SERVE_MODELS_DIR or the bundled folder fills it in
        default = None if option.field == "models_dir" else getattr(defaults, option.field)
        extra = {key: value for key, value in (("type", option.type), ("choices", option.choices),
                                                ("metavar", option.metavar)) if value is not None}
        groups[option.group].add_argument(option.flag, default=default, help=option.help,
                                          **extra)
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def core_parser(**defaults: object) -> argparse.ArgumentParser:
    """The core options as a parent parser (``parents=[core_parser()]``), with ``defaults``
    replacing some of theirs (``tta-serve predict``: no --model unless given)."""
    parent = argparse.ArgumentParser(add_help=False)
    add_core_options(parent)
    parent.set_defaults(**defaults)
    return parent


def core_config_from_args(args: argparse.Namespace) -> CoreConfig:
    values = {option.field: getattr(args, option.dest) for option in CORE_FLAGS}
    return CoreConfig(**{**values, "models_dir": values["models_dir"] or default_models_dir()})
