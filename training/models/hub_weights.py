"""Published pretrained weights by name (``model.pretrained = "imagenet"``), fetched once into the
ecosystem's own caches, never into ours:

- a torchvision arch: its weights enum's ``DEFAULT`` through ``torch.hub`` (``$TORCH_HOME/hub/
  checkpoints``), with the SHA-256 prefix check torchvision asks torch.hub for
  (``check_hash=True``: the download is refused when its hash does not start with the hex digits
  in the file name). Like torch.hub, a file already in the cache is trusted as it is.
- ``timm/NAME``: the model's Hugging Face repository (``timm/resnet18.a1_in1k``) through
  huggingface_hub's cache (``$HF_HOME/hub``), then timm's own pretrained loading from that file.

Both show a progress bar while downloading (torch.hub's and huggingface_hub's). With no network
and no cached file the error is one line naming the file and the folder to put it in.

``"auto"`` asks for the same weights when they can be had, else a one-line warning and training
from scratch: the default photo recipe's choice, where a first run must not fail for want of a
network.

``TTA_SERVE_TORCHVISION_MIRROR``: a base URL (an internal mirror of download.pytorch.org/models)
to download torchvision's files from instead, with the same names and the same hash check; timm's
counterpart is huggingface_hub's own ``HF_ENDPOINT``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse

import torch

from training.errors import ConfigError

log = logging.getLogger(__name__)

IMAGENET = "imagenet"  # the weights must load: offline without a cached file is an error
AUTO = "auto"  # the weights when they can be had, else from scratch with a warning
WEIGHT_NAMES = (IMAGENET, AUTO)
MIRROR_ENV = "TTA_SERVE_TORCHVISION_MIRROR"
TIMM_PREFIX = "timm/"
_HF_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's load_state_dict_from_hf tries
_SCRATCH_COST = ("training from scratch instead, which needs far more photos and epochs for the "
                 "same accuracy (expect much lower accuracy on a few hundred photos)")


class WeightsUnavailable(ConfigError):
    """The published weights are neither cached nor downloadable (offline, or the server said
    no); the message names the file and the folder to put it in."""


@dataclass(frozen=True)
class PublishedWeights:
    """Where an arch's published weights come from, known without downloading anything."""

    arch: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    url: str = ""  # torchvision: the weights enum's URL
    hf_repo: str = ""  # timm: the Hugging Face repository
    hf_filename: str = ""  # timm: a file name the pretrained cfg insists on


def is_weights_name(value: object) -> bool:
    return isinstance(value, str) and value in WEIGHT_NAMES


def published_weights(arch: str) -> PublishedWeights | None:
    """The arch's default published weights (torchvision's ``DEFAULT``, timm's default tag), or
    None when it has none (our xresnets, airbench, an unregistered timm model)."""
    if arch.startswith(TIMM_PREFIX):
        return _timm_weights(arch)
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):  # not a torchvision model, or no weights
        return None
    preset = weights.transforms()
    return PublishedWeights(arch, tuple(preset.mean), tuple(preset.std), url=weights.url)


def _timm_weights(arch: str) -> PublishedWeights | None:
    from training.models.timm_models import _timm

    timm = _timm()
    try:
        cfg = timm.models.get_pretrained_cfg(arch[len(TIMM_PREFIX):])
    except RuntimeError as e:  # "Invalid pretrained tag"
        raise ConfigError(f"{arch}: {e}") from e
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        return None
    return PublishedWeights(arch, tuple(cfg.mean), tuple(cfg.std), url=cfg.url or "",
                            hf_repo=cfg.hf_hub_id or "", hf_filename=cfg.hf_hub_filename or "")


