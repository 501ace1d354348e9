# TEMPORARY GPU benchmark (deleted after use)
import torch, triton, traceback
import torch.nn.functional as F
from kernels.softmax import flash_attention, flash_decode
dev = "cuda"; dt = torch.bfloat16
B, T, H, D = 8, 4096, 16, 128
q, k, v = [torch.randn(B, T, H, D, device=dev, dtype=dt, requires_grad=True) for _ in range(3)]
do = torch.randn(B, T, H, D, device=dev, dtype=dt)
flops = 4 * B * H * T * T * D / 2  # causal
def bench(name, fn, fl):
    try:
        ms = triton.testing.do_bench(fn, warmup=25, rep=100)
        print(f"{name}: {ms:.3f} ms  {fl / ms / 1e9:.0f} TFLOP/s", flush=True)
    except Exception: traceback.print_exc()
bench("ours fwd", lambda: flash_attention(q, k, v), flops)
o = flash_attention(q, k, v)
bench("ours bwd", lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True), 2.5 * flops)
qt, kt, vt = [x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v)]
bench("sdpa fwd", lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True), flops)
ot = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
dot = do.transpose(1, 2).contiguous()
bench("sdpa bwd", lambda: torch.autograd.grad(ot, (qt, kt, vt), dot, retain_graph=True), 2.5 * flops)
print("max |ours - sdpa| fwd:", (o.detach() - ot.detach().transpose(1, 2)).abs().max().item())
for W in (256, 1024):
    fw = 4 * B * H * T * W * D
    bench(f"ours fwd window={W} sinks=4", lambda: flash_attention(q, k, v, window=W, sink_tokens=4), fw)
    ow = flash_attention(q, k, v, window=W, sink_tokens=4)
    bench(f"ours bwd window={W}", lambda: torch.autograd.grad(ow, (q, k, v), do, retain_graph=True), 2.5 * fw)
cu = torch.arange(0, B * T + 1, T, device=dev)
bench("ours fwd varlen", lambda: flash_attention(q.reshape(1, B * T, H, D), k.reshape(1, B * T, H, D), v.reshape(1, B * T, H, D), cu_seqlens=cu), flops)
Bd, L = 32, 4096
qd, kc, vc = torch.randn(Bd, 1, H, D, device=dev, dtype=dt), torch.randn(Bd, L, H, D, device=dev, dtype=dt), torch.randn(Bd, L, H, D, device=dev, dtype=dt)
ms = triton.testing.do_bench(lambda: flash_decode(qd, kc, vc), warmup=25, rep=100)
print(f"decode B={Bd} L={L}: {ms:.3f} ms, {2 * kc.numel() * 2 / ms / 1e9:.0f} GB/s", flush=True)
