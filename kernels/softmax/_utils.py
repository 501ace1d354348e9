"""Host-side checks, tile configs and small Triton helpers shared by the softmax-attention kernels."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._common import check_device, check_head_dim, check_scale, interpreting, next_pow2
from .._tl import LOG2E as _LOG2E

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LOG2E = _LOG2E.value   # (a host float: it scales the softmax scale passed in)
INT32_MAX = 2 ** 31 - 1
GRID_MAX_YZ = 65535


def _alloc(shape, dtype, device) -> Tensor:
    """Every buffer the kernels write goes through here; the tests patch it to fill with NaN."""
    return torch.empty(shape, dtype=dtype, device=device)


def check_qkv_dtypes(op: str, **tensors: Tensor) -> torch.dtype:
    """Floating tensors of one supported dtype."""
    dtype, first = None, None
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be floating-point, got {t.dtype}")
        if dtype is None:
            dtype, first = t.dtype, name
        elif t.dtype != dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but {first} has {dtype}; "
                            "q, k, v must share one dtype")
    if dtype not in DTYPES:
        raise TypeError(f"{op}: dtype {dtype} is not supported; use float32, float16 or bfloat16")
    return dtype


def check_options(op: str, scale, window, sink_tokens, K: int) -> float:
    """Validate scale / window / sink_tokens like the dsf reference; return the scale."""
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"{op}: window must be a positive int or None, got {window!r}")
    if isinstance(sink_tokens, bool) or not isinstance(sink_tokens, int) or sink_tokens < 0:
        raise ValueError(f"{op}: sink_tokens must be an int >= 0, got {sink_tokens!r}")
    if scale is None:
        return K ** -0.5
    if isinstance(scale, Tensor):
        if scale.numel() != 1:
            raise ValueError(f"{op}: scale must be a number, got a tensor of shape {tuple(scale.shape)}")
        scale = scale.item()
    return check_scale(op, scale)


def check_rank(op: str, name: str, t: Tensor, ranks: tuple[int, ...], layout: str) -> None:
    if t.dim() not in ranks:
        raise ValueError(f"{op}: {name} must be {layout}, got shape {tuple(t.shape)}")


def check_common(op: str, q: Tensor, k: Tensor, v: Tensor, **others) -> torch.device:
    check_qkv_dtypes(op, q=q, k=k, v=v)
    return check_device(op, q=q, k=k, v=v, **others)


def check_heads(op: str, K: int, V: int) -> None:
    check_head_dim(op, "K", K)
    check_head_dim(op, "V", V)


def check_offsets(op: str, rows: int, *strides: int) -> None:
    """In-sequence offsets are int32 inside the kernels (sequence bases are int64)."""
    if rows * max(strides, default=1) > INT32_MAX:
        raise ValueError(f"{op}: a sequence of {rows} tokens with row stride {max(strides)} overflows "
                         "the kernels' int32 in-sequence offsets; split the sequence")


def head_blocks(K: int, V: int) -> tuple[int, int]:
    """Head dims padded to a power of two (at least 16, the smallest tl.dot tile)."""
    return max(16, next_pow2(K)), max(16, next_pow2(V))


def fwd_config(BK: int, BV: int, dtype: torch.dtype) -> dict:
    """Tiles for the forward: query tile BLOCK_M, key tile BLOCK_N (bf16: from an H200 sweep)."""
    if interpreting():
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1)
    d, wide = max(BK, BV), dtype == torch.float32
    if d <= 64:
        return dict(BLOCK_M=64 if wide else 128, BLOCK_N=64, num_warps=4, num_stages=3)
    if d <= 128:
        if wide:
            return dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2)
        return dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3)
    if wide:
        return dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=1)
    return dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2)


def bwd_config(BK: int, BV: int, dtype: torch.dtype) -> dict:
    """Tiles for the dk/dv kernel (key tile BLOCK_N outer, query tile BLOCK_M inner).

    bf16 picks from a sweep on an H200 (B·T = 32768, H = 16, causal)."""
    if interpreting():
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1)
    d, wide = max(BK, BV), dtype == torch.float32
    if d <= 64:
        if wide:
            return dict(BLOCK_M=32, BLOCK_N=64, num_warps=4, num_stages=2)
        return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=4)
    if d <= 128:
        if wide:
            return dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=2)
        return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2)
    return dict(BLOCK_M=16 if wide else 32, BLOCK_N=32, num_warps=8, num_stages=1)


def dq_config(BK: int, BV: int, dtype: torch.dtype) -> dict:
    """Tiles for the dq kernel (query tile BLOCK_M outer, key tile BLOCK_N inner)."""
    if interpreting():
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1)
    d, wide = max(BK, BV), dtype == torch.float32
    if d <= 64:
        if wide:
            return dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2)
        return dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3)
    if d <= 128:
        if wide:
            return dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=2)
        return dict(BLOCK_M=128, BLOCK_N=32, num_warps=4, num_stages=3)
    return dict(BLOCK_M=16 if wide else 32, BLOCK_N=32, num_warps=8, num_stages=1)


def decode_config(BK: int, BV: int, dtype: torch.dtype) -> dict:
    if interpreting():
        return dict(BLOCK_N=16, num_warps=4, num_stages=1)
    d = max(BK, BV)
    return dict(BLOCK_N=64 if d <= 128 else 32, num_warps=4, num_stages=2)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 dots (no silent TF32); half types use the tensor cores as is."""
    return "ieee" if dtype == torch.float32 else "tf32"


