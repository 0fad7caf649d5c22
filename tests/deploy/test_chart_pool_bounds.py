"""The chart tells the autoscaler the same bounds as KEDA or the HPA use (docs/operations.md)."""

from __future__ import annotations

import importlib

import pytest

from tests.deploy.test_deploy_artifacts import render

BASE = {"secret": {"existingSecret": "vterm-prod"}}


@pytest.mark.parametrize("values,bounds", [
    (BASE, ("2", "20")),
    ({**BASE, "backend": {"autoscaling": {"enabled": True, "minReplicas": 4, "maxReplicas": 12}}}, ("4", "12")),
    ({**BASE, "keda": {"enabled": True, "minReplicaCount": 3, "maxReplicaCount": 9}}, ("3", "9")),
])
def test_pool_bounds_follow_the_backend_scaler(values, bounds):
    docs = render(importlib.import_module("helm_python"), values)
    data = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert (data["VTERM_POOL_MIN_BACKENDS"], data["VTERM_POOL_MAX_BACKENDS"]) == bounds
