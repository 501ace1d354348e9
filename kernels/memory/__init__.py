"""The linear-memory family: a matrix memory with momentum on the ℓ2 attentional bias (Titans'
``memory="linear"``), with ℓ2 (scalar gate) or no retention.

``chunk_titans`` is the exact chunked training kernel, ``fused_recurrent_titans`` the token-by-token
kernel (also used to decode); both take and return the state as the pair (S, Z) of fp32 tensors.
``kernels.compile`` reaches them through :func:`compiles` and :func:`run_memory`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .titans import chunk_titans, fused_recurrent_titans

__all__ = ["chunk_titans", "fused_recurrent_titans", "compiles", "run_memory"]


def _structure_ok(terms: Any) -> bool:
    from dsf.terms import MemoryTerms

    return (isinstance(terms, MemoryTerms) and terms.memory == "matrix" and terms.bias == "l2"
            and terms.algorithm == "momentum" and terms.retention in ("none", "l2")
            and (terms.g is None or terms.g.dim() == 3))


def compiles(spec: Any) -> bool:
    """Does this gradient-step memory have the structure of the kernels (checked on tiny inputs)?"""
    from dsf.forms import prepare

    try:
        _, terms = prepare(spec, spec.random_inputs(1, 2, 1, 2, 2, dtype=torch.float64, seed=0))
    except (TypeError, ValueError) as e:
        if str(e).startswith(f"{spec.name}:"):
            raise   # an option the lowering refuses (a bad scale, say): that, not "no kernel family"
        return False
    except Exception:  # noqa: BLE001 - a spec that cannot lower tiny inputs has no kernel
        return False
    return _structure_ok(terms)


def run_memory(name: str, terms: Any, form: str, initial_state: Any, output_final_state: bool,
               cu_seqlens: Tensor | None, state_arg: str = "initial_state") -> tuple[Tensor, Any]:
    """Run lowered MemoryTerms through the chunked or the recurrent kernel; state as dsf.MemoryState."""
    from dsf.spec import check_state
    from dsf.terms import MemoryState

    if not _structure_ok(terms):
        raise ValueError(f"{name}: the memory kernels take a matrix memory with momentum on the l2 bias "
                         f"and a scalar or no retention gate; got memory={terms.memory!r}, "
                         f"bias={terms.bias!r}, retention={terms.retention!r}, algorithm={terms.algorithm!r}")
    state = None
    if initial_state is not None:
        if not isinstance(initial_state, MemoryState) or len(initial_state.weights) != 1 \
                or len(initial_state.momentum) != 1:
            raise TypeError(f"{name}: {state_arg} must be a dsf.MemoryState((S,), (Z,)) with the memory S "
                            f"and the momentum Z, each [N, H, K, V]; got {type(initial_state).__name__}")
        state = (initial_state.weights[0], initial_state.momentum[0])
        # checked by the mixer's and the caller's names (the kernels' own check names chunk_titans)
        B, _, H, K = terms.q.shape
        N = B if cu_seqlens is None else cu_seqlens.numel() - 1
        dims = "[N, H, K, V]" if cu_seqlens is not None else "[B, H, K, V]"
        for part, t in (("weights[0] (the memory S)", state[0]), ("momentum[0] (the momentum Z)", state[1])):
            check_state(name, f"{state_arg}.{part}", t, (N, H, K, terms.v.shape[-1]), dims, terms.v.dtype)
    fn = chunk_titans if form == "chunked" else fused_recurrent_titans
    o, fin = fn(terms.q, terms.k, terms.v, terms.g, terms.theta, terms.log_eta, initial_state=state,
                output_final_state=output_final_state, cu_seqlens=cu_seqlens, grad_at=terms.grad_at)
    return o, (None if fin is None else MemoryState((fin[0],), (fin[1],)))
