r"""Memories that learn at test time, built from the four choices of Miras (Behrouz et al. 2025).

A memory M_W: R^K → R^V takes one retained, gated gradient step on an inner loss per token, and is
read after it (fla's orientation: a matrix memory is S ∈ R^{K×V}, M_S(x) = Sᵀx)::

    W_t = Ret_t(W_{t−1}, U_t),   U_t = −θ_t ∇_W ℓ(W_{t−1}; k_t, v_t)  [or momentum Z_t],   y_t = M_{W_t}(q_t)

``memory_spec(memory, bias, retention, algorithm)`` builds the spec; the update rules are those of
:class:`dsf.terms.MemoryTerms`. ``as_memory(name, **inputs)`` rebuilds a known mixer from its four
choices (the tests hold the two to the same outputs).

===========  =========================================================================
form         exists for
===========  =========================================================================
recurrent    every memory (closed-form inner gradients; hand-written MLP backward)
parallel     vector / matrix memory, dot or ℓ2 bias, no or ℓ2 retention (Φ, y = Φ v)
chunked      the same except a key-wise gate on a matrix memory with the ℓ2 bias or momentum (exact)
mini-batch   every explicit step: ``dsf.chunked(..., approximate="minibatch")``
===========  =========================================================================
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import torch

from ..forms.memory import memory_forms
from ..spec import Input, MixerSpec, Transition
from ..terms import ALGORITHMS, BIASES, MEMORIES, RETENTIONS, MemoryTerms
from ._common import K_, Q, V_, gen, log_decay, qkv, randn, scale_of, unit
from .decay import retnet_gamma

__all__ = ["memory_spec", "random_memory", "as_memory", "choices", "build", "AS_MEMORY", "THETA", "LOG_ETA",
           "mlp_inputs"]

THETA = Input("theta", ("B", "T", "H"), "step size θ_t > 0 of the inner gradient step")
LOG_ETA = Input("log_eta", ("B", "T", "H"), "log momentum decay <= 0: η_t = exp(log_eta_t)", nonpositive=True)


def g_input(gate: str = "scalar") -> Input:
    dims = ("B", "T", "H", "K") if gate == "key" else ("B", "T", "H")
    return Input("g", dims, "log retention <= 0: the memory is multiplied by α_t = exp(g_t)",
                 nonpositive=True)


def mlp_inputs(depth: int, optional: bool = False) -> tuple[Input, ...]:
    """The MLP memory's initial weights w1 [H, K, E], …, w_depth [H, E, V] (row-vector layout)."""
    dims = [("H", "K", "E")] + [("H", "E", "E")] * (depth - 2) + [("H", "E", "V")]
    return tuple(Input(f"w{i + 1}", d, f"initial weights of the memory's layer {i + 1}", optional)
                 for i, d in enumerate(dims))


def _check_choices(memory, bias, retention, algorithm, gate, depth):
    for arg, value, allowed in (("memory", memory, MEMORIES), ("bias", bias, BIASES),
                                ("retention", retention, RETENTIONS),
                                ("algorithm", algorithm, ALGORITHMS), ("gate", gate, ("scalar", "key"))):
        if value not in allowed:
            raise ValueError(f"memory_spec: {arg} must be one of {allowed}, got {value!r}")
    if gate == "key" and memory == "mlp":
        raise ValueError("memory_spec: a key-wise gate needs a vector or matrix memory")
    if memory == "mlp" and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 2):
        raise ValueError(f"memory_spec: an MLP memory needs depth >= 2 layers, got {depth!r}")
    if algorithm == "implicit" and not (memory != "mlp" and bias in ("dot", "l2")
                                        and retention in ("none", "l2")):
        raise ValueError("memory_spec: the implicit step has a closed form only for a vector or "
                         "matrix memory with the dot or l2 bias and no or l2 retention")


def _options(memory, bias, retention, algorithm) -> dict[str, Any]:
    opts: dict[str, Any] = {"scale": None}
    if retention in ("l2", "elastic_net") and algorithm != "implicit" and bias != "dot":
        opts["grad_at"] = "previous"
    if bias == "lp":
        opts["p"] = 3.0
    if bias in ("huber", "huber_mix"):
        opts["delta"] = 1.0
    if retention == "lq":
        opts.update(norm_q=4.0, eps=1e-6)
    if retention == "kl":
        opts["kl_scale"] = 1.0
    if retention == "elastic_net":
        opts["l1"] = 0.01
    if memory == "mlp":
        opts.update(activation="gelu", residual=True)
    return opts


def memory_scale(memory: str, scale: float | None, K: int) -> float:
    """The query scale: K^{-1/2} for vector and matrix memories (as linear attention), 1 for MLPs."""
    if memory == "mlp":
        return 1.0 if scale is None else float(scale)
    return scale_of(scale, K)


