"""In-context linear regression: prompts, token layouts, baselines and closed-form oracles.

The task of Garg et al. 2022 (arXiv 2208.01066): each prompt draws its own weight vector w and
``n_points`` inputs x_i ~ N(0, I_d), with y_i = wᵀx_i + σ ε_i. A model sees (x_0, y_0), …,
(x_{i-1}, y_{i-1}) and x_i and must predict y_i. The baselines below make that prediction at every
position i from the points before it (ŷ_0 = 0), which is how Garg et al. plot error against the
number of in-context examples.

    x [B, n, d]   y [B, n]   w [B, d]   per-position predictions ŷ [B, n]

The closed forms use τ² = Var(w_k): 1 for ``w_scale="identity"``, 1/d for ``"1/d"``; the risk of
a predictor is E(ŷ − y)² on a fresh, noisy query, so predicting 0 scores dτ² + σ².
Pure PyTorch; the Lightning DataModule and the LSA experiment (``models.experiments.lsa_gd``) use it.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

__all__ = [
    "W_SCALES", "sample_regression", "interleave", "stack_tokens",
    "least_squares", "ridge", "knn", "averaging", "one_step_gd",
    "w_variance", "bayes_ridge_lambda", "gd_risk", "gd_optimal_eta", "gd_optimal_risk",
    "least_squares_risk",
]

W_SCALES = ("identity", "1/d")


# ---------------------------------------------------------------------------------------------
# Prompts and token layouts
# ---------------------------------------------------------------------------------------------

def w_variance(d: int, w_scale: str = "identity") -> float:
    """τ² = Var(w_k): 1 for ``"identity"`` (w ~ N(0, I_d)), 1/d for ``"1/d"`` (w ~ N(0, I_d/d))."""
    if w_scale not in W_SCALES:
        raise ValueError(f"w_scale must be one of {W_SCALES}, got {w_scale!r}")
    if d <= 0:
        raise ValueError(f"d must be >= 1, got {d}")
    return 1.0 if w_scale == "identity" else 1.0 / d


def sample_regression(batch: int, n_points: int, d: int, *, noise_std: float = 0.0,
                      w_scale: str = "identity", generator: torch.Generator | None = None,
                      device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    """Draw ``batch`` regression prompts.

    Args:
        batch: number of prompts B (>= 1).
        n_points: points per prompt n (>= 1); for the LSA the last one is the query.
        d: input dimension (>= 1).
        noise_std: σ >= 0; y = x w + σ ε with ε ~ N(0, 1). The noise is drawn even when σ = 0,
            so one seed gives the same x and w at every noise level.
        w_scale: ``"identity"`` for w ~ N(0, I_d), ``"1/d"`` for w ~ N(0, I_d / d).
        generator: the random stream (on ``device``, or on the CPU and moved); default: global.
        device, dtype: of the returned tensors.

    Returns:
        x [B, n, d], y [B, n], w [B, d].

    Example:
        >>> x, y, w = sample_regression(4, 11, 5, generator=torch.Generator().manual_seed(0))
        >>> tuple(x.shape), tuple(y.shape), tuple(w.shape)
        ((4, 11, 5), (4, 11), (4, 5))
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    if noise_std < 0 or not math.isfinite(noise_std):
        raise ValueError(f"noise_std must be finite and >= 0, got {noise_std}")
    tau = math.sqrt(w_variance(d, w_scale))          # validates d and w_scale
    where = generator.device if generator is not None else device
    kw = dict(generator=generator, device=where, dtype=dtype)
    x = torch.randn(batch, n_points, d, **kw)
    w = tau * torch.randn(batch, d, **kw)
    eps = torch.randn(batch, n_points, **kw)
    y = torch.einsum("bnd,bd->bn", x, w) + noise_std * eps
    return x.to(device), y.to(device), w.to(device)


def _check_xy(x: Tensor, y: Tensor) -> None:
    if x.dim() != 3 or y.shape != x.shape[:2]:
        raise ValueError(f"expected x [B, n, d] and y [B, n], got {tuple(x.shape)} and {tuple(y.shape)}")


def interleave(x: Tensor, y: Tensor) -> Tensor:
    """Garg et al.'s layout: tokens [B, 2n, d+1] = x-token [x_i; 0], then y-token [0…0; y_i].

    A causal model predicts y_i at x-token 2i. The LSA experiment does not use this layout.
    """
    _check_xy(x, y)
    B, n, d = x.shape
    tokens = x.new_zeros(B, 2 * n, d + 1)
    tokens[:, 0::2, :d] = x
    tokens[:, 1::2, d] = y
    return tokens


