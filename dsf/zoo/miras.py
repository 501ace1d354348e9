r"""Titans, the Miras memories (Moneta, Yaad, Memora) and TTT, each with an oracle from its paper.

Each spec is a :func:`~dsf.zoo.memory.memory_spec` choice; its θ input is the paper's learning rate on
the paper's own loss (Titans, TTT and Memora use ‖M(k) − v‖², Moneta ‖M(k) − v‖_p^p), so the spec runs
the library's normalised biases (½‖e‖², (1/p)Σ|e|^p) with step 2θ or pθ; Yaad's ``huber_mix`` bias is
eq. 26's step on the paper's ‖e‖² and ‖e‖₁ as it stands (θ). The oracles are written from the
papers' equations with autograd for the inner gradient, independent of :mod:`dsf.forms.memory`.

==========  ==============  =============  =====================  ================  ====================
mixer       memory          bias           retention              algorithm         exact forms
==========  ==============  =============  =====================  ================  ====================
titans      2-layer MLP     ℓ2             ℓ2 (forget 1 − α_t)    GD + momentum     recurrent
  linear    matrix          ℓ2             ℓ2                     GD + momentum     + parallel, chunked
moneta      2-layer MLP     ℓp, p = 3      ℓq (q = 4) + ℓ2        GD                recurrent
yaad        2-layer MLP     Huber (eq. 26) ℓ2                     GD                recurrent
memora      2-layer MLP     ℓ2             KL (softmax)           GD                recurrent
ttt_linear  matrix          ℓ2             none                   GD (mini-batch)   all three
ttt_mlp     2-layer MLP     ℓ2             none                   GD (mini-batch)   recurrent
==========  ==============  =============  =====================  ================  ====================

MLP memories are residual, M(x) = x + σ(x W_1) W_2 (K == V), without the papers' LayerNorm. Every
memory also has ``dsf.chunked(..., approximate="minibatch")``, the papers' training form.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F

from ..spec import Miras, MixerSpec
from ..terms import MemoryTerms
from ._common import scale_of
from .memory import memory_spec, random_memory

__all__ = ["TITANS", "MONETA", "YAAD", "MEMORA", "TTT_LINEAR", "TTT_MLP"]


def _inner_grad(loss: Callable, W: list) -> tuple:
    """∇_W loss(W), with a graph when an outer gradient must flow through the memory's updates."""
    outer = torch.is_grad_enabled() and (any(w.requires_grad for w in W)
                                         or loss([w.detach() for w in W]).requires_grad)
    with torch.enable_grad():
        leaves = [w if w.requires_grad else w.detach().requires_grad_() for w in W]
        grads = torch.autograd.grad(loss(leaves), leaves, create_graph=outer)
    return grads if outer else tuple(g.detach() for g in grads)


def _residual_mlp(act):
    """M(x) = x + act(x W1) W2 per (batch row, head)."""
    return lambda W, x: x + torch.einsum("bhe,bhev->bhv", act(torch.einsum("bhk,bhke->bhe", x, W[0])), W[1])


def _linear_map(W, x):
    return torch.einsum("bhk,bhkv->bhv", x, W[0])


def _start(w1, w2, B):
    return [w1.expand(B, *w1.shape), w2.expand(B, *w2.shape)]


def _col(x):
    return x[..., None, None]


# ---------------------------------------------------------------------------------------------
# Titans (Behrouz, Zhong & Mirrokni 2025), eqs. for the surprise S_t and the memory M_t


def _scale(scale) -> float:
    """The query scale of the Miras memories: 1 unless given (None too); a given one a finite number."""
    return 1.0 if scale is None else scale_of(scale, 1)


def lower_titans(q, k, v, g, theta, log_eta, w1=None, w2=None, memory="mlp", scale=1.0):
    if memory not in ("mlp", "linear"):
        raise ValueError(f"titans: memory must be 'mlp' or 'linear', got {memory!r}")
    if memory == "mlp" and (w1 is None or w2 is None):
        raise TypeError("titans: memory='mlp' needs the MLP's initial weights w1 [H, K, E] and w2 [H, E, V]")
    if memory == "linear" and (w1 is not None or w2 is not None):
        raise TypeError("titans: memory='linear' starts from a zero matrix memory; do not pass w1, w2")
    return MemoryTerms(q=q * _scale(scale), k=k, v=v, theta=2 * theta, g=g, log_eta=log_eta,
                       memory="mlp" if memory == "mlp" else "matrix", bias="l2", retention="l2",
                       algorithm="momentum", init=() if memory == "linear" else (w1, w2),
                       activation="silu", residual=True)


