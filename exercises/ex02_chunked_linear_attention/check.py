"""Checks for exercise 2, with ``dsf.recurrent("linear_attention")`` as the oracle."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

import dsf

from .._checking import Case, assert_close, for_all_cases, without_dsf

TITLE = "Exercise 2: chunked linear attention"
FUNCTION = "chunked_linear_attention"


def _random_state(case: Case) -> torch.Tensor:
    gen = torch.Generator().manual_seed(case.seed + 1)
    return torch.randn(case.B, case.H, case.K, case.V, generator=gen, dtype=torch.float64)


def _compare(fn, case: Case, chunk_size: int, with_state: bool) -> None:
    x = case.inputs("linear_attention")
    S0 = _random_state(case) if with_state else None
    S0_copy = None if S0 is None else S0.clone()
    result = fn(x["q"], x["k"], x["v"], scale=case.scale, chunk_size=chunk_size, initial_state=S0)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise AssertionError(f"return a pair (o, final_state), got {type(result).__name__}")
    want_o, want_S = dsf.recurrent("linear_attention", **x, scale=case.scale, initial_state=S0)
    where = f" (T={case.T}, chunk_size={chunk_size}, initial_state={'random' if with_state else 'None'})"
    assert_close("o" + where, result[0], want_o)
    assert_close("final_state" + where, result[1], want_S)
    if S0 is not None and not torch.equal(S0, S0_copy):
        raise AssertionError("initial_state was modified in place: work on a copy (S = S0.clone())")


def check_shapes(fn):
    """returns (o [B, T, H, V], final_state [B, H, K, V])"""
    case = Case(2, 6, 3, 4, 5, seed=0, scale=None)
    x = case.inputs("linear_attention")
    result = fn(x["q"], x["k"], x["v"], chunk_size=4)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise AssertionError(f"return a pair (o, final_state), got {type(result).__name__}")
    o, S = result
    for name, got, want in (("o", o, (2, 6, 3, 5)), ("final_state", S, (2, 3, 4, 5))):
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != want:
            shape = list(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise AssertionError(f"{name} should have shape {list(want)}, got {shape}")


def check_one_chunk(fn):
    """with one chunk covering the sequence, matches dsf.recurrent from a zero state"""
    def body(case):
        _compare(fn, case, chunk_size=case.T, with_state=False)
    for_all_cases(body)


def check_uneven_last_chunk(fn):
    """handles T that is not a multiple of chunk_size (and chunk_size > T)"""
    for T, C in ((10, 4), (7, 3), (5, 8), (1, 4), (9, 1)):
        _compare(fn, Case(2, T, 2, 3, 4, seed=T, scale=None), chunk_size=C, with_state=False)


def check_many_chunk_sizes(fn):
    """matches dsf.recurrent with a random initial state, for chunk sizes 1 to 40"""
    def body(case, chunk_size):
        _compare(fn, case, chunk_size=chunk_size, with_state=True)
    for_all_cases(body, edge_values=lambda case: {"chunk_size": 3}, chunk_size=st.integers(1, 40))


def check_written_with_torch(fn):
    """is written with torch, not by calling dsf (the checks' answer key)"""
    x = Case(1, 5, 2, 3, 2, seed=0, scale=None).inputs("linear_attention")
    without_dsf(fn, lambda: fn(x["q"], x["k"], x["v"], scale=None, chunk_size=2, initial_state=None))


CHECKS = [check_shapes, check_one_chunk, check_uneven_last_chunk, check_many_chunk_sizes, check_written_with_torch]
