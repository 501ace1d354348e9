"""The chunked delta rule (chunks of 64 and 16) against the float64 recurrence at small head dims, fp32
under the interpreter: the worst relative error over output, final state and every gradient (the
initial state's included), B = 1, T = 130, H = 1, K = V.

    PYTHONPATH=. python kernels/results/runs/2026-12-05e_small_k.py
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import dsf  # noqa: E402
from dsf.testing import grads, prefix_state, random_case, rel_err, requires_grad  # noqa: E402
from kernels.delta import chunk_delta  # noqa: E402

for name in ("deltanet", "gated_deltanet"):
    for K in (1, 2, 4, 8):
        for seed in (1, 2):
            spec, inp = random_case(name, {}, 1, 130, 1, K, K, seed)
            S0 = prefix_state(spec, inp, 3, seed)
            x64, s64 = requires_grad(inp), requires_grad(S0)
            o_ref, S_ref = dsf.recurrent(spec, initial_state=s64, **x64)
            g_ref = grads([o_ref, S_ref], list(x64.values()) + [s64], 1)
            for chunk in (64, 16):
                x = requires_grad({n: t.float() for n, t in inp.items()})
                s0 = requires_grad(S0.float())
                o, S = chunk_delta(x["q"], x["k"], x["v"], x["beta"], g=x.get("g"), scale=K ** -0.5,
                                   initial_state=s0, output_final_state=True, chunk_size=chunk)
                g = grads([o, S], list(x.values()) + [s0], 1)
                errs = [rel_err(o, o_ref), rel_err(S, S_ref)] + [rel_err(a, b) for a, b in zip(g, g_ref)]
                print(f"{name:15s} K={K} seed={seed} chunk={chunk:2d} worst {max(errs):.1e}", flush=True)
