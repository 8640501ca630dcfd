"""SLAO's tensor math against hand computations (QR init, B_init, merge, lambda schedules)."""

from __future__ import annotations

import math

import pytest
import torch

from backpropagate.continual.slao import SlaoState, merge_b, merge_run, merge_weight, next_init, orthonormal_a
from backpropagate.errors import BackpropagateError


def test_lambda_schedules() -> None:
    assert [merge_weight(i) for i in (1, 2, 4)] == [1.0, 1 / math.sqrt(2), 0.5]
    assert [merge_weight(i, "1/i") for i in (1, 2, 4)] == [1.0, 0.5, 0.25]
    assert merge_weight(3, 0.3) == 0.3
    assert merge_weight(3, lambda i: 1 / (i + 1)) == 0.25
    for bad in ("1/log(i)", 0.0, 1.5):
        with pytest.raises(BackpropagateError):
            merge_weight(2, bad)


def test_qr_init_hand_computed() -> None:
    # A^T = [[3, 0], [4, 0], [0, 2]] (in=3, r=2): columns are orthogonal already, so
    # Q = [[.6, 0], [.8, 0], [0, 1]] up to sign and R = diag(5, 2); with diag(R) > 0 the signs are +.
    a = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]])
    expected = torch.tensor([[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(orthonormal_a(a), expected)
    # A negative leading entry must not flip the row: sign(diag R) fixes the QR sign ambiguity.
    torch.testing.assert_close(orthonormal_a(-a), -expected)


def test_qr_init_rows_are_orthonormal_and_sign_convention_holds() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 64, generator=g, dtype=torch.float64)
    a_init = orthonormal_a(a)
    torch.testing.assert_close(a_init @ a_init.T, torch.eye(8, dtype=torch.float64), atol=1e-6, rtol=0)  # fp32 QR
    # The sign convention is diag(R) >= 0 where R = Q^T A^T, i.e. each row's projection is positive.
    r = a_init @ a.T
    assert (torch.diagonal(r) > 0).all()
    # Same row space as A.
    projector = a_init.T @ a_init
    torch.testing.assert_close(a @ projector, a, atol=1e-5, rtol=1e-5)
    assert orthonormal_a(a.float()).dtype == torch.float32


def test_merge_b_formula() -> None:
    b_merged = torch.tensor([[1.0, 2.0]])
    b_ft = torch.tensor([[3.0, 6.0]])
    torch.testing.assert_close(merge_b(b_merged, b_ft, 0.5), torch.tensor([[2.0, 4.0]]))


def test_three_runs_by_hand() -> None:
    a1, b1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0], [4.0]])
    a2, b2 = torch.tensor([[0.0, 1.0]]), torch.tensor([[6.0], [0.0]])
    a3, b3 = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0], [3.0]])
    state = SlaoState()
    assert next_init(state) == {}
    state = merge_run(state, {"l": (a1, b1)})
    assert state.runs_merged == 1
    torch.testing.assert_close(state.merged["l"][1], b1)

    init = next_init(state)["l"]
    torch.testing.assert_close(init[0], torch.tensor([[1.0, 0.0]]))  # QR of [1, 0]^T
    torch.testing.assert_close(init[1], b1)  # the previous fine-tuned B

    state = merge_run(state, {"l": (a2, b2)})
    lam2 = 1 / math.sqrt(2)
    expected_b2 = b1 + lam2 * (b2 - b1)
    torch.testing.assert_close(state.merged["l"][0], a2)
    torch.testing.assert_close(state.merged["l"][1], expected_b2)
    # B_init for run 3 is B_ft,2 -- not the merged B.
    torch.testing.assert_close(next_init(state)["l"][1], b2)

    state = merge_run(state, {"l": (a3, b3)})
    expected_b3 = expected_b2 + (1 / math.sqrt(3)) * (b3 - expected_b2)
    torch.testing.assert_close(state.merged["l"][0], a3)
    torch.testing.assert_close(state.merged["l"][1], expected_b3)
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(next_init(state)["l"][0], torch.tensor([[s, s]]))


def test_divergence_keeps_previous_state() -> None:
    state = merge_run(SlaoState(), {"l": (torch.ones(1, 2), torch.ones(2, 1))})
    with pytest.raises(BackpropagateError) as info:
        merge_run(state, {"l": (torch.ones(1, 2), torch.full((2, 1), float("nan")))})
    assert info.value.code == "SLAO_MERGE_DIVERGED"
    assert state.runs_merged == 1 and torch.isfinite(state.merged["l"][1]).all()


def test_incompatible_runs() -> None:
    state = merge_run(SlaoState(), {"l": (torch.ones(1, 2), torch.ones(2, 1))})
    with pytest.raises(BackpropagateError) as info:
        merge_run(state, {"l": (torch.ones(2, 2), torch.ones(2, 2))})
    assert info.value.code == "SLAO_INCOMPATIBLE_RUNS"
    with pytest.raises(BackpropagateError):
        merge_run(state, {"other": (torch.ones(1, 2), torch.ones(2, 1))})