def weights_stats(arch: str, pretrained: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) the named weights were trained with (what the model must normalise with), or
    None when ``pretrained`` names no published weights or the arch has none."""
    if not is_weights_name(pretrained):
        return None
    weights = published_weights(arch)
    return (weights.mean, weights.std) if weights is not None else None


def resolve(arch: str, name: str, *,
            progress: bool = True) -> dict[str, torch.Tensor] | Path | None:
    """The published weights for ``arch``: a torchvision state dict, or the path of a timm
    weights file in the Hugging Face cache; downloaded (with progress) when not cached.

    ``name`` "imagenet": anything that stops it is a ConfigError (WeightsUnavailable offline);
    "auto": None with a one-line warning instead, and the caller trains from scratch.
    """
    weights = published_weights(arch)
    try:
        if weights is None:
            raise ConfigError(f"{arch!r} has no published ImageNet weights; use a torchvision "
                              "arch (resnet34) or timm/NAME, or give a file with --pretrained "
                              "PATH")
        if weights.hf_repo:
            return timm_weights_file(weights)
        if arch.startswith(TIMM_PREFIX):
            raise ConfigError(f"{arch} publishes its weights only at {weights.url}; download "
                              "it and give the file with --pretrained PATH")
        return torchvision_state(weights, progress=progress)
    except ConfigError as e:
        if name != AUTO:
            raise
        log.warning("no pretrained weights for %s (%s); %s", arch, e, _SCRATCH_COST)
        return None


# --- torchvision: torch.hub's cache -------------------------------------------------------------


def torch_hub_checkpoints() -> Path:
    """torch.hub's weights folder, as it decides it now ($TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_state(weights: PublishedWeights, *, progress: bool = True
                      ) -> dict[str, torch.Tensor]:
    """What torchvision's builders load (``Weights.get_state_dict(check_hash=True)``): the
    cached file, or a download checked against the hash prefix in its name."""
    file_name = os.path.basename(urlparse(weights.url).path)
    folder = torch_hub_checkpoints()
    mirror = os.environ.get(MIRROR_ENV, "").rstrip("/")
    url = f"{mirror}/{file_name}" if mirror else weights.url
    try:
        state = torch.hub.load_state_dict_from_url(url, model_dir=str(folder), progress=progress,
                                                   check_hash=True, file_name=file_name,
                                                   weights_only=True)
    except HTTPError as e:
        raise WeightsUnavailable(_offline(weights.arch, file_name, url, folder,
                                          f"{url} answered HTTP {e.code}")) from e
    except (URLError, OSError) as e:  # no network: DNS, refused, timed out
        raise WeightsUnavailable(_offline(weights.arch, file_name, url, folder,
                                          f"cannot download {url}: {_reason(e)}")) from e
    except RuntimeError as e:
        if "invalid hash value" in str(e):  # torch.hub deleted the download; nothing cached
            raise ConfigError(f"refused the download of {file_name} from {url}: its SHA-256 "
                              f"does not start with the hash in its name ({e})") from e
        raise ConfigError(f"cannot read the cached weights {folder / file_name} ({e}); "
                          "delete it to download it again") from e
    except Exception as e:  # torch.load of a damaged cached file raises other types too
        raise ConfigError(f"cannot read the cached weights {folder / file_name} ({e}); "
                          "delete it to download it again") from e
    log.info("%s: ImageNet weights %s (torch.hub cache %s)", weights.arch, file_name, folder)
    return state


def _reason(e: BaseException) -> str:
    return str(getattr(e, "reason", None) or e)


def _offline(arch: str, file_name: str, url: str, folder: Path, why: str) -> str:
    return (f"{why}, and {arch}'s weights are not cached: put {file_name} ({url}) in {folder} "
            "(torch.hub's cache, $TORCH_HOME/hub/checkpoints), or give a local file with "
            "--pretrained PATH")


# --- timm: the Hugging Face cache ---------------------------------------------------------------


def hf_cache_dir() -> Path:
    """huggingface_hub's cache folder from the environment as it is now ($HF_HUB_CACHE, else
    $HF_HOME/hub): huggingface_hub reads it once, at import, so a changed HF_HOME would be
    missed without this."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    home = os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")
    return Path(home).expanduser() / "hub"


def _hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true")


def timm_weights_file(weights: PublishedWeights) -> Path:
    """The weights file timm's ``load_state_dict_from_hf`` would load (model.safetensors, else
    pytorch_model.bin): from the Hugging Face cache when there, else downloaded into it.

    The cache is read first, without asking the Hub: offline, huggingface_hub would retry the
    connection for half a minute per file before falling back to it. HF_HUB_OFFLINE=1 is
    honoured as it is set now.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
    )

    cache = hf_cache_dir()
    names = (weights.hf_filename,) if weights.hf_filename else _HF_FILES
    for name in names:
        cached = try_to_load_from_cache(weights.hf_repo, name, cache_dir=cache)
        if isinstance(cached, str):
            log.info("%s: weights %s from the Hugging Face cache", weights.arch, cached)
            return Path(cached)
    for name in names:
        try:
            return Path(hf_hub_download(weights.hf_repo, name, cache_dir=cache,
                                        local_files_only=_hf_offline()))
        except LocalEntryNotFoundError as e:  # offline, and not cached
            folder = cache / f"models--{weights.hf_repo.replace('/', '--')}"
            raise WeightsUnavailable(
                f"no network ({type(e).__name__}) and {weights.arch}'s weights are not cached: "
                f"put {names[0]} (https://huggingface.co/{weights.hf_repo}/resolve/main/"
                f"{names[0]}) in {folder}/snapshots/<commit>/ and that <commit> in "
                f"{folder}/refs/main (what `hf download {weights.hf_repo} {names[0]}` does on a "
                "machine with a network), or give a local file with --pretrained PATH") from e
        except EntryNotFoundError:  # the repository lacks this file: try the next name
            continue
        except (HfHubHTTPError, OSError) as e:  # gated, no such repository, a server error
            raise WeightsUnavailable(f"cannot download {names[0]} of {weights.hf_repo} for "
                                     f"{weights.arch}: {e}".replace("\n", " ")) from e
    raise ConfigError(f"https://huggingface.co/{weights.hf_repo} has none of {list(names)}")
