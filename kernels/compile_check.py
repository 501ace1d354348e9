"""Compile the chunked kernels for a GPU without one: shared memory, registers and spills.

    python -m kernels.compile_check [--family scalar,key,delta,titans] [--dtype bf16,fp16,fp32] [--K 64,128,256]
                                    [--chunk 64] [--arch 90] [--segments] [--sass] [--set MODULE.NAME=VALUE ...]

The real launchers run on CPU tensors with every ``kernel[grid](...)`` turned into a compilation for
sm_<arch> (Triton ships ptxas), so the launch settings checked are the ones used, and specialised by
Triton's own binder as a launch on the GPU is (16-byte-aligned tensors and integers that are multiples
of 16 marked divisible: without the marks no load is vectorised or pipelined). ``ptxas -v`` then
reports registers and spills; "async copies" counts the PTX's asynchronous copies to shared memory
(cp.async, and the copy engine's for tensor descriptors), the loads that software pipelining issues
ahead, and "loads left in loops" names the loads a loop still issues itself (too narrow to copy
ahead, or left out by the pipeliner), each waited for where its value is first used. A kernel over
the SM's shared memory (227 KB on sm_90) would fail at launch; spills cost local-memory traffic.
Exits 1 if one is over. ``--sass`` adds the SASS instructions (nvdisasm, also shipped) of each
kernel's longest loop and of the whole kernel: a sequential chunk walk's time follows the loop's
where its step is latency-bound (a program or two an SM). Things the interpreter accepts and the
GPU compiler does not fail here too, which is why the tests compile every family once.

The diagonal families (``scalar``: Mamba-2 / simple GLA, ``key``: GLA) are compiled in each of their
forward paths — the two-pass kernels, the one pass, and (``--segments``) the one pass over segments —
with and without a backward to follow, and their backward; a kernel compiled the same way twice is
listed once. ``delta`` is :mod:`kernels.delta.compile_check`'s forward and backward (with
``--segments``, those over segments); ``titans`` is :mod:`kernels.memory.compile_check`'s (the chunked
and the fused recurrent kernels, forward and backward).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU even where tests interpret

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from ._common import DTYPES  # noqa: E402

SHARED_LIMIT = {90: 232448, 80: 166912}
FAMILIES = ("scalar", "key", "delta", "titans")
SASS = False   # each launch's longest loop counted in SASS too (--sass): an nvdisasm run a kernel more


def specialized(fn, args, kwargs, arch: int) -> tuple[dict, dict, dict]:
    """Triton's (signature, constexprs, attributes) of one launch of ``fn`` with these arguments, made
    by Triton's own argument binder as a launch on the GPU makes them: tensors 16-byte aligned and
    integers that are multiples of 16 marked divisible (``tt.divisibility``), integers equal to 1 made
    constants. Without those marks loads are not vectorised, so neither copied asynchronously nor
    pipelined, and the registers and spills read differ from the launched build's."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", arch, 32))
    bound, spec, _ = create_function_from_signature(fn.signature, fn.params, backend)(*args, **kwargs)
    _, sig, consts, attrs = fn._pack_args(backend, kwargs, bound, spec, {})
    return sig, consts, attrs


def loads_in_loops(ttgir: str) -> list[str]:
    """The loads a kernel's TTGIR still issues inside its loops (``tt.load`` in an ``scf.for`` body), named
    by the variable they load into: after software pipelining, those it did not turn into asynchronous
    copies (too narrow to copy, or left out). Each is waited for where its value is first used: in the
    same iteration, unless the kernel itself loads a chunk ahead (a ``…_next`` value)."""
    names, loops, depth = [], [], 0
    for line in ttgir.splitlines():
        if re.search(r"\bscf\.for\b.*\{\s*(loc\(.*\))?$", line):
            loops.append(depth)
        m = re.search(r"%([A-Za-z_][\w]*?)(?:_\d+)?(?::\d+)? = tt\.load\b", line)
        if loops and m:
            names.append(m.group(1))
        depth += line.count("{") - line.count("}")
        while loops and depth <= loops[-1]:
            loops.pop()
    return names


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def ptxas_report(ptx: str, arch: int, sass: bool = False) -> tuple:
    """(registers a thread, bytes of spill stores) that ``ptxas -v`` reports for this PTX; with ``sass``
    also the SASS instructions of its longest loop and of the whole kernel (:func:`sass_counts`)."""
    with tempfile.TemporaryDirectory() as d:
        src, cubin = os.path.join(d, "k.ptx"), os.path.join(d, "k.cubin")
        with open(src, "w") as f:
            f.write(ptx)
        out = subprocess.run([_tool("ptxas"), "-v", f"--gpu-name=sm_{arch}a" if arch >= 90 else f"--gpu-name=sm_{arch}",
                              src, "-o", cubin], capture_output=True, text=True).stderr
        listing = subprocess.run([_tool("nvdisasm"), "-c", cubin], capture_output=True,
                                 text=True).stdout if sass and os.path.exists(cubin) else ""
    regs = re.search(r"Used (\d+) registers", out)
    spills = [int(x) for x in re.findall(r"(\d+) bytes spill stores", out)]
    report = (int(regs.group(1)) if regs else None), (max(spills) if spills else None)
    return (*report, sass_counts(listing)) if sass else report


