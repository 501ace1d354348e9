"""One linear self-attention layer learns one step of gradient descent, in context.

von Oswald et al. 2023 (ICML), Ahn et al. 2023, Zhang, Frei & Bartlett 2024 (JMLR 25(49)).
A prompt of N examples and one query is the matrix of tokens (``models.icl.stack_tokens``)

    Z = [z_1 … z_N z_q] ∈ R^{(d+1)×(N+1)},   z_i = [x_i; y_i],   z_q = [x_q; 0],

and one LSA layer with a residual, whose keys are the N examples only, maps it to

    f(Z) = Z + W_PV · (1/N) Σ_i z_i z_iᵀ · W_KQ · Z        (W_PV, W_KQ ∈ R^{(d+1)×(d+1)}).

The prediction is the y-slot of the query column:  ŷ_q = (W_PV)_{d,:} · (1/N) Σ_i z_i z_iᵀ W_KQ z_q.
Only the last row of W_PV (the value row v) and the first d columns of W_KQ reach it. With
v = [0; v_y] and W_KQ = [A; bᵀ] (A = the d×d x-block), b = 0, it is ŷ_q = (1/N) Σ_i y_i x_iᵀ Γ x_q
with Γ = v_y A, i.e. one GD step from w = 0 with step η = Γ/N. For x, w ~ N(0, I) the best step
is η* = 1/(N+d+1+σ²) (``models.icl.gd_optimal_eta``), so training should find Γ = N η* I and the
risk ``gd_optimal_risk`` = d + σ² − Nd/(N+d+1+σ²).
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from models.icl import gd_optimal_eta, gd_optimal_risk, sample_regression, stack_tokens

__all__ = ["LinearSelfAttention", "run", "plot", "main"]


class LinearSelfAttention(nn.Module):
    """One linear self-attention head with the query's y-slot as output (see the module docstring).

    Args:
        d: input dimension; tokens have d + 1 entries.
        init_std: the entries of W_KQ and W_PV start as N(0, init_std²).
        generator: random stream for the initialisation.
    """

    def __init__(self, d: int, init_std: float = 0.1, generator: torch.Generator | None = None):
        super().__init__()
        self.d = d

        def init():            # init_std = 0 gives zeros without touching any random stream
            w = torch.zeros(d + 1, d + 1)
            return w.normal_(0.0, init_std, generator=generator) if init_std > 0 else w
        self.w_kq = nn.Parameter(init())
        self.w_pv = nn.Parameter(init())

    @classmethod
    def gd_step(cls, d: int, n_points: int, eta: float) -> "LinearSelfAttention":
        """von Oswald et al.'s construction of one GD step with step η: v = e_y, W_KQ = [Nη I; 0]."""
        model = cls(d, init_std=0.0)
        with torch.no_grad():
            model.w_pv[-1, -1] = 1.0
            model.w_kq[:d, :d] = n_points * eta * torch.eye(d)
        return model

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens [B, N+1, d+1] (examples, then the query [x_q; 0]) -> ŷ_q [B]."""
        ctx, zq = tokens[:, :-1], tokens[:, -1]
        moment = ctx.transpose(1, 2) @ ctx / ctx.shape[1]            # (1/N) Σ z_i z_iᵀ  [B, d+1, d+1]
        attended = moment @ (zq @ self.w_kq.T).unsqueeze(-1)         # (1/N) Σ z_i z_iᵀ W_KQ z_q
        return attended.squeeze(-1) @ self.w_pv[-1]                  # value row · …  -> [B]

    def gamma(self) -> Tensor:
        """Γ = v_y · A: the value row's y-entry times W_KQ's x-block, [d, d] (GD: Γ = N η I)."""
        return (self.w_pv[-1, -1] * self.w_kq[: self.d, : self.d]).detach()


def _risk(predict, tokens: Tensor, y_q: Tensor) -> float:
    with torch.no_grad():
        return (predict(tokens) - y_q).double().square().mean().item()


def run(d: int = 5, n_points: int = 20, noise_std: float = 0.0, steps: int = 3000,
        batch: int = 512, lr: float = 1e-2, seed: int = 0, out: str | Path | None = None,
        eval_prompts: int = 20_000, init_std: float = 0.1) -> dict:
    """Train the LSA with Adam on fresh prompts (x, w ~ N(0, I)), then test it against one GD step.

    Args:
        d, n_points: input dimension and number of in-context examples N (each prompt also has a query).
        noise_std: σ; the query's y is noisy too, so the risk includes σ².
        steps, batch, lr: Adam steps, prompts per step, peak learning rate (cosine decay to lr/100).
        seed: seeds the initialisation, the training prompts and (offset) the test prompts.
        out: if given, write ``lsa_gd.csv`` and ``lsa_gd.png`` into this folder.
        eval_prompts: fresh test prompts.
        init_std: scale of the random initial weights.

    Returns:
        dict with the settings, ``risk`` (test MSE), ``oracle_risk`` (closed form), ``gd_risk_mc``
        (one GD step at η* on the same test prompts), ``risk_rel_err``, ``eta_star``,
        ``gamma_target`` = N η*, ``gamma_diag_mean``, ``gamma_offdiag_max`` (|·|), ``gamma_rel_err``
        (‖Γ − Nη*I‖_F / ‖Nη*I‖_F), ``train_seconds``, ``loss`` (per step) and ``gamma`` [d, d].
    """
    for name, value in dict(d=d, n_points=n_points, steps=steps, batch=batch, eval_prompts=eval_prompts).items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)       # the tensors are tiny: on 2 busy cores 2 threads ran 3x slower than 1
    try:
        return _run(d, n_points, noise_std, steps, batch, lr, seed, out, eval_prompts, init_std)
    finally:
        torch.set_num_threads(threads)


def _run(d, n_points, noise_std, steps, batch, lr, seed, out, eval_prompts, init_std) -> dict:
    gen = torch.Generator().manual_seed(seed)
    model = LinearSelfAttention(d, init_std=init_std, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(     # cosine from lr to lr/100: the tail averages out noise
        opt, lambda t: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t / steps)))
    losses = []
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y, _w = sample_regression(batch, n_points + 1, d, noise_std=noise_std, generator=gen)
        loss = (model(stack_tokens(x, y)) - y[:, -1]).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    train_seconds = time.perf_counter() - t0

    test_gen = torch.Generator().manual_seed(seed + 1_000_003)
    x, y, _w = sample_regression(eval_prompts, n_points + 1, d, noise_std=noise_std, generator=test_gen)
    tokens, y_q = stack_tokens(x, y), y[:, -1]
    eta = gd_optimal_eta(d, n_points, noise_std ** 2)
    gd = LinearSelfAttention.gd_step(d, n_points, eta)
    oracle = gd_optimal_risk(d, n_points, noise_std ** 2)
    risk = _risk(model, tokens, y_q)

    gamma = model.gamma()
    target = n_points * eta
    off = gamma - torch.diag(torch.diagonal(gamma))
    result = dict(
        d=d, n_points=n_points, noise_std=noise_std, steps=steps, batch=batch, lr=lr, seed=seed,
        risk=risk, oracle_risk=oracle, gd_risk_mc=_risk(gd, tokens, y_q),
        risk_rel_err=abs(risk - oracle) / oracle, zero_risk=d + noise_std ** 2,
        eta_star=eta, gamma_target=target,
        gamma_diag_mean=torch.diagonal(gamma).mean().item(),
        gamma_offdiag_max=off.abs().max().item() if d > 1 else 0.0,
        gamma_rel_err=((gamma - target * torch.eye(d)).norm() / (target * math.sqrt(d))).item(),
        train_seconds=train_seconds, loss=losses, gamma=gamma,
    )
    if out is not None:
        _write(result, Path(out))
    return result


_METRICS = ("risk", "oracle_risk", "gd_risk_mc", "risk_rel_err", "zero_risk", "eta_star",
            "gamma_target", "gamma_diag_mean", "gamma_offdiag_max", "gamma_rel_err", "train_seconds")


def plot(result: dict):
    """Figure: training loss (running mean) with the oracle risk, and a heatmap of the learned Γ."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4), layout="constrained")
    ax, hx = fig.subplots(1, 2, width_ratios=[1.5, 1])
    loss = torch.tensor(result["loss"])
    w = 50 if len(loss) > 100 else 1
    smooth = loss.unfold(0, w, 1).mean(-1).numpy()
    loss = loss.numpy()
    ax.plot(range(1, len(loss) + 1), loss, color="0.8", lw=0.6, label="train loss (batch)")
    ax.plot(range(w, len(loss) + 1), smooth, color="C0", label=f"running mean ({w} steps)")
    ax.axhline(result["oracle_risk"], color="C3", ls="--", label=f"one GD step at η* ({result['oracle_risk']:.3f})")
    ax.axhline(result["zero_risk"], color="0.4", ls=":", label=f"predict 0 ({result['zero_risk']:.2f})")
    ax.set(xlabel="Adam step", ylabel="squared error", ylim=(0, 1.3 * result["zero_risk"]),
           title=f"test risk {result['risk']:.4f}  (d={result['d']}, N={result['n_points']}, σ={result['noise_std']})")
    ax.legend(fontsize=8)
    g, t = torch.as_tensor(result["gamma"]).numpy(), result["gamma_target"]
    im = hx.imshow(g, cmap="RdBu_r", vmin=-t, vmax=t)
    fig.colorbar(im, ax=hx, shrink=0.85)
    hx.set_title(f"learned Γ = v_y·A   (Nη* = {t:.3f})")
    d = len(g)
    hx.set_xticks(range(d), [f"x{j + 1}" for j in range(d)])
    hx.set_yticks(range(d), [f"x{j + 1}" for j in range(d)])
    if d <= 8:
        for (i, j), v in zip(((i, j) for i in range(d) for j in range(d)), g.flatten().tolist()):
            hx.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if abs(v) > 0.5 * t else "black")
    return fig


