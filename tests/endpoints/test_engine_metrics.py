from __future__ import annotations

from endpoints.engine_metrics import metrics_url, parse_engine_load

VLLM = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 4.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{engine="0",model_name="m"} 1234.0
vllm:generation_tokens_created{engine="0",model_name="m"} 1.7e9
"""


def test_sums_label_sets_and_reads_counters() -> None:
    load = parse_engine_load(VLLM)
    assert load == {"running": 5, "waiting": 4, "kv_cache": 0.25, "generated_tokens": 1234.0}


def test_old_gpu_cache_name_and_missing_counters() -> None:
    text = "vllm:num_requests_running 1\nvllm:gpu_cache_usage_perc 0.5\n"
    assert parse_engine_load(text) == {"running": 1, "waiting": 0, "kv_cache": 0.5, "generated_tokens": None}


def test_not_an_engine_page() -> None:
    assert parse_engine_load("# nothing here\nprocess_cpu_seconds_total 3\n") is None
    assert parse_engine_load("") is None


def test_garbage_lines_are_skipped() -> None:
    text = 'vllm:num_requests_running{a="b"} notanumber\nvllm:num_requests_waiting 2\n{oops\n'
    assert parse_engine_load(text) == {"running": 0, "waiting": 2, "kv_cache": None, "generated_tokens": None}


def test_metrics_url() -> None:
    assert metrics_url("http://h:8000/v1") == "http://h:8000/metrics"
    assert metrics_url("http://h:8000/v1/") == "http://h:8000/metrics"
    assert metrics_url("http://h:8000") == "http://h:8000/metrics"
