"""Time the bf16 delta rule with K ≠ V: the fp32 fallback against zero-padding to the wider dim.

python kernels/results/runs/2026-12-05c_unequal_time.py  (H200; B·T = 32768, H = 16, T = 4096)
"""
import torch, triton
import kernels.delta.chunk as dl
from kernels.delta import chunk_delta

B, T, H = 8, 4096, 16
for K, V in ((128, 64), (64, 128), (128, 96)):
    for gated in (False, True):
        g0 = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(B, T, H, K, device="cuda", generator=g0).bfloat16()
        k = torch.nn.functional.normalize(torch.randn(B, T, H, K, device="cuda", generator=g0), dim=-1).bfloat16()
        v = torch.randn(B, T, H, V, device="cuda", generator=g0).bfloat16()
        beta = torch.rand(B, T, H, device="cuda", generator=g0)
        g = -0.1 * torch.rand(B, T, H, device="cuda", generator=g0) if gated else None
        leaves = [t.requires_grad_() for t in (q, k, v, beta) + ((g,) if gated else ())]
        do = torch.randn(B, T, H, V, device="cuda", generator=g0).bfloat16()
        row = []
        outs = {}
        for mode in ("fp32", "pad", "equal-dims reference (K = V = max)"):
            if mode.startswith("equal"):
                W = max(K, V)
                qq, kk = [torch.nn.functional.pad(x.detach(), (0, W - K)).requires_grad_() for x in (q, k)]
                vv = torch.nn.functional.pad(v.detach(), (0, W - V)).requires_grad_()
                args = [qq, kk, vv, beta, g]
                gl = [qq, kk, vv]
            else:
                dl.UNEQUAL_PAD, dl.UNEQUAL_IN_FP32 = mode == "pad", mode == "fp32"
                args = [q, k, v, beta, g]
                gl = leaves

            def fwd():
                with torch.no_grad():
                    return chunk_delta(*args, scale=K ** -0.5)

            def fb():
                o, _ = chunk_delta(*args, scale=K ** -0.5)
                torch.autograd.grad(o, gl, torch.nn.functional.pad(do, (0, o.shape[-1] - V)))
            tf = triton.testing.do_bench(fwd, warmup=25, rep=200)
            tb = triton.testing.do_bench(fb, warmup=25, rep=200)
            if not mode.startswith("equal"):
                outs[mode] = fwd()[0].float()
            row.append(f"{mode}: fwd {tf:.3f} ms, fwd+bwd {tb:.3f} ms")
        d = (outs["pad"] - outs["fp32"]).norm() / outs["fp32"].norm()
        print(f"K={K} V={V} {'gated' if gated else 'delta'}: " + "; ".join(row) + f"; |pad-fp32|/|fp32| {d:.1e}",
              flush=True)
dl.UNEQUAL_PAD, dl.UNEQUAL_IN_FP32 = False, True
