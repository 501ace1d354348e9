# TEMPORARY GPU smoke check (deleted after use)
import time, traceback, itertools, torch, dsf
import torch.nn.functional as F
from kernels.softmax import flash_attention, flash_decode
dev = "cuda"
def rel(a, b): return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()
def ref(q, k, v, **kw):
    return dsf.recurrent("softmax_attention", q=q, k=k, v=v, **kw)[0]
def check(T, K, V, dtype, kw, lens=None, B=2, H=3):
    torch.manual_seed(0)
    if lens is not None: B, T = 1, sum(lens)
    q, k, v = [torch.randn(B, T, H, d, device=dev, dtype=dtype, requires_grad=True) for d in (K, K, V)]
    do = torch.randn(B, T, H, V, device=dev, dtype=dtype)
    cu = None if lens is None else torch.tensor([0] + list(itertools.accumulate(lens)), device=dev)
    o = flash_attention(q, k, v, cu_seqlens=cu, **kw); g = torch.autograd.grad(o, (q, k, v), do)
    segs = [(0, T)] if lens is None else list(zip(cu[:-1].tolist(), cu[1:].tolist()))
    outs = [[] for _ in range(4)]; refs = [[] for _ in range(4)]
    for a, b in segs:
        if a == b: continue
        xd = [x[:, a:b].detach().double().requires_grad_() for x in (q, k, v)]
        r = ref(*xd, **kw); gr = torch.autograd.grad(r, xd, do[:, a:b].double())
        for i, (x, y) in enumerate(zip((o,) + g, (r,) + gr)):
            outs[i].append(x[:, a:b].reshape(-1)); refs[i].append(y.reshape(-1))
    e = [rel(torch.cat(x), torch.cat(y)) for x, y in zip(outs, refs)]
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    print(f"{'OK ' if max(e) < tol else 'BAD'} T={T} K={K} V={V} {dtype} {kw} lens={lens} err={['%.1e' % x for x in e]}", flush=True)
cases = [(1, 16, 16, {}), (7, 16, 32, {}), (300, 128, 128, {}), (257, 80, 48, dict(window=37, sink_tokens=5)),
         (200, 256, 256, dict(window=64)), (130, 64, 64, dict(window=1, sink_tokens=70)), (190, 32, 200, {})]
for dt in (torch.float32, torch.bfloat16, torch.float16):
    for T, K, V, kw in cases:
        try: check(T, K, V, dt, kw)
        except Exception: traceback.print_exc()
    try: check(0, 128, 128, dt, dict(window=50, sink_tokens=4), lens=[0, 1, 129, 0, 250, 64])
    except Exception: traceback.print_exc()
# decode
for dt in (torch.float32, torch.bfloat16):
  try:
    B, L, H, K, V = 4, 333, 4, 128, 64
    q, kc, vc = torch.randn(B, 1, H, K, device=dev, dtype=dt), torch.randn(B, L, H, K, device=dev, dtype=dt), torch.randn(B, L, H, V, device=dev, dtype=dt)
    lens = torch.tensor([333, 1, 200, 64], device=dev)
    for kw in ({}, dict(window=50, sink_tokens=3)):
        o = flash_decode(q, kc, vc, cache_seqlens=lens, **kw); es = []
        for b in range(B):
            n = lens[b].item(); qq = torch.zeros(1, n, H, K, device=dev, dtype=torch.float64); qq[:, -1] = q[b, 0]
            r = ref(qq, kc[b:b+1, :n].double(), vc[b:b+1, :n].double(), **kw)[:, -1]
            es.append(rel(o[b:b+1, 0], r))
        print("decode", dt, kw, ["%.1e" % e for e in es], flush=True)
  except Exception: traceback.print_exc()