def oracle_titans(q, k, v, g, theta, log_eta, w1=None, w2=None, memory="mlp", scale=1.0):
    """S_t = η_t S_{t−1} − θ_t ∇‖M_{t−1}(k_t) − v_t‖²;  M_t = (1 − α_t) M_{t−1} + S_t;  y_t = M_t(q_t)."""
    B, T, H, K = q.shape
    if memory == "linear":
        net, M = _linear_map, [q.new_zeros(B, H, K, v.shape[-1])]
    else:
        net, M = _residual_mlp(F.silu), _start(w1, w2, B)
    S = [torch.zeros_like(m) for m in M]
    out = []
    for t in range(T):
        kt, vt = k[:, t], v[:, t]
        grads = _inner_grad(lambda W: ((net(W, kt) - vt) ** 2).sum(), M)
        keep, eta, th = torch.exp(g[:, t]), torch.exp(log_eta[:, t]), theta[:, t]   # keep = 1 − α_t
        S = [_col(eta) * s - _col(th) * gr for s, gr in zip(S, grads)]
        M = [_col(keep) * m + s for m, s in zip(M, S)]
        out.append(net(M, q[:, t] * _scale(scale)))
    return torch.stack(out, 1)


def random_titans(B, T, H, K, V, dtype=torch.float64, device=None, seed=None, options=None):
    memory = (options or {}).get("memory", "mlp")
    d = random_memory(B, T, H, K, V, dtype, device, seed, memory="mlp" if memory == "mlp" else "matrix",
                      bias="l2", retention="l2", algorithm="momentum")
    d["theta"] = 0.5 * d["theta"]  # the paper's θ: the spec's step is 2θ
    return d


def _titans_forms(options):
    memory = "mlp" if options.get("memory", "mlp") == "mlp" else "matrix"
    return memory_spec(memory, "l2", "l2", "momentum").forms()


TITANS = dataclasses.replace(
    memory_spec("mlp", "l2", "l2", "momentum"), name="titans", family="gradient-step memory",
    inputs=memory_spec("matrix", "l2", "l2", "momentum").inputs
    + tuple(dataclasses.replace(i, optional=True) for i in memory_spec("mlp", "l2", "l2", "gd").inputs[-2:]),
    lower=lower_titans, options=dict(memory="mlp", scale=1.0),
    citation="Behrouz, Zhong & Mirrokni 2025, Titans: Learning to Memorize at Test Time",
    description="neural long-term memory: GD with momentum (surprise) and a forget gate on ‖M(k) − v‖²; "
                "g = log(1 − α_t), memory='linear' for a matrix memory",
    oracle=oracle_titans, random_inputs=random_titans, exact_forms=_titans_forms,
    miras=Miras("MLP (memory='linear': matrix)", "ℓ2", "ℓ2 (forget gate 1 − α_t)", "GD + momentum"))


# ---------------------------------------------------------------------------------------------
# Miras (Behrouz, Razaviyayn, Zhong & Mirrokni 2025): Moneta (eq. 24), Yaad (eq. 26), Memora (eq. 27)

_MIRAS = "Behrouz, Razaviyayn, Zhong & Mirrokni 2025, It's All Connected (Miras)"


def _mlp_terms(q, k, v, theta, g, w1, w2, scale, **kw):
    return MemoryTerms(q=q * _scale(scale), k=k, v=v, theta=theta, g=g, memory="mlp", algorithm="gd",
                       init=(w1, w2), activation="gelu", residual=True, **kw)


def lower_moneta(q, k, v, g, theta, w1, w2, p=3.0, norm_q=4.0, eps=1e-6, scale=1.0):
    return _mlp_terms(q, k, v, p * theta, g, w1, w2, scale, bias="lp", retention="lq", p=p,
                      norm_q=norm_q, eps=eps)