def _write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "lsa_gd.csv", "w", newline="") as f:     # long format: one (step, metric, value) a row
        rows = csv.writer(f)
        rows.writerow(["step", "metric", "value"])
        rows.writerows((i + 1, "train_loss", f"{v:.6g}") for i, v in enumerate(result["loss"]))
        rows.writerows((result["steps"], k, f"{result[k]:.6g}") for k in _METRICS)
    plot(result).savefig(out / "lsa_gd.png", dpi=120)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m models.experiments.lsa_gd", description=__doc__.split("\n")[0])
    p.add_argument("--d", type=int, default=5)
    p.add_argument("--n-points", type=int, default=20, help="in-context examples N")
    p.add_argument("--noise-std", type=float, default=0.0)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="folder for lsa_gd.csv and lsa_gd.png")
    a = p.parse_args(argv)
    if not a.lr > 0:
        p.error(f"--lr must be > 0, got {a.lr}")
    try:
        r = run(a.d, a.n_points, a.noise_std, a.steps, a.batch, a.lr, a.seed, a.out)
    except ValueError as err:   # a bad size, as a usage error rather than a traceback
        p.error(str(err))
    print(f"test risk {r['risk']:.4f}  one-GD-step oracle {r['oracle_risk']:.4f} "
          f"(rel. err {r['risk_rel_err']:.2%}; same prompts {r['gd_risk_mc']:.4f}; predict-0 {r['zero_risk']:.2f})")
    print(f"Γ: mean diagonal {r['gamma_diag_mean']:.4f} vs Nη* = {r['gamma_target']:.4f}, "
          f"max |off-diagonal| {r['gamma_offdiag_max']:.4f}, rel. err {r['gamma_rel_err']:.2%}")
    print(f"trained {r['steps']} steps in {r['train_seconds']:.1f} s" + (f"; wrote {a.out}" if a.out else ""))
    return r


if __name__ == "__main__":
    main()
