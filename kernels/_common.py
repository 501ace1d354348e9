"""Checks and helpers shared by every kernel family."""

from __future__ import annotations

import math
import operator
import os

import torch
from torch import Tensor

__all__ = ["interpreting", "check_device", "check_head_dim", "UnsupportedHeadDim", "check_cu_seqlens",
           "next_pow2", "ensure_contiguous", "interpreter_upcast", "MIN_HEAD_DIM", "MAX_HEAD_DIM", "seq_bounds",
           "sm_count", "step_bounds", "check_scale", "tma_ready", "tensor_descriptors", "TMA_DTYPES",
           "dependent_launch", "chunk_grid", "apply", "descriptor"]

MIN_HEAD_DIM, MAX_HEAD_DIM = 1, 256
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}   # as the tools' --dtype names them

# Precision of the matrix products for fp32 inputs in the diagonal-decay and delta-rule kernels:
# "tf32x3" (three tf32 tensor-core products, fp32-accurate to ~1e-7 relative, as the Titans kernels
# use) or "ieee" (exact fp32 on the CUDA cores). "ieee" compiles to FMA code that ptxas cannot keep in
# registers (`python -m kernels.compile_check --dtype fp32 --K 64,128`: 32 registers a thread and
# 6.6–28 KB of spill stores in 16 of the three families' builds; with "tf32x3" all keep 183–255
# registers and spill at most 4.1 KB), and runs 6–17x slower on the H200 at T = 4096 (B·T = 32K,
# H = 16, K = V = 128: Mamba-2's forward 59.0 → 3.53 ms, GLA's 45.4 → 4.92, DeltaNet's 79.3 → 10.7)
# for the same accuracy (`python -m kernels.gpu_check --dtypes float32`: every row within 2.7e-6).
# kernels/results/experiments_2026-12-02d.md §1. The delta rule keeps "ieee" at key dims over 128
# (see kernels.delta.chunk._operands).
FP32_PRODUCTS = "tf32x3"


def fp32_products() -> str:
    """The ``input_precision`` of tl.dot for fp32 inputs (FP32_PRODUCTS, read at each call)."""
    return FP32_PRODUCTS


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def exp_mode(on: bool) -> int:
    """The EX2 argument of a kernel taking its exps through kernels._tl.exp_units: 2 (one ex2.approx.ftz
    an exp, of log decays in log2 units) where ``on`` and the kernel is compiled, else 0 (tl.exp; the
    interpreter cannot run inline PTX)."""
    return 2 if on and not interpreting() else 0


def interpreter_upcast(*ts: Tensor | None) -> tuple[Tensor | None, ...]:
    """Under Triton 3.6's CPU interpreter (only), bf16 tensors as fp32: numpy has no bfloat16, and
    the interpreter's tl.dot multiplies bf16 operands' raw bits (outputs off by ~1e9). Others pass."""
    if not interpreting():
        return ts
    return tuple(t.float() if t is not None and t.dtype == torch.bfloat16 else t for t in ts)


class _NoGradCtx:
    """What a Function's forward sees of autograd's ctx when no backward can follow: no input needs a
    gradient, nothing is saved."""

    def __init__(self, n: int):
        self.needs_input_grad = (False,) * n

    def save_for_backward(self, *tensors) -> None:
        pass


# Forwards no gradient can follow call the Function's forward without autograd's apply (apply below);
# False: always through apply (for A/Bs: python -m kernels.sweep host --set kernels._common.PLAIN_FORWARD=False).
PLAIN_FORWARD = True


def apply(fn: type[torch.autograd.Function], *args):
    """``fn.apply(*args)``, or where no gradient can follow (grad mode off, or no input tensor needing
    one) ``fn.forward`` called as a plain function: autograd's apply costs ~25 µs of host time a
    call, a tenth of a Mamba-2 forward's (experiments_2026-12-03e.md)."""
    if not PLAIN_FORWARD or (torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad
                                                             for a in args)):
        return fn.apply(*args)
    return fn.forward(_NoGradCtx(len(args)), *args)


def check_device(op: str, **tensors: Tensor | None) -> torch.device:
    """All tensors on one device, CUDA (or CPU under the Triton interpreter)."""
    device, first = None, None
    for name, t in tensors.items():
        if t is None:
            continue
        if device is None:
            device, first = t.device, name
        elif t.device != device:
            raise ValueError(f"{op}: {name} is on {t.device} but {first} is on {device}")
    if device is not None and device.type != "cuda" and not interpreting():
        raise RuntimeError(f"{op}: Triton kernels need CUDA tensors, got {first} on {device}; "
                           "set TRITON_INTERPRET=1 (before importing triton) to run them on the CPU")
    return device


