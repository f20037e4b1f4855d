"""Published weights by name through the ecosystem caches, with no network: small weight files
generated here are placed where torch.hub (TORCH_HOME) and huggingface_hub (HF_HOME) look, and
the real loading code runs up to its network call (the network is blocked, never the loader)."""

from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from training.cli import main
from training.errors import ConfigError
from training.models import build_model
from training.models.hub_weights import MIRROR_ENV, WeightsUnavailable, weights_stats

TV_ARCH = "resnet18"
TV_FILE = os.path.basename(torchvision.models.get_model_weights(TV_ARCH).DEFAULT.url)
TIMM_ARCH = "timm/test_resnet"  # timm's tiny test network; its weights use mean = std = 0.5
TIMM_REPO = "timm/test_resnet.r160_in1k"
IMAGENET_MEAN = (0.485, 0.456, 0.406)


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty TORCH_HOME and HF_HOME under tmp_path, and no way out: every proxy variable points
    at a closed local port, so a download fails at once (as on CI) instead of reaching a server.
    Returns tmp_path."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    return tmp_path


def torchvision_weights(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A freshly initialised 1000-class resnet18 state dict saved at ``path``."""
    torch.manual_seed(seed)
    state = torchvision.models.get_model(TV_ARCH, weights=None).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def place_in_hf_cache(hf_home: Path, repo: str, state: dict[str, torch.Tensor]) -> Path:
    """model.safetensors laid out as huggingface_hub's cache keeps a download."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    file = repo_dir / "snapshots" / commit / "model.safetensors"
    file.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(file))
    return file


def test_torchvision_default_weights_load_from_torch_hub_cache(offline: Path):
    state = torchvision_weights(offline / "torch" / "hub" / "checkpoints" / TV_FILE)
    model = build_model(TV_ARCH, 3, pretrained="imagenet")
    stem, layer4 = model.body[0], model.body[4]
    assert torch.equal(stem[0].weight, state["conv1.weight"])
    assert torch.equal(layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert model.head[-1].out_features == 3  # ImageNet's 1000-class fc is replaced
    assert weights_stats(TV_ARCH, "imagenet") == (IMAGENET_MEAN, (0.229, 0.224, 0.225))


def test_torchvision_offline_without_cached_file_is_one_line_naming_file_and_folder(
        offline: Path):
    with pytest.raises(WeightsUnavailable) as e:
        build_model(TV_ARCH, 3, pretrained="imagenet")
    message = str(e.value)
    assert "\n" not in message
    assert f"put {TV_FILE} (https://download.pytorch.org/models/{TV_FILE}) in " \
           f"{offline / 'torch' / 'hub' / 'checkpoints'}" in message
    assert "--pretrained PATH" in message


@pytest.fixture
def local_mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 serving a folder: (base URL, folder)."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder
    server.shutdown()
    thread.join()


def test_download_whose_hash_does_not_match_its_name_is_refused_and_not_cached(
        offline: Path, local_mirror: tuple[str, Path], monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]):
    url, folder = local_mirror
    torchvision_weights(folder / TV_FILE)  # same name, other bytes: its SHA-256 differs
    monkeypatch.setenv(MIRROR_ENV, url)
    with pytest.raises(ConfigError, match=f"refused the download of {TV_FILE} from {url}/"
                                          f"{TV_FILE}: its SHA-256 does not start with"):
        build_model(TV_ARCH, 3, pretrained="imagenet")
    out, err = capfd.readouterr()
    assert f'Downloading: "{url}/{TV_FILE}"' in out  # torch.hub's own download ran ...
    assert "100%" in err  # ... with its progress bar, to the end, before the check refused it
    assert list((offline / "torch" / "hub" / "checkpoints").iterdir()) == []


def test_timm_weights_load_from_the_hugging_face_cache(offline: Path):
    import timm

    torch.manual_seed(1)
    state = timm.create_model(TIMM_ARCH.removeprefix("timm/")).state_dict()
    place_in_hf_cache(offline / "hf", TIMM_REPO, state)
    model = build_model(TIMM_ARCH, 4, pretrained="imagenet")
    timm_model = model.body.timm_model
    for name, tensor in timm_model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    assert model.head[-1].out_features == 4
    assert weights_stats(TIMM_ARCH, "imagenet") == ((0.5,) * 3, (0.5,) * 3)


def test_timm_offline_without_cached_file_names_file_and_folder(
        offline: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # huggingface_hub's own switch: no retries
    with pytest.raises(WeightsUnavailable) as e:
        build_model(TIMM_ARCH, 3, pretrained="imagenet")
    message = str(e.value)
    folder = offline / "hf" / "hub" / f"models--{TIMM_REPO.replace('/', '--')}"
    assert "\n" not in message
    assert f"put model.safetensors (https://huggingface.co/{TIMM_REPO}/resolve/main/" \
           f"model.safetensors) in {folder}/snapshots/<commit>/" in message


def test_auto_trains_from_scratch_with_a_one_line_warning_when_offline(
        offline: Path, caplog: pytest.LogCaptureFixture):
    torch.manual_seed(0)
    model = build_model(TV_ARCH, 3, pretrained="auto")
    assert model.head[-1].out_features == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "training from scratch" in warnings[0] and TV_FILE in warnings[0]


def test_an_arch_without_published_weights_says_so(offline: Path):
    with pytest.raises(ConfigError, match="'xresnet_tiny' has no published ImageNet weights"):
        build_model("xresnet_tiny", 3, pretrained="imagenet")
    assert weights_stats("xresnet_tiny", "imagenet") is None
    assert weights_stats(TV_ARCH, "") is None  # not asked for: the recipe's normalisation


def test_a_checkpoint_as_pretrained_body_gives_its_ema_weights(tmp_path: Path):
    torch.manual_seed(0)
    raw = build_model("xresnet_tiny", 3).state_dict()
    ema = {f"module.{k}": v + 1.0 if v.is_floating_point() else v for k, v in raw.items()}
    ema["n_averaged"] = torch.tensor(5)
    torch.save({"arch": "xresnet_tiny", "model": raw, "ema": ema}, tmp_path / "last.pt")
    model = build_model("xresnet_tiny", 5, pretrained=tmp_path / "last.pt")
    loaded = model.state_dict()
    body = [k for k in raw if k.startswith("body.") and raw[k].is_floating_point()]
    assert body and all(torch.equal(loaded[k], raw[k] + 1.0) for k in body)


def test_fit_with_published_timm_weights_records_their_normalisation(
        offline: Path, digits_dir: Path):
    import timm

    from training.checkpoint import load_checkpoint

    place_in_hf_cache(offline / "hf", TIMM_REPO,
                      timm.create_model(TIMM_ARCH.removeprefix("timm/")).state_dict())
    recipe = Path(__file__).parents[2] / "recipes" / "digits.toml"
    out = offline / "run"
    assert main(["fit", "--config", str(recipe), "--data", str(digits_dir), "--arch", TIMM_ARCH,
                 "--pretrained", "--output", str(out), "--epochs", "1", "--no-tta",
                 "--set", "stages=[{size = 16, batch_size = 64, epochs = 1, lr = 1e-3}]",
                 "--set", "data.valid_pct=0.9"]) == 0
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt.mean == [0.5] * 3 and ckpt.std == [0.5] * 3  # the weights', not the data's
    assert ckpt.recipe["model"]["pretrained"] == "imagenet"
