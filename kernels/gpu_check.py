"""GPU correctness check of every compiled mixer at realistic shapes, in fp32, bf16 and fp16.

    python -m kernels.gpu_check [--out DIR] [--quick] [--only NAME,...] [--dtypes ...] [--set MODULE.NAME=VALUE]

Each kernel form (chunked, recurrent) runs on the GPU with a random initial state, odd T and a
varlen batch; its output, final state and gradients (every input and the initial state) are compared
with the float64 dsf chunked form by relative error ‖out − ref‖ / ‖ref‖. Outputs are poisoned with NaN
first. The chunked kernels also run twice at the benchmark's shape and must repeat bit for bit.
Writes a Markdown table and exits 1 if a tolerance is missed.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import os
import sys
import time

import torch

import dsf
import kernels
from dsf.testing import flat_tensors, prefix_state, rel_err
from kernels.bench import switches

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}
GRAD_TOL = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}
# what --only takes besides mixer names (groups of rows), and the mixers of the one-pass rows (fused:NAME)
ONLY_GROUPS = ("chunk_key", "chunk_scalar", "chunk_delta", "titans", "fused", "repeat", "step", "varlen", "unequal")
FUSED_MIXERS = ("mamba2", "linear_attention", "deltanet", "gated_deltanet", "gla")
MIXERS = [("mamba2", {}), ("retnet", {}), ("linear_attention", {"feature_map": "elu1", "normalize": True}),
          ("gla", {}), ("s6", {}), ("qlstm", {"reversed": True}), ("deltanet", {}),
          ("gated_deltanet", {}), ("longhorn", {}), ("ttt_linear", {}), ("softmax_attention", {}),
          ("softmax_attention", {"window": 100, "sink_tokens": 4})]
# the K ≠ V rows' mixers: the above, and Titans' linear memory (its K = V rows have their own section)
UNEQUAL_MIXERS = MIXERS + [("titans", {"memory": "linear"})]


def _poison():
    def nan_empty(*shape, **kw):
        out = torch.empty(*shape, **kw)
        if out.is_floating_point():
            out.fill_(float("nan"))
        return out

    for name in ("kernels.diag.recurrent", "kernels.diag.chunk", "kernels.delta.recurrent",
                 "kernels.memory.chunk", "kernels.memory.recurrent", "kernels.delta.chunk"):
        importlib.import_module(name)._empty = nan_empty
    # the softmax kernels' hook (it was missed here: softmax.flash has no _empty of its own)
    importlib.import_module("kernels.softmax._utils")._alloc = lambda shape, dtype, device: nan_empty(
        *shape, dtype=dtype, device=device)


def _leaves(d):
    return {k: v.detach().clone().requires_grad_(True) for k, v in d.items()}


def _kernel_leaves(x: dict, dtype, **side) -> dict:
    """The kernels' inputs from the float64 ones: q, k, v in ``dtype``, each ``side`` input (β, gk) in
    the dtype given for it, the rest (gates, initial state) in fp32."""
    return _leaves({n: t.to(dtype if n in ("q", "k", "v") else side.get(n, torch.float32)) for n, t in x.items()})


def _state_leaves(S):
    if isinstance(S, torch.Tensor):
        return S.detach().clone().requires_grad_(True)
    return None  # softmax: the KV cache is not an input of the kernels


def _forward_errs(run, kin, o, S, o_ref, S_ref):
    """Output and state errors of a forward with autograd (o, S) and of ``run(**inputs)`` again on
    detached inputs without it (which may take other kernels: the one pass), and once more without
    a final state (``final=False``: segments may then leave the last one's state unmade), the worst."""
    with torch.no_grad():
        detached = {n: t.detach() for n, t in kin.items()}
        o1, S1 = run(**detached)
        o2, _ = run(**detached, final=False)
    return {"o": max(rel_err(o.double(), o_ref), rel_err(o1.double(), o_ref), rel_err(o2.double(), o_ref)),
            "state": max(rel_err(S.double(), S_ref), rel_err(S1.double(), S_ref))}


def _grads(o, S, leaves, seed):
    """Gradients of ⟨o, R⟩ + ⟨S, R'⟩ for fixed random R, R' (S: a tensor, a list of them, or None)."""
    g = torch.Generator(device=o.device).manual_seed(seed)
    loss = (o.double() * torch.randn(o.shape, generator=g, device=o.device, dtype=torch.float64)).sum()
    for s in [S] if isinstance(S, torch.Tensor) else (S or []):
        loss = loss + (s.double() * torch.randn(s.shape, generator=g, device=o.device,
                                                 dtype=torch.float64)).sum()
    out = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [torch.zeros_like(x) if d is None else d for d, x in zip(out, leaves)]


def check(name, opts, dtype, form, B, T, H, K, V, seed=0, device="cuda", channels=16):
    """One row: the worst relative errors of output, state and gradients (a channel mixer, whose every
    value channel is a head of its own, at ``channels`` channels a head whatever V)."""
    spec = dsf.zoo.get(name, **opts)
    kv = channels if spec.phi_layout == "channel" else V
    inp = spec.random_inputs(B, T, H, K, kv, dtype=torch.float64, device=device, seed=seed)
    # every mixer but softmax attention, whose state is a KV cache (Aaren's, on the softmax family, is finite)
    stateful = kernels.supports(spec)["family"] != "softmax" or spec.name == "aaren"
    S0 = prefix_state(spec, inp, 5, seed) if stateful else None
    # the state as a list of tensors, each an input and an output checked: one, or a memory's weights
    # then momenta (a dsf.MemoryState)
    if isinstance(S0, dsf.MemoryState):
        n_w = len(S0.weights)
        parts, labels = [*S0.weights, *S0.momentum], [f"initial_state.weights[{i}]" for i in range(n_w)] + [
            f"initial_state.momentum[{i}]" for i in range(len(S0.momentum))]
        wrap = lambda ts: dsf.MemoryState(tuple(ts[:n_w]), tuple(ts[n_w:]))  # noqa: E731
        unwrap = lambda S: [*S.weights, *S.momentum]  # noqa: E731
    elif isinstance(S0, dsf.AarenState):   # (running max, denominator, numerator: each checked)
        parts, labels = list(S0), [f"initial_state.{f}" for f in S0._fields]
        wrap = lambda ts: dsf.AarenState(*ts)  # noqa: E731
        unwrap = list
    else:
        parts, labels = ([S0], ["initial_state"]) if stateful else ([], [])
        wrap = lambda ts: ts[0] if ts else None  # noqa: E731
        unwrap = lambda S: [S] if stateful else []  # noqa: E731
    ref_in = _leaves(inp)
    S0_ref = [_state_leaves(t) for t in parts]
    o_ref, S_ref = dsf.chunked(spec, chunk_size=64, initial_state=wrap(S0_ref), **ref_in)
    leaves = _leaves({k: v.to(dtype) for k, v in inp.items()})
    S0_k = [_state_leaves(t.float()) for t in parts]
    fn = getattr(kernels.compile(spec), form)
    o, S = fn(initial_state=wrap(S0_k), output_final_state=stateful, **leaves)
    S_ref, S = unwrap(S_ref), unwrap(S)
    errs = {"o": rel_err(o.double(), o_ref)}
    if stateful:
        if len(S) != len(S_ref):
            raise AssertionError(f"the final state has {len(S)} tensors, the reference's {len(S_ref)}")
        errs["state"] = max(rel_err(a.double(), b) for a, b in zip(S, S_ref))
    ref_list = list(ref_in.values()) + S0_ref
    k_list = list(leaves.values()) + S0_k
    g_ref = _grads(o_ref, S_ref, ref_list, seed)
    g_k = _grads(o, S, k_list, seed)
    names = list(leaves) + labels
    errs["grad"] = max(rel_err(a.double(), b) for a, b in zip(g_k, g_ref))
    errs["worst_grad"] = names[max(range(len(names)), key=lambda i: rel_err(g_k[i].double(), g_ref[i]))]
    ok = errs["o"] < TOL[dtype] and errs.get("state", 0) < TOL[dtype] and errs["grad"] < GRAD_TOL[dtype]
    return errs, ok


def check_varlen(name, dtype, H, K, V, device="cuda"):
    """Packed sequences (an empty and a 1-token one included) equal separate runs."""
    spec = dsf.zoo.get(name)
    cu = torch.tensor([0, 1, 1, 300, 1000], device=device)
    inp = spec.random_inputs(1, 1000, H, K, V, dtype=torch.float64, device=device, seed=1)
    m = kernels.compile(spec)
    o, S = m.chunked(cu_seqlens=cu, output_final_state=True, **{k: v.to(dtype) for k, v in inp.items()})
    worst = 0.0
    cache = isinstance(S, list)   # softmax attention: one KV cache per sequence
    for n in range(4):
        a, b = cu[n].item(), cu[n + 1].item()
        if a == b:
            # an empty sequence keeps a zero state (an empty cache)
            worst = max(worst, S[n].k.numel() + S[n].seen if cache else S[n].abs().max().item())
            continue
        part = {k: (v[:, a:b] if v.dim() >= 3 and v.shape[1] == 1000 else v) for k, v in inp.items()}
        o_ref, S_ref = dsf.chunked(spec, **part)
        if cache:
            same = torch.equal(S[n].pos.cpu(), S_ref.pos.cpu()) and S[n].seen == S_ref.seen
            err_S = max(rel_err(S[n].k.double(), S_ref.k), rel_err(S[n].v.double(), S_ref.v)) if same else float("inf")
        else:
            err_S = rel_err(S[n:n + 1].double(), S_ref)
        worst = max(worst, rel_err(o[:, a:b].double(), o_ref), err_S)
    return worst, worst < TOL[dtype]


SCALAR_SHAPES = [(2, 2048, 4, 128, 128, "gla"), (2, 2048, 4, 128, 128, "strong"), (8, 512, 16, 128, 128, "bursts"),
                 (1, 1000, 2, 256, 256, "gla"), (1, 777, 2, 100, 72, "bursts")]
# (K, V) of the unequal-head-dims rows (B = 2, T = 200, H = 2): every row above has K = V, where 16-bit
# runs of the scalar and delta families once passed while K ≠ V gave a wrong dV or an illegal access
UNEQUAL_DIMS = [(40, 24), (24, 40), (128, 64)]
KEY_SHAPES = [(2, 2048, 4, 128, 128, "gla"), (2, 2048, 4, 128, 128, "bursts"), (2, 2048, 4, 128, 128, "strong"),
              (1, 1000, 2, 256, 256, "gla"), (1, 777, 2, 100, 72, "bursts")]


def check_key_chunk(dtype, B, T, H, K, V, regime, seed=0, decay="key", gate_dtype=torch.float32):
    """chunk_diag(decay="key"), the chunked GLA kernel, vs the float64 dsf chunked form; with
    ``decay="scalar"`` the scalar one (Mamba-2's), a log decay per head and step.

    Regimes: "gla" (logsigmoid(x)/16), "bursts" (mild, with resets of −20 at 5% of the steps),
    "strong" (−5 … −20 every step); q, k, v in ``dtype``, the gates in ``gate_dtype`` (fp32 as in fla's
    tests; a layer's projection under autocast makes them 16-bit, as the benchmark draws them).
    """
    from dsf.forms.chunked import chunked_linear
    from kernels.diag import chunk_diag

    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device="cuda", dtype=torch.float64)  # noqa: E731
    u = lambda *s: torch.rand(*s, generator=g, device="cuda", dtype=torch.float64)  # noqa: E731
    logsig = torch.nn.functional.logsigmoid
    gs = (B, T, H, K) if decay == "key" else (B, T, H)
    gk = {"gla": lambda: logsig(r(*gs)) / 16,
          "bursts": lambda: torch.where(u(*gs[:3], *((1,) if decay == "key" else ())) < 0.05, -20 + u(*gs),
                                        logsig(r(*gs)) / 16),
          "strong": lambda: -5 - 15 * u(*gs)}[regime]()
    x = {"q": r(B, T, H, K) * K ** -0.5, "k": torch.nn.functional.normalize(r(B, T, H, K), dim=-1),
         "v": r(B, T, H, V), "gk": gk, "S0": r(B, H, K, V)}
    ref = _leaves(x)
    o_ref, S_ref = chunked_linear(dsf.LinearTerms(q=ref["q"], k=ref["k"], u=ref["v"], decay=decay, g=ref["gk"]),
                                  ref["S0"], chunk_size=64)
    kin = _kernel_leaves(x, dtype, gk=gate_dtype)

    def run(q, k, v, gk, S0, final=True):
        return chunk_diag(q, k, v, decay, gk, initial_state=S0, output_final_state=final)
    o, S = run(**kin)
    errs = _forward_errs(run, kin, o, S, o_ref, S_ref)
    g_ref = _grads(o_ref, S_ref, list(ref.values()), seed)
    g_k = _grads(o, S, list(kin.values()), seed)
    gerr = [rel_err(a.double(), b) for a, b in zip(g_k, g_ref)]
    names = ["q", "k", "v", "gk" if decay == "key" else "g", "initial_state"]
    errs["grad"], errs["worst_grad"] = max(gerr), names[max(range(len(names)), key=gerr.__getitem__)]
    ok = errs["o"] < TOL[dtype] and errs["state"] < TOL[dtype] and errs["grad"] < GRAD_TOL[dtype]
    return errs, ok


