"""The ops/ observability stack, checked statically (no Docker here): every file parses,
the pieces refer to each other correctly, and every PromQL expression of the Grafana
dashboard and the Prometheus alert rules uses only metrics and labels that
kingest/telemetry/catalog.py defines."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import promql_parser
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from kingest.config.loading import load_settings
from kingest.config.otel import load_tracing_config
from kingest.runtime.supervisor import STOP_GRACE_S
from kingest.telemetry import catalog
from tests.ops.test_container import duration_s, healthcheck, http_port_default
from tests.ops.test_k8s_manifests import EXIT_MARGIN_S
from tests.ops.test_ops_files import read_env_file

OPS = Path(__file__).parents[2] / "ops"
COMPOSE = OPS / "compose.yaml"
COLLECTOR = OPS / "otel-collector" / "config.yaml"
PROMETHEUS = OPS / "prometheus" / "prometheus.yml"
RULES = OPS / "prometheus" / "rules" / "kingest.rules.yml"
TEMPO = OPS / "tempo" / "tempo.yaml"
DATASOURCES = OPS / "grafana" / "provisioning" / "datasources" / "datasources.yaml"
DASHBOARD_PROVIDERS = OPS / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml"
DASHBOARD = OPS / "grafana" / "dashboards" / "kingest.json"
README = OPS / "README.md"

YAML_FILES = [COMPOSE, COLLECTOR, PROMETHEUS, RULES, TEMPO, DATASOURCES, DASHBOARD_PROVIDERS]

#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = load_yaml(COMPOSE)["services"]
    return services


def published_ports(service: dict[str, Any]) -> set[int]:
    """Host ports of a service's `ports:` entries ("${VAR:-5432}:5432" counts as 5432)."""
    ports = set()
    for entry in service.get("ports", []):
        host = str(entry).rsplit(":", 1)[0]
        default = re.search(r"(\d+)\}?$", host)
        assert default, entry
        ports.add(int(default.group(1)))
    return ports


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


# ------------------------------------------------------------------------- metric names


def metric_labels() -> dict[str, frozenset[str]]:
    """Every series name kingest exports (histograms as _bucket/_sum/_count) and its
    labels, plus Prometheus' `up`."""
    names: dict[str, frozenset[str]] = {"up": frozenset()}
    for spec in catalog.ALL:
        labels = frozenset(spec.prometheus_attributes)
        if spec.kind == "histogram":
            names[f"{spec.prometheus_name}_bucket"] = labels | {"le"}
            names[f"{spec.prometheus_name}_sum"] = labels
            names[f"{spec.prometheus_name}_count"] = labels
        else:
            names[spec.prometheus_name] = labels
    return {name: labels | TARGET_LABELS for name, labels in names.items()}


METRICS = metric_labels()


def to_promql(expr: str) -> str:
    """A Grafana query as plain PromQL: its variables replaced by values of their kind."""
    for variable in ("$__rate_interval", "$__interval", "$__range"):
        expr = expr.replace(variable, "5m")
    return re.sub(r"\$\{?\w+\}?", "x", expr)


