"""The Prometheus text parser adapters use for `/metrics` pages.

Claims: samples come back by name with their labels (escapes undone) in page order; comments,
timestamps and broken lines do not disturb the rest; sums and maxima skip NaN and infinities
and report an absent metric as None.
"""

from __future__ import annotations

import math
from pathlib import Path

from geniehive.adapters.prometheus import metric_max, metric_sum, parse_prometheus

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "upstreams"


def test_parses_names_labels_and_values_in_page_order():
    text = (
        "# HELP x_total things\n"
        "# TYPE x_total counter\n"
        'x_total{a="1",b="two"} 3\n'
        "x_total 4.5e1\n"
        "\n"
        "plain 7 1700000000000\n"
    )
    assert parse_prometheus(text) == {
        "x_total": [({"a": "1", "b": "two"}, 3.0), ({}, 45.0)],
        "plain": [({}, 7.0)],
    }


def test_label_values_keep_commas_braces_and_undo_escapes():
    text = 'm{path="/a,b}",quote="say \\"hi\\"",slash="c:\\\\d",nl="x\\ny",} 1\n'
    assert parse_prometheus(text) == {
        "m": [({"path": "/a,b}", "quote": 'say "hi"', "slash": "c:\\d", "nl": "x\ny"}, 1.0)]
    }


def test_special_values_parse_and_empty_braces_are_no_labels():
    samples = parse_prometheus("a{} +Inf\nb -Inf\nc NaN\n")
    assert samples["a"] == [({}, math.inf)]
    assert samples["b"] == [({}, -math.inf)]
    assert math.isnan(samples["c"][0][1])


def test_broken_lines_are_skipped_and_the_rest_counts():
    text = 'good 1\n{nolabel="x"} 2\nbad{a="1" 3\nnovalue\nworse{a=1} 4\nalso_good 5\nx abc\n'
    assert parse_prometheus(text) == {"good": [({}, 1.0)], "also_good": [({}, 5.0)]}


def test_sum_and_max_use_the_first_name_present_and_skip_non_finite_values():
    samples = parse_prometheus('new{e="0"} 0.25\nnew{e="1"} 0.5\nnew{e="2"} NaN\nold 0.9\n')
    assert metric_sum(samples, "new", "old") == 0.75
    assert metric_max(samples, "new", "old") == 0.5
    assert metric_max(samples, "missing", "old") == 0.9
    assert metric_sum(samples, "missing") is None
    assert metric_max(samples, "missing") is None


def test_a_real_vllm_page_parses_every_sample():
    samples = parse_prometheus((FIXTURES / "vllm_metrics.txt").read_text())
    assert samples["vllm:num_requests_running"] == [
        ({"engine": "0", "model_name": "Qwen/Qwen3-8B"}, 3.0)
    ]
    assert samples["vllm:e2e_request_latency_seconds_bucket"][1] == (
        {"engine": "0", "le": "+Inf", "model_name": "Qwen/Qwen3-8B"}, 41.0
    )
    assert sum(len(v) for v in samples.values()) == 11