_ADDRESS = re.compile(r"/\*([0-9a-f]{4,})\*/")


def sass_counts(listing: str) -> tuple[int | None, int]:
    """(instructions in the longest loop, in all) of an nvdisasm listing; the loop is the span from a
    label back to a branch that jumps to it (None without one): for a chunk walk, what one chunk's
    step issues (each warp), which a latency-bound walk's time follows."""
    labels, last, span = {}, None, None
    rows = []
    for line in listing.splitlines():
        m = re.match(r"\s*\.(L_x_\d+):", line)
        if m:
            last = m.group(1)
            continue
        a = _ADDRESS.search(line)
        if not a:
            continue
        addr = int(a.group(1), 16)
        if last is not None:
            labels[last], last = addr, None
        rows.append(addr)
        b = re.search(r"\bBRA\b.*?\.(L_x_\d+)", line)
        if b and labels.get(b.group(1), addr) < addr:   # (not the one-instruction loop ending a kernel)
            lo = labels[b.group(1)]
            if span is None or addr - lo > span[1] - span[0]:
                span = (lo, addr)
    return (None if span is None else sum(span[0] <= r <= span[1] for r in rows)), len(rows)


@contextlib.contextmanager
def compiled_launches(arch: int, label: str = "", sass: bool | None = None):
    """Every Triton launch meanwhile compiles for sm_<arch> instead of running; yields the list of
    rows (kernel, label, warps, stages, shared bytes, registers, spill stores and, with ``sass`` —
    by default SASS — the instructions of its longest loop and of all of it), one per launch."""
    rows = []
    sass = SASS if sass is None else sass

    def compile_only(self, *args, grid, warmup=False, **kwargs):
        opts = {n: kwargs.pop(n) for n in ("num_warps", "num_stages", "maxnreg", "launch_pdl") if n in kwargs}
        sig, consts, attrs = specialized(self, args, kwargs, arch)
        k = triton.compile(ASTSource(self, sig, consts, attrs), target=GPUTarget("cuda", arch, 32), options=opts)
        regs, spills, *loop = ptxas_report(k.asm["ptx"], arch, sass)
        rows.append({"kernel": self.__name__, "label": label, "warps": k.metadata.num_warps,
                     "sass": loop[0] if loop else None,
                     "stages": opts.get("num_stages", 3), "shared": k.metadata.shared, "regs": regs,
                     "spill_stores": spills or 0,
                     # a link of a chain of dependent launches (chain_link): its wait is in the PTX
                     "pdl": "griddepcontrol.wait" in k.asm["ptx"],
                     # loads copied to shared memory asynchronously (cp.async, or the copy engine's
                     # cp.async.bulk): what software pipelining issues a chunk or more ahead
                     "async": len(re.findall(r"\bcp\.async\.(?:ca|cg|bulk\.tensor)\.", k.asm["ptx"])),
                     "loop_loads": loads_in_loops(k.asm["ttgir"]),
                     "key": (self.__name__, repr(sorted(consts.items())), tuple(sorted(sig.items())), repr(attrs),
                             tuple(sorted(opts.items())))})

    import kernels._common as common

    old, old_arch = JITFunction.run, common.COMPILE_ARCH
    JITFunction.run, common.COMPILE_ARCH = compile_only, arch   # (dependent launches as on that GPU)
    try:
        yield rows
    finally:
        JITFunction.run, common.COMPILE_ARCH = old, old_arch


def check_diag(decay: str, dtype: torch.dtype, K: int, V: int, arch: int, segments: bool = False,
               settings: list | None = None) -> list[dict]:
    """One row per kernel, compiled the way it is launched, of the diagonal family ``decay`` ("scalar" or
    "key") at this shape: each forward path (two passes, the one pass, with ``segments`` the one pass
    over three segments), with and without a backward to follow, and the backward; ``settings``
    (module, name, value) switches set meanwhile, as kernels.sweep.parse_settings gives them."""
    import kernels.diag.chunk as dc
    from kernels._common import seq_bounds
    from kernels.bench import switches
    from kernels.diag.chunk_key import ChunkKeyDecay

    # the autograd functions themselves (chunk_diag refuses CPU tensors without the interpreter), on an
    # equal-length batch of three chunks, the last one short
    fn = ChunkKeyDecay if decay == "key" else dc.ChunkScalarDecay
    T, H = 3 * dc.BT - 5, 2
    offsets = seq_bounds(None, 1, T, "cpu")
    paths = [("two passes", [(dc, "FUSED_FORWARD", False)]),
             ("one pass", [(dc, "FUSED_FORWARD", True), (dc, "FUSED_MIN_PROGRAMS", 1)])]
    if segments:
        paths.append(("segments", [(dc, "FUSED_FORWARD", True), (dc, "FUSED_MIN_PROGRAMS", 10 ** 4)]))
    seen, rows = set(), []
    for label, changes in paths:
        for backward in (True, False):
            q, k = (torch.zeros(T, H, K, dtype=dtype, requires_grad=backward) for _ in range(2))
            v = torch.zeros(T, H, V, dtype=dtype, requires_grad=backward)
            g = torch.zeros((T, H, K) if decay == "key" else (T, H), requires_grad=backward)
            h0 = torch.zeros(1, H, K, V, requires_grad=backward)
            with switches(changes + list(settings or [])), torch.set_grad_enabled(backward), \
                    compiled_launches(arch, f"{label} forward" if backward else f"{label}, alone") as got:
                o, ht = fn.apply(q, k, v, g, h0, offsets, True, K ** -0.5)
                if backward:
                    n = len(got)
                    torch.autograd.grad((o.float().sum(), ht.sum()), (q, k, v, g, h0), allow_unused=True)
                    for r in got[n:]:
                        r["label"] = "backward"
            for r in got:
                if r["key"] not in seen:
                    seen.add(r["key"])
                    rows.append(r)
    return rows