def memory_spec(memory: str = "matrix", bias: str = "l2", retention: str = "none",
                algorithm: str = "gd", *, gate: str = "scalar", depth: int = 2,
                name: str | None = None) -> MixerSpec:
    """A spec from the four Miras choices (see :class:`dsf.terms.MemoryTerms` for the rules).

    Args:
        memory: "vector" (M(x) = m ⊙ x, K == V), "matrix" (Sᵀx) or "mlp" (residual, ``depth`` layers).
        bias: "dot" (−⟨M(k), v⟩), "l2" (½‖M(k) − v‖²), "lp" (option p), "huber" (option delta) or
            "huber_mix" (Yaad's step, option delta).
        retention: "none", "l2" (decay α_t = exp(g_t)), "lq" (Moneta, option norm_q), "kl" (Memora)
            or "elastic_net" (option l1).
        algorithm: "gd", "momentum" (Titans: input log_eta) or "implicit" (closed forms only).
        gate: "scalar" (g [B, T, H]) or "key" (g [B, T, H, K], vector and matrix memories).

    >>> spec = memory_spec("matrix", "dot", "l2", "gd")
    >>> [i.name for i in spec.inputs], spec.forms()
    (['q', 'k', 'v', 'g', 'theta'], ('recurrent', 'parallel', 'chunked'))
    """
    _check_choices(memory, bias, retention, algorithm, gate, depth)
    inputs = (Q, K_, V_) + ((g_input(gate),) if retention != "none" else ()) + (THETA,)
    inputs += (LOG_ETA,) if algorithm == "momentum" else ()
    inputs += mlp_inputs(depth) if memory == "mlp" else ()
    choices = dict(memory=memory, bias=bias, retention=retention, algorithm=algorithm)

    def lower(q, k, v, theta, g=None, log_eta=None, scale=None, **rest):
        init = tuple(rest.pop(f"w{i}") for i in range(1, depth + 1)) if memory == "mlp" else ()
        return MemoryTerms(q=q * memory_scale(memory, scale, q.shape[-1]), k=k, v=v, theta=theta,
                           g=g, log_eta=log_eta, init=init, **choices, **rest)

    mom = algorithm == "momentum"
    if memory == "mlp":
        size = "K·E + " + "E·E + " * (depth - 2) + "E·V"
        numel = lambda d: (d["K"] + d["V"] + (depth - 2) * d.get("E", 4 * d["K"])) \
            * d.get("E", 4 * d["K"]) * (2 if mom else 1)  # noqa: E731
        state_dims = ("B", "H", "in", "out")
    else:
        size = "K" if memory == "vector" else "K·V"
        numel = lambda d: d["K"] * (1 if memory == "vector" else d["V"]) * (2 if mom else 1)  # noqa: E731
        state_dims = ("B", "H", "K") if memory == "vector" else ("B", "H", "K", "V")
    return MixerSpec(
        name=name or f"memory({memory}, {bias}, {retention}, {algorithm})",
        family="gradient-step memory", transition=Transition.GRADIENT_STEP, inputs=inputs,
        lower=lower, options=_options(memory, bias, retention, algorithm),
        state_dims=state_dims, state_size=f"({size}) × 2, with momentum" if mom else size,
        state_numel=numel, citation="Behrouz, Razaviyayn, Zhong & Mirrokni 2025, It's All Connected "
        "(Miras)", description=f"{memory} memory, {bias} attentional bias, {retention} retention, "
        f"{algorithm}", random_inputs=functools.partial(random_memory, **choices, gate=gate, depth=depth),
        phi_layout="channel" if memory == "vector" else "head",
        exact_forms=memory_forms(memory, bias, retention, algorithm, keywise=gate == "key"))


def choices() -> list[dict[str, Any]]:
    """Every valid combination: memory_spec's arguments, plus ``grad_at`` where it is an option."""
    out = []
    for memory, bias, retention, algorithm, gate in itertools.product(
            MEMORIES, BIASES, RETENTIONS, ALGORITHMS, ("scalar", "key")):
        if gate == "key" and (retention == "none" or memory == "mlp"):
            continue
        try:
            _check_choices(memory, bias, retention, algorithm, gate, 2)
        except ValueError:
            continue
        c = dict(memory=memory, bias=bias, retention=retention, algorithm=algorithm, gate=gate)
        if "grad_at" in _options(memory, bias, retention, algorithm):
            out += [{**c, "grad_at": g} for g in ("previous", "retained")
                    if g == "previous" or retention not in ("lq", "kl")]
        else:
            out.append(c)
    return out


def build(choice: dict[str, Any]) -> MixerSpec:
    """memory_spec from one of :func:`choices` (``grad_at`` bound as an option)."""
    c = dict(choice)
    grad_at = c.pop("grad_at", None)
    spec = memory_spec(**c)
    return spec.with_options(grad_at=grad_at) if grad_at else spec


