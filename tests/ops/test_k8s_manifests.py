"""The Kubernetes manifests in ops/k8s: valid for the API server and for KEDA, and in
step with kingest's own configuration, drain deadline, sizing and supervisor.

Built-in kinds are validated with the strict OpenAPI schemas of one pinned Kubernetes
version (``kubernetes_validate``); KEDA's resources with KEDA's CRD schemas, vendored
under ``tests/schemas/keda/`` (their ``$comment`` names the source). Nothing here needs a
cluster.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import re
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

import kingest
from kingest.config.loading import load_settings
from kingest.config.settings import ConfigError, Settings
from kingest.pipeline.memory import memory_budget
from kingest.runtime.supervisor import STOP_GRACE_S

Manifest = dict[str, Any]

ROOT = Path(__file__).parents[2]
K8S = ROOT / "ops" / "k8s"
KEDA_SCHEMAS = ROOT / "tests" / "schemas" / "keda"

#: The Kubernetes version whose (strict) schemas the built-in kinds must satisfy.
KUBERNETES_VERSION = "1.33"
#: The vendored openAPIV3Schema of each KEDA kind used here.
KEDA_SCHEMA_FILES = {
    "ScaledObject": "scaledobject-v1alpha1.json",
    "TriggerAuthentication": "triggerauthentication-v1alpha1.json",
}
#: What kingest needs past its drain deadline to commit, close its clients, export queued
#: spans and exit, on top of any supervisor allowance (a pod here, a compose container in
#: test_ops_stack).
EXIT_MARGIN_S = 10.0
#: Where the manifests record what the tests cannot learn from kingest itself.
PARTITIONS_ANNOTATION = "kingest.dev/topic-partitions"
MESSAGE_BYTES_ANNOTATION = "kingest.dev/mean-message-bytes"
MAIN_CONTAINER = "kingest"
#: librdkafka's sasl.mechanisms -> the `sasl` mode of KEDA's kafka scaler.
KEDA_SASL_MODES = {
    "PLAIN": "plaintext",
    "SCRAM-SHA-256": "scram_sha256",
    "SCRAM-SHA-512": "scram_sha512",
    "OAUTHBEARER": "oauthbearer",
    "GSSAPI": "gssapi",
}


# --------------------------------------------------------------------------- loading


@cache
def documents() -> tuple[tuple[str, Manifest], ...]:
    """Every manifest of ops/k8s as (file name, document), kustomization excluded."""
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return tuple(found)


def manifests(kind: str) -> list[Manifest]:
    return [doc for _, doc in documents() if doc["kind"] == kind]


def manifest(kind: str, name: str | None = None) -> Manifest:
    """The one manifest of ``kind`` (named ``name`` when several share the kind)."""
    found = [doc for doc in manifests(kind) if name is None or doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def document_id(item: tuple[str, Manifest]) -> str:
    path, doc = item
    return f"{path}:{doc['kind']}/{doc['metadata']['name']}"


def is_keda(doc: Manifest) -> bool:
    return str(doc["apiVersion"]).startswith("keda.sh/")


def deployment() -> Manifest:
    return manifest("Deployment")


def pod_spec() -> Manifest:
    spec: Manifest = deployment()["spec"]["template"]["spec"]
    return spec


def pod_labels() -> dict[str, str]:
    labels: dict[str, str] = deployment()["spec"]["template"]["metadata"]["labels"]
    return labels


def main_container() -> Manifest:
    (container,) = [c for c in pod_spec()["containers"] if c["name"] == MAIN_CONTAINER]
    return container


def all_containers() -> list[Manifest]:
    return [*pod_spec().get("initContainers", []), *pod_spec()["containers"]]


def scaled_object() -> Manifest:
    return manifest("ScaledObject")


def kafka_triggers() -> list[Manifest]:
    return [t for t in scaled_object()["spec"]["triggers"] if t["type"] == "kafka"]


def secret_data(name: str) -> dict[str, str]:
    """A Secret's values as the pod sees them: ``data`` decoded, ``stringData`` on top."""
    secret = manifest("Secret", name)
    values = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    values.update(secret.get("stringData", {}))
    return values


def config_data(name: str) -> dict[str, str]:
    data: dict[str, str] = manifest("ConfigMap", name).get("data", {})
    return data