def stack_tokens(x: Tensor, y: Tensor) -> Tensor:
    """The linear-self-attention layout: tokens [B, n, d+1] = [x_i; y_i], with the last (query)
    token's y set to 0, so that prompts of n points hold n − 1 examples and one query [x_q; 0].

    This is the layout ``models.experiments.lsa_gd`` trains on (von Oswald et al.; Zhang, Frei,
    Bartlett).
    """
    _check_xy(x, y)
    y = y.clone()
    y[:, -1] = 0
    return torch.cat([x, y.unsqueeze(-1)], dim=-1)


# ---------------------------------------------------------------------------------------------
# Baselines: ŷ_i from points 0..i-1, computed in float64 and returned in x's dtype
# ---------------------------------------------------------------------------------------------

def _per_position(x: Tensor, y: Tensor, fit_predict: Callable[[Tensor, Tensor, Tensor], Tensor]) -> Tensor:
    """ŷ [B, n] with ŷ_0 = 0 and ŷ_i = fit_predict(x[:, :i], y[:, :i], x[:, i])."""
    _check_xy(x, y)
    xd, yd = x.double(), y.double()
    out = torch.zeros_like(yd)
    for i in range(1, x.shape[1]):
        out[:, i] = fit_predict(xd[:, :i], yd[:, :i], xd[:, i])
    return out.to(x.dtype)


def least_squares(x: Tensor, y: Tensor) -> Tensor:
    """Minimum-norm least squares on the first i points: ŵ = X⁺y.

    Solved as (XᵀX)ŵ = Xᵀy when i >= d and ŵ = Xᵀ(XXᵀ)⁻¹y when i < d (both exact for Gaussian
    inputs, which have full rank); prompts whose system is singular fall back to ``pinv``.
    """
    def fit(X, Y, q):
        Xt, Yc = X.transpose(1, 2), Y.unsqueeze(-1)
        if X.shape[1] >= X.shape[2]:
            sol, info = torch.linalg.solve_ex(Xt @ X, Xt @ Yc)
            w = sol
        else:
            sol, info = torch.linalg.solve_ex(X @ Xt, Yc)
            w = Xt @ sol
        bad = info != 0
        if bool(bad.any()):
            w[bad] = torch.linalg.pinv(X[bad]) @ Yc[bad]
        return (w.squeeze(-1) * q).sum(-1)
    return _per_position(x, y, fit)


def ridge(x: Tensor, y: Tensor, lam: float) -> Tensor:
    """Ridge: ŵ = (XᵀX + λI)⁻¹ Xᵀy; λ = 0 is ``least_squares``.

    With λ = σ²/τ² (``bayes_ridge_lambda``) ŵ is the posterior mean of w, so the prediction is
    Bayes-optimal for Gaussian w and noise.
    """
    if lam < 0 or not math.isfinite(lam):
        raise ValueError(f"lam must be finite and >= 0, got {lam}")
    if lam == 0:
        return least_squares(x, y)

    def fit(X, Y, q):
        A = X.transpose(1, 2) @ X + lam * torch.eye(X.shape[-1], dtype=X.dtype, device=X.device)
        w = torch.linalg.solve(A, (X.transpose(1, 2) @ Y.unsqueeze(-1))).squeeze(-1)
        return (w * q).sum(-1)
    return _per_position(x, y, fit)


def knn(x: Tensor, y: Tensor, k: int = 3) -> Tensor:
    """Mean y of the k nearest earlier x's (Euclidean, uniform weights; all of them when i < k)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")

    def fit(X, Y, q):
        dist = (X - q.unsqueeze(1)).square().sum(-1)                    # [B, i]
        idx = dist.topk(min(k, X.shape[1]), dim=-1, largest=False).indices
        return Y.gather(1, idx).mean(-1)
    return _per_position(x, y, fit)


def _gd_with(x: Tensor, y: Tensor, eta_of_i: Callable[[int], float]) -> Tensor:
    """ŷ_i = η_i (Σ_{j<i} y_j x_j)ᵀ x_i, from a cumulative sum (no loop over the data)."""
    _check_xy(x, y)
    xd, yd = x.double(), y.double()
    h = torch.cumsum(yd.unsqueeze(-1) * xd, dim=1) - yd.unsqueeze(-1) * xd   # Σ_{j<i} y_j x_j
    eta = torch.tensor([eta_of_i(i) if i > 0 else 0.0 for i in range(x.shape[1])],
                       dtype=torch.float64, device=x.device)
    return (eta * (h * xd).sum(-1)).to(x.dtype)


def averaging(x: Tensor, y: Tensor) -> Tensor:
    """Garg et al.'s averaging estimator: ŵ = (1/i) Σ_{j<i} y_j x_j (one GD step with η = 1/i)."""
    return _gd_with(x, y, lambda i: 1.0 / i)


