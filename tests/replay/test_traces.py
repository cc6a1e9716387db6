"""Trace loaders on the real public traces and on small files written by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from warmstart.replay import WorkloadError, builtin_workload, load_trace
from warmstart.replay.traces import detect_format, endpoint_rate
from warmstart.replay.workload import workload_from_rate


def test_azure_conversation_trace_loads_every_request(traces: Path) -> None:
    path = traces / "azure-llm-2023" / "AzureLLMInferenceTrace_conv.csv"
    rows = path.read_text().count("\n")

    workload = load_trace(path)

    assert detect_format(path) == "azure-llm"
    # One line break per row after the header's, and none after the last row.
    assert workload.requests == rows
    assert workload.arrival_s[0] == 0.0
    assert np.all(np.diff(workload.arrival_s) >= 0)
    assert 3400 < workload.duration_s < 3600
    assert workload.input_tokens is not None
    assert workload.input_tokens.min() >= 0


def test_azure_functions_trace_keeps_durations(traces: Path) -> None:
    path = traces / "azure-functions-2021-head200" / "Azure2021_200.csv"

    workload = load_trace(path)

    assert workload.requests == 199
    assert workload.service_s is not None
    # The first row of the trace ends at 0.0795 s after running 0.078 s.
    assert workload.service_s.max() > 0


def test_alibaba_per_container_rates_become_arrivals(traces: Path) -> None:
    path = traces / "alibaba-genai-2026" / "qps.csv"

    workload = load_trace(path, seed=3)

    assert detect_format(path) == "instance-metric"
    assert 20 * 3600 < workload.duration_s < 24 * 3600
    assert workload.requests > 1000


def test_missing_report_holds_last_value_for_two_periods() -> None:
    # Instance a reports 2 req/s at 0, 60 and 120 s, then misses 180 and 240 s; b reports
    # 1 req/s every time. At 180 and 240 s a's last value still counts; at 300 s it is gone.
    times = [0, 60, 120, 0, 60, 120, 180, 240, 300]
    names = ["a", "a", "a", "b", "b", "b", "b", "b", "b"]
    values = [2, 2, 2, 1, 1, 1, 1, 1, 1]

    grid, total, period = endpoint_rate(times, names, values)

    assert period == 60.0
    assert grid.tolist() == [0, 60, 120, 180, 240, 300]
    assert total.tolist() == [3, 3, 3, 3, 3, 1]


def test_mooncake_jsonl_converts_milliseconds(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    records = [
        {"timestamp": 1500, "input_length": 100, "output_length": 10, "hash_ids": [1]},
        {"timestamp": 500, "input_length": 200, "output_length": 20, "hash_ids": [2]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")

    workload = load_trace(path)

    assert workload.arrival_s.tolist() == [0.0, 1.0]
    assert workload.input_tokens is not None
    assert workload.input_tokens.tolist() == [200, 100]


def test_mooncake_bad_line_names_line(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text('{"timestamp": 1, "input_length": 1, "output_length": 1}\n{"oops": 1}\n')

    with pytest.raises(WorkloadError, match=r"trace.jsonl:2"):
        load_trace(path)


def test_time_value_rate_gives_expected_count(tmp_path: Path) -> None:
    path = tmp_path / "rate.csv"
    path.write_text("time,value\n0,10\n100,0\n200,5\n")

    workload = load_trace(path, seed=1)

    assert detect_format(path) == "time-value"
    # 10 req/s for 100 s plus 5 req/s for 100 s: 1500 expected, Poisson spread about 39.
    assert 1350 < workload.requests < 1650
    assert np.count_nonzero((workload.arrival_s >= 100) & (workload.arrival_s < 200)) == 0


def test_time_value_rejects_instance_rows(tmp_path: Path) -> None:
    path = tmp_path / "qps.csv"
    path.write_text("time,container_ip,value\n0,,3\n0,10.0.0.1,10\n0,10.0.0.2,10\n100,,3\n")

    with pytest.raises(WorkloadError) as error:
        load_trace(path, "time-value")

    message = str(error.value)
    assert "qps.csv:3: column 'container_ip' names instance '10.0.0.1'" in message
    assert "--format instance-metric" in message
    # The format that the message points to reads the file.
    assert load_trace(path, "instance-metric", seed=1).requests > 0


def test_time_value_reads_empty_instance_column(tmp_path: Path) -> None:
    path = tmp_path / "qps.csv"
    path.write_text("time,instance,value\n0,,10\n100,None,0\n200,NULL,5\n")

    workload = load_trace(path, "time-value", seed=1)

    # The same 1500 expected requests as a file without the column.
    assert 1350 < workload.requests < 1650


def test_invalid_number_names_line(tmp_path: Path) -> None:
    path = tmp_path / "requests.csv"
    path.write_text("arrival_s,service_s\n0,1\nsoon,1\n")

    with pytest.raises(WorkloadError, match=r"requests.csv:3: invalid arrival_s 'soon'"):
        load_trace(path)


def test_unknown_columns_ask_for_format(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")

    with pytest.raises(WorkloadError, match="--format"):
        load_trace(path)


def test_missing_trace_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="not found"):
        load_trace(tmp_path / "absent.csv")


def test_builtin_workload_is_seeded() -> None:
    first = builtin_workload(seed=4)
    second = builtin_workload(seed=4)
    other = builtin_workload(seed=5)

    assert np.array_equal(first.arrival_s, second.arrival_s)
    assert not np.array_equal(first.arrival_s, other.arrival_s)
    # Mean rate over the hour is about 4.3 requests per second.
    assert 13_000 < first.requests < 18_000


def test_generated_rate_rejects_negative_values() -> None:
    with pytest.raises(WorkloadError, match="non-negative"):
        workload_from_rate("bad", [0.0, 1.0], [1.0, -1.0], 2.0)