def oracle_moneta(q, k, v, g, theta, w1, w2, p=3.0, norm_q=4.0, eps=1e-6, scale=1.0):
    """A_t = α_t A_{t−1} − η_t ∇‖M_{W_{t−1}}(k) − v‖_p^p;  W_t = A_t / ‖A_t‖_q^{q−2} (ε inside)."""
    net = _residual_mlp(F.gelu)

    def norm(a):
        return a / (a.abs().pow(norm_q).sum((-2, -1), keepdim=True) + eps) ** ((norm_q - 2) / norm_q)
    A, out = _start(w1, w2, q.shape[0]), []
    for t in range(q.shape[1]):
        kt, vt = k[:, t], v[:, t]
        grads = _inner_grad(lambda W: (net(W, kt) - vt).abs().pow(p).sum(), [norm(a) for a in A])
        A = [_col(torch.exp(g[:, t])) * a - _col(theta[:, t]) * gr for a, gr in zip(A, grads)]
        out.append(net([norm(a) for a in A], q[:, t] * _scale(scale)))
    return torch.stack(out, 1)


def lower_yaad(q, k, v, g, theta, w1, w2, delta=1.0, scale=1.0):
    return _mlp_terms(q, k, v, theta, g, w1, w2, scale, bias="huber_mix", retention="l2", delta=delta)


def oracle_yaad(q, k, v, g, theta, w1, w2, delta=1.0, scale=1.0):
    """Eq. 26: W_t = α_t W_{t−1} − η_t ∇‖e‖² if ‖e‖ <= δ, else α_t W_{t−1} − η_t δ ∇‖e‖₁; e = M(k_t) − v_t."""
    net = _residual_mlp(F.gelu)

    def loss(W, kt, vt):
        e = net(W, kt) - vt
        near = e.norm(dim=-1) <= delta     # per (row, head): which of the two steps that memory takes
        return torch.where(near, (e * e).sum(-1), delta * e.abs().sum(-1)).sum()

    W, out = _start(w1, w2, q.shape[0]), []
    for t in range(q.shape[1]):
        grads = _inner_grad(lambda W_: loss(W_, k[:, t], v[:, t]), W)
        W = [_col(torch.exp(g[:, t])) * w - _col(theta[:, t]) * gr for w, gr in zip(W, grads)]
        out.append(net(W, q[:, t] * _scale(scale)))
    return torch.stack(out, 1)


def lower_memora(q, k, v, g, theta, w1, w2, kl_scale=1.0, scale=1.0):
    # θ is the paper's η on ‖e‖²: the library's ½‖e‖² takes 2θ
    return _mlp_terms(q, k, v, 2 * theta, g, w1, w2, scale, bias="l2", retention="kl", kl_scale=kl_scale)


def oracle_memora(q, k, v, g, theta, w1, w2, kl_scale=1.0, scale=1.0):
    """W_t = c · Softmax(α_t log W_{t−1} − η_t ∇‖M(k_t) − v_t‖²), per column over its inputs."""
    net = _residual_mlp(F.gelu)
    W, out = _start(w1, w2, q.shape[0]), []
    for t in range(q.shape[1]):
        kt, vt = k[:, t], v[:, t]
        grads = _inner_grad(lambda W_: ((net(W_, kt) - vt) ** 2).sum(), W)
        W = [kl_scale * torch.softmax(_col(torch.exp(g[:, t])) * torch.log(w) - _col(theta[:, t]) * gr,
                                      dim=-2) for w, gr in zip(W, grads)]
        out.append(net(W, q[:, t] * _scale(scale)))
    return torch.stack(out, 1)


def _random(retention, bias):
    def sample(B, T, H, K, V, dtype=torch.float64, device=None, seed=None, options=None):
        d = random_memory(B, T, H, K, V, dtype, device, seed, memory="mlp", bias=bias,
                          retention=retention, algorithm="gd", options=options)
        if bias == "lp":  # the paper's η on ‖e‖_p^p: the spec's step is pη
            d["theta"] = d["theta"] / (options or {}).get("p", 3.0)
        if retention == "kl":  # the paper's η on ‖e‖²: the spec's step is 2η
            d["theta"] = d["theta"] / 2
        return d
    return sample


def _miras_spec(name, bias, retention, lower, options, oracle, description, miras):
    base = memory_spec("mlp", bias, retention, "gd")
    return dataclasses.replace(base, name=name, lower=lower, options=options, citation=_MIRAS,
                               description=description, oracle=oracle,
                               random_inputs=_random(retention, bias), miras=miras)


MONETA = _miras_spec("moneta", "lp", "lq", lower_moneta, dict(p=3.0, norm_q=4.0, eps=1e-6, scale=1.0),
                     oracle_moneta, "ℓp attentional bias (p = 3) with ℓq retention (q = 4) and decay",
                     Miras("2-layer MLP", "ℓp (p = 3)", "ℓq (q = 4) + ℓ2", "GD"))