# B, T, H, K, V, mixer, chunk size, gate regime ("mild": logsigmoid(N(4, 1)), "strong": −5 … −20)
DELTA_SHAPES = [(2, 2048, 4, 128, 128, "gated_deltanet", 64, "mild"), (2, 2048, 4, 128, 128, "deltanet", 64, "mild"),
                (2, 2048, 4, 128, 128, "gated_deltanet", 64, "strong"),
                (1, 1000, 2, 256, 256, "gated_deltanet", 64, "mild"),
                (1, 777, 2, 100, 72, "gated_deltanet", 32, "mild"), (2, 1000, 4, 64, 64, "deltanet", 16, "mild")]


def check_delta_chunk(dtype, B, T, H, K, V, mixer, cs, regime, half_operands=True, seed=0,
                      beta_dtype=torch.float32):
    """chunk_delta, the chunked WY/UT kernel, vs the float64 dsf chunked form (scale K^-0.5).

    ``half_operands=False`` runs the products that mix fp32 quantities with bf16 inputs in tf32 (fp16
    always does). β in ``beta_dtype`` (the gates fp32).
    """
    import kernels.delta.chunk as dc

    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device="cuda", dtype=torch.float64)  # noqa: E731
    u = lambda *s: torch.rand(*s, generator=g, device="cuda", dtype=torch.float64)  # noqa: E731
    x = {"q": r(B, T, H, K), "k": torch.nn.functional.normalize(r(B, T, H, K), dim=-1), "v": r(B, T, H, V),
         "beta": u(B, T, H)}
    if mixer == "gated_deltanet":
        x["g"] = (torch.nn.functional.logsigmoid(4 + r(B, T, H)) if regime == "mild" else -5 - 15 * u(B, T, H))
    x["S0"] = r(B, H, K, V) * 0.1
    ref = _leaves(x)
    S0_ref = ref.pop("S0")
    o_ref, S_ref = dsf.chunked(mixer, chunk_size=64, initial_state=S0_ref, **ref)
    kin = _kernel_leaves(x, dtype, beta=beta_dtype)
    old, dc.HALF_OPERANDS = dc.HALF_OPERANDS, half_operands
    try:

        def run(q, k, v, beta, S0, g=None, final=True):
            return dc.chunk_delta(q, k, v, beta, g, initial_state=S0, output_final_state=final, chunk_size=cs)
        o, S = run(**kin)
        errs = _forward_errs(run, kin, o, S, o_ref, S_ref)
        names = list(kin)
        g_k = _grads(o, S, list(kin.values()), seed)
    finally:
        dc.HALF_OPERANDS = old
    g_ref = _grads(o_ref, S_ref, list(ref.values()) + [S0_ref], seed)
    gerr = [rel_err(a.double(), b) for a, b in zip(g_k, g_ref)]
    errs["grad"], errs["worst_grad"] = max(gerr), names[max(range(len(names)), key=gerr.__getitem__)]
    ok = errs["o"] < TOL[dtype] and errs["state"] < TOL[dtype] and errs["grad"] < GRAD_TOL[dtype]
    return errs, ok