class UnsupportedHeadDim(ValueError):
    """A head dim outside what the kernels take (raised before anything runs: callers that have
    another way to compute, like MixerLayer(backend="auto"), fall back on it)."""


def check_head_dim(op: str, name: str, size: int, lo: int = MIN_HEAD_DIM, hi: int = MAX_HEAD_DIM,
                   why: str = "") -> None:
    """A head dim within [lo, hi]; ``why`` says what narrowed the range, if something did."""
    if not lo <= size <= hi:
        raise UnsupportedHeadDim(f"{op}: head dim {name}={size} is not supported; need {lo} <= {name} <= {hi}{why}")


def check_cu_seqlens(op: str, cu_seqlens: Tensor | None, B: int, T: int) -> int:
    """Validate FlashAttention-style packed lengths; return the number of sequences."""
    if cu_seqlens is None:
        return B
    if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{op}: cu_seqlens must be an int32/int64 tensor, got "
                        f"{getattr(cu_seqlens, 'dtype', type(cu_seqlens).__name__)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"{op}: cu_seqlens must be 1-D with at least 2 entries, got shape "
                         f"{tuple(cu_seqlens.shape)}")
    if B != 1:
        raise ValueError(f"{op}: with cu_seqlens the batch must be packed into B=1, got B={B}")
    c = cu_seqlens.tolist()
    if c[0] != 0:
        raise ValueError(f"{op}: cu_seqlens must start at 0, got {c[0]}")
    if any(b < a for a, b in zip(c, c[1:])):
        raise ValueError(f"{op}: cu_seqlens must be non-decreasing, got {c}")
    if c[-1] != T:
        raise ValueError(f"{op}: cu_seqlens must end at T={T}, got {c[-1]}")
    return len(c) - 1


_LAYOUTS: dict[tuple, object] = {}


def layout_cache(key: tuple, make):
    """``make()`` once per key: the index tensors of an equal-length batch's layout (offsets, chunk
    lists) depend only on its shape and device, and building them every call was a handful of small
    launches, as long on the host as the whole Mamba-2 forward is on the GPU. The tensors are shared:
    nothing may write to them."""
    hit = _LAYOUTS.get(key)
    if hit is None:
        if len(_LAYOUTS) >= 256:   # many shapes (a sweep): start over rather than grow without bound
            _LAYOUTS.clear()
        hit = _LAYOUTS[key] = make()
    return hit


def stand_in(dtype: torch.dtype, device) -> Tensor:
    """A one-element tensor passed where a kernel takes a buffer it never reads or writes on this call
    (or reads only the dtype of), made once per (dtype, device): an allocation costs a few µs of host
    time a call. Shared: nothing may write to it."""
    return layout_cache(("stand_in", dtype, device), lambda: torch.empty(1, dtype=dtype, device=device))


def _dense_offsets(B: int, T: int, device) -> Tensor:
    offsets = torch.arange(B + 1, dtype=torch.int64, device=device) * T   # (T = 0: every sequence empty)
    offsets._dense = (B, T)
    return offsets


def seq_bounds(cu_seqlens: Tensor | None, B: int, T: int, device) -> Tensor:
    """int64 [N+1] offsets into the flattened [B*T] time axis.

    Equal-length batches carry ``_dense = (B, T)``: the chunk layout is then built on the host
    without reading the offsets back (each read-back stalls the host until the GPU drains); their
    offsets are made once per (B, T, device).
    """
    if cu_seqlens is None:
        return layout_cache(("offsets", B, T, str(torch.device(device))), lambda: _dense_offsets(B, T, device))
    # contiguous: the kernels index the offsets as a dense array, and .to() keeps a strided view's
    # strides when nothing needs converting
    return cu_seqlens.to(device=device, dtype=torch.int64).contiguous()


def step_bounds(B: int, device) -> Tensor:
    """Offsets 0..B (one token a sequence) for the decoding steps, made once per (B, device): a
    fresh arange every token would be a launch of its own."""
    return layout_cache(("step", B, str(torch.device(device))),
                        lambda: torch.arange(B + 1, dtype=torch.int64, device=device))


def check_no_grad(op: str, **tensors) -> None:
    """A decoding step has no backward: refuse inputs that want a gradient (it came back without one)."""
    if torch.is_grad_enabled():
        wanting = [n for n, t in tensors.items() if isinstance(t, Tensor) and t.requires_grad]
        if wanting:
            raise RuntimeError(f"{op}: a decoding step has no backward, and {', '.join(wanting)} require grad; "
                               "call it under torch.no_grad(), or differentiate through kernels.compile(...).step "
                               "or the recurrent kernel")


