"""``warmstart replay`` from the command line: table, JSON, report, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from warmstart.cli import main
from warmstart.replay.report import TABLE_HEADERS

SHORT = ["--duration", "300", "--jobs", "1"]


def test_replay_without_arguments_prints_every_run(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["replay"])

    output = capsys.readouterr().out
    assert status == 0
    assert "builtin-chat" in output
    assert TABLE_HEADERS[2] in output
    # 5 policies x 4 cache modes, one row each.
    assert sum(1 for line in output.splitlines() if line.startswith(("hpa ", "warmstart "))) == 8
    assert "20 runs in" in output


def test_replay_json_has_one_entry_per_run(capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["replay", *SHORT, "--policy", "hpa", "--policy", "knative", "--cache", "cold"]

    status = main([*arguments, "--json"])

    document = json.loads(capsys.readouterr().out)
    assert status == 0
    assert [(r["policy"], r["cache"]) for r in document["runs"]] == [
        ("hpa", "cold"),
        ("knative", "cold"),
    ]
    assert document["runs"][0]["instance_seconds"] >= 0


def test_replay_same_input_prints_same_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["replay", *SHORT, "--policy", "warmstart", "--json"]

    main(arguments)
    first = json.loads(capsys.readouterr().out)
    main([*arguments[:-1], "--jobs", "2", "--json"])
    second = json.loads(capsys.readouterr().out)

    assert first == second


def test_replay_report_writes_page_and_plots(tmp_path: Path) -> None:
    status = main(["replay", *SHORT, "--policy", "hpa", "--report", str(tmp_path / "out")])

    page = (tmp_path / "out" / "index.html").read_text()
    assert status == 0
    for name in ("capacity-cold.png", "latency.png", "stages.png"):
        assert (tmp_path / "out" / name).stat().st_size > 1000
        assert name in page


def test_replay_trace_file(traces: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = traces / "azure-llm-2023" / "AzureLLMInferenceTrace_code.csv"

    status = main(["replay", str(trace), *SHORT, "--policy", "hpa", "--cache", "mirror"])

    assert status == 0
    assert "AzureLLMInferenceTrace_code" in capsys.readouterr().out


def test_replay_bad_trace_is_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["replay", str(tmp_path / "absent.csv")])

    assert status == 2
    assert "not found" in capsys.readouterr().err


def test_replay_coarse_metrics_and_containerd_pull(capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["replay", *SHORT, "--policy", "sagemaker", "--cache", "cold"]

    status = main([*arguments, "--metric-period", "60", "--pull", "containerd", "--json"])

    document = json.loads(capsys.readouterr().out)
    assert status == 0
    assert document["runs"][0]["policy"] == "sagemaker"


def test_replay_rejects_unknown_policy(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["replay", "--policy", "fastest"])

    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_replay_one_run_footer(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["replay", *SHORT, "--policy", "hpa", "--cache", "cold"])

    output = capsys.readouterr().out
    assert status == 0
    assert "1 run in " in output
    assert "p50, p95, p99: request latency, queueing plus service" in output
