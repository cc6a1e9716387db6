"""Malformed, oversized and unusually encoded traces: each fails with file and line, or loads
with the right numbers."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import tarfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warmstart.cli import main
from warmstart.errors import WarmstartError
from warmstart.replay import WorkloadError, load_trace
from warmstart.replay.workload import (
    MAX_GENERATED_REQUESTS,
    MAX_SPAN_S,
    builtin_workload,
    workload_from_rate,
)

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def azure(tmp_path: Path, *stamps: str) -> Path:
    rows = "".join(f"{stamp},100,10\n" for stamp in stamps)
    return write(tmp_path / "azure.csv", AZURE_HEADER + rows)


@pytest.mark.parametrize("stamp", ["", "NaT", "   "])
def test_missing_timestamp_names_line(tmp_path: Path, stamp: str) -> None:
    path = azure(tmp_path, "2023-11-16 18:00:00", stamp, "2023-11-16 18:02:00")

    with pytest.raises(WorkloadError, match=r"azure.csv:3: invalid TIMESTAMP"):
        load_trace(path)


@pytest.mark.parametrize("stamp", ["1700000000", "2023-11-16", "2023-11", "16/11/2023 18:00"])
def test_partial_timestamp_names_line(tmp_path: Path, stamp: str) -> None:
    path = azure(tmp_path, "2023-11-16 18:00:00", stamp)

    with pytest.raises(WorkloadError, match=r"azure.csv:3: invalid TIMESTAMP") as error:
        load_trace(path)

    assert repr(stamp) in str(error.value)


def test_out_of_range_date_names_line(tmp_path: Path) -> None:
    path = azure(tmp_path, "2023-11-16 18:00:00", "2023-13-40 18:00:00")

    with pytest.raises(WorkloadError, match=r"azure.csv:3: invalid TIMESTAMP '2023-13-40"):
        load_trace(path)


def test_outlier_timestamp_rejects_span(tmp_path: Path) -> None:
    path = azure(tmp_path, "2023-11-16 18:00:00", "2023-11-16 18:00:05", "1990-01-01 00:00:00")

    with pytest.raises(WorkloadError, match=r"from line 4 to line 3.*--duration"):
        load_trace(path)


def test_duration_cuts_before_span_check(tmp_path: Path) -> None:
    path = azure(tmp_path, "2023-11-16 18:00:00", "2023-11-16 18:00:05", "2099-01-01 00:00:00")

    workload = load_trace(path, duration_s=60)

    assert workload.requests == 2
    assert workload.duration_s == 5.0


def test_span_limit_is_inclusive(tmp_path: Path) -> None:
    path = write(tmp_path / "requests.csv", f"arrival_s,service_s\n0,1\n{MAX_SPAN_S:.0f},1\n")

    workload = load_trace(path)

    assert workload.duration_s == MAX_SPAN_S


def test_spike_generates_only_its_requests(tmp_path: Path) -> None:
    # 1 request per second for two days with one second at 20,000. The old generator drew
    # 20,000 x 172,800 x 1.2 candidates (31 GiB) for about 193,000 requests.
    rows = ["time,value", "0,1", "86400,20000", "86401,1", "172800,0"]
    path = write(tmp_path / "qps.csv", "\n".join(rows) + "\n")

    workload = load_trace(path, seed=2)

    # Poisson counts: 192,800 expected, standard deviation about 440.
    assert 191_000 < workload.requests < 194_600
    spike = (workload.arrival_s >= 86400) & (workload.arrival_s < 86401)
    assert 19_400 < np.count_nonzero(spike) < 20_600


def test_huge_rate_names_limit_and_duration(tmp_path: Path) -> None:
    path = write(tmp_path / "rate.csv", "time,value\n0,1e12\n60,1\n")

    with pytest.raises(WorkloadError, match=r"at most 10,000,000.*--duration"):
        load_trace(path)


def test_latency_series_is_not_detected_as_rate(tmp_path: Path) -> None:
    rows = ["timestamp_anon,value,container_ip", "0,4775.0,a", "60,5515.0,b"]
    path = write(tmp_path / "controlnet_latency.csv", "\n".join(rows) + "\n")

    with pytest.raises(WorkloadError, match=r"--format instance-metric"):
        load_trace(path)
    workload = load_trace(path, "instance-metric")

    assert workload.requests > 0


def test_alibaba_latency_csv_needs_format(traces: Path) -> None:
    path = traces / "alibaba-genai-2026" / "controlnet_latency_data_anon.csv"

    with pytest.raises(WorkloadError, match=r"--format instance-metric"):
        load_trace(path)


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_byte_order_mark_is_skipped(tmp_path: Path, suffix: str) -> None:
    if suffix == "csv":
        text = AZURE_HEADER + "2023-11-16 18:00:00,100,10\n"
    else:
        text = json.dumps({"timestamp": 0, "input_length": 100, "output_length": 10}) + "\n"
    path = tmp_path / f"trace.{suffix}"
    path.write_text(text, encoding="utf-8-sig")

    workload = load_trace(path)

    assert workload.requests == 1


def test_utc_offsets_convert_without_warning(tmp_path: Path) -> None:
    path = azure(
        tmp_path,
        "2024-05-10 00:00:00.500000+00:00",
        "2024-05-10 01:00:01+01:00",
        "2024-05-09T19:00:02-05:00",
        "2024-05-10T00:00:03Z",
    )

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        workload = load_trace(path)

    assert workload.arrival_s.tolist() == [0.0, 0.5, 1.5, 2.5]


def test_same_time_rate_series_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "rate.csv", "time,value\n5,1\n5,2\n5,3\n")

    with pytest.raises(WorkloadError, match=r"all 3 rows have the same time"):
        load_trace(path)


@pytest.mark.parametrize("duration", [0.0, -1.0, float("nan"), float("inf")])
def test_head_rejects_invalid_duration(duration: float) -> None:
    workload = builtin_workload(duration_s=60.0)

    with pytest.raises(WorkloadError, match="invalid duration"):
        workload.head(duration)


@pytest.mark.parametrize("value", ["374.7", "nan", "inf", "1e30", "-1"])
def test_invalid_token_count_names_line(tmp_path: Path, value: str) -> None:
    text = AZURE_HEADER + "2023-11-16 18:00:00,100,10\n" + f"2023-11-16 18:00:01,{value},10\n"
    path = write(tmp_path / "azure.csv", text)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(WorkloadError, match=rf"azure.csv:3: invalid ContextTokens '{value}'"):
            load_trace(path)


@pytest.mark.parametrize(
    "value",
    [
        "374.7",
        "true",
        "null",
        '"12"',
        "1e300",
        "NaN",
        # An integer too large for a float, and nesting too deep for the JSON parser.
        pytest.param("1" + "0" * 400, id="400-digits"),
        pytest.param("[" * 100_000 + "]" * 100_000, id="deep-nesting"),
    ],
)
def test_invalid_mooncake_count_names_line(tmp_path: Path, value: str) -> None:
    good = '{"timestamp": 0, "input_length": 1, "output_length": 1}'
    bad = f'{{"timestamp": 5, "input_length": 1, "output_length": {value}}}'
    path = write(tmp_path / "trace.jsonl", f"{good}\n{bad}\n")

    with pytest.raises(WorkloadError, match=r"trace.jsonl:2: .*output_length"):
        load_trace(path)


def test_infinite_service_time_names_line(tmp_path: Path) -> None:
    path = write(tmp_path / "requests.csv", "arrival_s,service_s\n0,1\n1,inf\n")

    with pytest.raises(WorkloadError, match=r"requests.csv:3: invalid service_s 'inf'"):
        load_trace(path)


def test_directory_is_not_a_trace(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="is a directory"):
        load_trace(tmp_path)


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_tar_archive_is_not_a_trace(tmp_path: Path, mode: str) -> None:
    # Trace collections ship as .tar.gz, and read as CSV they give a header of tar metadata.
    member = write(tmp_path / "qps.csv", "timestamp,value\n0,1\n")
    archive = tmp_path / "qps.tar"
    with tarfile.open(archive, mode) as tar:
        tar.add(member, arcname="qps.csv")

    with pytest.raises(WorkloadError, match=r"qps.tar: this is a tar archive"):
        load_trace(archive)
    with pytest.raises(WorkloadError, match=r"qps.tar: this is a tar archive"):
        load_trace(archive, "time-value")


def test_gzip_trace_is_read(tmp_path: Path) -> None:
    path = tmp_path / "azure.csv"
    path.write_bytes(gzip.compress((AZURE_HEADER + "2023-11-16 18:00:00,100,10\n").encode()))

    workload = load_trace(path)

    assert workload.requests == 1


def test_gzip_jsonl_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl.gz"
    record = {"timestamp": 0, "input_length": 100, "output_length": 10}
    path.write_bytes(gzip.compress((json.dumps(record) + "\n").encode()))

    workload = load_trace(path)

    assert workload.requests == 1


def test_utf16_trace_is_read(tmp_path: Path) -> None:
    path = tmp_path / "azure.csv"
    path.write_text(AZURE_HEADER + "2023-11-16 18:00:00,100,10\n", encoding="utf-16")

    workload = load_trace(path)

    assert workload.requests == 1


def test_invalid_utf8_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "azure.csv"
    path.write_bytes(AZURE_HEADER.encode() + b"2023-11-16 18:00:00,\xff\xfe,10\n")

    with pytest.raises(WorkloadError, match="invalid UTF-8"):
        load_trace(path)


def test_corrupt_gzip_is_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = "".join(f"2023-11-16 18:00:{i % 60:02d},{i},10\n" for i in range(20_000))
    data = bytearray(gzip.compress((AZURE_HEADER + rows).encode()))
    # Flipping bits inside the deflate stream makes zlib fail, not the length or CRC check.
    for index in range(40, 80):
        data[index] ^= 0x55
    path = tmp_path / "azure.csv.gz"
    path.write_bytes(bytes(data))

    status = main(["replay", str(path), "--jobs", "1"])

    assert status == 2
    error = capsys.readouterr().err
    assert "azure.csv.gz" in error
    assert "corrupt" in error


def test_device_is_not_a_trace() -> None:
    with pytest.raises(WorkloadError, match="/dev/null is neither a regular file nor a FIFO"):
        load_trace("/dev/null")


@contextlib.contextmanager
def piped(tmp_path: Path, data: bytes, kind: str) -> Iterator[Path]:
    """Yield a path whose reader gets ``data`` once, from a named FIFO or, as bash's
    ``<(command)`` gives, from ``/dev/fd/N`` of an anonymous pipe."""
    if kind == "fifo":
        path = tmp_path / "trace-fifo"
        os.mkfifo(path)

        def write() -> None:
            # Opening the write end blocks until a reader opens the FIFO.
            try:
                with path.open("wb") as pipe:
                    pipe.write(data)
            except BrokenPipeError:
                pass

        closing = None
    else:
        read_end, write_end = os.pipe()
        path = Path(f"/dev/fd/{read_end}")
        closing = read_end

        def write() -> None:
            try:
                with os.fdopen(write_end, "wb") as pipe:
                    pipe.write(data)
            except BrokenPipeError:
                pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        yield path
    finally:
        if kind == "fifo" and writer.is_alive():
            # Release a writer still waiting for a reader.
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        writer.join(timeout=10.0)
        if closing is not None:
            os.close(closing)


@pytest.mark.parametrize("kind", ["fifo", "pipe"])
def test_piped_gzip_trace_loads_like_file(tmp_path: Path, kind: str) -> None:
    rows = "".join(f"2023-11-16 18:00:{second:02d},{100 + second},10\n" for second in range(30))
    data = gzip.compress((AZURE_HEADER + rows).encode())
    regular = tmp_path / "azure.csv.gz"
    regular.write_bytes(data)

    with piped(tmp_path, data, kind) as path:
        workload = load_trace(path)

    expected = load_trace(regular)
    np.testing.assert_array_equal(workload.arrival_s, expected.arrival_s)
    assert workload.input_tokens is not None
    assert expected.input_tokens is not None
    np.testing.assert_array_equal(workload.input_tokens, expected.input_tokens)


def test_piped_mooncake_is_detected_without_name(tmp_path: Path) -> None:
    records = [{"timestamp": 1000 * i, "input_length": 10, "output_length": 5} for i in range(5)]
    data = "".join(json.dumps(record) + "\n" for record in records).encode()

    with piped(tmp_path, data, "pipe") as path:
        workload = load_trace(path)

    assert workload.requests == 5


def test_replay_reads_trace_from_pipe(
    traces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = traces / "azure-llm-2023" / "AzureLLMInferenceTrace_code.csv"
    data = gzip.compress(trace.read_bytes())

    with piped(tmp_path, data, "pipe") as path:
        arguments = ["replay", str(path), "--duration", "300", "--jobs", "1"]
        status = main([*arguments, "--policy", "hpa", "--cache", "cold"])

    assert status == 0
    assert "requests over 300 s" in capsys.readouterr().out


def test_overlong_field_names_line(tmp_path: Path) -> None:
    path = write(tmp_path / "azure.csv", AZURE_HEADER + "x" * 200_000 + ",1,1\n")

    with pytest.raises(WorkloadError, match=r"azure.csv:2: invalid CSV"):
        load_trace(path)


def test_workload_error_is_warmstart_error() -> None:
    assert issubclass(WorkloadError, WarmstartError)
    assert issubclass(WorkloadError, ValueError)


def test_replay_zero_duration_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["replay", "--duration", "0", "--jobs", "1"])

    assert status == 2
    assert "invalid duration" in capsys.readouterr().err


def test_generated_requests_limit_is_enforced() -> None:
    rate = MAX_GENERATED_REQUESTS / 100.0 * 1.5

    with pytest.raises(WorkloadError, match="at most"):
        workload_from_rate("dense", [0.0], [rate], 100.0)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    arrivals=st.lists(
        st.floats(min_value=0, max_value=MAX_SPAN_S, allow_nan=False), min_size=1, max_size=40
    ),
    tokens=st.integers(min_value=0, max_value=100_000),
)
def test_valid_trace_round_trips(tmp_path: Path, arrivals: list[float], tokens: int) -> None:
    rows = "".join(f"{arrival!r},{tokens},{tokens}\n" for arrival in arrivals)
    path = write(tmp_path / "requests.csv", "arrival_s,input_tokens,output_tokens\n" + rows)

    workload = load_trace(path)

    assert workload.requests == len(arrivals)
    assert workload.arrival_s[-1] == pytest.approx(max(arrivals) - min(arrivals), abs=1e-6)
    assert workload.input_tokens is not None
    assert set(workload.input_tokens.tolist()) == {tokens}


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    size=st.integers(min_value=1, max_value=20),
    data=st.data(),
    bad=st.sampled_from(["", "nan", "inf", "-5", "1.5", "x", "1e30"]),
)
def test_one_bad_row_is_named(tmp_path: Path, size: int, data: st.DataObject, bad: str) -> None:
    bad_index = data.draw(st.integers(min_value=0, max_value=size - 1))
    rows = [f"{i},10,{bad if i == bad_index else 5}" for i in range(size)]
    path = write(tmp_path / "requests.csv", "arrival_s,input_tokens,output_tokens\n")
    path.write_text(path.read_text() + "\n".join(rows) + "\n")

    with pytest.raises(
        WorkloadError, match=rf"requests.csv:{bad_index + 2}: invalid output_tokens"
    ):
        load_trace(path)


@settings(max_examples=30, deadline=None)
@given(
    rates=st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=6),
    cut=st.floats(min_value=1, max_value=9000),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_generated_prefix_matches_whole(rates: list[float], cut: float, seed: int) -> None:
    times = [1500.0 * i for i in range(len(rates))]
    whole = workload_from_rate("rate", times, rates, 9000.0, seed=seed)

    part = workload_from_rate("rate", times, rates, 9000.0, seed=seed, until_s=cut)

    expected = whole.head(cut)
    assert np.array_equal(part.arrival_s, expected.arrival_s)
    assert part.input_tokens is not None
    assert expected.input_tokens is not None
    assert np.array_equal(part.input_tokens, expected.input_tokens)
    assert part.duration_s == expected.duration_s
