# temporary: GPU validation + timings (deleted after the run)
import time, torch, dsf
from kernels.delta import fused_recurrent_delta, delta_step
import kernels.delta.recurrent as R
dev = "cuda"

def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm()).item()

def case(mixer, B, T, H, K, V, dtype=torch.float32, C=64, cu=None):
    d = dsf.random_inputs(mixer, B=B, T=T, H=H, K=K, V=V, seed=1)
    g = torch.Generator().manual_seed(2)
    N = B if cu is None else len(cu) - 1
    S0 = torch.randn(N, H, K, V, generator=g, dtype=torch.float64)
    do = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
    dht = torch.randn(N, H, K, V, generator=g, dtype=torch.float64)
    for n in "qkv":
        d[n] = d[n].to(dtype).double()
    # reference
    L = {n: t.clone().requires_grad_() for n, t in d.items()}
    h0 = S0.clone().requires_grad_()
    bnd = [i * T for i in range(B + 1)] if cu is None else cu
    outs, sts = [], []
    for n in range(N):
        a, b = bnd[n], bnd[n + 1]
        bi, a2, b2 = (n, a - n * T, b - n * T) if cu is None else (0, a, b)
        if a == b:
            sts.append(h0[n:n+1]); continue
        o_n, S_n = dsf.recurrent(mixer, **{k: t[bi:bi+1, a2:b2] for k, t in L.items()}, initial_state=h0[n:n+1], scale=1.0)
        outs.append(o_n); sts.append(S_n)
    o_r = torch.cat(outs, 1).reshape(B, T, H, V) if cu is None else torch.cat(outs, 1)
    S_r = torch.cat(sts, 0)
    gr = torch.autograd.grad((o_r * do).sum() + (S_r * dht).sum(), list(L.values()) + [h0])
    x = {n: t.to(dev, dtype if n in "qkv" else torch.float32).requires_grad_() for n, t in d.items()}
    hk = S0.float().to(dev).requires_grad_()
    cut = None if cu is None else torch.tensor(cu, device=dev, dtype=torch.int32)
    o, S = fused_recurrent_delta(x["q"], x["k"], x["v"], x["beta"], x.get("g"), hk, True, cut, checkpoint_interval=C)
    torch.autograd.backward([o, S], [do.to(dev, dtype), dht.float().to(dev)])
    errs = dict(o=rel(o, o_r), S=rel(S, S_r))
    for n, gg in zip(list(L) + ["h0"], gr):
        errs["d" + n] = rel((x[n] if n != "h0" else hk).grad, gg)
    print(mixer, (B, T, H, K, V), dtype, "C", C, "cu", cu, " ".join(f"{k}={v:.1e}" for k, v in errs.items()), flush=True)

case("gated_deltanet", 2, 200, 2, 128, 128)
case("deltanet", 2, 130, 2, 128, 128, C=32)
case("gated_deltanet", 1, 100, 2, 256, 256)
case("gated_deltanet", 2, 77, 2, 100, 72, C=16)
case("gated_deltanet", 1, 70, 2, 64, 64, dtype=torch.bfloat16)
case("deltanet", 1, 70, 2, 16, 16, dtype=torch.float16)
case("gated_deltanet", 1, 150, 2, 128, 128, cu=[0, 5, 5, 70, 150], C=32)

def bench(fn, n=5):
    fn(); torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n): fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e3

for (B, T, H, K, V) in [(8, 4096, 16, 128, 128), (4, 4096, 8, 256, 256), (1, 32768, 16, 128, 128)]:
    dt = torch.bfloat16
    q = torch.randn(B, T, H, K, device=dev, dtype=dt) * K ** -0.5
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K, device=dev), dim=-1).to(dt)
    v = torch.randn(B, T, H, V, device=dev, dtype=dt)
    beta = torch.rand(B, T, H, device=dev).sigmoid()
    gg = torch.nn.functional.logsigmoid(torch.randn(B, T, H, device=dev) + 2)
    with torch.no_grad():
        tf = bench(lambda: fused_recurrent_delta(q, k, v, beta, gg))
    ps = [t.clone().requires_grad_() for t in (q, k, v, beta, gg)]
    do = torch.randn_like(v)
    def fb():
        o, _ = fused_recurrent_delta(*ps)
        o.backward(do)
    torch.cuda.reset_peak_memory_stats()
    tfb = bench(fb, 3)
    print(f"B{B} T{T} H{H} K{K} V{V} bf16: fwd {tf:.1f} ms, fwd+bwd {tfb:.1f} ms, peak {torch.cuda.max_memory_allocated()/2**30:.2f} GiB", flush=True)

B, H, K, V = 64, 16, 128, 128
st = torch.zeros(B, H, K, V, device=dev)
a = [torch.randn(B, H, K, device=dev, dtype=torch.bfloat16), torch.nn.functional.normalize(torch.randn(B, H, K, device=dev), dim=-1).to(torch.bfloat16),
     torch.randn(B, H, V, device=dev, dtype=torch.bfloat16), torch.rand(B, H, device=dev), -torch.rand(B, H, device=dev)]
print(f"delta_step B{B} H{H} K{K} V{V}: {bench(lambda: delta_step(st, *a), 50)*1e3:.1f} us", flush=True)