def check(family: str, dtype: torch.dtype, K: int, V: int, arch: int, segments: bool = False,
          settings: list | None = None, chunk: int = 64) -> list[dict]:
    """One row per kernel of ``family`` (scalar, key, delta or titans) as it is launched at this shape
    (``chunk``: the delta rule's and Titans' chunk size; the diagonal families' is 64)."""
    if family == "delta":
        from kernels.delta import compile_check as delta_check

        return delta_check.check(dtype, K, V, chunk, arch, segments=segments, settings=settings)
    if family == "titans":
        from kernels.memory import compile_check as titans_check

        return titans_check.check(dtype, K, V, chunk, arch, settings=settings)
    return check_diag(family, dtype, K, V, arch, segments, settings)


def sass_cell(row: dict) -> str:
    """The --sass column of a row: loop / all instructions (nothing without --sass)."""
    if not SASS:
        return ""
    loop, total = row["sass"]
    return f" {loop or '-'} / {total} |"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kernels.compile_check", description=__doc__.splitlines()[0])
    ap.add_argument("--family", default=",".join(FAMILIES), help=f"comma-separated, of {', '.join(FAMILIES)}")
    ap.add_argument("--dtype", default="bf16,fp16,fp32")
    ap.add_argument("--K", default="64,128,256", help="head dims, K = V")
    ap.add_argument("--chunk", type=int, default=64, choices=(16, 32, 64),
                    help="the delta rule's and Titans' chunk size")
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--sass", action="store_true",
                    help="a column more: the SASS instructions of each kernel's longest loop (a chunk walk's step) "
                    "and of the whole kernel")
    ap.add_argument("--segments", action="store_true",
                    help="the diagonal families' forwards over segments too; the delta rule's forward and "
                    "backward over segments instead of its others")
    from .sweep import add_set_option, settings_of

    add_set_option(ap, "compile", "kernels.diag.chunk.FUSED_BV=128")
    args = ap.parse_args(argv)
    settings = settings_of(ap, args)
    families = [f for f in args.family.split(",") if f]
    for what, given, known in (("--family", families, FAMILIES), ("--dtype", args.dtype.split(","), DTYPES)):
        bad = [x for x in given if x not in known]
        if bad:
            ap.error(f"{what}: {', '.join(bad)} not one of {', '.join(known)}")
    try:
        dims = [int(x) for x in args.K.split(",")]
    except ValueError:
        ap.error(f"--K: comma-separated integers, got {args.K!r}")
    limit = SHARED_LIMIT.get(args.arch, 232448)
    global SASS
    # (the module the families' checks import, which is not __main__ under python -m)
    import kernels.compile_check as imported

    SASS = imported.SASS = args.sass
    over = 0
    print("| family | dtype | K = V | kernel | where | warps | stages | shared KB | registers | spill stores (B) "
          "| async copies | loads left in loops |" + (" SASS instructions: loop / all |" if SASS else ""))
    print("|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if SASS else ""))
    for family in families:
        for name in args.dtype.split(","):
            for K in dims:
                for r in check(family, DTYPES[name], K, K, args.arch, args.segments, settings, args.chunk):
                    flag = " **over**" if r["shared"] > limit else ""
                    over += bool(flag)
                    print(f"| {family} | {name} | {K} | {r['kernel']} | {r['label']} | {r['warps']} | {r['stages']} | "
                          f"{r['shared'] / 1024:.0f}{flag} | {r['regs']} | {r['spill_stores']} | {r['async']} | "
                          f"{', '.join(r['loop_loads']) or '-'} |" + sass_cell(r), flush=True)
    print(f"\n{over} kernels over the {limit // 1024} KB of shared memory of sm_{args.arch}")
    return int(over > 0)


if __name__ == "__main__":
    sys.exit(main())