def container_environment(container: Manifest) -> dict[str, str]:
    """The environment Kubernetes gives ``container``: its envFrom sources in order,
    then its own ``env`` (literal values and Secret/ConfigMap keys), which win."""
    environ: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            data = config_data(source["configMapRef"]["name"])
        else:
            data = secret_data(source["secretRef"]["name"])
        prefix = source.get("prefix", "")
        environ.update({prefix + key: value for key, value in data.items()})
    for variable in container.get("env", []):
        if "value" in variable:
            environ[variable["name"]] = variable["value"]
            continue
        ref = variable["valueFrom"]
        if "secretKeyRef" in ref:
            environ[variable["name"]] = secret_data(ref["secretKeyRef"]["name"])[
                ref["secretKeyRef"]["key"]
            ]
        elif "configMapKeyRef" in ref:
            environ[variable["name"]] = config_data(ref["configMapKeyRef"]["name"])[
                ref["configMapKeyRef"]["key"]
            ]
    return environ


@cache
def settings() -> Settings:
    return load_settings(container_environment(main_container()))


def processes() -> int:
    """Pipeline processes per pod (``kingest start`` reads KINGEST_PROCESSES itself)."""
    return int(container_environment(main_container()).get("KINGEST_PROCESSES", "1"))


def partitions() -> int:
    return int(scaled_object()["metadata"]["annotations"][PARTITIONS_ANNOTATION])


