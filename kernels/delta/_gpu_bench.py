# temporary: GPU variant sweep (deleted after the run)
import time, torch, triton, triton.language as tl
import kernels.delta.recurrent as R
dev = "cuda"

@triton.jit
def fwd1(q, k, v, beta, g, o, h0, ht, ckpt, bounds, ck_off, C,
         H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
         USE_G: tl.constexpr, USE_H0: tl.constexpr, STORE_HT: tl.constexpr, SAVE_CKPT: tl.constexpr):
    i_nh = tl.program_id(0).to(tl.int64)
    i_v = tl.program_id(1).to(tl.int64)
    i_n = i_nh // H
    i_h = i_nh % H
    bos = tl.load(bounds + i_n).to(tl.int64)
    eos = tl.load(bounds + i_n + 1).to(tl.int64)
    L = eos - bos
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    p_q = q + (bos * H + i_h) * K + o_k
    p_k = k + (bos * H + i_h) * K + o_k
    p_v = v + (bos * H + i_h) * V + o_v
    p_o = o + (bos * H + i_h) * V + o_v
    p_b = beta + bos * H + i_h
    p_g = g + bos * H + i_h
    b_S = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_S += tl.load(h0 + i_nh * K * V + o_kv, mask=m_kv, other=0.).to(tl.float32)
    if SAVE_CKPT:
        p_c = ckpt + (tl.load(ck_off + i_n).to(tl.int64) * H + i_h) * K * V + o_kv
    for i in range(0, L):
        if SAVE_CKPT:
            if i % C == 0:
                tl.store(p_c, b_S, mask=m_kv)
                p_c += H * K * V
        b_q = tl.load(p_q, mask=m_k, other=0.).to(tl.float32)
        b_k = tl.load(p_k, mask=m_k, other=0.).to(tl.float32)
        b_v = tl.load(p_v, mask=m_v, other=0.).to(tl.float32)
        b_beta = tl.load(p_b).to(tl.float32)
        if USE_G:
            b_S = b_S * tl.exp(tl.load(p_g).to(tl.float32))
        b_u = tl.sum(b_S * b_k[:, None], 0)
        b_vn = b_beta * (b_v - b_u)
        b_S = b_S + b_k[:, None] * b_vn[None, :]
        b_o = tl.sum(b_S * b_q[:, None], 0)
        tl.store(p_o, b_o.to(p_o.dtype.element_ty), mask=m_v)
        p_q += H * K
        p_k += H * K
        p_v += H * V
        p_o += H * V
        p_b += H
        p_g += H
    if STORE_HT:
        tl.store(ht + i_nh * K * V + o_kv, b_S, mask=m_kv)

def bench(fn, n=5):
    fn(); torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n): fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e3

B, T, H, K, V = 8, 4096, 16, 128, 128
dt = torch.bfloat16
q = torch.randn(B, T, H, K, device=dev, dtype=dt) * K ** -0.5
k = torch.nn.functional.normalize(torch.randn(B, T, H, K, device=dev), dim=-1).to(dt)
v = torch.randn(B, T, H, V, device=dev, dtype=dt)
beta = torch.rand(B, T, H, device=dev).sigmoid()
gg = torch.nn.functional.logsigmoid(torch.randn(B, T, H, device=dev) + 2)
bounds = R.seq_bounds(None, B, T, dev)
N = B
ck_off, n_ck = R._ck_offsets(bounds, 64)
ckpt = torch.empty(n_ck, H, K, V, device=dev)
o = torch.empty_like(v)
ref = None
for kern_name, kern in [("nested", R._fwd_kernel), ("single", fwd1)]:
    for save, BVs, nws in ((False, (8, 16, 32), (1, 2)), (True, (16,), (1,))):
        for BV in BVs:
            for nw in nws:
                for ns in (3,):
                    f = lambda: kern[(N * H, V // BV)](q, k, v, beta, gg, o, q, q, ckpt, bounds, ck_off, 64, H=H, K=K, V=V, BK=128, BV=BV,
                                                      USE_G=True, USE_H0=False, STORE_HT=False, SAVE_CKPT=save, num_warps=nw, num_stages=ns)
                    t = bench(f)
                    if ref is None: ref = o.clone()
                    err = (o.float() - ref.float()).abs().max().item()
                    print(f"fwd {kern_name} save={save} BV={BV} nw={nw} ns={ns}: {t:.2f} ms err {err:.1e}", flush=True)

# backward sweep
do = torch.randn_like(v)
R._fwd_kernel[(N * H, V // 16)](q, k, v, beta, gg, o, q, q, ckpt, bounds, ck_off, 64, H=H, K=K, V=V, BK=128, BV=16,
                               USE_G=True, USE_H0=False, STORE_HT=False, SAVE_CKPT=True, num_warps=1)
for BV in (16, 32):
    for nw in (2, 4, 8):
        NV = V // BV
        scratch = torch.empty(N * H * NV * 64, 128, BV, device=dev)
        dq = torch.empty(NV, B, T, H, K, device=dev); dk = torch.empty_like(dq); dv = torch.empty_like(v)
        db = torch.empty(NV, B, T, H, device=dev); dgg = torch.empty_like(db)
        f = lambda: R._bwd_kernel[(N * H, NV)](q, k, v, beta, gg, do, do, ckpt, scratch, bounds, ck_off, 64, B * T, dq, dk, dv, db, dgg, dq,
                                              H=H, K=K, V=V, BK=128, BV=BV, NV=NV, USE_G=True, USE_DHT=False, STORE_DH0=False, num_warps=nw)
        try:
            t = bench(f, 3)
            print(f"bwd BV={BV} nw={nw}: {t:.2f} ms  dq-sum {dq.sum(0).float().norm().item():.4e}", flush=True)
        except Exception as e:
            print(f"bwd BV={BV} nw={nw}: failed {type(e).__name__} {str(e)[:200]}", flush=True)

# step sweep
B, H = 64, 16
st = torch.randn(B, H, K, V, device=dev)
a = [torch.randn(B, H, K, device=dev, dtype=dt), torch.nn.functional.normalize(torch.randn(B, H, K, device=dev), dim=-1).to(dt),
     torch.randn(B, H, V, device=dev, dtype=dt), torch.rand(B, H, device=dev), -torch.rand(B, H, device=dev)]
ob = torch.empty(B, H, V, device=dev, dtype=dt)
sb = torch.arange(B + 1, device=dev)
for BV in (16, 32, 64, 128):
    for nw in (2, 4, 8):
        f = lambda: R._fwd_kernel[(B * H, V // BV)](a[0], a[1], a[2], a[3], a[4], ob, st, st, a[0], sb, sb, 1, H=H, K=K, V=V, BK=128, BV=BV,
                                                    USE_G=True, USE_H0=True, STORE_HT=True, SAVE_CKPT=False, num_warps=nw)
        print(f"step kernel BV={BV} nw={nw}: {bench(f, 50)*1e3:.1f} us", flush=True)
print(f"step full call: {bench(lambda: R.delta_step(st, *a), 50)*1e3:.1f} us")
