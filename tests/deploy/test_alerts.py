"""The alert rules (deploy/k8s/base/monitoring/alerts.yaml) under `promtool`: they parse, and
each alert has a unit test that fires it and one that does not (alerts.test.yaml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.deploy.deploy_support import K8S, tool

HERE = Path(__file__).resolve().parent
RULES = K8S / "base" / "monitoring" / "alerts.yaml"
UNIT_TESTS = HERE / "alerts.test.yaml"


def alert_names() -> list[str]:
    rule = yaml.safe_load(RULES.read_text())
    return [r["alert"] for group in rule["spec"]["groups"] for r in group["rules"]]


def write_rules(folder: Path) -> Path:
    """The PrometheusRule's spec is a Prometheus rule file."""
    rule = yaml.safe_load(RULES.read_text())
    path = folder / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    shutil.copy(UNIT_TESTS, folder / UNIT_TESTS.name)
    return path


def test_the_rules_pass_promtool_check(tmp_path: Path) -> None:
    rules = write_rules(tmp_path)
    result = subprocess.run(
        [tool("promtool"), "check", "rules", str(rules)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_once_and_stays_quiet_once(tmp_path: Path) -> None:
    write_rules(tmp_path)
    tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    firing: dict[str, int] = {}
    quiet: dict[str, int] = {}
    for case in tests:
        for check in case["alert_rule_test"]:
            book = firing if check["exp_alerts"] else quiet
            book[check["alertname"]] = book.get(check["alertname"], 0) + 1
    names = set(alert_names())
    assert set(firing) == names, f"no firing test: {names - set(firing)}"
    assert set(quiet) == names, f"no quiet test: {names - set(quiet)}"
    result = subprocess.run(
        [tool("promtool"), "test", "rules", UNIT_TESTS.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
