import os, sys, torch, dsf, kernels
DEV = os.environ.get("DEV", "cuda")
import kernels.diag as dg, kernels.diag.chunk as dc, kernels.delta.chunk as dl
from dsf.testing import rel_err, prefix_state
dl.UNEQUAL_IN_FP32 = False
name, K, V, T, sw = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[5]), sys.argv[6]
dt = getattr(torch, sys.argv[4])
exec(sw)
opts = {"feature_map": "elu1", "normalize": True} if name == "linear_attention" else {}
spec = dsf.zoo.get(name, **opts)
B, H = globals().get("B_H", (2, 2))
x = spec.random_inputs(B, T, H, K, V, dtype=torch.float64, device=DEV, seed=T)
S0 = prefix_state(spec, x, 5, 1)
lr = {n: t.clone().requires_grad_() for n, t in x.items()}; s0r = S0.clone().requires_grad_()
o_r, S_r = dsf.recurrent(spec, initial_state=s0r, **lr)
lk = {n: t.to(dt if n in ("q", "k", "v") else torch.float32).requires_grad_() for n, t in x.items()}
s0k = S0.float().requires_grad_()
o, S = kernels.compile(spec).chunked(initial_state=s0k, output_final_state=True, **lk)
(torch.cuda.synchronize() if DEV == "cuda" else None)
g = torch.Generator(device=DEV).manual_seed(0)
R1 = torch.randn(o_r.shape, generator=g, device=DEV, dtype=torch.float64)
R2 = torch.randn(S_r.shape, generator=g, device=DEV, dtype=torch.float64)
gr = torch.autograd.grad((o_r * R1).sum() + (S_r * R2).sum(), list(lr.values()) + [s0r])
gk = torch.autograd.grad((o.double() * R1).sum() + (S.double() * R2).sum(), list(lk.values()) + [s0k])
(torch.cuda.synchronize() if DEV == "cuda" else None)
e = {"o": rel_err(o.double(), o_r), "S": rel_err(S.double(), S_r)}
e.update({"d" + n: rel_err(a.double(), b) for n, a, b in zip(list(lk) + ["h0"], gk, gr)})
bad = [n for n, v in e.items() if not v < 3e-2]
print(" ".join(f"{n}={v:.0e}" for n, v in e.items()), "BAD:" + ",".join(bad) if bad else "ok")