def one_step_gd(x: Tensor, y: Tensor, eta: float | None = None, *, noise_var: float = 0.0,
                w_scale: str = "identity") -> Tensor:
    """One gradient step from w = 0 on ½Σ_j (y_j − wᵀx_j)²: ŵ = η Σ_{j<i} y_j x_j.

    ``eta=None`` takes the risk-minimising η* = ``gd_optimal_eta(d, i, noise_var, w_scale)`` at
    each position i; a number uses that η everywhere.
    """
    d = x.shape[-1]
    if eta is None:
        return _gd_with(x, y, lambda i: gd_optimal_eta(d, i, noise_var, w_scale))
    return _gd_with(x, y, lambda i: float(eta))


# ---------------------------------------------------------------------------------------------
# Closed forms (x ~ N(0, I_d), w ~ N(0, τ² I_d), noise σ²; risk on a noisy query)
# ---------------------------------------------------------------------------------------------

def _check_closed(d: int, N: int, noise_var: float, w_scale: str) -> float:
    if N < 0:
        raise ValueError(f"the number of examples must be >= 0, got {N}")
    if noise_var < 0:
        raise ValueError(f"noise_var must be >= 0, got {noise_var}")
    return w_variance(d, w_scale)


def bayes_ridge_lambda(d: int, noise_var: float, w_scale: str = "identity") -> float:
    """λ = σ²/τ² that makes ``ridge`` the posterior mean (σ²·d for ``w_scale="1/d"``)."""
    return noise_var / _check_closed(d, 0, noise_var, w_scale)


def gd_risk(d: int, N: int, eta: float, noise_var: float = 0.0, w_scale: str = "identity") -> float:
    """Risk of ŷ = η Σ_{j≤N} y_j x_jᵀ x_q:  dτ² + σ² − 2ηNdτ² + η²Nd(τ²(N+d+1) + σ²).

    It uses E[XᵀX] = N I and E[(XᵀX)²] = N(N+d+1) I for Gaussian X [N, d]. η = 1/N gives the
    averaging estimator's risk.
    """
    t2 = _check_closed(d, N, noise_var, w_scale)
    return d * t2 + noise_var - 2 * eta * N * d * t2 + eta ** 2 * N * d * (t2 * (N + d + 1) + noise_var)


def gd_optimal_eta(d: int, N: int, noise_var: float = 0.0, w_scale: str = "identity") -> float:
    """η* = τ²/(τ²(N+d+1) + σ²): 1/(N+d+1+σ²) for w ~ N(0, I), 1/(N+1+d(1+σ²)) for N(0, I/d)."""
    t2 = _check_closed(d, N, noise_var, w_scale)
    return t2 / (t2 * (N + d + 1) + noise_var)


def gd_optimal_risk(d: int, N: int, noise_var: float = 0.0, w_scale: str = "identity") -> float:
    """Risk of one GD step at η*: d + σ² − Nd/(N+d+1+σ²) for w ~ N(0, I),
    1 + σ² − N/(N+1+d(1+σ²)) for w ~ N(0, I/d)."""
    return gd_risk(d, N, gd_optimal_eta(d, N, noise_var, w_scale), noise_var, w_scale)


def least_squares_risk(d: int, i: int, noise_var: float = 0.0, w_scale: str = "identity") -> float:
    """Risk of min-norm least squares on i Gaussian examples (exact, from Wishart moments).

    * noiseless: τ²(d − i)₊ (the error is w's component outside the span of the i inputs);
    * noisy, i ≤ d − 2: τ²(d − i) + σ² + σ² i/(d − i − 1)   (E[(XXᵀ)⁻¹] = I/(d − i − 1));
    * noisy, i ≥ d + 2: σ² + σ² d/(i − d − 1)                (E[(XᵀX)⁻¹] = I/(i − d − 1));
    * noisy, d − 1 ≤ i ≤ d + 1: ``math.inf`` (the variance term diverges: the double-descent peak).
    """
    t2 = _check_closed(d, i, noise_var, w_scale)
    if noise_var == 0:
        return t2 * max(d - i, 0)
    if i <= d - 2:
        return t2 * (d - i) + noise_var + noise_var * i / (d - i - 1)
    if i >= d + 2:
        return noise_var + noise_var * d / (i - d - 1)
    return math.inf
