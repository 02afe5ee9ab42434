"""The Grafana dashboard and the alert rules query only what the running services really export.

The services run for real (tiny editor, verifier, reward, Redis; the test MLLM), requests go through each so
the metrics have samples, and every PromQL expression of the dashboard's panels and of alerts.yml is read for
its series selectors: each metric must be on some service's /metrics, each label matcher must name a label
that metric has, and each ``=`` matcher a value the services produced. The monitoring YAML files are checked
for the shape Prometheus and Grafana's provisioning expect.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.playground.conftest import png_bytes
from tests.verifier.conftest import Script, VerifierFactory

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "etchr.json"
ALERTS = MONITORING / "alerts.yml"
DATASOURCE_UID = "etchr-prometheus"

# PromQL's functions and aggregation operators: a name followed by "(" must be one of these.
_FUNCTIONS = """
    abs absent absent_over_time avg_over_time ceil changes clamp clamp_max clamp_min count_over_time
    day_of_month day_of_week day_of_year days_in_month delta deriv exp floor histogram_avg histogram_count
    histogram_fraction histogram_quantile histogram_stddev histogram_stdvar histogram_sum hour idelta
    increase irate label_join label_replace last_over_time ln log10 log2 max_over_time min_over_time minute
    month predict_linear present_over_time quantile_over_time rate resets round scalar sgn sort sort_desc
    sqrt stddev_over_time stdvar_over_time sum_over_time time timestamp vector year
"""
_AGGREGATIONS = "sum avg min max count stddev stdvar topk bottomk quantile count_values group"
PROMQL_FUNCTIONS = frozenset(_FUNCTIONS.split())
AGGREGATIONS = frozenset(_AGGREGATIONS.split())
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})
TARGET_LABELS = frozenset({"job", "instance"})  # added by Prometheus when it scrapes, not by the services
# Series Prometheus writes itself for every target; alerts may use them, dashboard panels may not.
PROMETHEUS_SERIES = frozenset({"up"})

_TOKEN = re.compile(
    r"""\s+|(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    |(?P<variable>\$\{?\w+\}?)
    |(?P<number>\d[\w.]*(?:[eE][+-]?\d+)?)
    |(?P<ident>[A-Za-z_:][\w:]*)
    |(?P<matchop>=~|!~|!=|==?)
    |(?P<punct>[{}()\[\],])
    |(?P<op>[-+*/%^<>]=?|>|<)""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, operator, value)


def _tokens(expr: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"cannot read {expr[position : position + 20]!r} in {expr!r}")
        position = match.end()
        if match.lastgroup is not None:
            tokens.append((match.lastgroup, match.group()))
    return tokens


def selectors(expr: str) -> list[Selector]:
    """Every series selector in a PromQL expression, with its label matchers.

    Not a full PromQL parser, but strict where it matters here: brackets must balance, a name followed by "("
    must be a PromQL function or aggregation, grouping clauses and ranges are skipped, and every other name
    is a metric.
    """
    tokens = _tokens(expr)
    pairs = {"(": ")", "[": "]", "{": "}"}
    stack: list[str] = []
    for kind, text in tokens:
        if kind == "punct" and text in pairs:
            stack.append(pairs[text])
        elif kind == "punct" and text in pairs.values() and (not stack or stack.pop() != text):
            raise ValueError(f"unbalanced {text!r} in {expr!r}")
    if stack:
        raise ValueError(f"unclosed bracket in {expr!r}")

    found: list[Selector] = []
    i = 0

    def skip_to(closing: str) -> int:
        j = i
        while tokens[j][1] != closing:
            j += 1
        return j + 1

    def matchers(start: int) -> tuple[list[tuple[str, str, str]], int]:
        result, j = [], start + 1  # after "{"
        while tokens[j][1] != "}":
            (label_kind, label), (op_kind, op), (value_kind, value) = tokens[j : j + 3]
            if label_kind != "ident" or op_kind != "matchop" or value_kind != "string":
                raise ValueError(f"bad label matcher near {label!r} in {expr!r}")
            result.append((label, op, value[1:-1]))
            j += 3
            if tokens[j][1] == ",":
                j += 1
        return result, j + 1

    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "punct" and text == "[":
            i = skip_to("]")
        elif kind == "ident" and text in GROUPING and following == "(":
            i = skip_to(")")
        elif kind == "ident" and text in KEYWORDS | GROUPING:  # "and (", "bool", "offset 5m"
            i += 1
        elif kind == "ident" and (following == "(" or (text in AGGREGATIONS and following in GROUPING)):
            if text not in PROMQL_FUNCTIONS | AGGREGATIONS:
                raise ValueError(f"unknown PromQL function {text!r} in {expr!r}")
            i += 1
        elif kind == "ident":
            found_matchers: list[tuple[str, str, str]] = []
            i += 1
            if following == "{":
                found_matchers, i = matchers(i)
            found.append(Selector(text, tuple(found_matchers)))
        elif kind == "punct" and text == "{":  # {__name__="..."} without a leading name
            found_matchers, i = matchers(i)
            names = [value for label, op, value in found_matchers if label == "__name__" and op == "="]
            if len(names) != 1:
                raise ValueError(f"a selector without one metric name in {expr!r}")
            found.append(Selector(names[0], tuple(m for m in found_matchers if m[0] != "__name__")))
        else:
            i += 1
    return found