def references(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """The metrics an expression selects (with the labels each selector matches on) and
    the label names it groups or matches by (by/without, on/ignoring, group_left/right)."""
    selectors: dict[str, set[str]] = {}
    grouping: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr}"
            matched = {m.name for m in node.matchers.matchers if m.name != "__name__"}
            selectors.setdefault(node.name, set()).update(matched)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            grouping.update(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            if node.modifier.matching is not None:
                grouping.update(node.modifier.matching.labels)
            grouping.update(node.modifier.group_labels or ())

    promql_parser.walk(promql_parser.parse(expr), visit)
    return selectors, grouping


def check_expression(expr: str, where: str) -> set[str]:
    """Assert ``expr`` parses and names only catalog metrics and their labels; returns the
    labels its series may carry."""
    promql = to_promql(expr)
    try:
        selectors, grouping = references(promql)
    except ValueError as error:
        pytest.fail(f"{where}: {promql!r} does not parse: {error}")
    assert selectors, f"{where}: {expr!r} selects no metric"
    allowed: set[str] = set()
    for name, matched in selectors.items():
        assert name in METRICS, f"{where}: {name} is not a metric kingest exports"
        unknown = matched - METRICS[name]
        assert not unknown, f"{where}: {name} has no label {sorted(unknown)}"
        allowed |= METRICS[name]
    unknown = grouping - allowed
    assert not unknown, f"{where}: {sorted(unknown)} is no label of {sorted(selectors)}"
    return allowed


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every query of the dashboard: panels, annotations, variables."""
    board = dashboard()
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for annotation in board["annotations"]["list"]:
        yield f"annotation {annotation['name']!r}", annotation["expr"]
    for variable in board["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
        assert match, variable
        yield f"variable {variable['name']!r}", match.group(1)


def rules() -> list[dict[str, Any]]:
    groups = load_yaml(RULES)["groups"]
    return [rule for group in groups for rule in group["rules"]]


# ------------------------------------------------------------------------- files parse


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(OPS)))
def test_each_yaml_file_parses_to_a_mapping(path: Path) -> None:
    assert isinstance(load_yaml(path), dict)


def test_the_compose_file_follows_the_compose_specification() -> None:
    # The Compose Specification's JSON schema, as vendored by check-jsonschema.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_is_what_its_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("ops_dashboard", OPS / "grafana" / "dashboard.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    assert DASHBOARD.read_text() == module.render(), "run: python ops/grafana/dashboard.py"


# ------------------------------------------------------------------------- compose


def built_images() -> set[str]:
    """Images the compose file builds itself (a service with `build:` names them)."""
    return {s["image"] for s in compose_services().values() if "build" in s}


def test_every_image_is_pinned_and_every_service_is_there() -> None:
    services = compose_services()
    images = {name: service["image"] for name, service in services.items()}
    for name, image in images.items():
        if image in built_images():
            continue  # kingest's own, built from ops/Dockerfile
        tag = image.partition(":")[2]
        assert re.match(r"v?\d+\.\d+", tag), f"{name}: {image} is not pinned to a version"
    repositories = {image.partition(":")[0] for image in images.values()}
    assert {
        "apache/kafka",
        "postgres",
        "otel/opentelemetry-collector-contrib",
        "jaegertracing/jaeger",
        "grafana/tempo",
        "prom/prometheus",
        "grafana/grafana",
    } <= repositories
    # Only kingest is built here; everything else is pulled.
    assert {name for name, s in services.items() if "build" in s} == {"kingest"}


def test_kafka_runs_in_kraft_mode_and_advertises_localhost_to_the_host() -> None:
    kafka = compose_services()["kafka"]
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "ZOOKEEPER" not in json.dumps(env).upper()
    assert "localhost:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert 9092 in published_ports(kafka)
    init = compose_services()["kafka-init"]
    assert "--topic ml-events " in init["command"][0]
    assert "--topic ml-events.dlq " in init["command"][0]


def test_every_bind_mount_source_exists() -> None:
    for name, service in compose_services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (OPS / source).exists(), f"{name}: {source} missing"


def mount_target(service: str, source: str) -> str:
    for volume in compose_services()[service].get("volumes", []):
        parts = volume.split(":")
        if parts[0] == source:
            return parts[1]
    raise AssertionError(f"{service} does not mount {source}")


# ------------------------------------------------------------------------- collector


def test_the_collector_pipelines_use_only_defined_components() -> None:
    config = load_yaml(COLLECTOR)
    service = config["service"]
    for extension in service.get("extensions", []):
        assert extension in config["extensions"]
    assert service["pipelines"]
    for name, pipeline in service["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"{name}: {kind} {component} undefined"


def test_the_collector_takes_otlp_and_sends_traces_to_jaeger_and_tempo() -> None:
    config = load_yaml(COLLECTOR)
    protocols = config["receivers"]["otlp"]["protocols"]
    assert port_of(protocols["grpc"]["endpoint"]) == 4317
    assert port_of(protocols["http"]["endpoint"]) == 4318
    assert {4317, 4318} <= published_ports(compose_services()["otel-collector"])
    traces = config["service"]["pipelines"]["traces"]
    assert "otlp" in traces["receivers"]
    hosts = {
        config["exporters"][name]["endpoint"].split(":")[0]: name for name in traces["exporters"]
    }
    assert {"jaeger", "tempo"} <= set(hosts)
    # Tempo listens where the collector sends.
    tempo = load_yaml(TEMPO)
    tempo_grpc = tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert port_of(tempo_grpc) == port_of(config["exporters"][hosts["tempo"]]["endpoint"])
    assert mount_target("otel-collector", "./otel-collector/config.yaml") in " ".join(
        compose_services()["otel-collector"]["command"]
    )


# ------------------------------------------------------------------------- prometheus


def test_prometheus_scrapes_kingest_on_the_host_at_its_http_port() -> None:
    port = http_port_default()
    config = load_yaml(PROMETHEUS)
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == "kingest"]
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert targets == [f"host.docker.internal:{port}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    prometheus = compose_services()["prometheus"]
    assert "host.docker.internal:host-gateway" in prometheus["extra_hosts"]
    assert f"KINGEST_HTTP_PORT={port}" in README.read_text()


def test_prometheus_loads_the_rules_file() -> None:
    [pattern] = load_yaml(PROMETHEUS)["rule_files"]
    directory, _, glob = pattern.rpartition("/")
    assert mount_target("prometheus", "./prometheus/rules") == directory
    assert RULES in set(RULES.parent.glob(glob))


# ------------------------------------------------------------------------- PromQL


@pytest.mark.parametrize(("where", "expr"), list(dashboard_expressions()))
def test_dashboard_queries_use_catalog_metrics_and_labels(where: str, expr: str) -> None:
    check_expression(expr, where)


def test_dashboard_variables_read_labels_their_metric_has() -> None:
    for variable in dashboard()["templating"]["list"]:
        query = variable["query"]["query"]
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match, query
        assert match.group(2) in check_expression(match.group(1), variable["name"])


def test_every_catalog_metric_is_on_the_dashboard() -> None:
    selected: set[str] = set()
    for _, expr in dashboard_expressions():
        selected |= set(references(to_promql(expr))[0])
    for spec in catalog.ALL:
        series = (
            {f"{spec.prometheus_name}_{suffix}" for suffix in ("bucket", "sum", "count")}
            if spec.kind == "histogram"
            else {spec.prometheus_name}
        )
        assert series & selected, f"{spec.prometheus_name} is on no panel"


def test_histogram_quantiles_keep_the_le_label() -> None:
    for where, expr in dashboard_expressions():
        if "histogram_quantile" in expr:
            assert re.search(r"by \((?:[\w, ]*\b)?le\b", expr), where


@pytest.mark.parametrize("rule", rules(), ids=lambda rule: rule["alert"])
def test_alert_rules_use_catalog_metrics_and_labels(rule: dict[str, Any]) -> None:
    labels = check_expression(rule["expr"], rule["alert"])
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    assert rule["annotations"]["summary"]
    if "for" in rule:
        assert promql_parser.parse_duration(rule["for"]).total_seconds() > 0
    text = json.dumps(rule["annotations"])
    for label in re.findall(r"\$labels\.(\w+)", text):
        assert label in labels, f"{rule['alert']}: annotation uses unknown label {label}"


def test_the_alerts_cover_lag_dead_letters_stalled_commits_and_readiness() -> None:
    by_metrics = {rule["alert"]: set(references(rule["expr"])[0]) for rule in rules()}
    wanted = {
        "lag growing": {"kingest_partition_lag"},
        "dead-letter rate": {"kingest_dead_letters_total"},
        "no commits while lagging": {"kingest_partition_lag", "kingest_commits_total"},
        "not ready": {"kingest_ready"},
        "target down": {"up"},
    }
    for what, metrics in wanted.items():
        assert any(metrics <= used for used in by_metrics.values()), what
    assert any("deriv(" in rule["expr"] for rule in rules())
    assert len({rule["alert"] for rule in rules()}) == len(rules())


def test_a_check_catches_an_unknown_metric_and_an_unknown_label() -> None:
    with pytest.raises(AssertionError, match="not a metric"):
        check_expression('rate(kingest_events_total{job="kingest"}[5m])', "test")
    with pytest.raises(AssertionError, match="no label"):
        check_expression('kingest_partition_lag{topic="x"}', "test")
    with pytest.raises(AssertionError, match="is no label"):
        check_expression("sum by (topic) (kingest_partition_lag)", "test")
    with pytest.raises(AssertionError, match="is no label"):
        check_expression("sum by (le) (rate(kingest_batch_size_sum[5m]))", "test")


# ------------------------------------------------------------------------- grafana


def test_grafana_datasources_exist_for_every_uid_the_dashboard_uses() -> None:
    datasources = load_yaml(DATASOURCES)["datasources"]
    uids = {source["uid"]: source for source in datasources}
    assert len(uids) == len(datasources)
    assert {source["type"] for source in datasources} == {"prometheus", "tempo", "jaeger"}
    used = set(re.findall(r'"uid": "([^"]+)"', DASHBOARD.read_text())) - {"kingest"}
    assert used, "the dashboard names no datasource"
    assert used <= set(uids), used - set(uids)
    services = compose_services()
    for source in datasources:
        url = urlsplit(source["url"])
        assert url.hostname in services, source["url"]
    tempo_port = load_yaml(TEMPO)["server"]["http_listen_port"]
    assert urlsplit(uids["tempo"]["url"]).port == tempo_port


def test_grafana_loads_the_dashboard_directory() -> None:
    [provider] = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    assert provider["options"]["path"] == mount_target("grafana", "./grafana/dashboards")
    assert mount_target("grafana", "./grafana/provisioning") == "/etc/grafana/provisioning"


def test_dashboard_panels_have_unique_ids_and_fit_the_grid() -> None:
    panels = dashboard()["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["type"] == "row" or panel["targets"], panel["title"]


def test_the_retries_panel_says_which_retried_errors_can_still_dead_letter() -> None:
    # Outages are waited out; every other transient error has a retry budget, after which
    # a row that still fails is dead-lettered: the panel must not promise otherwise.
    [panel] = [p for p in dashboard()["panels"] if p["title"].startswith("Retries")]
    description = panel["description"]
    assert "Nothing is dead-lettered" not in description
    for term in ("outage", "KINGEST_RETRY_BUDGET", "retries_exhausted"):
        assert term in description, (term, description)


def test_the_readme_names_every_published_port() -> None:
    text = README.read_text()
    for name, service in compose_services().items():
        for port in published_ports(service):
            assert str(port) in text, f"ops/README.md does not mention {name}'s port {port}"


# ------------------------------------------------------------------------- local.env


def test_local_env_is_a_valid_configuration_pointing_at_the_stack() -> None:
    env = read_env_file(OPS / "local.env")
    settings = load_settings(env)
    load_tracing_config(env)  # raises on an invalid OTEL_* value
    services = compose_services()
    assert settings.kafka.bootstrap_servers == "localhost:9092"
    assert "HOST://localhost:9092" in services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert set(settings.kafka.topics) == {"ml-events"}
    database = conninfo_to_dict(settings.database.url)
    postgres = services["postgres"]["environment"]
    assert (database["user"], database["password"], database["dbname"]) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        postgres["POSTGRES_DB"],
    )
    assert int(database["port"]) in published_ports(services["postgres"])
    [job] = load_yaml(PROMETHEUS)["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [
        f"host.docker.internal:{env['KINGEST_HTTP_PORT']}"
    ]
    assert port_of(env["OTEL_EXPORTER_OTLP_ENDPOINT"]) == 4318


# ------------------------------------------------------------------------- kingest container

KINGEST = "kingest"
MIGRATE = "kingest-migrate"
#: The compose profile that adds kingest to the stack.
PROFILE = "kingest"
#: The variables of ops/local.env that are addresses, different on the compose network.
ADDRESS_VARIABLES = frozenset(
    {"KINGEST_KAFKA_BOOTSTRAP_SERVERS", "KINGEST_DATABASE_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"}
)


def service_environment(name: str) -> dict[str, str]:
    """A service's `environment:` as the strings the container gets."""
    env = compose_services()[name].get("environment", {})
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {
        key: str(value).lower() if isinstance(value, bool) else "" if value is None else str(value)
        for key, value in env.items()
    }


def port_mappings(service: dict[str, Any]) -> list[tuple[int, int]]:
    """(host port, container port) of each `ports:` entry."""
    mappings = []
    for entry in service.get("ports", []):
        host, _, container = str(entry).rpartition(":")
        [published] = published_ports({"ports": [entry]})
        assert host, entry
        mappings.append((published, int(container)))
    return mappings


def test_the_kingest_image_is_built_from_the_dockerfile_at_the_repository_root() -> None:
    services = compose_services()
    build = services[KINGEST]["build"]
    context = (OPS / build["context"]).resolve()
    assert context == OPS.parent.resolve()
    assert (context / build["dockerfile"]).resolve() == (OPS / "Dockerfile").resolve()
    assert (context / ".dockerignore").is_file()
    # The migration job runs the image the kingest service builds.
    migrate = services[MIGRATE]
    assert "build" not in migrate
    assert migrate["image"] == services[KINGEST]["image"]
    assert migrate["command"] == ["migrate"]


def test_kingest_runs_in_the_stack_only_under_its_profile() -> None:
    for name, service in compose_services().items():
        if name in {KINGEST, MIGRATE}:
            assert service["profiles"] == [PROFILE], name
        else:
            # Without the profile, the stack is the host workflow's; with it, everything
            # kingest depends on starts too.
            assert "profiles" not in service, name
    assert f"--profile {PROFILE}" in README.read_text()


def test_the_container_has_the_settings_of_local_env_on_the_compose_network() -> None:
    env = service_environment(KINGEST)
    local = read_env_file(OPS / "local.env")
    assert set(env) == set(local)
    for name in set(env) - ADDRESS_VARIABLES:
        assert env[name] == local[name], name
    load_settings(env)  # raises ConfigError listing every problem
    load_tracing_config(env)


def test_the_container_addresses_name_the_services_of_the_stack() -> None:
    services = compose_services()
    env = service_environment(KINGEST)
    settings = load_settings(env)
    kafka_listeners = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    for server in settings.kafka.bootstrap_servers.split(","):
        host = server.rpartition(":")[0]
        assert host in services, server
        # A listener that advertises the same address: the client reconnects there.
        assert f"//{server}" in kafka_listeners, server
    database = conninfo_to_dict(settings.database.url)
    assert database["host"] in services
    assert int(database["port"]) in {port for _, port in port_mappings(services["postgres"])}
    postgres = services[database["host"]]["environment"]
    assert (database["user"], database["password"], database["dbname"]) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        postgres["POSTGRES_DB"],
    )
    otlp = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert otlp.hostname in services
    collector_http = load_yaml(COLLECTOR)["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert otlp.port == port_of(collector_http)
    # The migration job migrates the database kingest writes to.
    assert service_environment(MIGRATE)["KINGEST_DATABASE_URL"] == settings.database.url


def test_the_container_starts_after_the_topics_and_the_migrations() -> None:
    services = compose_services()
    conditions = {
        name: dependency["condition"]
        for name, dependency in services[KINGEST]["depends_on"].items()
    }
    assert conditions["kafka-init"] == "service_completed_successfully"
    assert conditions[MIGRATE] == "service_completed_successfully"
    assert services[MIGRATE]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in services["postgres"]
    for one_shot in ("kafka-init", MIGRATE):
        assert services[one_shot]["restart"] == "no", one_shot
    assert services[KINGEST]["restart"] == "unless-stopped"


def test_the_container_may_drain_before_it_is_killed() -> None:
    service = compose_services()[KINGEST]
    pipeline = load_settings(service_environment(KINGEST)).pipeline
    grace = duration_s(service["stop_grace_period"])
    # kingest.runtime.supervisor waits STOP_GRACE_S past the drain deadline when
    # KINGEST_PROCESSES > 1; the grace covers that too.
    assert grace >= pipeline.drain_timeout_s + STOP_GRACE_S + EXIT_MARGIN_S
    assert service.get("stop_signal", "SIGTERM") == "SIGTERM"


def test_the_container_is_health_checked_on_its_http_port() -> None:
    service = compose_services()[KINGEST]
    # The image's HEALTHCHECK (tests/ops/test_container.py runs it) applies unless the
    # service replaces or disables it.
    assert "healthcheck" not in service
    assert healthcheck().argv
    settings = load_settings(service_environment(KINGEST))
    assert settings.http.enabled
    assert settings.http.port != 0  # the healthcheck reads KINGEST_HTTP_PORT
    assert settings.http.host == "0.0.0.0"


def test_prometheus_scrapes_the_container_once() -> None:
    services = compose_services()
    settings = load_settings(service_environment(KINGEST))
    [job] = [job for job in load_yaml(PROMETHEUS)["scrape_configs"] if job["job_name"] == "kingest"]
    # Every rule and panel selects job="kingest": the container is a target of that job.
    assert 'job="kingest"' in RULES.read_text()
    discovered = [
        sd for sd in job.get("dns_sd_configs", []) if KINGEST in sd["names"] and sd["type"] == "A"
    ]
    assert discovered, "Prometheus does not discover the kingest service"
    assert {sd["port"] for sd in discovered} == {settings.http.port}
    # Published on the host, but not on the port Prometheus scrapes a host kingest at:
    # that would scrape the container twice, as two instances.
    mappings = port_mappings(services[KINGEST])
    assert [container for _, container in mappings] == [settings.http.port]
    host_targets = {port_of(t) for group in job["static_configs"] for t in group["targets"]}
    assert not {host for host, _ in mappings} & host_targets