REPEAT_MIXERS = ("mamba2", "gla", "deltanet", "gated_deltanet", "softmax_attention")


def check_repeat(name, dtype, B, T, H, K, V, seed=0, grad=True):
    """The chunked kernels run twice on the same inputs: output, final state and every gradient must
    be bitwise identical (a kernel reading memory it has not yet written, or racing inside a
    program, shows up here first). ``grad=False``: the forward without autograd, output and state.
    Returns (number of differing tensors, their largest relative difference, which)."""
    spec = dsf.zoo.get(name)
    inp = spec.random_inputs(B, T, H, K, V, dtype=dtype, device="cuda", seed=seed)
    stateful = kernels.supports(spec)["family"] != "softmax"
    m = kernels.compile(spec)
    runs = []
    for _ in range(2):
        leaves = _leaves(inp) if grad else inp
        with torch.set_grad_enabled(grad):
            o, S = m.chunked(output_final_state=stateful, **leaves)
        grads = _grads(o, S if stateful else None, list(leaves.values()), seed) if grad else []
        runs.append(dict(zip(["o"] + (["state"] if stateful else []) + list(leaves),
                             [o] + ([S] if stateful else []) + grads)))
    diff = {n: rel_err(runs[1][n].double(), runs[0][n].double()) for n in runs[0]
            if not torch.equal(runs[0][n], runs[1][n])}
    worst = max(diff, key=diff.get) if diff else ""
    return len(diff), diff.get(worst, 0.0), worst


