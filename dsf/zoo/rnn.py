r"""Gated linear RNNs without state expansion: qLSTM, RG-LRU and minGRU.

Each channel is a scalar recurrence h_t = a_t h_{t-1} + b_t x_t, read through an optional output
gate; in DSF terms Λ_t = diag(a_t) over the V channels of a head (a value-wise diagonal, state n = 1):

=========  ==========================================  ===============================
mixer      a_t                                          b_t ; output
=========  ==========================================  ===============================
qlstm      σ(f_t)  (reversed: σ(−f_t)^{relu(a)})        σ(i_t) ; σ(o_t) ⊙ h_t
rg_lru     σ(Λ)^{c·σ(r_t)}, c = 8                       √(1 − a_t²) ⊙ σ(i_t) ; h_t
mingru     1 − σ(z_t)                                   σ(z_t) ; h_t
=========  ==========================================  ===============================

Gates are given as pre-activations, so each spec encodes its paper's parameterisation. The reversed
qLSTM transition σ(−f)^a equals S6's exp(−a·softplus(f)) (see :mod:`dsf.symbolic`). State: [B, H, V].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..spec import Input, MixerSpec, Transition
from ..terms import LinearTerms
from ._common import X, gen, randn


def _gate(name):
    return Input(name, ("B", "T", "H", "V"), f"{name} gate pre-activation")


def _terms(x, log_a, w, r=None):
    B, T, H, V = x.shape
    ones = x.new_ones(B, T, H, 1)
    return LinearTerms(q=ones, k=ones, u=x, decay="value", g=log_a, w=w, r=r,
                       state_in=lambda S: S[:, :, None, :], state_out=lambda S: S[:, :, 0, :])


def _qlstm_log_a(f, a, reversed):
    if not reversed:
        return F.logsigmoid(f)
    expo = torch.ones_like(f[0, 0]) if a is None else F.relu(a)
    return expo * F.logsigmoid(-f)


def lower_qlstm(x, f, i, o, a=None, reversed=False):
    if a is not None and not reversed:   # (it was ignored: a learned a with the plain gate never trained)
        raise ValueError("qlstm: a is the reversed forget gate's exponent, unused with reversed=False; drop it "
                         "or set reversed=True")
    return _terms(x, _qlstm_log_a(f, a, reversed), torch.sigmoid(i), torch.sigmoid(o))


def lower_rg_lru(x, r, i, Lam, c=8.0):
    log_a = -c * torch.sigmoid(r) * F.softplus(-Lam)          # log σ(Λ)^{c σ(r)}
    w = torch.sqrt(-torch.expm1(2 * log_a)) * torch.sigmoid(i)  # √(1 − a²), stable near a = 1
    return _terms(x, log_a, w)


def lower_mingru(x, z):
    return _terms(x, F.logsigmoid(-z), torch.sigmoid(z))


def _loop(x, a_t, b_t, out_t=None):
    h = torch.zeros_like(x[:, 0])
    ys = []
    for t in range(x.shape[1]):
        h = a_t(t) * h + b_t(t) * x[:, t]
        ys.append(h if out_t is None else out_t(t) * h)
    return torch.stack(ys, 1)


def oracle_qlstm(x, f, i, o, a=None, reversed=False):
    if reversed:
        p = torch.ones(()) if a is None else torch.relu(a)
        a_t = lambda t: torch.sigmoid(-f[:, t]) ** p  # noqa: E731
    else:
        a_t = lambda t: torch.sigmoid(f[:, t])  # noqa: E731
    return _loop(x, a_t, lambda t: torch.sigmoid(i[:, t]), lambda t: torch.sigmoid(o[:, t]))


def oracle_rg_lru(x, r, i, Lam, c=8.0):
    a = torch.sigmoid(Lam) ** (c * torch.sigmoid(r))
    return _loop(x, lambda t: a[:, t], lambda t: torch.sqrt(1 - a[:, t] ** 2) * torch.sigmoid(i[:, t]))


def oracle_mingru(x, z):
    zt = torch.sigmoid(z)
    return _loop(x, lambda t: 1 - zt[:, t], lambda t: zt[:, t])


def random_qlstm(B, T, H, K, V, dtype=torch.float64, device=None, seed=None, options=None):
    g = gen(seed)
    d = {n: randn(B, T, H, V, g=g, dtype=dtype, device=device) for n in ("x", "f", "i", "o")}
    d["f"] = d["f"] + 2.0
    if (options or {}).get("reversed"):   # (the exponent of the reversed gate only)
        d["a"] = 1.0 + 0.5 * randn(H, V, g=g, dtype=dtype, device=device).abs()
    return d


def random_rg_lru(B, T, H, K, V, dtype=torch.float64, device=None, seed=None):
    g = gen(seed)
    d = {n: randn(B, T, H, V, g=g, dtype=dtype, device=device) for n in ("x", "r", "i")}
    d["Lam"] = 2.0 + randn(H, V, g=g, dtype=dtype, device=device)
    return d


def random_mingru(B, T, H, K, V, dtype=torch.float64, device=None, seed=None):
    g = gen(seed)
    return {n: randn(B, T, H, V, g=g, dtype=dtype, device=device) for n in ("x", "z")}


_common = dict(family="gated RNN", transition=Transition.VALUE_DIAG, state_dims=("B", "H", "V"),
               state_size="V", state_numel=lambda d: d["V"], phi_layout="channel")

QLSTM = MixerSpec(
    name="qlstm",
    inputs=(X, _gate("f"), _gate("i"), _gate("o"),
            Input("a", ("H", "V"), "exponent of the reversed forget gate", optional=True)),
    lower=lower_qlstm, options=dict(reversed=False),
    citation="Sieber et al. 2024 (DSF), after Hippogriff (Muñoz-Ortiz et al.); reversed sigmoid: DSF eq. 23",
    description="quasi-LSTM: LSTM gates without h-dependence; reversed=True uses σ(−f)^relu(a)",
    oracle=oracle_qlstm, random_inputs=random_qlstm, **_common)

RG_LRU = MixerSpec(
    name="rg_lru",
    inputs=(X, _gate("r"), _gate("i"), Input("Lam", ("H", "V"), "Λ, a = σ(Λ)^(c·r)")),
    lower=lower_rg_lru, options=dict(c=8.0),
    citation="De et al. 2024, Griffin (Hawk's RG-LRU)",
    description="real-gated linear recurrent unit with √(1−a²) input normalisation",
    oracle=oracle_rg_lru, random_inputs=random_rg_lru, **_common)

MINGRU = MixerSpec(
    name="mingru",
    inputs=(Input("x", ("B", "T", "H", "V"), "candidate state h̃ = W_h x"), _gate("z")),
    lower=lower_mingru,
    citation="Feng et al. 2024, Were RNNs All We Needed?",
    description="minimal GRU: h_t = (1 − z_t) h_{t-1} + z_t h̃_t",
    oracle=oracle_mingru, random_inputs=random_mingru, **_common)
