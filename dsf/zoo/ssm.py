r"""Diagonal state-space models: S4D (time-invariant) and S6 (Mamba-1, selective).

Each of the V channels of a head is a single-input system with N states:

.. math:: h_t[n, c] = e^{-Δ_{t,c} A_{c,n}} h_{t-1}[n, c] + \bar B_t[n, c]\, x_t[c],
          \qquad y_t[c] = \sum_n C_t[n]\, h_t[n, c] + D_c x_t[c]

so Λ_t is diagonal per (channel, state). S4D is the LTI case (ZOH: B̄ = (1 − e^{−ΔA})/A · B, Φ is
Toeplitz); S6 makes Δ, B and C depend on the input (Euler for B: B̄ = Δ B). Inputs: ``A`` holds the
positive rates (the continuous matrix is −A). ``longhorn_diag`` is the recurrence Longhorn's released
model runs, of the same shape: decay 1 − β_c k_n² and write β_c k_n per (channel c, state n). The
forms run each channel as a head with a key-wise decay over its N states, which is exactly the
per-(channel, state) structure. State: [B, H, N, V].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..spec import Input, MixerSpec, Transition
from ..terms import LinearTerms
from ._common import X, gen, randn

A_IN = Input("A", ("H", "V", "N"), "positive decay rates (the continuous A is −A)")
D_IN = Input("D", ("H", "V"), "skip", optional=True)


def _channel_terms(x, q, k, gk, D):
    """Build terms that run the B·H·V channels as heads: [B, T, H, V, N] → [B, T, H·V, N]."""
    B, T, H, V = x.shape
    N = q.shape[-1]
    flat = lambda t: t.reshape(B, T, H * V, N)  # noqa: E731
    return LinearTerms(
        q=flat(q), k=flat(k), u=x.reshape(B, T, H * V, 1), decay="key", g=flat(gk),
        D=None if D is None else D.reshape(H * V, 1),
        # rows = batch, or sequences when a kernel packs them (cu_seqlens): take it from S
        state_in=lambda S: S.transpose(-1, -2).reshape(S.shape[0], H * V, N, 1),
        state_out=lambda S: S.reshape(S.shape[0], H, V, N).transpose(-1, -2),
        phi_out=lambda P: P.reshape(B, H, V, T, T),
        out=lambda y: y.reshape(B, T, H, V),
    )


def _check_positive(name, arg, t):
    if bool((t <= 0).any()):
        raise ValueError(f"{name}: {arg} must be positive everywhere (got min {t.min().item():.3g})")


def lower_s4d(x, dt, A, B, C, D=None):
    # (one read on the host for both) a rate A = 0 made the zero-order hold's (1 − e^{−ΔA}) / A a NaN
    if bool((dt <= 0).any() | (A <= 0).any()):
        _check_positive("s4d", "dt", dt)
        _check_positive("s4d", "A", A)
    Bsz, T, H, V = x.shape
    rate = dt[..., None] * A                                   # [H, V, N]
    Bbar = -torch.expm1(-rate) / A * B                         # zero-order hold
    shape = (Bsz, T, H, V, A.shape[-1])
    return _channel_terms(x, C.expand(shape), Bbar.expand(shape), (-rate).expand(shape), D)


def lower_s6(x, dt, A, B, C, D=None):
    Bsz, T, H, V = x.shape
    N = A.shape[-1]
    shape = (Bsz, T, H, V, N)
    gk = -dt[..., None] * A                                     # [B, T, H, V, N]
    k = dt[..., None] * B[:, :, :, None, :]                    # Euler: B̄ = Δ B
    return _channel_terms(x, C[:, :, :, None, :].expand(shape), k, gk, D)


def longhorn_diag_beta(k, eps):
    """Each channel's step of the released Longhorn: β_c = ε_c / (1 + ε_c ‖k‖²), [B, T, H, V]."""
    return eps / (1 + eps * (k * k).sum(-1, keepdim=True))


def lower_longhorn_diag(x, q, k, eps, D=None):
    Bsz, T, H, V = x.shape
    shape = (Bsz, T, H, V, k.shape[-1])
    beta = longhorn_diag_beta(k, eps)[..., None]               # [B, T, H, V, 1]
    kn = k[:, :, :, None, :]                                    # [B, T, H, 1, N]
    # β_c k_n² < 1 for ε > 0 (≤ ε‖k‖²/(1 + ε‖k‖²)): the log is finite
    return _channel_terms(x, q[:, :, :, None, :].expand(shape), beta * kn, torch.log1p(-beta * kn * kn), D)


def _oracle(x, decay_t, write_t, read_t, D):
    """Loop over time with a per-(channel, state) diagonal: h [B, H, V, N]."""
    Bsz, T, H, V = x.shape
    h = None
    out = []
    for t in range(T):
        inp = write_t(t) * x[:, t, :, :, None]
        h = inp if h is None else decay_t(t) * h + inp
        y = (read_t(t) * h).sum(-1)
        out.append(y if D is None else y + D * x[:, t])
    return torch.stack(out, 1)


def oracle_s4d(x, dt, A, B, C, D=None):
    Abar = torch.exp(-dt[..., None] * A)
    Bbar = (1 - Abar) / A * B
    return _oracle(x, lambda t: Abar, lambda t: Bbar, lambda t: C, D)


def oracle_s6(x, dt, A, B, C, D=None):
    return _oracle(x, lambda t: torch.exp(-dt[:, t, :, :, None] * A),
                   lambda t: dt[:, t, :, :, None] * B[:, t, :, None, :],
                   lambda t: C[:, t, :, None, :], D)