YAAD = _miras_spec("yaad", "huber_mix", "l2", lower_yaad, dict(delta=1.0, scale=1.0), oracle_yaad,
                   "Huber attentional bias (robust to outlier tokens) with ℓ2 retention: eq. 26's ℓ2 step "
                   "while ‖M(k) − v‖ <= δ, δ times the ℓ1 step (δ sign(e)) beyond; δ a constant option",
                   Miras("2-layer MLP", "Huber (δ)", "ℓ2", "GD"))
MEMORA = _miras_spec("memora", "l2", "kl", lower_memora, dict(kl_scale=1.0, scale=1.0), oracle_memora,
                     "ℓ2 bias with KL retention: the weights stay softmax-normalised",
                     Miras("2-layer MLP", "ℓ2", "KL (softmax)", "GD"))


# ---------------------------------------------------------------------------------------------
# TTT (Sun et al. 2024): W_t = W_{t−1} − η ∇‖f(k_t; W) − v_t‖², z_t = f(q_t; W_t)

_TTT = "Sun et al. 2024, Learning to (Learn at Test Time): RNNs with Expressive Hidden States"


def lower_ttt_linear(q, k, v, theta, scale=1.0):
    return MemoryTerms(q=q * _scale(scale), k=k, v=v, theta=2 * theta, memory="matrix", bias="l2")


def oracle_ttt_linear(q, k, v, theta, scale=1.0):
    """f(x) = W x with W ∈ R^{V×K} (the paper's orientation), ∇ = 2 (W k − v) kᵀ."""
    B, T, H, K = q.shape
    W, out = q.new_zeros(B, H, v.shape[-1], K), []
    for t in range(T):
        err = torch.einsum("bhvk,bhk->bhv", W, k[:, t]) - v[:, t]
        W = W - 2 * theta[:, t, :, None, None] * err[..., :, None] * k[:, t, :, None, :]
        out.append(torch.einsum("bhvk,bhk->bhv", W, q[:, t] * _scale(scale)))
    return torch.stack(out, 1)


def lower_ttt_mlp(q, k, v, theta, w1, w2, scale=1.0):
    return _mlp_terms(q, k, v, 2 * theta, None, w1, w2, scale, bias="l2", retention="none")


def oracle_ttt_mlp(q, k, v, theta, w1, w2, scale=1.0):
    net = _residual_mlp(F.gelu)
    W, out = _start(w1, w2, q.shape[0]), []
    for t in range(q.shape[1]):
        kt, vt = k[:, t], v[:, t]
        grads = _inner_grad(lambda W_: ((net(W_, kt) - vt) ** 2).sum(), W)
        W = [w - _col(theta[:, t]) * gr for w, gr in zip(W, grads)]
        out.append(net(W, q[:, t] * _scale(scale)))
    return torch.stack(out, 1)


def _ttt_random(memory):
    def sample(B, T, H, K, V, dtype=torch.float64, device=None, seed=None, options=None):
        d = random_memory(B, T, H, K, V, dtype, device, seed, memory=memory, bias="l2",
                          retention="none", algorithm="gd", options=options)
        d["theta"] = 0.5 * d["theta"]  # the paper's η: the spec's step is 2η
        return d
    return sample


TTT_LINEAR = dataclasses.replace(
    memory_spec("matrix", "l2", "none", "gd"), name="ttt_linear", lower=lower_ttt_linear,
    options=dict(scale=1.0), citation=_TTT,
    description="a linear model trained online on ‖W k − v‖² (no LayerNorm/residual): the delta "
                "rule with β = 2η; the paper trains with mini-batch GD",
    oracle=oracle_ttt_linear, random_inputs=_ttt_random("matrix"),
    miras=Miras("matrix", "ℓ2", "none", "GD (mini-batch in the paper)"))

TTT_MLP = dataclasses.replace(
    memory_spec("mlp", "l2", "none", "gd"), name="ttt_mlp", lower=lower_ttt_mlp,
    options=dict(scale=1.0), citation=_TTT,
    description="a residual 2-layer GELU MLP trained online on ‖f(k) − v‖² (no LayerNorm)",
    oracle=oracle_ttt_mlp, random_inputs=_ttt_random("mlp"),
    miras=Miras("2-layer MLP", "ℓ2", "none", "GD (mini-batch in the paper)"))