def random_memory(B, T, H, K, V, dtype=torch.float64, device=None, seed=None, *, memory="matrix",
                  bias="l2", retention="none", algorithm="gd", gate="scalar", depth=2, options=None):
    """Valid inputs: unit keys, mild log decays, MLP weights of scale 1/√in (E = 4K), and steps in a
    stable range: θ ∈ (0, ½), (0, 0.2) for the ℓp bias, (0, ¼) for huber_mix (whose step is 2θe near
    zero), and a fifth of that with momentum (whose effective step is about θ/(1 − η)). Under ℓq
    retention the decay is milder (α ≈ 0.996), since the read weights A/‖A‖_q^{q−2} grow as A decays.

    A vector memory and a residual MLP memory map R^K to itself: V is then taken equal to K. Under
    KL retention the MLP's weights are distributions over each column's inputs (scaled by c).
    """
    opts = options or {}
    gn = gen(seed)
    if memory == "vector" or (memory == "mlp" and opts.get("residual", True)):
        V = K
    d = qkv(B, T, H, K, V, gn, dtype, device)
    d["k"] = unit(d["k"])
    r = lambda *s: randn(*s, g=gn, dtype=dtype, device=device)  # noqa: E731
    if retention != "none":
        shape = (B, T, H, K) if gate == "key" else (B, T, H)
        d["g"] = log_decay(*shape, g=gn, dtype=dtype, device=device)
        if retention == "lq":
            d["g"] = 0.03 * d["g"]
    step = {"lp": 0.2, "huber_mix": 0.25}.get(bias, 0.5) * (0.2 if algorithm == "momentum" else 1.0)
    if memory == "mlp":
        # A gradient step on an MLP memory diverges on some draws at these steps (TTT-MLP with K = 1:
        # 4 of 900 random cases overflowed in float64); a fifth of them did in none.
        step *= 0.2
    d["theta"] = step * torch.sigmoid(r(B, T, H))
    if algorithm == "momentum":
        d["log_eta"] = log_decay(B, T, H, g=gn, dtype=dtype, device=device)
    if memory == "mlp":
        E = max(2, 4 * K)
        dims = [K] + [E] * (depth - 1) + [V]
        for i in range(depth):
            w = r(H, dims[i], dims[i + 1]) / dims[i] ** 0.5
            if retention == "kl":
                w = opts.get("kl_scale", 1.0) * torch.softmax(w, dim=-2)
            elif retention == "lq":
                qn = opts.get("norm_q", 4.0)
                w = w / w.abs().pow(qn).sum((-2, -1), keepdim=True).pow(1 / qn)
            d[f"w{i + 1}"] = w
    return d


# ---------------------------------------------------------------------------------------------
# Known mixers as memories: the four choices that rebuild each, and how their inputs map


def _ones(x):
    return x.new_ones(x.shape[:3])


def _retnet_g(d):
    B, T, H, _ = d["q"].shape
    gam = d.get("g_gamma")
    gam = retnet_gamma(H, d["q"].dtype, d["q"].device) if gam is None else gam
    return gam.expand(B, T, H)


# name -> (memory_spec args, spec options, inputs of the known mixer -> inputs of the memory)
AS_MEMORY: dict[str, tuple[dict, dict, Any]] = {
    "linear_attention": (dict(memory="matrix", bias="dot", retention="none"), {},
                         lambda d: dict(q=d["q"], k=d["k"], v=d["v"], theta=_ones(d["q"]))),
    "retnet": (dict(memory="matrix", bias="dot", retention="l2"), {},
               lambda d: dict(q=d["q"], k=d["k"], v=d["v"], g=_retnet_g(d), theta=_ones(d["q"]))),
    "mamba2": (dict(memory="matrix", bias="dot", retention="l2"), {},
               lambda d: dict(q=d["q"], k=d["k"], v=d["v"], g=d["g"], theta=_ones(d["q"]))),
    "gla": (dict(memory="matrix", bias="dot", retention="l2", gate="key"), {},
            lambda d: dict(q=d["q"], k=d["k"], v=d["v"], g=d["gk"], theta=_ones(d["q"]))),
    "deltanet": (dict(memory="matrix", bias="l2", retention="none"), {},
                 lambda d: dict(q=d["q"], k=d["k"], v=d["v"], theta=d["beta"])),
    "gated_deltanet": (dict(memory="matrix", bias="l2", retention="l2"), dict(grad_at="retained"),
                       lambda d: dict(q=d["q"], k=d["k"], v=d["v"], g=d["g"], theta=d["beta"])),
    "longhorn": (dict(memory="matrix", bias="l2", retention="none", algorithm="implicit"), {},
                 lambda d: dict(q=d["q"], k=d["k"], v=d["v"], theta=d["eps"])),
}


def as_memory(name: str, **inputs: Any) -> tuple[MixerSpec, dict]:
    """The memory_spec that rebuilds the zoo mixer ``name`` and the inputs that make it do so.

    >>> import dsf
    >>> d = dsf.random_inputs("mamba2", B=1, T=5, H=1, K=2, V=2, seed=0)
    >>> spec, m = as_memory("mamba2", **d)
    >>> bool(torch.allclose(dsf.recurrent(spec, **m)[0], dsf.recurrent("mamba2", **d)[0]))
    True
    """
    if name not in AS_MEMORY:
        raise KeyError(f"as_memory: no memory_spec rebuilds {name!r}; known: {', '.join(AS_MEMORY)}")
    choices, options, mapping = AS_MEMORY[name]
    spec = memory_spec(**choices, name=f"{name} as a memory")
    return (spec.with_options(**options) if options else spec), mapping(inputs)
