"""Tests for reject counting and its rate-limited logging."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from warmstart.engine.samples import REASON_CODES, RejectCounter, RejectReason


def test_counter_totals_by_reason():
    counter = RejectCounter()
    counter.add(RejectReason.NAN_VALUE, 2, now=0.0)
    counter.add_codes(np.array([-1, 0, 0, 2], dtype=np.int8), now=1.0)
    assert counter.totals[RejectReason.NAN_VALUE] == 2 + 2
    assert counter.totals[REASON_CODES[2]] == 1
    assert counter.total == 5


def test_first_rejection_of_reason_is_logged_at_once(caplog):
    counter = RejectCounter()
    with caplog.at_level(logging.WARNING, logger="warmstart.engine.samples"):
        counter.add(RejectReason.TOO_OLD, 3, now=0.0, example="endpoint 'a'")
    assert "too_old" in caplog.text
    assert "endpoint 'a'" in caplog.text


def test_repeated_rejections_are_summarized_once_per_interval(caplog):
    counter = RejectCounter(log_interval_s=60.0)
    counter.add(RejectReason.NAN_VALUE, 1, now=0.0)
    with caplog.at_level(logging.WARNING, logger="warmstart.engine.samples"):
        counter.add(RejectReason.NAN_VALUE, 1, now=1.0)
        counter.add(RejectReason.NAN_VALUE, 1, now=2.0)
        counter.add(RejectReason.NAN_VALUE, 1, now=70.0)
    summaries = [r for r in caplog.records if "since last report" in r.getMessage()]
    assert len(summaries) == 2
    assert "nan_value=1" in summaries[0].getMessage()
    assert "nan_value=2" in summaries[1].getMessage()


@pytest.mark.parametrize("count", [0, -1])
def test_non_positive_count_is_ignored(count):
    counter = RejectCounter()
    counter.add(RejectReason.NAN_VALUE, count, now=0.0)
    assert counter.total == 0
