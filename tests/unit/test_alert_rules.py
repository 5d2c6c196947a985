"""The Prometheus alert rules (infra/prometheus/alerts.yml) checked by Prometheus's own promtool:
`check rules` (syntax, PromQL, templates) and `test rules` (alerts_test.yml fires each alert on
synthetic series and expects exact labels and annotations). promtool is Debian's `prometheus`
package (.ci/run installs it); without it these tests fail, they never skip. That the rules watch
metrics the services really export: tests/integration/test_alert_metrics.py."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

PROMETHEUS = Path(__file__).resolve().parents[2] / "infra" / "prometheus"


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, ("promtool not found: install Debian's `prometheus` package (`apt-get install -y prometheus` "
                   "provides /usr/bin/promtool; .ci/run does it)")
    return found


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)


def test_promtool_checks_the_rules():
    result = run("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_fires_in_the_rule_unit_tests():
    result = run("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {r["alert"] for g in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    fired = {t["alertname"] for case in yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
             for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert alerts == fired, f"alerts without a unit test that fires them: {sorted(alerts - fired)}"


def test_promtool_refuses_a_broken_rule(tmp_path):
    """The check can fail: a rule with a PromQL error is refused."""
    (tmp_path / "bad.yml").write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"alert": "Broken", "expr": "sum by (group) (vicino_stream_group_lag"}]}]}))
    result = subprocess.run([promtool(), "check", "rules", str(tmp_path / "bad.yml")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