_QUANTITY = re.compile(r"(?P<number>\d+(?:\.\d+)?)(?P<suffix>[KMGT]i|[kMGT]|m)?")
_SUFFIXES = {
    None: 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def quantity(value: str | int) -> float:
    """A Kubernetes resource quantity (``512Mi``, ``100m``, ``1``) as a number."""
    match = _QUANTITY.fullmatch(str(value))
    assert match, f"not a quantity this test understands: {value!r}"
    return float(match["number"]) * _SUFFIXES[match["suffix"]]


def scaled_value(value: int | str, total: int) -> int:
    """An int-or-percent field against ``total`` pods, rounded up as the disruption
    controller rounds both minAvailable and maxUnavailable."""
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(total * int(value[:-1]) / 100)
    return int(value)


def unknown_fields(instance: Any, schema: Mapping[str, Any], path: str = "") -> Iterator[str]:
    """Paths in ``instance`` that ``schema`` does not declare.

    CRD schemas leave ``additionalProperties`` unset, and the API server then prunes
    unknown fields silently: a misspelt ``maxReplicaCounts`` would vanish instead of
    failing. Objects without declared ``properties`` (``metadata``) are not checked;
    ``additionalProperties`` schemas (trigger metadata) apply to every value.
    """
    if isinstance(instance, dict):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return
        for key, value in instance.items():
            if properties is not None and key in properties:
                yield from unknown_fields(value, properties[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                yield from unknown_fields(value, extra, f"{path}.{key}")
            elif properties is not None and extra is None:
                yield f"{path}.{key}"
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(instance):
            yield from unknown_fields(item, schema["items"], f"{path}[{index}]")


@cache
def keda_schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((KEDA_SCHEMAS / KEDA_SCHEMA_FILES[kind]).read_text())
    return schema


def keda_problems(doc: Manifest) -> list[str]:
    """Schema violations and undeclared fields of a KEDA resource."""
    schema = keda_schema(doc["kind"])
    validator = jsonschema.Draft202012Validator(schema)
    problems = [
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(doc)
    ]
    return problems + [f"{field}: not in KEDA's schema" for field in unknown_fields(doc, schema)]


# --------------------------------------------------------------------------- files


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    on_disk = {p.name for p in K8S.iterdir() if p.suffix in (".yaml", ".yml")}
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    assert set(listed) == on_disk - {"kustomization.yaml"}


def test_each_file_holds_one_kind() -> None:
    kinds: dict[str, set[str]] = {}
    for path, doc in documents():
        kinds.setdefault(path, set()).add(doc["kind"])
    assert {path: k for path, k in kinds.items() if len(k) > 1} == {}


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize(
    "item", [item for item in documents() if not is_keda(item[1])], ids=document_id
)
def test_builtin_kinds_validate_strictly(item: tuple[str, Manifest]) -> None:
    _, doc = item
    try:
        validated = kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(map(str, error.path))
        pytest.fail(f"invalid for Kubernetes {error.version} at {where}: {error.message}")
    assert validated == KUBERNETES_VERSION  # the pinned schemas, not an older fallback


def test_strict_validation_rejects_unknown_fields() -> None:
    doc = copy.deepcopy(deployment())
    doc["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(
    "item", [item for item in documents() if is_keda(item[1])], ids=document_id
)
def test_keda_resources_match_keda_crd_schema(item: tuple[str, Manifest]) -> None:
    _, doc = item
    assert doc["apiVersion"] == "keda.sh/v1alpha1"
    assert keda_problems(doc) == []


def test_keda_check_catches_typos_and_wrong_types() -> None:
    doc = copy.deepcopy(scaled_object())
    doc["spec"]["maxReplicaCounts"] = doc["spec"].pop("maxReplicaCount")
    doc["spec"]["triggers"][0]["authRef"] = doc["spec"]["triggers"][0].pop("authenticationRef")
    doc["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 100_000  # KEDA wants strings
    problems = keda_problems(doc)
    assert ".spec.maxReplicaCounts: not in KEDA's schema" in problems
    assert ".spec.triggers[0].authRef: not in KEDA's schema" in problems
    assert any(p.startswith("spec.triggers.0.metadata.lagThreshold:") for p in problems)


def test_both_keda_kinds_are_used() -> None:
    assert {doc["kind"] for _, doc in documents() if is_keda(doc)} == set(KEDA_SCHEMA_FILES)


# --------------------------------------------------------------------------- configuration


def test_config_map_and_secret_are_a_valid_configuration() -> None:
    try:
        loaded = load_settings(container_environment(main_container()))
    except ConfigError as error:
        pytest.fail("kingest would exit 2:\n" + "\n".join(error.problems))
    assert loaded.env == "prod"
    assert loaded.log_format == "json"
    assert loaded.http.enabled


def test_every_reference_resolves() -> None:
    for container in all_containers():
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef") or source["secretRef"]
            kind = "ConfigMap" if "configMapRef" in source else "Secret"
            manifest(kind, ref["name"])
        container_environment(container)  # every secretKeyRef/configMapKeyRef exists
    for ref in manifest("TriggerAuthentication")["spec"]["secretTargetRef"]:
        assert ref["key"] in secret_data(ref["name"]), ref


def test_service_links_are_off() -> None:
    # Kubernetes would add KINGEST_METRICS_SERVICE_HOST and the like for any Service of
    # the namespace named kingest-*: unknown KINGEST_* variables, so kingest exits 2.
    assert pod_spec()["enableServiceLinks"] is False


def test_secret_example_holds_placeholders_only() -> None:
    for secret in manifests("Secret"):
        values = secret_data(secret["metadata"]["name"])
        secrets = {k: v for k, v in values.items() if "PASSWORD" in k or "URL" in k}
        assert secrets
        assert all("CHANGE-ME" in value for value in secrets.values()), secrets


# --------------------------------------------------------------------------- pod


def test_probes_and_ports_use_the_http_port() -> None:
    port = settings().http.port
    container = main_container()
    (http,) = [p for p in container["ports"] if p["name"] == "http"]
    assert http["containerPort"] == port
    paths = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    for probe, path in paths.items():
        if probe not in container:
            assert probe == "startupProbe", f"{probe} is missing"
            continue
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["port"] in ("http", port), probe


def test_metrics_service_scrapes_the_http_port() -> None:
    service = manifest("Service")
    port = settings().http.port
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] == "/metrics"
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] in (
        [(port, "http")],
        [(port, port)],
    )


def test_grace_period_covers_the_drain() -> None:
    pipeline = settings().pipeline
    needed = pipeline.drain_timeout_s + EXIT_MARGIN_S
    if processes() > 1:
        needed += STOP_GRACE_S  # the supervisor waits this long past the drain deadline
    assert pod_spec()["terminationGracePeriodSeconds"] >= needed
    # A drain does not poll: /healthz must not fail (and liveness restart) during one.
    assert settings().http.loop_stall_s > pipeline.drain_timeout_s


def test_selectors_match_the_pod_labels() -> None:
    labels = pod_labels().items()
    selectors = {
        "Deployment": deployment()["spec"]["selector"]["matchLabels"],
        "Service": manifest("Service")["spec"]["selector"],
        "PodDisruptionBudget": manifest("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    }
    for constraint in pod_spec().get("topologySpreadConstraints", []):
        selectors["topologySpreadConstraints"] = constraint["labelSelector"]["matchLabels"]
    for owner, selector in selectors.items():
        assert selector, owner
        assert selector.items() <= labels, owner


def test_disruption_budget_keeps_a_pod_running() -> None:
    spec = manifest("PodDisruptionBudget")["spec"]
    replicas = scaled_object()["spec"]["minReplicaCount"]
    if "maxUnavailable" in spec:
        evictable = scaled_value(spec["maxUnavailable"], replicas)
    else:
        evictable = replicas - scaled_value(spec["minAvailable"], replicas)
    assert replicas - evictable >= 1
    assert evictable >= 1, "a budget that allows no eviction blocks every node drain"


def test_rolling_update_never_adds_a_consumer() -> None:
    spec = deployment()["spec"]
    # KEDA's HPA owns the replica count; a replicas field would reset it on each apply.
    assert "replicas" not in spec
    strategy = spec["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert scaled_value(strategy["rollingUpdate"]["maxSurge"], partitions()) == 0
    assert scaled_value(strategy["rollingUpdate"]["maxUnavailable"], partitions()) >= 1


def test_resources_cover_the_measured_sizing() -> None:
    resources = main_container()["resources"]
    per_process = memory_budget(
        settings(),
        partitions(),  # a pod alone in its group owns every partition
        message_bytes=int(deployment()["metadata"]["annotations"][MESSAGE_BYTES_ANNOTATION]),
    )
    limit = quantity(resources["limits"]["memory"])
    assert limit >= processes() * per_process.total_bytes, per_process.describe()
    assert quantity(resources["requests"]["memory"]) <= limit
    # One process runs on about one core (the GIL).
    assert quantity(resources["requests"]["cpu"]) >= processes()


def test_init_container_migrates_before_the_pipeline_starts() -> None:
    (init,) = pod_spec()["initContainers"]
    assert init["args"] == ["migrate"]
    assert init["image"] == main_container()["image"]
    assert "KINGEST_DATABASE_URL" in container_environment(init)
    assert main_container()["args"] == ["start"]


def test_containers_run_unprivileged() -> None:
    pod = pod_spec()["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert (pod["runAsUser"], pod["runAsGroup"]) == (10001, 10001)
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in all_containers():
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]
        assert context.get("runAsUser", 10001) == 10001, container["name"]


def test_images_are_pinned_to_a_release() -> None:
    for container in all_containers():
        image = container["image"]
        if "@sha256:" in image:
            continue
        name, _, tag = image.rpartition(":")
        assert name, f"{container['name']}: {image} has no tag"
        assert "/" not in tag, f"{container['name']}: {image} has no tag"
        assert tag != "latest", f"{container['name']}: {image}"
        assert tag == kingest.__version__, f"{container['name']}: the image of this release"


# --------------------------------------------------------------------------- autoscaling


def test_scaled_object_targets_the_deployment() -> None:
    target = scaled_object()["spec"]["scaleTargetRef"]
    assert target["name"] == deployment()["metadata"]["name"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert target.get("apiVersion", "apps/v1") == "apps/v1"


def test_kafka_trigger_matches_the_configuration() -> None:
    kafka = settings().kafka
    triggers = kafka_triggers()
    assert {t["metadata"]["topic"] for t in triggers} == set(kafka.topics)
    for trigger in triggers:
        metadata = trigger["metadata"]
        assert metadata["bootstrapServers"] == kafka.bootstrap_servers
        assert metadata["consumerGroup"] == kafka.group_id
        assert metadata["offsetResetPolicy"] == kafka.auto_offset_reset
        assert metadata.get("allowIdleConsumers", "false") == "false"
        assert int(metadata["lagThreshold"]) > 0


def test_kafka_trigger_authenticates_like_kingest() -> None:
    properties = settings().kafka.properties
    protocol = properties.get("security.protocol", "plaintext").upper()
    for trigger in kafka_triggers():
        metadata = trigger["metadata"]
        assert (metadata.get("tls", "disable") == "enable") == protocol.endswith("SSL")
        if protocol.startswith("SASL"):
            mechanism = properties["sasl.mechanisms"].upper()
            assert metadata["sasl"] == KEDA_SASL_MODES[mechanism]
            if mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
                continue  # other mechanisms authenticate KEDA with other parameters
            auth = manifest("TriggerAuthentication", trigger["authenticationRef"]["name"])
            refs = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
            assert refs["username"]["key"] == "KINGEST_RDKAFKA_SASL_USERNAME"
            assert refs["password"]["key"] == "KINGEST_RDKAFKA_SASL_PASSWORD"
            # The same Secret as kingest's, so the two cannot drift apart.
            envfrom = main_container()["envFrom"]
            used = {source["secretRef"]["name"] for source in envfrom if "secretRef" in source}
            assert {refs["username"]["name"], refs["password"]["name"]} <= used


def test_replicas_stay_within_the_partitions() -> None:
    spec = scaled_object()["spec"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    # Consumers beyond the partition count sit idle.
    assert spec["maxReplicaCount"] * processes() <= partitions()