def check_chunk_size(op: str, chunk_size, choices: tuple[int, ...]) -> int:
    """The chunk length as a Python int of ``choices`` (a NumPy integer too; 32.0 reached the allocations)."""
    try:
        size = None if isinstance(chunk_size, bool) else operator.index(chunk_size)
    except TypeError:
        size = None
    if size not in choices:
        raise ValueError(f"{op}: chunk_size must be an int, one of {choices}, got {chunk_size!r}")
    return size


def check_scale(op: str, scale) -> float:
    """The query scale as a finite Python float (the kernels take it as a number)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"{op}: scale must be a finite number, got {scale!r}")
    if not math.isfinite(scale):
        raise ValueError(f"{op}: scale must be a finite number, got {scale!r}")
    return float(scale)


# The architecture kernels.compile_check compiles for while it runs the launchers on the CPU (None
# otherwise): dependent launches are then compiled in as they would be on that GPU.
COMPILE_ARCH: int | None = None


_PER_DEVICE: dict[tuple[str, int], int] = {}   # (what, CUDA device index) → value, asked of torch once


def _per_device(what: str, device: torch.device, ask) -> int:
    """``ask(index)`` for a CUDA device, once per device index: torch's device queries cost host time
    at every launch that needs them."""
    index = torch.cuda.current_device() if device.index is None else device.index
    key = (what, index)
    if key not in _PER_DEVICE:
        _PER_DEVICE[key] = ask(index)
    return _PER_DEVICE[key]


def _major(device: torch.device) -> int:
    """Compute capability major of a CUDA device (0 elsewhere or under the interpreter), cached: it is
    asked at every launch of a chain."""
    if device.type != "cuda" or interpreting():
        return 0
    return _per_device("major", device, lambda i: torch.cuda.get_device_capability(i)[0])


def dependent_launch(on: bool, device, first: bool = False) -> dict:
    """A chained kernel's keywords for programmatic dependent launch (Hopper on): PDL=True, so the
    kernel waits (gdc_wait) for the one before it before reading its results or writing anything and
    lets the next one start early (gdc_launch_dependents), and launch_pdl=True unless it is the
    chain's ``first`` (whose predecessor, someone else's kernel, never lets it start early). Where
    ``on`` (a family's switch) is off or the device lacks it: PDL=False, a plain launch."""
    major = COMPILE_ARCH // 10 if COMPILE_ARCH is not None else _major(torch.device(device))
    if not (on and major >= 9):
        return dict(PDL=False)
    return dict(PDL=True) if first else dict(PDL=True, launch_pdl=True)


# The chunk-parallel kernels of the backward passes (and the delta rule's W, U before one) launched
# with the heads inside the chunks, (…, heads, chunks), as GLA's gate kernel
# (kernels.diag.chunk_key.GATE_HEADS_INNER): programs launched together then read whole [H, ·] rows
# of a few chunks rather than one head's column of many. H200, bf16, H = 16, K = V = 128 (`python -m
# kernels.sweep ab --ops scalar,key,delta,gdn --T T --set kernels._common.BACKWARD_HEADS_INNER=False`,
# three alternating rounds, 2026-12-03), fwd+bwd with it against without: Mamba-2 1.545 / 1.602 ms at
# 4K, 1.984 / 2.040 at 32K; GLA 2.996 / 3.050, 3.514 / 3.572; DeltaNet 2.469 / 2.566, 3.699 / 3.794;
# Gated DeltaNet 3.132 / 3.235, 4.218 / 4.313, every round (experiments_2026-12-03d.md §3). The same
# bits either way. False: (…, chunks, heads).
BACKWARD_HEADS_INNER = True


def chunk_grid(lead: tuple, NC: int, H: int, on: bool | None = None) -> tuple[tuple, bool]:
    """A chunk-parallel kernel's grid and its HEADS_INNER (kernels._tl.chunk_head): (*lead, H, NC) where
    ``on`` (a kernel's own switch; None: BACKWARD_HEADS_INNER) is true and NC fits a grid's second or
    third axis (65535), else (*lead, NC, H)."""
    inner = (BACKWARD_HEADS_INNER if on is None else on) and NC < 65536
    return ((*lead, H, NC) if inner else (*lead, NC, H)), inner


def sm_count(device) -> int:
    """Streaming multiprocessors of a CUDA device (0 elsewhere, e.g. under the CPU interpreter), cached:
    a delta-rule forward asks four times a call (kernels/results/experiments_2026-12-03d.md §1)."""
    device = torch.device(device)
    if device.type != "cuda":
        return 0
    return _per_device("sms", device, lambda i: torch.cuda.get_device_properties(i).multi_processor_count)


def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉ for host code: ``triton.cdiv`` is a constexpr function whose call from Python costs
    ~8 µs, a launch's worth on the decoding path."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def ensure_contiguous(*ts: Tensor | None):
    return tuple(None if t is None else t.contiguous() for t in ts)


def tma_ready(offsets: Tensor, *tensors: Tensor) -> bool:
    """Whether a kernel may move these [B·T, H, D] tensors through tensor descriptors of [B, T, H, D]:
    an equal-length batch with T ≥ 1 (offsets from seq_bounds), contiguous, with rows of 16-byte
    multiples starting 16-byte aligned (the copy engine's rule)."""
    dense = getattr(offsets, "_dense", None)
    if dense is None or min(dense) < 1:
        return False
    return all(x.numel() and x.is_contiguous() and not x.data_ptr() % 16
               and not (x.shape[-1] * x.element_size()) % 16 for x in tensors)


# Input dtypes that tensor descriptors serve: fp32 tiles staged in shared memory did not fit the one
# passes (with descriptors made on the GPU, the GPU check's fp32 rows of the scalar one pass wanted
# 241 KB of the H200's 227 and failed to launch); the tests add fp32 to run the path under the
# interpreter.
TMA_DTYPES = (torch.bfloat16, torch.float16)


def tensor_descriptors(on: bool, offsets: Tensor, BT: int, **tiles: tuple[Tensor, int]) -> dict:
    """A kernel's keywords TMA, NAME_d for each NAME=(x, block) of ``tiles`` and T_seq: host-made
    descriptors of each [B·T, H, D] tensor x as [B, T, H, D] with [1, BT, 1, block] blocks, where ``on``
    (a family's switch) and the tensors allow it (TMA_DTYPES of the first, tma_ready), else TMA=False."""
    xs = [x for x, _ in tiles.values()]
    if not (on and xs and xs[0].dtype in TMA_DTYPES and tma_ready(offsets, *xs)):
        return dict(TMA=False)
    B, T = offsets._dense
    out = dict(TMA=True, T_seq=T)
    for name, (x, block) in tiles.items():
        H, D = x.shape[1], x.shape[2]
        out[f"{name}_d"] = descriptor(x, [B, T, H, D], [T * H * D, H * D, D, 1], [1, BT, 1, block])
    return out


_BLOCKS_SEEN: set[tuple] = set()
DESCRIPTOR_CHECKS_ONCE = True   # False: Triton's checks on every descriptor (for A/Bs)


def descriptor(x: Tensor, shape: list, strides: list, block: list):
    """Triton's host TensorDescriptor of x, its checks run once per (block, rank) only: they cost ~6 µs
    a descriptor, and a one pass takes four a call. What they check of x itself (16-byte base, rows
    and strides, contiguous last dim, shape > 0) tma_ready has checked; the block shape (powers of 2,
    size) is checked the first time it is seen."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    key = (tuple(block), len(shape))
    if key not in _BLOCKS_SEEN or not DESCRIPTOR_CHECKS_ONCE:
        d = TensorDescriptor(x, shape, strides, block)   # the full checks, raising on a bad block
        _BLOCKS_SEEN.add(key)
        return d
    d = object.__new__(TensorDescriptor)
    d.base, d.shape, d.strides, d.block_shape, d.padding = x, shape, strides, block, "zero"
    return d


# Kernels launched through a twin compiled with per-warp tensor-core products (mma.sync, what Ampere
# has) instead of Hopper's warp-group products (wgmma), by the names the launch sites give them
# (e.g. "delta.pass"). Triton follows every warp-group product with a wait for it, so a program whose
# step is a chain of small dependent products never has two in flight; per-warp products are plain
# instructions the scheduler can overlap. Empty: every kernel as Triton compiles it for the GPU.
PER_WARP: set[str] = set()
_TWINS: dict = {}


class _PerWarpTwin:
    """A copy of a Triton kernel (its own in-memory cache) that compiles with DISABLE_MMA_V3 set, the
    variable Triton reads when it picks the product instructions (and keys its disk cache by)."""

    def __init__(self, kernel):
        import triton

        self.kernel = triton.jit(kernel.fn)

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            old = os.environ.get("DISABLE_MMA_V3")
            os.environ["DISABLE_MMA_V3"] = "1"
            try:
                return launch(*args, **kwargs)
            finally:
                if old is None:
                    del os.environ["DISABLE_MMA_V3"]
                else:
                    os.environ["DISABLE_MMA_V3"] = old
        return run


def products(kernel, name: str):
    """``kernel``, or where ``name`` is in PER_WARP its twin compiled with per-warp products (the same
    arithmetic: only the instructions differ)."""
    if name not in PER_WARP:
        return kernel
    if kernel not in _TWINS:
        _TWINS[kernel] = _PerWarpTwin(kernel)
    return _TWINS[kernel]