@dataclass
class Exported:
    """What the services' /metrics say: series names with the label values seen, and declared names."""

    labels: dict[str, dict[str, set[str]]]  # name of a series with samples -> label -> values seen
    declared: set[str]  # every sample name a declared family can have, samples or not

    @classmethod
    def parse(cls, texts: Iterable[str]) -> Exported:
        labels: dict[str, dict[str, set[str]]] = {}
        declared: set[str] = set()
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
        for text in texts:
            for family in text_string_to_metric_families(text):
                declared.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
                for sample in family.samples:
                    declared.add(sample.name)
                    seen = labels.setdefault(sample.name, defaultdict(set))
                    for label, value in sample.labels.items():
                        seen[label].add(value)
        return cls(labels, declared)


def problems_in(
    expressions: dict[str, str], exported: Exported, *, extra_series: frozenset[str] = frozenset()
) -> list[str]:
    """What in ``expressions`` (where -> PromQL) names a metric, label or value the services do not export."""
    problems = []
    for where, expr in expressions.items():
        try:
            found = selectors(expr)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if not found:
            problems.append(f"{where}: no metric in {expr!r}")
        for selector in found:
            if selector.metric in extra_series:
                continue
            if selector.metric not in exported.declared:
                problems.append(f"{where}: {selector.metric} is not exported by any service")
                continue
            matchers = [matcher for matcher in selector.matchers if matcher[0] not in TARGET_LABELS]
            seen = exported.labels.get(selector.metric)
            if matchers and seen is None:
                problems.append(f"{where}: {selector.metric} has no samples, so its labels cannot be checked")
                continue
            for label, op, value in matchers:
                assert seen is not None
                if label not in seen:
                    problems.append(f"{where}: {selector.metric} has no label {label!r}")
                elif op == "=" and value not in seen[label]:
                    known = sorted(seen[label])
                    problems.append(
                        f"{where}: {selector.metric}{{{label}={value!r}}} never seen (seen: {known})"
                    )
    return problems


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def dashboard_expressions() -> dict[str, str]:
    return {
        f"panel {panel['title']!r} target {target['refId']}": target["expr"]
        for panel in panels()
        for target in panel["targets"]
    }


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def alert_expressions() -> dict[str, str]:
    return {f"alert {rule['alert']}": rule["expr"] for rule in alert_rules()}


# ------------------------------------------------------------------------------------------ the live stack


@pytest.fixture
def exported(
    verifier: VerifierFactory, editor_url: str, reward_url: str, script: Script
) -> Iterator[Exported]:
    """Drive each service (edits, routed and direct answers, a fallback, reward queries and cache hits)."""
    import base64

    verifier_url = verifier()
    image = base64.b64encode(png_bytes(80, 64)).decode()
    question = "Which exit does the path from the green start reach? (A) left (B) right"
    answers = [
        ({"task": "auto"}, "1"),  # routed by the model, edit accepted
        ({"task": "auto"}, "0"),  # routed from the cache, edit rejected: a fallback
        ({"task": "logic", "mode": "direct"}, "1"),
    ]
    for overrides, verdict in answers:
        script.verdict = verdict
        body = {"image": image, "question": question, **overrides}
        response = httpx.post(f"{verifier_url}/answer", json=body, timeout=60)
        assert response.status_code == 200, response.text
    reward = {
        "items": [{"id": "q1", "image": image, "question": question, "answer": "B", "edits": [image, image]}],
        "k": 1,
    }
    for _ in range(2):  # the second request is answered from the cache
        response = httpx.post(f"{reward_url}/reward", json=reward, timeout=60)
        assert response.status_code == 200, response.text
    texts = [httpx.get(f"{url}/metrics", timeout=10).text for url in (editor_url, verifier_url, reward_url)]
    yield Exported.parse(texts)


def test_every_dashboard_and_alert_query_names_exported_metrics(exported: Exported) -> None:
    # the services really produced the series the key panels plot
    for name in (
        "etchr_editor_batch_rows_bucket",
        "etchr_editor_queue_wait_seconds_bucket",
        "etchr_editor_infer_seconds_bucket",
        "etchr_editor_edits_total",
        "etchr_editor_queue_waiting",
        "etchr_verifier_stage_seconds_bucket",
        "etchr_verifier_verdicts_total",
        "etchr_verifier_fallbacks_total",
        "etchr_verifier_route_total",
        "etchr_reward_queries_total",
    ):
        assert name in exported.labels, f"{name} has no samples after driving the stack"
    assert exported.labels["etchr_reward_queries_total"]["source"] >= {"cache", "computed"}
    assert "etchr_reward_failures_total" in exported.declared

    assert problems_in(dashboard_expressions(), exported) == []
    assert problems_in(alert_expressions(), exported, extra_series=PROMETHEUS_SERIES) == []