def check_memory(dtype, form, B, T, H, K, V, seed=0):
    """Titans' linear memory (state: memory S and momentum Z) against the float64 dsf chunked form:
    ``check`` with its options (both tensors of the state checked and differentiated)."""
    return check("titans", {"memory": "linear"}, dtype, form, B, T, H, K, V, seed)


def check_memory_varlen(dtype, H, K, V):
    """Titans' linear memory: packed sequences (an empty and a 1-token one included) = separate runs."""
    spec = dsf.zoo.get("titans", memory="linear")
    cu = torch.tensor([0, 1, 1, 300, 1000], device="cuda")
    inp = spec.random_inputs(1, 1000, H, K, V, dtype=torch.float64, device="cuda", seed=1)
    o, S = kernels.compile(spec).chunked(cu_seqlens=cu, output_final_state=True,
                                         **{k: v.to(dtype) for k, v in inp.items()})
    worst = 0.0
    for n in range(4):
        a, b = cu[n].item(), cu[n + 1].item()
        if a == b:  # an empty sequence keeps a zero state
            worst = max(worst, S.weights[0][n].abs().max().item(), S.momentum[0][n].abs().max().item())
            continue
        o_ref, S_ref = dsf.chunked(spec, **{k: v[:, a:b] for k, v in inp.items()})
        worst = max(worst, rel_err(o[:, a:b].double(), o_ref),
                    rel_err(S.weights[0][n:n + 1].double(), S_ref.weights[0]),
                    rel_err(S.momentum[0][n:n + 1].double(), S_ref.momentum[0]))
    return worst, worst < TOL[dtype]


STEP_MIXERS = (("mamba2", {}), ("gla", {}), ("deltanet", {}), ("gated_deltanet", {}), ("retnet", {}),
                ("linear_attention", {"feature_map": "elu1", "normalize": True}),
                ("softmax_attention", {}))


def check_step(name, opts, dtype, B, T0, T, H, K, V, seed=0, device="cuda"):
    """compile().step over T tokens after a prefix of T0 (its state from the chunked kernel; updated in
    place for a tensor state) against the float64 recurrence over all T0 + T tokens."""
    spec = dsf.zoo.get(name, **opts)
    inp = spec.random_inputs(B, T0 + T, H, K, V, dtype=torch.float64, device=device, seed=seed)
    o_ref, S_ref = dsf.recurrent(spec, **inp)
    m = kernels.compile(spec)
    timed = {i.name for i in spec.inputs if "T" in i.dims}
    low = {n: x.to(dtype) for n, x in inp.items()}
    with torch.no_grad():
        _, state = m.chunked(output_final_state=True, **{n: x[:, :T0] if n in timed else x
                                                          for n, x in low.items()})
        # a tensor state, or a memory's MemoryState of tensors, is updated in place
        tensor_state = isinstance(state, (torch.Tensor, dsf.MemoryState))
        if isinstance(state, torch.Tensor):
            state = state.float().contiguous()
        elif tensor_state:
            state = dsf.MemoryState(*(tuple(t.float().contiguous() for t in ts) for ts in state))
        outs = []
        for t in range(T0, T0 + T):
            o, new = m.step(state, inplace=tensor_state, **{n: x[:, t] if n in timed else x
                                                            for n, x in low.items()})
            if tensor_state and new is not state:
                raise AssertionError("step(inplace=True) returned a new state")
            state = new
            outs.append(o)
    errs = {"o": rel_err(torch.stack(outs, 1).double(), o_ref[:, T0:])}
    if tensor_state:
        if len(flat_tensors(state)) != len(flat_tensors(S_ref)):
            raise AssertionError("the stepped state and the reference hold different numbers of tensors")
        errs["state"] = max(rel_err(a.double(), b) for a, b in zip(flat_tensors(state), flat_tensors(S_ref)))
    return errs, all(e < TOL[dtype] for e in errs.values())


def _row(lines: list[str], head: str, run, pad: int) -> bool:
    """One table row: ``run()`` gives (cells, ok); a raised error becomes the row instead. The row is
    appended to ``lines`` and printed with the seconds it took; returns ok."""
    t0 = time.time()
    try:
        cells, ok = run()
        row = f"{head} {cells} | {'yes' if ok else '**NO**'} |"
    except Exception as e:  # noqa: BLE001 - a failing kernel is a row, not a crash
        # the message's first line only: a newline inside would break the markdown table
        msg = str(e).strip().split("\n", 1)[0][:120].replace("|", "\\|")
        ok, row = False, f"{head} error: {type(e).__name__}: {msg} " + "|" * pad
    lines.append(row)
    print(row, f"({time.time() - t0:.1f}s)", flush=True)
    return ok