@triton.jit
def load_rows(base, rows, stride, cols, n_rows, D: tl.constexpr, BD: tl.constexpr,
              ROW_MASK: tl.constexpr):
    """A [len(rows), BD] tile of a row-major [n_rows, D] slab; zeros where masked."""
    ptrs = base + rows[:, None] * stride + cols[None, :]
    if ROW_MASK:
        if BD == D:
            x = tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
        else:
            x = tl.load(ptrs, mask=(rows[:, None] < n_rows) & (cols[None, :] < D), other=0.0)
    else:
        if BD == D:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=cols[None, :] < D, other=0.0)
    return x


@triton.jit
def visible(rows, cols, WINDOW, SINK, HAS_WINDOW: tl.constexpr):
    """[len(rows), len(cols)]: may query `rows` see key `cols` (positions within a sequence)?"""
    ok = cols[None, :] <= rows[:, None]
    if HAS_WINDOW:
        ok = ok & (((rows[:, None] - cols[None, :]) < WINDOW) | (cols[None, :] < SINK))
    return ok


@triton.jit
def key_ranges(start_m, L, WINDOW, SINK, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               HAS_WINDOW: tl.constexpr):
    """Key tiles for the query tile [start_m, start_m + BLOCK_M) of a sequence of length L.

    Returns (sink_hi, lo, a, b, hi): masked sink tiles [0, sink_hi), masked band tiles [lo, a),
    fully visible tiles [a, b) (no mask), masked tiles [b, hi). Tiles outside them are skipped.
    """
    hi = tl.minimum(start_m + BLOCK_M, L)
    full_hi = ((start_m + 1) // BLOCK_N) * BLOCK_N  # key tiles every query of the tile sees causally
    if HAS_WINDOW:
        lo = (tl.maximum(start_m - WINDOW + 1, 0) // BLOCK_N) * BLOCK_N
        full_lo = tl.cdiv(tl.maximum(start_m + BLOCK_M - WINDOW, 0), BLOCK_N) * BLOCK_N
        sink_hi = tl.minimum(tl.cdiv(SINK, BLOCK_N) * BLOCK_N, lo)
        a = tl.minimum(tl.maximum(full_lo, lo), hi)
    else:
        lo = 0
        sink_hi = 0
        a = 0
    b = tl.minimum(tl.maximum(full_hi, a), hi)
    return sink_hi, lo, a, b, hi


@triton.jit
def query_ranges(start_n, L, WINDOW, SINK, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 HAS_WINDOW: tl.constexpr):
    """Query tiles that see some key of [start_n, start_n + BLOCK_N): masked [lo, a), fully visible
    and in bounds [a, b) (no mask), masked [b, hi)."""
    lo = (start_n // BLOCK_M) * BLOCK_M
    if HAS_WINDOW:
        # a tile holding sink keys is seen by every later query; otherwise the window ends it
        hi = tl.where(start_n < SINK, L, tl.minimum(L, start_n + BLOCK_N - 1 + WINDOW))
        full_hi = tl.minimum(((start_n + WINDOW) // BLOCK_M) * BLOCK_M, (L // BLOCK_M) * BLOCK_M)
    else:
        hi = L
        full_hi = (L // BLOCK_M) * BLOCK_M
    full_lo = tl.cdiv(start_n + BLOCK_N - 1, BLOCK_M) * BLOCK_M
    a = tl.minimum(tl.maximum(full_lo, lo), hi)
    b = tl.minimum(tl.maximum(full_hi, a), hi)
    return lo, a, b, hi
