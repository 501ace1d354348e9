"""Checks for exercise 4, with the final state of ``dsf.recurrent("aaren")`` as the oracle."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

import dsf

from .._checking import Case, assert_close, float64_tensor, for_all_cases, without_dsf

TITLE = "Exercise 4: merging two softmax states"
FUNCTION = "merge"


def _state(x: dict, a: int, b: int, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The state of tokens a … b − 1 (the empty state when there are none), logits scaled by ``scale``."""
    B, _, H, _ = x["k"].shape
    V = x["v"].shape[-1]
    if b <= a:
        return (torch.full((B, H), float("-inf"), dtype=torch.float64),
                torch.zeros(B, H, dtype=torch.float64), torch.zeros(B, H, V, dtype=torch.float64))
    _, S = dsf.recurrent("aaren", q=x["q"], k=x["k"][:, a:b], v=x["v"][:, a:b], scale=scale)
    return S.m, S.c, S.a


def _where(mask: torch.Tensor, s: tuple, t: tuple) -> tuple:
    """State s where mask [B, H], else t."""
    return tuple(torch.where(mask if x.dim() == 2 else mask[..., None], y, x) for y, x in zip(s, t))


def _call(fn, first, second):
    copies = [tuple(t.clone() for t in s) for s in (first, second)]
    result = fn(*copies)
    if not (isinstance(result, tuple) and len(result) == 3):
        raise AssertionError(f"return a tuple (m, c, a) of three tensors, got {type(result).__name__}"
                             + (f" of {len(result)}" if isinstance(result, (tuple, list)) else ""))
    if not all(torch.equal(x, y) for s, c in zip((first, second), copies) for x, y in zip(s, c)):
        raise AssertionError("an input state was modified in place: work on new tensors")
    return tuple(float64_tensor(name, t) for name, t in zip("mca", result))


def _same(label: str, got, want) -> None:
    for name, g, w in zip("mca", got, want):
        if name == "m":   # an entry empty on both sides has m = −inf there: compare where, then the rest
            if g.shape == w.shape and not torch.equal(torch.isneginf(g), torch.isneginf(w)):
                raise AssertionError(f"m ({label}): −inf (an empty state) at {torch.isneginf(g).int().tolist()}, "
                                     f"but dsf has it at {torch.isneginf(w).int().tolist()}")
            g, w = (torch.where(torch.isneginf(w), torch.zeros_like(t), t) for t in (g, w))
        assert_close(f"{name} ({label})", g, w)


def check_shapes(fn):
    """returns (m [B, H], c [B, H], a [B, H, V]) in float64, inputs unchanged"""
    x = Case(2, 6, 3, 4, 5, seed=0, scale=None).inputs("aaren")
    m, c, a = _call(fn, _state(x, 0, 2), _state(x, 2, 6))
    for name, got, want in (("m", m, (2, 3)), ("c", c, (2, 3)), ("a", a, (2, 3, 5))):
        if tuple(got.shape) != want:
            raise AssertionError(f"{name} should have shape {list(want)}, got {list(got.shape)}")


def check_two_parts_make_the_whole(fn):
    """merging the states of a sequence's two parts gives the state of the whole"""
    def body(case, cut):
        x = case.inputs("aaren")
        cut = min(cut, case.T)
        sc = case.scale
        _same(f"cut after {cut} of {case.T} tokens", _call(fn, _state(x, 0, cut, sc), _state(x, cut, case.T, sc)),
              _state(x, 0, case.T, sc))
    for_all_cases(body, edge_values=lambda case: {"cut": case.T // 2}, cut=st.integers(0, 40))


def check_the_empty_state_is_neutral(fn):
    """the empty state (m = −inf, c = a = 0) changes nothing, and two of them merge into one"""
    x = Case(2, 5, 2, 3, 4, seed=2, scale=None).inputs("aaren")
    full, empty = _state(x, 0, 5), _state(x, 0, 0)
    _same("empty, then a state", _call(fn, empty, full), full)
    _same("a state, then empty", _call(fn, full, empty), full)
    m, c, a = _call(fn, empty, empty)
    if not bool(torch.isneginf(m).all()):
        raise AssertionError(f"m (two empty states): expected −inf everywhere, got {m.flatten()[:4].tolist()} …")
    for name, t in (("c", c), ("a", a)):
        if bool(torch.isnan(t).any()):
            raise AssertionError(f"{name} (two empty states): contains nan — an empty part weighs 0, "
                                 "but exp(m₁ − m) is exp(−inf − (−inf)) = nan there")
        assert_close(f"{name} (two empty states)", t, torch.zeros_like(t))


def check_some_heads_empty(fn):
    """states empty for some (batch, head) entries only: each entry merges on its own"""
    def body(case, cut, pattern):
        x = case.inputs("aaren")
        cut = min(max(cut, 1), case.T)
        gen = torch.Generator().manual_seed(pattern)
        mask = torch.rand(case.B, case.H, generator=gen) < 0.5       # which entries' first part is empty
        empty = _state(x, 0, 0)
        first = _where(mask, empty, _state(x, 0, cut, case.scale))
        want = _where(mask, _state(x, cut, case.T, case.scale), _state(x, 0, case.T, case.scale))
        _same(f"first part empty where {mask.int().tolist()}", _call(fn, first, _state(x, cut, case.T, case.scale)),
              want)
    for_all_cases(body, edge_values=lambda case: {"cut": case.T // 2, "pattern": 1},
                  cut=st.integers(1, 40), pattern=st.integers(0, 2**16))


def check_huge_logits(fn):
    """logits in the thousands: the merge still gives the whole's state, finite"""
    def body(case, cut):
        x = case.inputs("aaren")
        x["q"] = x["q"] * 3000.0
        cut = min(cut, case.T)
        _same(f"q × 3000, cut after {cut}", _call(fn, _state(x, 0, cut), _state(x, cut, case.T)),
              _state(x, 0, case.T))
    for_all_cases(body, edge_values=lambda case: {"cut": (case.T + 1) // 2}, cut=st.integers(1, 40))


def check_written_with_torch(fn):
    """is written with torch, not by calling dsf (the checks' answer key)"""
    x = Case(1, 4, 2, 3, 2, seed=0, scale=None).inputs("aaren")
    first, second = _state(x, 0, 2), _state(x, 2, 4)
    without_dsf(fn, lambda: _call(fn, first, second))


CHECKS = [check_shapes, check_two_parts_make_the_whole, check_the_empty_state_is_neutral, check_some_heads_empty,
          check_huge_logits, check_written_with_torch]