def _errs(errs: dict) -> str:
    """The cells o | state | worst grad | (which) of a forward-and-gradient check."""
    state = f"{errs['state']:.1e}" if "state" in errs else "—"   # (softmax attention's KV cache: not compared)
    return (f"{errs['o']:.1e} | {state} | {errs['grad']:.1e} "
            f"| {errs['worst_grad']}")


def _cells(check_fn, *args):
    """A ``_row`` runner for a check that returns (errs, ok)."""
    def run():
        errs, ok = check_fn(*args)
        return _errs(errs), ok
    return run


def _with_repeat(check_fn, repeat_fn, *changes):
    """A ``_row`` runner for the one-pass rows: a check's cells and how many tensors differ when the
    run is repeated, both with the module switches ``changes`` ((module, name, value)) set."""
    def run():
        with switches(list(changes)):
            errs, ok = check_fn()
            n_diff = repeat_fn()
        return f"{_errs(errs)} | {n_diff} differ", ok and n_diff == 0
    return run


def _side_dtypes() -> list[tuple[torch.dtype, torch.dtype]]:
    """(inputs' dtype, dtype of a side input: β, key-wise gates) of rows that run both ways: the side
    input in fp32 (as fla's tests pass it) and, for 16-bit inputs, in the inputs' dtype too (as a
    layer's projections make it and the benchmark draws it)."""
    return [(d, g) for d in _pick(torch.float32, torch.bfloat16, torch.float16)
            for g in ((torch.float32,) if d == torch.float32 else (torch.float32, d))]


def _side_label(name: str, dt: torch.dtype) -> str:
    """A row's label for a side input's dtype (none for fp32): ", β in bfloat16"."""
    return "" if dt == torch.float32 else f", {name} in {str(dt)[6:]}"


def _wu_rows(lines: list[str], mixer: str, dt, bdt, rep) -> int:
    """The delta rule's one-pass rows that make W and U in the scan (WU_IN_SCAN, no autograd; a program
    per SM): whole sequences (8 × 16 sequence-heads, 64-wide value tiles); over segments
    (SEGMENTS_WU_IN_SCAN; 2 × 4 sequence-heads) with the transitions' scan using W, then forming
    Pn = −T diag(β e^G) K P without it (TRANS_FROM_KS); and, where 64-wide tiles would leave SMs idle, the
    forward-only pass's narrower ones (VN_NARROW, at the GPU's SM count: 2 × 16 sequence-heads, the
    benchmark's 16K, 32-wide tiles, 128 programs on the H200; repeated at 4 × 16, its 8K: DeltaNet 64-wide,
    one program an SM, Gated DeltaNet 32-wide). β in ``bdt``. Returns the failures."""
    import kernels.delta.chunk as dlt

    seg_wu = ((dlt, "WU_IN_SCAN", True), (dlt, "SEGMENTS", True), (dlt, "FUSED_MIN_PROGRAMS", 10 ** 4),
              (dlt, "SEGMENTS_WU_IN_SCAN", True))
    narrow = ((dlt, "WU_IN_SCAN", True), (dlt, "VN_FROM_KS", True), (dlt, "VN_NARROW", True),
              (dlt, "FUSED_MIN_PROGRAMS", None))
    modes = (("one pass, W/U in the scan", (8, 512, 16), rep, ((dlt, "WU_IN_SCAN", True),)),
             ("segments, W/U in the scans", (2, 4096, 4), rep, (*seg_wu, (dlt, "TRANS_FROM_KS", False))),
             ("segments, transitions from K P", (2, 4096, 4), rep, (*seg_wu, (dlt, "TRANS_FROM_KS", True))),
             ("one pass, narrow tiles, Vn from K S", (2, 4096, 16), (4, 8192, 16, 128, 128), narrow))
    failed = 0
    for mode, (B, T, H), rep_shape, changes in modes:
        failed += not _row(lines, f"| {mixer} | {mode}{_side_label('β', bdt)} | {str(dt)[6:]} |", _with_repeat(
            lambda B=B, T=T, H=H: check_delta_chunk(dt, B, T, H, 128, 128, mixer, 64, "mild", beta_dtype=bdt),
            lambda rep_shape=rep_shape: check_repeat(mixer, dt, *rep_shape, grad=False)[0], *changes), 6)
    return failed


DTYPES = {torch.float32, torch.bfloat16, torch.float16}   # narrowed by --dtypes


