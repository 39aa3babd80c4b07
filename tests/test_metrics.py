"""The one home of every measure: each number means one thing, and a non-finite row is never right."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeres.metrics import (agreement, allowed_error, compare_logits, judge, mean_kl, softmax,
                             tolerance_breach)

TOLERANCE = {"fp32_max_abs": 1e-3, "fp16_max_rel": 2e-2, "int8_top1": 0.9, "fp32_scale": 100.0}


def test_softmax_is_exact_for_large_logits_and_rows() -> None:
    rows = np.array([[1000.0, 1000.0, 0.0], [0.0, 1.0, 2.0]])
    probabilities = softmax(rows)
    assert np.allclose(probabilities.sum(1), 1.0) and np.allclose(probabilities[0], [0.5, 0.5, 0.0])
    assert np.allclose(softmax(rows[1]), probabilities[1])  # one row or a batch, the same


def test_a_non_finite_row_never_agrees_and_is_never_right() -> None:
    reference = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    candidate = np.array([[0.0, 1.0], [np.nan, np.nan], [1.0, 0.0]])
    assert agreement(reference, candidate) == pytest.approx(1 / 3)
    judged = judge(candidate, reference, np.array([1, 0, 1]))
    assert judged.accuracy == pytest.approx(1 / 3) and judged.fp32_accuracy == 1.0 and judged.mean_kl == math.inf
    assert judged.drop_points == pytest.approx(100 * 2 / 3)


def test_kl_is_the_textbook_one() -> None:
    p, q = np.array([[0.0, 2.0, 1.0]]), np.array([[1.0, 0.0, 2.0]])
    pp, qq = softmax(p)[0], softmax(q)[0]
    assert mean_kl(p, q) == pytest.approx(sum(a * math.log(a / b) for a, b in zip(pp, qq)))
    assert mean_kl(p, p) == 0.0


def test_the_tolerance_check_scales_fp32_and_is_relative_for_fp16() -> None:
    assert allowed_error("fp32", TOLERANCE, 10.0) == 1e-3 and allowed_error("fp32", TOLERANCE, 1e4) == 0.1
    assert tolerance_breach("fp32", TOLERANCE, 5e-4, 10.0) is None
    assert "more than the allowed 1e-03" in tolerance_breach("fp32", TOLERANCE, 2e-3, 10.0)
    assert tolerance_breach("fp32", TOLERANCE, 2e-3, 1e4) is None  # float32's 7 digits on logits near 1e4
    assert "of the largest logit" in tolerance_breach("fp16", TOLERANCE, 0.5, 10.0)
    assert tolerance_breach("int8", TOLERANCE, 5.0, 10.0) is None  # INT8 is judged by top-1 instead
    assert tolerance_breach("fp32", TOLERANCE, math.inf, 10.0)  # a non-finite error is never within


def test_compare_logits_keeps_the_records_fields() -> None:
    reference = np.array([[1.0, -4.0], [0.0, 2.0]], np.float32)
    found = compare_logits(reference, reference + 1e-4, "calibration images")
    assert found["max_abs_logit"] == 4.0 and found["top1_agreement"] == 1.0
    assert found["max_abs_logit_diff"] == pytest.approx(1e-4, rel=1e-3)
    assert found["max_rel_logit_diff"] == pytest.approx(2.5e-5, rel=1e-3)
