"""Checks for exercise 3, with ``dsf.recurrent("deltanet")`` as the oracle."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

import dsf

from .._checking import Case, assert_close, float64_tensor, for_all_cases, without_dsf

TITLE = "Exercise 3: a delta-rule segment as a linear map"
FUNCTION = "segment_transition"


def _states(case: Case, seed_offset: int, n: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(case.seed + seed_offset)
    return [torch.randn(case.B, case.H, case.K, case.V, generator=gen, dtype=torch.float64) for _ in range(n)]


def _call(fn, x: dict):
    k, v, beta = x["k"].clone(), x["v"].clone(), x["beta"].clone()
    result = fn(k, v, beta)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise AssertionError(f"return a pair (P, dS), got {type(result).__name__}")
    if not (torch.equal(k, x["k"]) and torch.equal(v, x["v"]) and torch.equal(beta, x["beta"])):
        raise AssertionError("k, v or beta was modified in place: work on new tensors")
    return result


def _pair(fn, x: dict):
    """_call, for checks that compute with P and dS: both must be float64 tensors first."""
    P, dS = _call(fn, x)
    return float64_tensor("P", P), float64_tensor("dS", dS)


def check_shapes(fn):
    """returns (P [B, H, K, K], dS [B, H, K, V]) in float64"""
    x = Case(2, 6, 3, 4, 5, seed=0, scale=None).inputs("deltanet")
    P, dS = _call(fn, x)
    for name, got, want in (("P", P, (2, 3, 4, 4)), ("dS", dS, (2, 3, 4, 5))):
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != want:
            shape = list(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise AssertionError(f"{name} should have shape {list(want)}, got {shape}")
        if got.dtype != torch.float64:
            raise AssertionError(f"{name}: expected dtype float64 (the dtype of k), got {got.dtype}")


def check_one_token(fn):
    """one token: P = I − β k kᵀ and dS = β k vᵀ"""
    case = Case(2, 1, 2, 3, 4, seed=3, scale=None)
    x = case.inputs("deltanet")
    P, dS = _call(fn, x)
    k, v, b = x["k"][:, 0], x["v"][:, 0], x["beta"][:, 0, :, None, None]
    eye = torch.eye(case.K, dtype=torch.float64)
    assert_close("P (one token)", P, eye - b * k[..., :, None] * k[..., None, :])
    assert_close("dS (one token)", dS, b * k[..., :, None] * v[..., None, :])


def check_any_entering_state(fn):
    """P S_in + dS is the state dsf.recurrent reaches from S_in, for zero and random S_in"""
    def body(case):
        x = case.inputs("deltanet")
        P, dS = _pair(fn, x)
        for label, S_in in (("zero", torch.zeros(case.B, case.H, case.K, case.V, dtype=torch.float64)),
                            ("random", _states(case, 1)[0])):
            _, want = dsf.recurrent("deltanet", **x, initial_state=S_in)
            assert_close(f"P S_in + dS ({label} S_in)", P @ S_in + dS, want)
    for_all_cases(body)


def check_segments_compose(fn):
    """two segments in a row compose: (P₂ P₁, P₂ dS₁ + dS₂) is the pair of the whole"""
    def body(case, cut):
        x = case.inputs("deltanet")
        cut = min(cut, case.T)
        first = {n: t[:, :cut] for n, t in x.items()}
        second = {n: t[:, cut:] for n, t in x.items()}
        P, dS = _pair(fn, x)
        P1, dS1 = _pair(fn, first)
        P2, dS2 = _pair(fn, second)
        assert_close(f"P of the whole (cut after {cut} tokens)", P, P2 @ P1)
        assert_close(f"dS of the whole (cut after {cut} tokens)", dS, P2 @ dS1 + dS2)
    for_all_cases(body, edge_values=lambda case: {"cut": case.T // 2}, cut=st.integers(0, 40))


def check_written_with_torch(fn):
    """is written with torch, not by calling dsf (the checks' answer key)"""
    without_dsf(fn, lambda: _call(fn, Case(1, 4, 2, 3, 2, seed=0, scale=None).inputs("deltanet")))


CHECKS = [check_shapes, check_one_token, check_any_entering_state, check_segments_compose, check_written_with_torch]