def _pick(*dtypes):
    """The dtypes of a section that --dtypes selects."""
    return tuple(d for d in dtypes if d in DTYPES)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kernels.gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated mixer names to check (default: all); "
                    "also chunk_key, chunk_scalar, chunk_delta, titans, fused (the one-pass forwards; fused:NAME "
                    "for one mixer's, fused:NAME/MODE for one mode of it: pass, segments, wu or pieces), repeat (every "
                    "mixer's repeat check), step (every mixer's decode-step check), varlen (every "
                    "mixer's packed-sequences check) and unequal (every mixer with K ≠ V; unequal:NAME for one "
                    "mixer's)")
    ap.add_argument("--dtypes", default="float32,bfloat16,float16",
                    help="comma-separated dtypes to check (default all three)")
    from kernels.sweep import add_set_option, settings_of

    add_set_option(ap, "check", "kernels.diag.chunk.SEGMENT_DECAY_IN_SCAN=False")
    args = ap.parse_args(argv)
    known = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    unknown = [d for d in args.dtypes.split(",") if d not in known]
    if unknown:
        ap.error(f"--dtypes: unknown {', '.join(unknown)} (choose from {', '.join(known)})")
    only = set(filter(None, args.only.split(",")))
    # a name that selects nothing would report "0 failing rows" having checked nothing
    known_only = sorted({n for n, _ in MIXERS} | set(ONLY_GROUPS))
    for n in only:
        if not n.startswith(("fused:", "unequal:")) and n not in known_only:
            ap.error(f"--only: unknown {n!r}; choose from {', '.join(known_only)}, fused:NAME[/MODE] or "
                     "unequal:NAME")
    # unequal:NAME: the K ≠ V rows of one mixer (all of them run some 200 rows)
    unequal_only = {n.split(":", 1)[1] for n in only if n.startswith("unequal:")}
    for name in sorted(unequal_only - {m for m, _ in UNEQUAL_MIXERS}):
        ap.error(f"--only unequal:{name}: the name after 'unequal:' is one of "
                 f"{', '.join(sorted({m for m, _ in UNEQUAL_MIXERS}))}; got {name!r}")
    # fused:NAME, or fused:NAME/MODE (pass, segments, wu): the fused rows of one mixer, or of one mode
    fused_only: dict[str, set[str]] = {}
    for n in only:
        if n.startswith("fused:"):
            name, _, mode = n.split(":", 1)[1].partition("/")
            if name not in FUSED_MIXERS:
                ap.error(f"--only {n}: the name after 'fused:' is one of {', '.join(FUSED_MIXERS)}; got {name!r}")
            if mode and mode not in ("pass", "segments", "wu", "pieces"):
                ap.error(f"--only {n}: the mode after '/' is one of pass, segments, wu, pieces; got {mode!r}")
            fused_only.setdefault(name, set()).update([mode] if mode else [])

    settings = settings_of(ap, args)
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU (the kernels are checked there; under TRITON_INTERPRET=1 on the CPU, "
                 "python -m kernels.check runs the same comparisons)")
    with switches(settings):
        return _run(args, {known[d] for d in args.dtypes.split(",")}, only, fused_only, unequal_only)