def oracle_longhorn_diag(x, q, k, eps, D=None):
    """The released model's decoding step, token by token: h ← h (1 − β kᵀ²) + (β x) kᵀ, y = h q + D x."""
    Bsz, T, H, V = x.shape
    h = torch.zeros(Bsz, H, V, k.shape[-1], dtype=x.dtype)
    out = []
    for t in range(T):
        kt, qt = k[:, t, :, None, :], q[:, t, :, None, :]                # [B, H, 1, N]
        beta = (eps[:, t] / (1 + eps[:, t] * (k[:, t] ** 2).sum(-1)[..., None]))[..., None]   # [B, H, V, 1]
        h = h * (1 - beta * kt ** 2) + beta * x[:, t, :, :, None] * kt
        y = (h * qt).sum(-1)
        out.append(y if D is None else y + D * x[:, t])
    return torch.stack(out, 1)


def _rates(H, V, N, dtype, device):
    """S4D-Real initialisation: A_n = n + 1 (n = 0 … N − 1) for each channel, as rates of e^{−Δ A}."""
    return torch.arange(1, N + 1, dtype=torch.float64).expand(H, V, N).to(dtype=dtype, device=device)


def random_s4d(B, T, H, K, V, dtype=torch.float64, device=None, seed=None):
    g = gen(seed)
    N = K
    return dict(x=randn(B, T, H, V, g=g, dtype=dtype, device=device),
                dt=torch.exp(randn(H, V, g=g) * 0.5 - 2.0).to(dtype=dtype, device=device),
                A=_rates(H, V, N, dtype, device),
                B=randn(H, V, N, g=g, dtype=dtype, device=device),
                C=randn(H, V, N, g=g, dtype=dtype, device=device),
                D=randn(H, V, g=g, dtype=dtype, device=device))


def random_s6(B, T, H, K, V, dtype=torch.float64, device=None, seed=None):
    g = gen(seed)
    N = K
    return dict(x=randn(B, T, H, V, g=g, dtype=dtype, device=device),
                dt=F.softplus(randn(B, T, H, V, g=g) - 1.0).to(dtype=dtype, device=device),
                A=_rates(H, V, N, dtype, device),
                B=randn(B, T, H, N, g=g, dtype=dtype, device=device),
                C=randn(B, T, H, N, g=g, dtype=dtype, device=device),
                D=randn(H, V, g=g, dtype=dtype, device=device))


def random_longhorn_diag(B, T, H, K, V, dtype=torch.float64, device=None, seed=None):
    g = gen(seed)
    N = K
    return dict(x=randn(B, T, H, V, g=g, dtype=dtype, device=device),
                q=randn(B, T, H, N, g=g, dtype=dtype, device=device),
                k=randn(B, T, H, N, g=g, dtype=dtype, device=device),
                eps=torch.sigmoid(randn(B, T, H, V, g=g)).to(dtype=dtype, device=device),
                D=randn(H, V, g=g, dtype=dtype, device=device))


_common = dict(family="state-space model", transition=Transition.CHANNEL_STATE_DIAG,
               state_dims=("B", "H", "N", "V"), state_size="N·V",
               state_numel=lambda d: d.get("N", d["K"]) * d["V"], phi_layout="channel")

S4D = MixerSpec(
    name="s4d",
    inputs=(X, Input("dt", ("H", "V"), "positive step size Δ"), A_IN,
            Input("B", ("H", "V", "N"), "input matrix"), Input("C", ("H", "V", "N"), "output matrix"),
            D_IN),
    lower=lower_s4d,
    citation="Gu et al. 2022, On the Parameterization and Initialization of Diagonal SSMs (S4D)",
    description="time-invariant diagonal SSM, ZOH-discretised: Φ is a Toeplitz convolution",
    oracle=oracle_s4d, random_inputs=random_s4d, **_common)

S6 = MixerSpec(
    name="s6",
    inputs=(X, Input("dt", ("B", "T", "H", "V"), "positive, input-dependent step Δ_t"), A_IN,
            Input("B", ("B", "T", "H", "N"), "input-dependent B_t, shared by a head's channels"),
            Input("C", ("B", "T", "H", "N"), "input-dependent C_t"), D_IN),
    lower=lower_s6,
    citation="Gu & Dao 2023, Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
    description="selective SSM (Mamba-1 scan without conv and gate): Λ_t = exp(−Δ_t A)",
    oracle=oracle_s6, random_inputs=random_s6, **_common)

LONGHORN_DIAG = MixerSpec(
    name="longhorn_diag",
    inputs=(X, Input("q", ("B", "T", "H", "N"), "queries, shared by a head's channels (Mamba's C)"),
            Input("k", ("B", "T", "H", "N"), "keys, shared by a head's channels (Mamba's B)"),
            Input("eps", ("B", "T", "H", "V"), "positive step per channel (σ of a projection in the code)"),
            D_IN),
    lower=lower_longhorn_diag,
    citation="Liu et al. 2024, Longhorn: State Space Models are Amortized Online Learners (the released "
             "model's scan, Cranial-XIX/longhorn)",
    description="Longhorn as its code runs it: each channel c an implicit step of its own on its "
                "[N] row, Λ_t = 1 − β_c k_n², β_c = ε_c / (1 + ε_c ‖k‖²) (the zoo's `longhorn` is the "
                "paper's exact matrix step)",
    oracle=oracle_longhorn_diag, random_inputs=random_longhorn_diag, **_common)
