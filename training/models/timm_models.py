"""timm backbones by name (``model.arch = "timm/resnet50d"``, any ``timm.create_model`` name), cut
into Classifier's body (feature extractor + timm's own pooling) and a new head.

Weights come from the model's published ones (``--pretrained``, ``model.pretrained = "imagenet"``:
its Hugging Face repository through huggingface_hub's cache, training.models.hub_weights, then
timm's own pretrained loading), or from a local file (``--pretrained PATH``): a timm or
torchvision state dict (its classifier is dropped, a new head is trained) or a tta-serve
checkpoint of the same arch.

Layer groups for freezing and discriminative LRs come from timm's own ``group_matcher(coarse=
True)`` (stem, then each stage), the split timm uses for layer-wise LR decay.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from training.errors import ConfigError

TIMM_PREFIX = "timm/"
INSTALL_HINT = "pip install -c constraints.txt -e '.[train,timm]'"
_MAX_KEYS_LISTED = 5


def is_timm_arch(arch: str) -> bool:
    return arch.startswith(TIMM_PREFIX)


class _ParamGroup:
    """One layer group of a TimmBody: the parameters, without being a module of its own."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        self._params = params

    def parameters(self) -> Iterator[nn.Parameter]:
        return iter(self._params)


class TimmBody(nn.Sequential):
    """A timm model (classifier removed) as Classifier.body: features, then timm's pooling.

    It holds the timm model as its one module ("0": state dict keys ``body.0.<timm name>``), so a
    timm state dict maps onto it one to one. Iterating it yields the layer groups (what
    ``Classifier.layer_groups`` walks), not modules: timm's stages are not a chain of modules.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        from timm.models import group_parameters

        groups = group_parameters(model, model.group_matcher(coarse=True))
        self.group_names: list[list[str]] = [list(names) for _, names in sorted(groups.items())]

    @property
    def timm_model(self) -> nn.Module:
        return self._modules["0"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.timm_model
        return m.forward_head(m.forward_features(x), pre_logits=True)

    def __iter__(self) -> Iterator[_ParamGroup]:  # type: ignore[override]
        params = dict(self.timm_model.named_parameters())
        return iter([_ParamGroup([params[n] for n in names]) for names in self.group_names])

    def __len__(self) -> int:
        return len(self.group_names)


def _timm():
    if importlib.util.find_spec("timm") is None:
        raise ConfigError(f"timm archs need the timm package; install it: {INSTALL_HINT}")
    import timm

    return timm


def build_timm_body(arch: str, *, state: Mapping[str, torch.Tensor] | None = None,
                    source: object = None, weights_file: Path | None = None
                    ) -> tuple[TimmBody, int]:
    """(body, number of features) for ``timm/NAME``; ``state``: a timm/torchvision state dict
    to load (its classifier dropped); ``weights_file``: the model's published weights (from the
    Hugging Face cache), loaded by timm's own pretrained loading (its filters, no classifier)."""
    timm = _timm()
    name = arch[len(TIMM_PREFIX):]
    hub = {} if weights_file is None else {
        "pretrained": True, "pretrained_cfg_overlay": {"file": str(weights_file)}}
    try:
        model = timm.create_model(name, **{"pretrained": False, **hub}, num_classes=0)
    except RuntimeError as e:  # timm: "Unknown model (...)", or load_state_dict's mismatch
        if weights_file is not None and "Unknown model" not in str(e):
            raise ConfigError(f"timm could not load {weights_file} into {arch}: {e}") from e
        raise ConfigError(f"unknown timm model {name!r} ({e}); timm.list_models('*resnet*') "
                          "lists the names") from e
    if state is not None:
        _load_timm_state(model, state, source, arch)
    return TimmBody(model), int(model.num_features)


def _load_timm_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: object,
                     arch: str) -> None:
    """Load everything but the classifier (named by timm's pretrained_cfg); any other missing,
    unexpected or differently shaped key is a ConfigError naming a few of them."""
    classifier = model.pretrained_cfg.get("classifier") or "fc"
    heads = classifier if isinstance(classifier, list | tuple) else [classifier]
    state = {k: v for k, v in state.items()
             if not any(k == h or k.startswith(h + ".") for h in heads)}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state
             if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{len(keys)} {what} ({', '.join(keys[:_MAX_KEYS_LISTED])}"
                 f"{' ...' if len(keys) > _MAX_KEYS_LISTED else ''})"
                 for what, keys in (("missing", missing), ("unexpected", unexpected),
                                    ("wrong shape", wrong)) if keys]
        raise ConfigError(f"{source} does not fit arch {arch!r}: " + "; ".join(parts))
    model.load_state_dict(state)


def save_timm_state(arch: str, path: str | Path, n_classes: int = 1000, seed: int = 0) -> Path:
    """A timm-format state dict of a freshly initialised ``arch`` (for tests and for users who
    keep timm weights as files: ``torch.save(model.state_dict(), path)`` does the same)."""
    timm = _timm()
    torch.manual_seed(seed)
    model = timm.create_model(arch[len(TIMM_PREFIX):], pretrained=False, num_classes=n_classes)
    path = Path(path)
    torch.save(model.state_dict(), path)
    return path