def _run(args, dtypes: set, only: set[str], fused_only: dict[str, set[str]], unequal_only: set[str] = frozenset()
         ) -> int:
    """The checks main() selected, with its --set switches in force."""
    def fused_want(name: str, mode: str) -> bool:
        return not fused_only or (name in fused_only and (not fused_only[name] or mode in fused_only[name]))

    global DTYPES
    DTYPES = dtypes
    _poison()
    B, T, H, K, V = (1, 130, 2, 32, 32) if args.quick else (2, 1000, 4, 64, 64)
    lines = [f"# GPU check: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
             f"triton {importlib.import_module('triton').__version__}",
             f"B={B}, T={T}, H={H}, K=V={K} (channel mixers: 16 channels a head); relative errors vs the "
             "float64 dsf chunked form" + (f"; switches set: {', '.join(args.set)}" if args.set else ""), "",
             "| mixer | options | form | dtype | o | state | worst grad | (which) | ok |",
             "|---|---|---|---|---|---|---|---|---|"]
    failed = 0
    want = lambda name: not only or name in only  # noqa: E731
    for name, opts in MIXERS:
        if not want(name):
            continue
        info = kernels.supports(dsf.zoo.get(name, **opts))
        for form in ("chunked", "recurrent"):
            for dtype in _pick(torch.float32, torch.bfloat16, torch.float16):
                head = (f"| {name} | {opts or ''} | {form} ({info[form] if form == 'chunked' else 'fused'}) "
                        f"| {str(dtype)[6:]} |")
                failed += not _row(lines, head, _cells(check, name, opts, dtype, form, B, T, H, K, V), 5)
    if want("unequal") or unequal_only:  # every mixer with K ≠ V (non-power-of-two and wider-than-value keys)
        lines += ["", "| K ≠ V (B=2, T=200, H=2) | options | form | K, V | dtype | o | state | worst grad | (which) "
                  "| ok |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, opts in UNEQUAL_MIXERS:
            if unequal_only and name not in unequal_only:
                continue
            for (uK, uV), form in itertools.product(UNEQUAL_DIMS[:1] if args.quick else UNEQUAL_DIMS,
                                                    ("chunked", "recurrent")):
                # (a channel mixer runs 16 channels a head whatever V is given, as check() does)
                shown_v = 16 if dsf.zoo.get(name, **opts).phi_layout == "channel" else uV
                for dtype in _pick(torch.float32, torch.bfloat16, torch.float16):
                    head = f"| {name} | {opts or ''} | {form} | {uK}, {shown_v} | {str(dtype)[6:]} |"
                    failed += not _row(lines, head, _cells(check, name, opts, dtype, form, 2, 200, 2, uK, uV), 5)
    for form in ("chunked", "recurrent") if want("titans") else ():  # Titans' linear memory: (S, Z)
        for dtype in _pick(torch.float32, torch.bfloat16, torch.float16):
            head = (f"| titans | {{'memory': 'linear'}} | {form} ({'chunk' if form == 'chunked' else 'fused'}) "
                    f"| {str(dtype)[6:]} |")
            failed += not _row(lines, head, _cells(check_memory, dtype, form, B, T, H, K, V), 5)
    if want("chunk_key"):  # the chunked key-wise kernel alone, at GLA's head dims and strong decays
        lines += ["", "| chunk_diag(decay='key') B, T, H, K, V | decays | dtype | o | state | worst grad | (which) "
                  "| ok |", "|---|---|---|---|---|---|---|---|"]
        for kB, kT, kH, kK, kV, regime in [(1, 130, 2, 32, 32, "bursts")] if args.quick else KEY_SHAPES:
            for dtype, gdt in _side_dtypes():
                head = f"| {kB}, {kT}, {kH}, {kK}, {kV} | {regime}{_side_label('gates', gdt)} | {str(dtype)[6:]} |"
                failed += not _row(lines, head, _cells(lambda *a, gdt=gdt: check_key_chunk(*a, gate_dtype=gdt),
                                                       dtype, kB, kT, kH, kK, kV, regime), 5)
    if want("chunk_scalar"):  # the scalar kernel alone at the benchmark's head dims, by its default rule:
        # 8 sequence-heads: segments (with and without autograd); 256: two passes before a backward, one
        # pass without (the forward run again without autograd)
        lines += ["", "| chunk_diag(decay='scalar') B, T, H, K, V | decays | dtype | o | state | worst grad "
                  "| (which) | ok |", "|---|---|---|---|---|---|---|---|"]
        shapes = [(1, 130, 2, 32, 32, "bursts")] if args.quick else SCALAR_SHAPES
        for sB, sT, sH, sK, sV, regime in shapes:
            for dtype in _pick(torch.float32, torch.bfloat16, torch.float16):
                head = f"| {sB}, {sT}, {sH}, {sK}, {sV} | {regime} | {str(dtype)[6:]} |"
                failed += not _row(lines, head, _cells(lambda *a: check_key_chunk(*a, decay="scalar"), dtype, sB,
                                                       sT, sH, sK, sV, regime), 5)
    if want("chunk_delta"):  # the chunked WY/UT delta kernel alone, at realistic head dims and gates
        lines += ["", "| chunk_delta B, T, H, K, V | mixer | C | gates | operands | dtype | o | state | worst grad "
                  "| (which) | ok |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        shapes = [(1, 130, 2, 32, 32, "gated_deltanet", 64, "mild")] if args.quick else DELTA_SHAPES
        for dB, dT, dH, dK, dV, mixer, cs, regime in shapes:
            for dtype, half in ((d, h) for d, h in ((torch.float32, True), (torch.bfloat16, True),
                                                    (torch.bfloat16, False), (torch.float16, True))
                                if d in DTYPES):
                ops = ("fp32" if dtype == torch.float32 else "bf16" if dtype == torch.bfloat16 and half
                       else "fp32 (tf32)")
                head = f"| {dB}, {dT}, {dH}, {dK}, {dV} | {mixer} | {cs} | {regime} | {ops} | {str(dtype)[6:]} |"
                failed += not _row(lines, head, _cells(check_delta_chunk, dtype, dB, dT, dH, dK, dV, mixer, cs,
                                                       regime, half), 5)
    if want("fused") or fused_only:  # the one-pass forwards, forced on (they are off by default)
        import kernels.delta.chunk as dlt
        import kernels.diag.chunk as dc

        lines += ["", "| one-pass forward (FUSED_FORWARD) | mode | dtype | o | state | worst grad | (which) "
                  "| repeats | ok |", "|---|---|---|---|---|---|---|---|---|"]
        # the rows below set FUSED_MIN_PROGRAMS and SEGMENTS themselves; all back to the modules' after
        with switches([(dc, "FUSED_FORWARD", True), (dlt, "FUSED_FORWARD", True),
                       (dc, "FUSED_MIN_PROGRAMS", dc.FUSED_MIN_PROGRAMS),
                       (dlt, "FUSED_MIN_PROGRAMS", dlt.FUSED_MIN_PROGRAMS), (dlt, "SEGMENTS", dlt.SEGMENTS)]):
            rep = (1, 130, 2, 32, 32) if args.quick else (8, 4096, 16, 128, 128)   # the repeats' shape
            for name, opts, least in (("mamba2", {}, 1), ("mamba2", {}, 10 ** 4),
                                      ("linear_attention", {"feature_map": "elu1", "normalize": True}, 1),
                                      ("deltanet", {}, 1), ("gated_deltanet", {}, 1),
                                      ("deltanet", {}, 10 ** 4), ("gated_deltanet", {}, 10 ** 4)):
                if not fused_want(name, "pass" if least == 1 else "segments"):
                    continue
                # least = 1: one pass per sequence; 10⁴: sequences cut into segments (the delta rule's
                # with its SEGMENTS on: transitions and a chain over the segments)
                dc.FUSED_MIN_PROGRAMS = dlt.FUSED_MIN_PROGRAMS = least
                dlt.SEGMENTS = least > 1
                mode = "one pass" if least == 1 else "segments"
                for dt in _pick(torch.float32, torch.bfloat16, torch.float16):
                    # (the delta repeat at this shape runs one pass only where it has a program per SM)
                    failed += not _row(lines, f"| {name} | {mode} | {str(dt)[6:]} |", _with_repeat(
                        lambda name=name, opts=opts, dt=dt: check(name, opts, dt, "chunked", B, T, H, K, V),
                        lambda name=name, opts=opts, dt=dt: check_repeat(name, dt, *rep)[0] if not opts else 0), 6)
            # W and U inside the one pass (WU_IN_SCAN, no autograd), where it runs: a program per SM
            # (8 × 16 sequence-heads, 64-wide value tiles), not the few-program scan's 16-wide tiles
            dc.FUSED_MIN_PROGRAMS = dlt.FUSED_MIN_PROGRAMS = 1
            dlt.SEGMENTS = False
            for mixer in ("deltanet", "gated_deltanet"):
                if not fused_want(mixer, "wu"):
                    continue
                # each mode with β in fp32 (as the chunk_delta rows) and, for 16-bit inputs, in the
                # inputs' dtype too, as a layer's sigmoid makes it and the benchmark passes it
                for dt, bdt in _side_dtypes():
                    failed += _wu_rows(lines, mixer, dt, bdt, rep)
            # GLA's one pass: forwards without autograd
            for least, regime in itertools.product((1, 10 ** 4), ("gla", "bursts", "strong")):
                if fused_want("gla", "pass" if least == 1 else "segments"):
                    dc.FUSED_MIN_PROGRAMS = least
                    mode = "one pass" if least == 1 else "segments"
                    for dtype, gdt in _side_dtypes():
                        head = f"| gla ({regime}{_side_label('gates', gdt)}) | {mode} | {str(dtype)[6:]} |"
                        failed += not _row(lines, head, _with_repeat(
                            lambda dtype=dtype, regime=regime, gdt=gdt: check_key_chunk(
                                dtype, 2, 2048, 4, 128, 128, regime, gate_dtype=gdt),
                            lambda dtype=dtype: check_repeat("gla", dtype, *rep, grad=False)[0]), 6)
            # the segments' states from zero by pieces of 3 chunks (SEGMENT_STATE_CHUNKS): two segments a
            # sequence by the band rule (programs within a quarter of FUSED_MIN_PROGRAMS: 8 of 10 for
            # Mamba-2's B·H, 16 of 20 for GLA's 2 × 4 × 2 value tiles), of 8 and 16 chunks, so pieces of
            # 3, 3, 2 and 3, …, 1; Mamba-2 with gradients, GLA's forward
            for name, least in (("mamba2", 10), ("gla", 20)):
                if not fused_want(name, "pieces"):
                    continue
                for dt in _pick(torch.float32, torch.bfloat16, torch.float16):
                    fn = ((lambda dt=dt: check("mamba2", {}, dt, "chunked", B, T, H, K, V)) if name == "mamba2"
                          else (lambda dt=dt: check_key_chunk(dt, 2, 2048, 4, 128, 128, "gla")))

                    def run(fn=fn, least=least):
                        with switches([(dc, "FUSED_MIN_PROGRAMS", least), (dc, "SEGMENT_STATE_CHUNKS", 3)]):
                            errs, ok = fn()
                        return f"{_errs(errs)} | not repeated", ok
                    failed += not _row(lines, f"| {name} | segments, states by pieces | {str(dt)[6:]} |", run, 6)
    rB, rT, rH, rK = (1, 130, 2, 32) if args.quick else (8, 4096, 16, 128)   # the benchmark's shape at 4K
    lines += ["", f"| repeated (B={rB}, T={rT}, H={rH}, K=V={rK}) | dtype | tensors that differ | largest "
              "difference | (which) | ok |", "|---|---|---|---|---|---|"]
    for name in REPEAT_MIXERS:
        for dtype in _pick(torch.float32, torch.bfloat16, torch.float16) if want(name) or "repeat" in only else ():
            def repeat(name=name, dtype=dtype):
                n, worst, which = check_repeat(name, dtype, rB, rT, rH, rK, rK)
                return f"{n} | {worst:.1e} | {which}", n == 0
            failed += not _row(lines, f"| {name} | {str(dtype)[6:]} |", repeat, 4)
    sB, sT0, sT = (2, 9, 3) if args.quick else (64, 100, 8)
    lines += ["", f"| decode step (compile().step, B={sB}, {sT} tokens after {sT0}, H={H}, K=V={K}) | options "
              "| dtype | o | state | ok |", "|---|---|---|---|---|---|"]
    for name, opts in STEP_MIXERS:
        for dtype in _pick(torch.float32, torch.bfloat16, torch.float16) if want(name) or "step" in only else ():
            def step(name=name, opts=opts, dtype=dtype):
                e, ok = check_step(name, opts, dtype, sB, sT0, sT, H, K, V)
                return f"{e['o']:.1e} | {e['state']:.1e}" if "state" in e else f"{e['o']:.1e} | —", ok
            failed += not _row(lines, f"| {name} | {opts or ''} | {str(dtype)[6:]} |", step, 3)
    lines += ["", "| varlen (cu_seqlens [0, 1, 1, 300, 1000]) | dtype | worst error | ok |", "|---|---|---|---|"]
    for name in ("mamba2", "gla", "deltanet", "gated_deltanet", "softmax_attention"):
        for dtype in _pick(torch.float32, torch.bfloat16) if want(name) or "varlen" in only else ():
            def varlen(name=name, dtype=dtype):
                err, ok = check_varlen(name, dtype, H, K, V)
                return f"{err:.1e}", ok
            failed += not _row(lines, f"| {name} | {str(dtype)[6:]} |", varlen, 2)
    for dtype in _pick(torch.float32, torch.bfloat16) if want("titans") or "varlen" in only else ():
        def memory_varlen(dtype=dtype):
            err, ok = check_memory_varlen(dtype, H, K, V)
            return f"{err:.1e}", ok
        failed += not _row(lines, f"| titans (memory='linear') | {str(dtype)[6:]} |", memory_varlen, 2)
    return write_report(args.out, "gpu_check.md", lines, failed)


def write_report(out: str, name: str, lines: list[str], failed: int) -> int:
    """Write a check's table with its count of failing rows to ``out/name``; the exit status (1 if any)."""
    lines = [*lines, f"\n{failed} failing rows"]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, name), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{failed} failing rows")
    return int(failed > 0)


if __name__ == "__main__":
    sys.exit(main())
