"""The linear-memory family: a matrix memory on the ℓ2 attentional bias with ℓ2 (scalar gate) or no
retention, with momentum (Titans' ``memory="linear"``) or without it, and where the other families
take the gradient-step memories that are linear in their state.

``chunk_titans`` is the exact chunked training kernel, ``fused_recurrent_titans`` the token-by-token
kernel (also used to decode); both take and return the state as the pair (S, Z) of fp32 tensors.
``kernels.compile`` reaches them through :func:`route` and :func:`run_memory`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .titans import chunk_titans, fused_recurrent_titans

__all__ = ["chunk_titans", "fused_recurrent_titans", "route", "as_linear", "memory_state_in", "run_memory"]

# A memory without momentum runs the momentum kernels with η = 0: log η at the kernels' log-decay
# floor (kernels._tl.LOG_DECAY_FLOOR), whose e^{−200} is 0 in fp32, as e^{−inf} is, without the
# −inf − (−inf) a cumulative sum of −inf would give.
NO_MOMENTUM = -200.0


def _structure_ok(terms: Any) -> bool:
    from dsf.terms import MemoryTerms

    return (isinstance(terms, MemoryTerms) and terms.memory == "matrix" and terms.bias == "l2"
            and terms.algorithm in ("momentum", "gd") and terms.retention in ("none", "l2")
            and (terms.g is None or terms.g.dim() == 3))


def as_linear(terms: Any) -> Any:
    """A matrix memory without momentum as the LinearTerms of the diagonal family (dot-product bias:
    decayed linear attention with write gate θ) or of the delta family (ℓ2 bias: the delta rule with
    β = θ, gated by a retention taken at the retained state); None otherwise.

    The ℓ2 bias under ℓ2 retention with the gradient at the previous state (Titans' order) is left
    out: as a delta rule it needs β = θ/α, which overflows as α → 0; the memory kernels take it."""
    from dsf.forms.memory import to_linear
    from dsf.terms import MemoryTerms

    if not isinstance(terms, MemoryTerms) or terms.memory != "matrix" or terms.algorithm == "momentum":
        return None
    lin = to_linear(terms)
    if lin is None or (lin.beta is not None and lin.w is not None):
        return None
    return lin


def _tiny_terms(spec: Any) -> Any:
    """The spec lowered on tiny inputs (float64), or None where it cannot be."""
    from dsf.forms import prepare

    try:
        return prepare(spec, spec.random_inputs(1, 2, 1, 2, 2, dtype=torch.float64, seed=0))[1]
    except (TypeError, ValueError) as e:
        if str(e).startswith(f"{spec.name}:"):
            raise   # an option the lowering refuses (a bad scale, say): that, not "no kernel family"
        return None
    except Exception:  # noqa: BLE001 - a spec that cannot lower tiny inputs has no kernel
        return None


def route(spec: Any) -> str | None:
    """The kernel family of a gradient-step memory: "diag" or "delta" for a matrix memory without
    momentum that :func:`as_linear` lowers, "memory" for the ℓ2 bias these kernels take, else None
    (checked on tiny inputs)."""
    terms = _tiny_terms(spec)
    if terms is None:
        return None
    lin = as_linear(terms)
    if lin is not None:
        return "diag" if lin.beta is None else "delta"
    return "memory" if _structure_ok(terms) else None


def memory_state_in(name: str, state: Any, N: int, H: int, K: int, V: int, momentum: bool, dtype: Any,
                    state_arg: str, packed: bool) -> tuple[Tensor, Tensor | None]:
    """A user's dsf.MemoryState checked by the mixer's name: (S, Z), Z None without momentum."""
    from dsf.spec import check_state
    from dsf.terms import MemoryState

    dims = "[N, H, K, V]" if packed else "[B, H, K, V]"
    want = "dsf.MemoryState((S,), (Z,)) with the memory S and the momentum Z" if momentum else \
        "dsf.MemoryState((S,), ()) with the memory S (no momentum)"
    if not isinstance(state, MemoryState) or not isinstance(state.weights, (tuple, list)) \
            or not isinstance(state.momentum, (tuple, list)) or len(state.weights) != 1 \
            or len(state.momentum) != int(momentum):
        raise TypeError(f"{name}: {state_arg} must be a {want}, each {dims}; got {_describe(state)}")
    parts = [("weights[0] (the memory S)", state.weights[0])]
    parts += [("momentum[0] (the momentum Z)", state.momentum[0])] if momentum else []
    for part, t in parts:
        check_state(name, f"{state_arg}.{part}", t, (N, H, K, V), dims, dtype)
    return state.weights[0], (state.momentum[0] if momentum else None)


def _describe(state: Any) -> str:
    from dsf.terms import MemoryState

    if isinstance(state, MemoryState):
        n = lambda x: len(x) if isinstance(x, (tuple, list)) else type(x).__name__  # noqa: E731
        return f"a MemoryState with {n(state.weights)} weights and {n(state.momentum)} momenta"
    return type(state).__name__


def run_memory(name: str, terms: Any, form: str, initial_state: Any, output_final_state: bool,
               cu_seqlens: Tensor | None, state_arg: str = "initial_state") -> tuple[Tensor, Any]:
    """Run lowered MemoryTerms through the chunked or the recurrent kernel; state as dsf.MemoryState."""
    from dsf.terms import MemoryState

    if not _structure_ok(terms):
        raise ValueError(f"{name}: the memory kernels take a matrix memory on the l2 bias, with momentum "
                         "or gradient descent and a scalar or no retention gate; got "
                         f"memory={terms.memory!r}, bias={terms.bias!r}, retention={terms.retention!r}, "
                         f"algorithm={terms.algorithm!r}")
    momentum = terms.algorithm == "momentum"
    log_eta = terms.log_eta if momentum else torch.full_like(terms.theta, NO_MOMENTUM)
    state = None
    if initial_state is not None:
        # checked by the mixer's and the caller's names (the kernels' own check names chunk_titans)
        B, _, H, K = terms.q.shape
        N = B if cu_seqlens is None else cu_seqlens.numel() - 1
        S0, Z0 = memory_state_in(name, initial_state, N, H, K, terms.v.shape[-1], momentum, terms.v.dtype,
                                 state_arg, cu_seqlens is not None)
        state = (S0, torch.zeros_like(S0) if Z0 is None else Z0)
    fn = chunk_titans if form == "chunked" else fused_recurrent_titans
    o, fin = fn(terms.q, terms.k, terms.v, terms.g, terms.theta, log_eta, initial_state=state,
                output_final_state=output_final_state, cu_seqlens=cu_seqlens, grad_at=terms.grad_at)
    if fin is None:
        return o, None
    return o, MemoryState((fin[0],), (fin[1],) if momentum else ())
