"""The core's settings in one typed place; every front end builds one ``CoreConfig``.

The CLI maps its flags one-to-one onto these fields (``--max-batch-size`` -> max_batch_size),
which is why error messages name the flags.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from service.core.errors import ModelNotFound
from service.imaging import DEFAULT_MAX_PIXELS
from service.model_repository import ModelRepository

DEVICES = ("auto", "cpu", "cuda")
VARIANT_KINDS = ("int8", "fp16")  # what training export --int8/--fp16 writes


@dataclass(frozen=True)
class VersionPolicy:
    """Which version of each model is served: the newest valid one, or one pinned number."""

    pinned: int | None = None

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """'latest' or 'pinned:N' (the --version-policy syntax)."""
        text = text.strip().lower()
        if text == "latest":
            return cls()
        if text.startswith("pinned:") and text[len("pinned:"):].isdigit():
            version = int(text[len("pinned:"):])
            if version >= 1:
                return cls(pinned=version)
        raise ValueError(f"version policy {text!r} not understood; use 'latest' or 'pinned:N' "
                         "with N >= 1")

    def __str__(self) -> str:
        return "latest" if self.pinned is None else f"pinned:{self.pinned}"


@dataclass(frozen=True)
class VariantChoice:
    """``--variant`` parsed: "" (model.onnx everywhere), "KIND" (every model that has one; the
    others serve model.onnx) or "NAME=KIND,..." (those models; a version without it is refused)."""

    every: str | None = None
    named: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> VariantChoice:
        """The small language: "" | "KIND" | "NAME=KIND,..." (a bare KIND or "=KIND": every)."""
        out: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, kind = part.rpartition("=")
            name = name.strip() or "*"
            if kind.strip() not in VARIANT_KINDS:
                raise ValueError(f"variant {part!r}: the kind must be one of "
                                 f"{list(VARIANT_KINDS)} (--variant int8, or --variant "
                                 "NAME=KIND,...)")
            out[name] = kind.strip()
        every = out.pop("*", None)
        return cls(every=every, named=out)

    def for_model(self, model: str) -> tuple[str | None, bool]:
        """(kind, required) for ``model``: required when the model was named explicitly."""
        if model in self.named:
            return self.named[model], True
        return self.every, False


def default_threads() -> int:
    """ONNX Runtime intra-op threads: the cores we may use, capped (more rarely helps)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


# what models/ ships as the default (scripts/make_default_model.sh)
# Default largest message a front end takes (gRPC's message limit, OIP HTTP's body limit): room
# for a KServe v2 FP32 batch (32 images of 3x224x224 float32 are 19 MB) and for the core's own
# image-size check (whose message names --max-image-bytes).
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20


def default_max_message_bytes(max_image_bytes: int) -> int:
    """max(64 MiB, max_image_bytes + 1 MiB): one image up to the core's limit always fits."""
    return max(DEFAULT_MAX_MESSAGE_BYTES, max_image_bytes + (1 << 20))


BUNDLED_DEFAULT_MODEL = "cifar10"


@dataclass(frozen=True)
class CoreConfig:
    """Everything the inference core needs to start.

    Units are in the names: bytes, pixels (width x height), milliseconds, seconds.
    """

    models_dir: Path
    # The model a request that names none gets; "" chooses (resolve_default_model): the only
    # model of the repository, else the bundled default (BUNDLED_DEFAULT_MODEL) if present.
    default_model: str = ""
    # Serve only these models (None: every model in the repository, including ones added later).
    models: tuple[str, ...] | None = None
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    device: str = "auto"  # auto | cpu | cuda; "cuda" refuses to start without a usable GPU
    intra_op_threads: int = field(default_factory=default_threads)  # per model session
    # Dynamic batching: a forward pass takes up to max_batch_size model-input rows (an image is
    # one row, or V with TTA; a request's rows are never split) and waits at most max_wait_ms
    # for more to arrive, only while more requests are on their way. 1 turns batching off.
    max_batch_size: int = 32
    max_wait_ms: float = 2.0
    # Back-pressure (service.core.admission): requests admitted at once (decoding, queued or
    # running) before Overloaded, in the whole process (memory) and per model (waiting time; 0 =
    # no per-model bound).
    max_pending: int = 256
    max_queue: int = 128
    decode_threads: int = field(default_factory=lambda: max(2, min(os.cpu_count() or 1, 8)))
    max_image_bytes: int = 16 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    # Hot reload: seconds between model repository scans (0 = never; reload() still works).
    poll_interval_s: float = 10.0
    default_top_k: int = 5
    # Serve a reduced-precision variant that export recorded in model.json "variants" instead of
    # model.onnx: "" (none), "int8" (every model that has one; the others serve model.onnx), or
    # "NAME=KIND,..." per model (a version without that variant is refused). See variant_for.
    variant: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "models_dir", Path(self.models_dir))
        if self.models is not None:
            object.__setattr__(self, "models", tuple(self.models))
        problems = []
        if self.device not in DEVICES:
            problems.append(f"device {self.device!r} is not one of {list(DEVICES)}")
        for name in ("max_batch_size", "max_pending", "decode_threads", "max_image_bytes",
                     "max_pixels", "intra_op_threads", "default_top_k"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_wait_ms", "poll_interval_s", "max_queue"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        try:  # parsed once, here (cached): variant_for runs on every model load
            self.variant_choice  # noqa: B018 -- the parse, for its ValueError
        except ValueError as e:
            problems.append(str(e))
        if problems:
            raise ValueError("invalid core configuration: " + "; ".join(problems))

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 1

    @functools.cached_property
    def variant_choice(self) -> VariantChoice:
        """``variant`` parsed, once (at construction, which reports a bad one). Not a field:
        the flags, the environment and ``replace`` carry ``variant``, the text."""
        return VariantChoice.parse(self.variant)

    def variant_for(self, model: str) -> tuple[str | None, bool]:
        """(kind, required) for ``model``: required when the model was named explicitly."""
        return self.variant_choice.for_model(model)


def resolve_default_model(config: CoreConfig, repository: ModelRepository) -> CoreConfig:
    """``config`` with ``default_model`` chosen when it is "".

    The only model the server may serve (the repository's, or ``--models``) is the default;
    among several, the bundled default if it is one of them; otherwise the user must say, and
    the error lists the choices. A user who trains and exports ``pets`` into an empty folder
    serves it with no flag at all.
    """
    if config.default_model:
        return config
    names = list(config.models) if config.models else repository.model_names()
    if len(names) == 1:
        choice = names[0]
    elif BUNDLED_DEFAULT_MODEL in names:
        choice = BUNDLED_DEFAULT_MODEL
    elif not names:
        raise ModelNotFound(f"the model repository {repository.root} holds no model; export one "
                            "there (training export CHECKPOINT --name NAME --models-dir DIR)")
    else:
        raise ModelNotFound(f"the model repository {repository.root} holds several models "
                            f"({', '.join(names)}): choose the default with --model NAME")
    return dataclasses.replace(config, default_model=choice)
