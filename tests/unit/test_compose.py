"""docker-compose.yml describes the same stack as the local one (checked without a Docker engine)."""

from pathlib import Path

import yaml

from services.common.constants import TOPICS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_no_top_level_version_key() -> None:
    assert "version" not in COMPOSE


def test_it_has_the_whole_stack() -> None:
    for name in ("kafka", "redis", "topics", "ingest", "stager", "triggers", "attribution", "prometheus", "grafana"):
        assert name in SERVICES, name


def test_every_long_running_service_has_a_healthcheck() -> None:
    for name, service in SERVICES.items():
        if name != "topics":
            assert "test" in service.get("healthcheck", {}), name


def test_dependencies_wait_for_health_and_topic_creation() -> None:
    for name, service in SERVICES.items():
        for dep, cond in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dep == "topics" else "service_healthy"
            assert cond == {"condition": expected}, (name, dep)
    for name in ("ingest", "stager", "triggers", "attribution"):
        assert SERVICES[name]["depends_on"]["topics"] == {"condition": "service_completed_successfully"}


def test_kafka_runs_in_kraft_mode_and_redis_with_aof() -> None:
    env = SERVICES["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "zookeeper" not in str(SERVICES["kafka"]).lower()
    command = SERVICES["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"


def test_topic_service_creates_the_topic_table_once() -> None:
    assert SERVICES["topics"]["command"] == ["crm", "topics", "create"]
    assert SERVICES["topics"]["restart"] == "no"
    assert len(TOPICS) == len({t.name for t in TOPICS})


def test_ports_are_published_on_loopback_only() -> None:
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)


def test_prometheus_scrapes_every_service() -> None:
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"] for job in scrape["scrape_configs"]}
    assert jobs == {"ingest", "stager", "triggers", "attribution", "analytics", "analytics-api"}


def test_grafana_dashboard_uses_only_metrics_the_services_export() -> None:
    import json
    import re

    from prometheus_client import CollectorRegistry

    from services.ingest.metrics import IngestMetrics
    from services.stager.metrics import StagerMetrics
    from services.triggers.metrics import TriggerMetrics

    registry = CollectorRegistry()
    for metrics in (IngestMetrics, StagerMetrics, TriggerMetrics):
        metrics(registry)
    exported = set()
    for family in registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(family.type, ("",))
        exported |= {family.name + s for s in suffixes}
    dashboard = json.loads((ROOT / "deploy/grafana/provisioning/dashboards/crm-engine.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bcrm_[a-z_]+", target["expr"])
    }
    assert used and used <= exported, used - exported
    assert {"crm_stager", "crm_triggers", "crm_ingest"} <= {"_".join(n.split("_")[:2]) for n in used}
