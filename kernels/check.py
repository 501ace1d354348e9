"""Check a mixer's kernels against its float64 forms, on a GPU or on the CPU under Triton's interpreter.

    python -m kernels.check [NAME ...] [--options JSON] [--import MODULE] [--dtypes float32,...]
                            [--B 2 --T 70 --H 2 --K 32 --V 32]

For each mixer (default: every zoo mixer a kernel family compiles, and ``titans`` with
``memory="linear"``; your own after ``--import`` of the module that registers it; ``--options`` binds
options to the named ones) and each form, ``chunked`` and ``recurrent`` run from a random initial state
and are compared with ``dsf.chunked`` in float64: output, final state and the gradient of every input
and of the initial state, by relative error ‖out − ref‖ / ‖ref‖; then ``step`` decodes a few tokens
after a chunked prefill. Without CUDA the kernels run in fp32 under the interpreter (small shapes
recommended). Prints a table and exits 1 if a tolerance is missed (those of ``kernels.gpu_check``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

if not torch.cuda.is_available():   # before triton is imported: the kernels then run on the CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

import dsf  # noqa: E402
import kernels  # noqa: E402
from dsf.cli import ZOO_VARIANTS, import_modules  # noqa: E402

DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _label(name: str, options: dict) -> str:
    return name + (f"({', '.join(f'{k}={v!r}' for k, v in options.items())})" if options else "")


def _compiles(name: str, options: dict) -> bool:
    return kernels.supports(dsf.zoo.get(name, **options)) is not None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kernels.check", description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", metavar="NAME", help="mixers to check (default: every compiled zoo mixer)")
    ap.add_argument("--options", default="{}", metavar="JSON",
                    help="""options of the named mixers, e.g. '{"memory": "linear"}' for titans""")
    ap.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                    help="import MODULE first (repeatable), e.g. one that registers your own mixers")
    ap.add_argument("--dtypes", default="float32",
                    help="comma-separated, of float32, bfloat16, float16 (16-bit ones on a GPU; default float32)")
    for dim, default in (("B", 2), ("T", 70), ("H", 2), ("K", 32), ("V", 32)):
        ap.add_argument(f"--{dim}", type=int, default=default, help=f"{dim} (default {default})")
    args = ap.parse_args(argv)
    try:
        import_modules(args.imports)
    except ImportError as e:
        ap.error(str(e))
    dtypes = [d for d in args.dtypes.split(",") if d]
    unknown = [d for d in dtypes if d not in DTYPE_NAMES]
    if unknown or not dtypes:
        ap.error(f"--dtypes: unknown {', '.join(unknown) or '(none given)'} (choose from {', '.join(DTYPE_NAMES)})")
    cuda = torch.cuda.is_available()
    if not cuda and any(d != "float32" for d in dtypes):
        ap.error("--dtypes: the interpreter runs the kernels in fp32 only; 16-bit inputs need a GPU")
    for dim in ("B", "T", "H", "K", "V"):
        if getattr(args, dim) < 1:
            ap.error(f"--{dim} must be at least 1, got {getattr(args, dim)}")
    missing = [n for n in args.names if n not in dsf.zoo.names()]
    if missing:
        ap.error(f"unknown mixer {', '.join(map(repr, missing))}; the zoo has: {', '.join(dsf.zoo.names())} "
                 "(your own: --import the module that registers it)")
    try:
        options = json.loads(args.options)
    except json.JSONDecodeError as e:
        ap.error(f"--options: not JSON ({e}): {args.options!r}")
    if not isinstance(options, dict):
        ap.error(f"--options: a JSON object of option names and values, got {args.options!r}")
    if options and not args.names:
        ap.error("--options binds options of the mixers named: name them")
    if args.names:
        cases = [(n, options) for n in dict.fromkeys(args.names)]
        try:
            without = [_label(*c) for c in cases if not _compiles(*c)]
        except (TypeError, ValueError) as e:
            ap.error(f"--options: {e}")
        if without:
            ap.error(f"no kernel family compiles {', '.join(without)} (`dsf zoo` shows which mixers have kernels)")
    else:
        cases = [(n, {}) for n in dsf.zoo.names()] + [(n, o) for n, o, *_ in ZOO_VARIANTS]
        cases = [c for c in cases if _compiles(*c)]

    from . import gpu_check   # (imports triton: after TRITON_INTERPRET is settled)

    device = "cuda" if cuda else "cpu"
    where = torch.cuda.get_device_name() if cuda else "CPU, Triton's interpreter"
    B, T, H, K, V = args.B, args.T, args.H, args.K, args.V
    print(f"# kernels vs float64 dsf forms on {where}: B={B}, T={T}, H={H}, K={K}, V={V} "
          "(channel mixers: 4 channels a head)\n")
    lines = ["| mixer | form | dtype | o | state | worst grad | (which) | ok |", "|---|---|---|---|---|---|---|---|"]
    print(*lines, sep="\n")
    failed = 0
    for name, opts in cases:
        label = _label(name, opts)
        channel = dsf.zoo.get(name, **opts).phi_layout == "channel"
        v = 4 if channel else V   # each channel a head of its own: the interpreter runs each
        for dt in dict.fromkeys(DTYPE_NAMES[d] for d in dtypes):
            dname = str(dt)[6:]
            for form in ("chunked", "recurrent"):
                run = lambda name=name, opts=opts, dt=dt, form=form: gpu_check.check(  # noqa: E731
                    name, opts, dt, form, B, T, H, K, V, device=device, channels=4)
                failed += not gpu_check._row(lines, f"| {label} | {form} | {dname} |", gpu_check._cells(run), 5)
            step = lambda name=name, opts=opts, dt=dt, v=v: gpu_check.check_step(  # noqa: E731
                name, opts, dt, B, max(T - 3, 1), 3, H, K, v, 0, device)
            failed += not gpu_check._row(lines, f"| {label} | step (3 after a chunked prefill) | {dname} |",
                                         _step_cells(step), 4)
    print(f"\n{failed} failing row{'s' * (failed != 1)}" if failed else "\nevery row within tolerance")
    return 1 if failed else 0


def _step_cells(run):
    """A ``gpu_check._row`` runner for a step check: o | state | — | —."""
    def cells():
        errs, ok = run()
        state = f"{errs['state']:.1e}" if "state" in errs else "—"
        return f"{errs['o']:.1e} | {state} | — | —", ok
    return cells


if __name__ == "__main__":
    sys.exit(main())
