"""Flower asks for a login wherever the deployments run it: the chart (a generated or given
FLOWER_BASIC_AUTH, in Flower's container only) and Compose (FLOWER_BASIC_AUTH required).
`make run`'s Flower is tested live in tests/integration/test_private_redis_password.py."""

from __future__ import annotations

import base64
import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "vterm"
DATABASE = {"secret": {"databaseUrl": "postgres://vterm:secret@postgres:5432/vterm"}}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    helm = importlib.import_module("helm_python")
    chart = helm.Chart.load(str(CHART_DIR))
    manifests = chart.render(values, name="vterm", namespace="terminals", is_install=True)
    return [doc for text in manifests.values() for doc in yaml.safe_load_all(text) if doc]


def containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["name"] + "@" + d["metadata"]["name"]: c for d in docs if d["kind"] in {"Deployment", "StatefulSet", "Job"}
            for c in d["spec"]["template"]["spec"]["containers"]}


def flower_auth_env(container: dict[str, Any]) -> dict[str, Any] | None:
    return next((e for e in container.get("env", []) if e["name"] == "FLOWER_BASIC_AUTH"), None)


def test_chart_flower_gets_a_generated_login_of_its_own() -> None:
    docs = render(DATABASE)
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    auth = base64.b64decode(secrets["vterm-flower"]["data"]["FLOWER_BASIC_AUTH"]).decode()
    assert re.fullmatch(r"admin:[A-Za-z0-9]{32}", auth), auth
    assert "FLOWER_BASIC_AUTH" not in secrets["vterm"]["data"]  # not in the Secret every pod reads
    for name, c in containers(docs).items():
        env = flower_auth_env(c)
        if name.startswith("flower@"):
            assert env["valueFrom"]["secretKeyRef"] == {"name": "vterm-flower", "key": "FLOWER_BASIC_AUTH"}
        else:
            assert env is None, name


def test_chart_flower_login_given_or_from_an_existing_secret() -> None:
    docs = render({**DATABASE, "flower": {"auth": {"user": "ops", "password": "s3cret"}}})
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "vterm-flower")
    assert base64.b64decode(secret["data"]["FLOWER_BASIC_AUTH"]).decode() == "ops:s3cret"
    docs = render({**DATABASE, "flower": {"auth": {"existingSecret": "my-flower"}}})
    assert not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "vterm-flower"]
    flower = containers(docs)["flower@vterm-flower"]
    assert flower_auth_env(flower)["valueFrom"]["secretKeyRef"]["name"] == "my-flower"


def test_chart_without_flower_has_no_flower_secret() -> None:
    docs = render({**DATABASE, "flower": {"enabled": False}})
    assert not [d for d in docs if d["kind"] == "Secret" and "flower" in d["metadata"]["name"]]


def test_compose_flower_requires_a_login() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name, service in services.items():
        env = service.get("environment") or {}
        if name == "flower":
            # Required (${VAR:?...}): Compose refuses to start without it.
            assert re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:\?.+\}", env["FLOWER_BASIC_AUTH"])
            assert "SECRET_KEY" in env and "REDIS_URL" in env  # the common environment still
        else:
            assert "FLOWER_BASIC_AUTH" not in env, name


@pytest.mark.parametrize("values", [DATABASE])
def test_chart_flower_probes_need_no_login(values: dict[str, Any]) -> None:
    # Flower serves /healthcheck and /metrics without the login (flower/views/monitor.py), so the
    # probes and Prometheus' scrape keep working.
    flower = containers(render(values))["flower@vterm-flower"]
    assert flower["readinessProbe"]["httpGet"]["path"] == "/healthcheck"