def test_a_wrong_name_label_or_value_is_caught(exported: Exported) -> None:
    """The check above must fail on the mistakes it exists for (a renamed metric above all)."""
    bad = {
        "renamed metric": "sum(rate(etchr_editor_edit_total[5m]))",
        "counter without _total": "rate(etchr_verifier_verdicts[5m])",
        "histogram without _bucket": "histogram_quantile(0.9, rate(etchr_editor_infer_seconds[5m]))",
        "wrong label": 'etchr_verifier_fallbacks_total{cause="unreliable"}',
        "wrong value": 'etchr_reward_queries_total{source="hit"}',
        "unknown function": "rates(etchr_editor_edits_total[5m])",
        "unbalanced": "sum(rate(etchr_editor_edits_total[5m])",
        "synthetic series on a panel": "up",
    }
    problems = problems_in(bad, exported)
    for where in bad:
        assert any(problem.startswith(f"{where}:") for problem in problems), where
    fine = {
        "grouping and ranges": "sum by (le, stage) "
        '(rate(etchr_verifier_stage_seconds_bucket{job="x"}[$__rate_interval]))',
        "subquery and arithmetic": "deriv(max(etchr_editor_queue_waiting)[15m:1m]) > 0 and 1e-9 < 2",
        "set operator before a bracket": "etchr_editor_queue_waiting > 0 and (vector(1) or vector(0))",
        "regex and negative matchers": 'etchr_verifier_answers_total{mode!="direct", used_edit=~"t.*"}',
    }
    assert problems_in(fine, exported) == []


# --------------------------------------------------------------------------------------- the files' shape


def test_dashboard_has_the_panels_operators_asked_for() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    by_title = {panel["title"]: panel for panel in panels()}
    for panel in by_title.values():
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, panel["title"]
        assert panel["targets"] and panel.get("description"), panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]

    def metrics_of(title: str) -> set[str]:
        assert title in by_title, f"missing panel {title!r}"
        return {s.metric for target in by_title[title]["targets"] for s in selectors(target["expr"])}

    wanted = {
        "Editor queue depth": {"etchr_editor_queue_waiting", "etchr_editor_queue_running"},
        "Editor queue lag (time to a worker)": {"etchr_editor_queue_wait_seconds_bucket"},
        "Batch size distribution": {"etchr_editor_batch_rows_bucket"},
        "Queue wait vs inference time": {
            "etchr_editor_queue_wait_seconds_bucket",
            "etchr_editor_infer_seconds_bucket",
        },
        "Edits/s per worker": {"etchr_editor_edits_total"},
        "EVR stage latency p95": {"etchr_verifier_stage_seconds_bucket"},
        "Verdict and fallback rates": {"etchr_verifier_verdicts_total", "etchr_verifier_fallbacks_total"},
        "Routing decisions": {"etchr_verifier_route_total"},
        "Reward queries/s by source": {"etchr_reward_queries_total"},
        "Reward cache hit rate": {"etchr_reward_queries_total"},
        "Reward backend errors": {"etchr_reward_failures_total"},
    }
    for title, metrics in wanted.items():
        assert metrics <= metrics_of(title), title
    per_worker = by_title["Edits/s per worker"]["targets"][0]["expr"]
    assert re.search(r"by \(instance\)", per_worker), "edits/s is split by scrape target (one per worker)"


def test_alert_rules_cover_queue_growth_fallbacks_and_reward_backends() -> None:
    rules = alert_rules()
    for rule in rules:
        assert re.fullmatch(r"Etchr\w+", rule["alert"]) and rule["expr"].strip()
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
    by_name = {rule["alert"]: rule["expr"] for rule in rules}
    assert "deriv(max(etchr_editor_queue_waiting)" in by_name["EtchrEditorQueueGrowing"]
    assert "etchr_verifier_fallbacks_total" in by_name["EtchrVerifierFallbackRateHigh"]
    assert "etchr_reward_failures_total" in by_name["EtchrRewardBackendFailures"]


def test_prometheus_and_grafana_provisioning_files() -> None:
    prometheus = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]
    targets = {
        job["job_name"]: [t for config in job.get("static_configs", []) for t in config["targets"]]
        for job in prometheus["scrape_configs"]
    }
    assert targets == {"editor": ["editor:8001"], "verifier": ["verifier:8002"], "reward": ["reward:8003"]}

    datasources = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == DATASOURCE_UID
    assert source["url"].startswith("http://prometheus:9090")

    providers = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/etchr.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"
