"""Chunked training kernels for a key-wise diagonal decay (GLA), forward and backward.

    S_t = diag(e^{gk_t}) S_{t-1} + k_t v_tᵀ,     o_t = S_tᵀ q_t,     gk_t ∈ R^K, gk ≤ 0

With G the chunk-local cumulative log decay ([C, K] per chunk), G_L its total and S_c the state
entering chunk c (fla's orientation, S ∈ R^{K×V}):

    S_{c+1} = e^{G_L} ⊙ S_c + (K ⊙ e^{G_L − G})ᵀ V                               (_state_kernel)
    O_c     = (Q ⊙ e^{G}) S_c + A V,   A_ij = Σ_k q_ik k_jk e^{G_ik − G_jk} [i ≥ j]   (_scores_kernel,
                                                                                    _output_kernel)

Kernels. _gate_kernel forms Q ⊙ e^{G}, K ⊙ e^{G_L − G} and G_L once per chunk; the state scans, the
output and the dV kernels read those. A chunk whose total decay max_k (−G_L) is below LIM has its scores
and its intra-chunk dQ, dK computed whole, as matmuls of those factors (each ≤ e^{LIM}); only chunks
with a strong decay somewhere take the sub-block path below. On CUDA the forward runs in one pass
after the gates (kernels.diag.chunk.FUSED_FORWARD switches it, as for the scalar family):
_fused_fwd_kernel does the scores, output and state for each chunk in turn with the state in
registers, storing nothing but the output without a backward, and before one the states entering
each chunk and the mild chunks' scores, which the backward reads. Where there are too few sequences
for the SMs (long T, small B) they are cut into segments: each segment's state from zero, a scan over
the segments with per-row decays, then the pass per segment (_passes, timed faster at every T).

Numerics. e^{G_i − G_j} ≤ 1, but factored as e^{G_i} · e^{−G_j} it overflows once a chunk decays by
more than ~88 nats. A is therefore built by sub-blocks of BC rows: for rows i of sub-block b and the
reference row r just before it,

    A_ij = Σ_k (q_ik e^{G_ik − G_rk}) (k_jk e^{G_rk − G_jk})

is one matmul with both factors ≤ 1 for every column j before b. The sub-block's own columns join
that matmul when its decay span = max_k (G_r − G_end) is below LIM (the factor is then ≤ e^{LIM});
otherwise they are summed element-wise with e^{G_ik − G_jk} itself. The backward splits dQ the same
way and dK about the sub-block's last row. Every exponent is also formed as a sum of the gk between
its two rows (a forward or reverse cumulative sum inside the kernel), never as a difference of two
large prefix sums, so it is exact to rounding however strong the decay (gk ≈ −20 per step included) —
for fp32 inputs: 16-bit ones take G_L − G for the chunk's reverse sums (FAST_PAIRS of kernels.diag.chunk),
whose error is far below their own rounding.

Decay gradient. ∂L/∂gk_t = Σ_v (e^{gk_t} S_{t−1} ⊙ dS_t), which splits per chunk into
(state ⊙ outgoing-state gradient) + (state ⊙ later queries) + (earlier keys ⊙ outgoing gradient) +
(pairs of keys before t and queries from t on). The last kernel sums these inside each chunk; no
term is a difference of large sums of the diagonal q_t·k_t-terms, unlike the usual
Σ_{s≥t} (q_s dq_s − k_s dk_s), which loses all relative accuracy when decays are strong.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._common import cdiv, chunk_grid, dependent_launch, exp_mode, next_pow2, products, tensor_descriptors
from .._tl import batch_place, chain_link, chunk_head, chunk_qkv, chunk_span, exp_units, load_scaled, state_tile
from .._tl import LN2, LOG2E, log_decay, store_chunk, tile_offsets
from . import chunk as _scalar
from . import recurrent as _recurrent
from .chunk import _fast, _state_dtype, chunk_layout, pick_launch

BT = 64   # chunk length
BC = 16   # sub-block length of the intra-chunk scores

# Launch settings per kernel (warps, pipelining stages): the fastest of warps {2, 4, 8} x stages
# {1, 2, 3} for each kernel at bf16, K = V = 128, T = 4096 on the H200 (`python -m kernels.sweep launch`,
# 2026-12-01).
LAUNCH = {"fused_fwd": dict(num_warps=4, num_stages=3),   # 0.242 ms at T = 4096 (2 stages 0.274, 1: 0.340)
          # `--kernels gate`, later (2026-12-01): 0.268 ms (4 warps as before: 0.279 at 1 stage); with
          # the scores apart (2026-12-03): 0.222 at 4 warps / 2 stages (3: 0.223, 1: 0.223; 8 warps /
          # 3 stages 0.241; the slowest 0.254)
          # a register cap of 128 (ptxas: 168 → 128 registers, 24 B of spills) lets four programs share
          # an SM instead of three: GLA forward 0.421 → 0.417 ms at 4K, fwd+bwd 3.035 → 3.031, every
          # round (`sweep ab --ops key --T 4096 --set "kernels.diag.chunk_key.LAUNCH[gate]={'num_warps': 4,
          # 'num_stages': 2, 'maxnreg': 128}"`, against it uncapped, 2026-12-03)
          "gate": dict(num_warps=4, num_stages=2, maxnreg=128),
          "state": dict(num_warps=4, num_stages=3), "scores": dict(num_warps=4, num_stages=1),
          "strong_scores": dict(num_warps=4, num_stages=1),   # (as "scores")
          "segment_state": dict(num_warps=8, num_stages=3),   # (see SEGMENT_STATE_TILES)
          "output": dict(num_warps=4, num_stages=1), "dstate": dict(num_warps=4, num_stages=3),
          "dv": dict(num_warps=4, num_stages=1), "dqk_intra": dict(num_warps=4, num_stages=1),
          "dqk_inter": dict(num_warps=4, num_stages=3)}
# Elsewhere (fp32 operands, or head dims over 128: larger tiles) the settings they were verified with,
# which stay within shared memory up to K = V = 256 (`python -m kernels.compile_check`; fp32's exact
# "ieee" products spill, hence tf32x3 by default: kernels._common.FP32_PRODUCTS).
# (the one pass in two pipeline stages: with kernels._common.FP32_PRODUCTS = "tf32x3", three need
# 242 KB of shared memory at K = V = 128, over an sm_90's 227; two, 161 KB: python -m kernels.compile_check)
SAFE = {"fused_fwd": dict(num_warps=8, num_stages=2), "gate": dict(num_warps=4), "state": dict(num_warps=4),
        "segment_state": dict(num_warps=8),
        "scores": dict(num_warps=4), "strong_scores": dict(num_warps=4), "output": dict(num_warps=4, num_stages=2),
        "dstate": dict(num_warps=4), "dv": dict(num_warps=4, num_stages=2), "dqk_intra": dict(num_warps=4),
        "dqk_inter": dict(num_warps=4, num_stages=2)}


def _launch(name: str, dtype: torch.dtype, K: int, V: int) -> dict:
    return pick_launch(LAUNCH, SAFE, name, dtype, K, V)


# (key, value) tiles of the segments' states from zero, each at most the padded head dim: (128, 128)
# gives a program the whole state at K = V = 128, reading each chunk's kd and v once (in [64, 64] tiles
# both are read twice), with 8 warps (LAUNCH["segment_state"]: a [128, 128] fp32 state is 128
# registers a thread at 4). H200, bf16, H = 16, K = V = 128 (`python -m kernels.sweep ab --ops key --T T
# --set kernels.diag.chunk.STATE_BK=None --set kernels.diag.chunk.STATE_BV=128 --set
# "kernels.diag.chunk_key.LAUNCH[state]={'num_warps': 8, 'num_stages': 3}"`, three alternating rounds,
# 2026-12-02, when this family followed the scalar family's switches), GLA forward / forward + backward:
# T = 32K 0.666 → 0.648 ms / 3.634 → 3.615, 16K 0.648 → 0.629 / 3.408 → 3.389, 8K 0.575 → 0.578 /
# 3.233 → 3.237; as built (the old way as the set side: the scalar family's tiles and launch), 32K
# 0.647 against 0.664, 16K 0.628 against 0.647, 8K 0.578 against 0.575. The scalar family's states from
# zero lost that way uncapped (Mamba-2 0.440 → 0.465 at 32K) and gained under a register cap of 128
# (kernels.diag.chunk.SEGMENT_WHOLE_STATE); this family's gained nothing more capped (32K 0.649 → 0.647,
# 16K unchanged; experiments_2026-12-02h.md §3). GPU-checked (`python -m kernels.gpu_check --only
# fused:gla/segments,fused:gla/pieces,chunk_key`, bf16 and fp32). The old way: `--set
# kernels.diag.chunk_key.SEGMENT_STATE_TILES=(64,64) --set
# "kernels.diag.chunk_key.LAUNCH[segment_state]={'num_warps': 4, 'num_stages': 3}"`.
SEGMENT_STATE_TILES = (128, 128)
# The output's scale on dO in this family's backward kernels, tile by tile as they load them, instead
# of a torch do * scale before them (kernels.diag.chunk.DO_SCALE_IN_KERNELS is the scalar family's).
# H200, bf16, H = 16, K = V = 128 (`python -m kernels.sweep ab --ops scalar,key --T T --set
# kernels.diag.chunk.DO_SCALE_IN_KERNELS=True` when both families followed that one, three alternating
# rounds, 2026-12-02): GLA forward + backward 4K 3.155 → 3.097 ms, 32K 3.655 → 3.624 (each round within
# 0.003); Mamba-2 gained at 4K (1.598 → 1.583) and lost at 32K (2.042 → 2.075), so it keeps torch's.
# The same bits; ptxas (sm_90): the dQ/dK kernel 2484 → 2532 B of spills. GPU-checked (`python -m
# kernels.gpu_check --only chunk_key,gla,fused:gla --dtypes bfloat16,float32`).
DO_SCALE_IN_KERNELS = True
# (This family's forward-only one pass through tensor descriptors of qd, kd, v and o, as
# kernels.diag.chunk.FUSED_TMA, lost: H200, bf16, H = 16, K = V = 128, `python -m kernels.sweep ab
# --ops key --T T --set kernels.diag.chunk_key.FUSED_TMA=True`, three alternating rounds, 2026-12-02:
# GLA forward 4K 0.512 → 0.551 ms, 16K 0.628 → 0.683, 32K 0.648 → 0.699, fwd+bwd unchanged, though
# ptxas had its spills 920 → 80 B; removed, experiments_2026-12-02i.md §1.)
# This family's rows of the scan over segments (kernels.diag.chunk.SEGMENT_PASS_ROWS, there for the
# scalar family): its per-row log decays make each row wider. H200, bf16, H = 16, K = V = 128, T = 32K
# (`python -m kernels.sweep ab --ops key --T 32768 --set kernels.diag.chunk.SEGMENT_PASS_ROWS=U` when
# the two families shared it, three alternating rounds, 2026-12-02): GLA forward 0.651 → 0.647 ms at
# U = 4 (within the rounds' spread), 0.650 → 0.764 at U = 8 (fwd+bwd 3.669 → 3.782). Kept at 1.
SEGMENT_PASS_ROWS = 1
# The strong chunks' sub-block scores of the one pass come from a kernel of their own
# (_strong_scores_kernel: a program reads its chunks' G_L and does nothing for those decaying by less
# than LIM), no longer from the gate kernel, whose programs then walked every key block of a chunk:
# that rare path's registers limited the gate kernel's occupancy on every chunk (ptxas sm_90, bf16,
# K = 128: 255 registers and 104 B of spills at 2 warps with it, 255 and none without; at 4 warps 168
# and none). H200, bf16, H = 16, K = V = 128, T = 4096 (`python -m kernels.sweep ab --ops key --T 4096
# --set kernels.diag.chunk_key.GATE_SCORES_APART=True --set "kernels.diag.chunk_key.LAUNCH[gate]=
# {'num_warps': 4, 'num_stages': 3}"`, the switch this replaced, three alternating rounds, 2026-12-03):
# GLA forward 0.511 → 0.488 ms, fwd+bwd 3.074 → 3.051 (every round); at the old gate launch (2 warps)
# 0.513 → 0.522 (gate kernel 0.267 → 0.253, the scores kernel 0.021 with no strong chunk); the old way
# removed (experiments_2026-12-03.md §1).
# Chunks a program of _strong_scores_kernel (a power of two): with the benchmark's mild gates it only
# reads G_L, so one chunk a program is mostly launch (0.021 ms at T = 4096 for 8192 programs). H200
# (`python -m kernels.sweep ab --ops key --T 4096 --set kernels.diag.chunk_key.STRONG_SCORES_CHUNKS=1`,
# three rounds, 2026-12-03): GLA forward 0.479 ms at 8 against 0.482 at 1 (fwd+bwd 3.069 / 3.073).
STRONG_SCORES_CHUNKS = 8
# (Tried and removed, 2026-12-04: the forward-only pass making a strong chunk's scores itself where its
# walk meets one, no scores kernel in the launch chain (`STRONG_IN_PASS`, 5577bed): as a noinline rare
# path it cost the walk 17 spill reloads a chunk, GLA's forward 0.381 → 0.429 ms at 1K–4K with no
# strong chunk, and the GPU check failed it in 16 bits; inlined, its loop stopped Triton pipelining the
# walk. experiments_2026-12-04g.md §5.)
# The one pass loads each chunk's G_L (a [K] fp32 vector) during the chunk before it, carried in
# registers, instead of at the chunk's start (where Triton's pipelining staged it through shared
# memory with the tiles). Why it pays is our reading, not profiled: the walk's first use of it, the
# choice between the mild and strong scores, comes before any product, so it waited on that copy.
# H200, bf16, H = 16, K = V = 128 (`python -m kernels.sweep ab --ops key --T T --set
# kernels.diag.chunk_key.PASS_AHEAD=False`, three alternating rounds, 2026-12-03): GLA forward 0.436
# against 0.476 ms at 4K, 0.550 against 0.586 at 32K, every round; fwd+bwd unchanged (3.048 / 3.050).
# The same for the scalar family's two decay vectors and the delta rule's gates and β lost
# (experiments_2026-12-03c.md §3). False: at the chunk's start.
PASS_AHEAD = True
# The gate kernel's grid with the heads inside the chunks, (key blocks, heads, chunks): programs
# launched together then cover whole [H, K] rows of a few chunks rather than one head's column of
# many. H200, bf16, H = 16, K = V = 128 (`python -m kernels.sweep ab --ops key --T T --set
# kernels.diag.chunk_key.GATE_HEADS_INNER=False`, three alternating rounds, 2026-12-03): GLA forward
# 0.422 against 0.435 ms at 4K, 0.536 against 0.551 at 32K, fwd+bwd 3.033 / 3.047 and 3.536 / 3.551,
# every round (the gate kernel 0.222 → 0.209 ms, `sweep profile`). The same order for the delta rule's
# UT kernel, (heads, chunks), lost a little: DeltaNet forward 0.441 → 0.444 ms at 4K, Gated DeltaNet
# 0.590 → 0.595 (experiments_2026-12-03d.md §3). False: (key blocks, chunks, heads).
GATE_HEADS_INNER = True
# The gate kernel issues its loads of q and k before it sums the decays (whose scan waits on gk's
# load), so that all three reads are in flight at once. ptxas sm_90 (bf16, K = 128, 128 registers):
# spill stores 24 → 52 B. H200, bf16, H = 16, K = V = 128 (`python -m kernels.sweep ab --ops key --T T
# --set kernels.diag.chunk_key.GATE_LOADS_FIRST=True`, three alternating rounds, 2026-12-04): GLA forward
# 0.403 → 0.388 ms at 4K, 0.517 → 0.503 at 32K, fwd+bwd 2.914 → 2.900, every round; the gate kernel
# alone 0.189 → 0.176 ms (`sweep launch --kernels gate`: 4 warps, 2 stages stay the fastest; uncapped
# registers 0.388 against 0.389, a cap of 168 0.403, 8 warps 0.461). GPU-checked (gpu_check.md,
# thirty-first session). (A [64, 128] key block, 8 warps, lost: 0.404 → 0.463; experiments_2026-12-04c.md.)
GATE_LOADS_FIRST = True
# GLA's one pass over whole sequences as a chain of programmatic dependent launches (Hopper on;
# kernels._common.dependent_launch): the strong chunks' scores kernel and the pass each launched while
# the kernel before them drains, waiting in their programs (chain_link) for its writes. H200, bf16,
# H = 16, K = V = 128 (`python -m kernels.sweep ab --ops key --T T --set
# kernels.diag.chunk_key.PASS_PDL=True`, three alternating rounds, 2026-12-04): forward 0.390 → 0.386 ms
# at 4K, 0.390 → 0.389 at 1K (fwd+bwd 2.878 → 2.869, 2.858 → 2.852). False: plain launches.
PASS_PDL = True
# (Tried and removed, 2026-12-04: the forward-only pass's queries stored as Q ⊙ e^{G − max(G_L, −LIM)},
# so that no chunk rescales its query tile for the scores (`PASS_SHIFTED_QUERIES`): the pass then asked
# for 120 KB of shared memory instead of 104, one program an SM; GLA forward 0.376 → 0.452 ms at 4K,
# and at two stages still 0.378 → 0.387; experiments_2026-12-04e.md §1.)
# The gate kernel of 16-bit inputs sums the log decays in log2 units and takes each of its two exps an
# element as one ex2.approx.ftz (kernels._tl.exp_units), where tl.exp adds a multiply by log2 e and, to
# keep subnormal results, three instructions more: 1456 → 1216 instructions (`python -m
# kernels.compile_check --family key --dtype bf16 --K 128 --sass`), GLA forward 0.387 → 0.379 ms at 4K,
# 0.389 → 0.381 at 1K (`python -m kernels.sweep ab --ops key --T T --set
# kernels.diag.chunk_key.GATE_EX2=False`, every round); experiments_2026-12-04f.md §7.
GATE_EX2 = True
# The forward-only pass over whole sequences loads qd, kd and v and stores o through tensor descriptors
# of the batch (as kernels.diag.chunk.FUSED_TMA and the delta rule's pass; kernels._common.TMA_DTYPES,
# equal-length batches). Tried 2026-12-02 and removed (slower then, see the note above
# SEGMENT_PASS_ROWS); timed again against the pass as it is now (G_L a chunk ahead, the launch chain):
# ptxas sm_90 (`python -m kernels.compile_check --family key --dtype bf16 --K 128 --sass`) 72 → 20 B of
# spill stores, 1102 → 1080 instructions a chunk, 112 KB of shared memory (two programs an SM still);
# H200, bf16, H = 16, K = V = 128 (`python -m kernels.sweep ab --ops key --T T --rounds 4 --set
# kernels.diag.chunk_key.PASS_TMA=True`, 2026-12-04): GLA forward 0.381 → 0.363 ms at 1K, 0.378 →
# 0.360 at 4K, every round; fwd+bwd unchanged. GPU-checked (`python -m kernels.gpu_check --only
# fused:gla/pass --dtypes bfloat16,float16 --set` it: 0 failing rows). experiments_2026-12-04g.md §6.
PASS_TMA = True
# ... and the pass over segments (from 8K at the benchmark's shapes), the descriptors of the whole batch
# (segments are whole chunks of a sequence; a ragged last segment's chunks past the sequence's end fall
# outside the descriptor, which loads zeros there and stores nothing). Slower where it runs most:
# `python -m kernels.sweep ab --ops key --T T --set kernels.diag.chunk_key.SEGMENTS_PASS_TMA=True`
# (2026-12-04): GLA forward 0.444 → 0.509 ms at 8K, 0.495 → 0.557 at 16K, 0.498 → 0.479 at 32K (rounds
# of both sides scattered by the host there). GPU-checked all the same (`python -m kernels.gpu_check
# --only fused:gla/segments --dtypes bfloat16,float16 --set` it: 11 rows, 0 failing, the call's limit
# cut the twelfth). experiments_2026-12-04g.md §6. False: pointers.
SEGMENTS_PASS_TMA = False
# (GLA's forward-only pass forming its gates itself, without the gate kernel — GATES_IN_PASS, built in
# ddc8dab — was 16–75 % slower on the H200 at 4K–32K and was removed: experiments_2026-12-05.md.)


def _gate_ex2(dtype: torch.dtype) -> int:
    """The gate kernel's EX2 argument (GATE_EX2): 2 for 16-bit inputs in a compiled kernel, else 0."""
    return exp_mode(GATE_EX2 and dtype in (torch.bfloat16, torch.float16))


def _alloc(*shape, **kw) -> Tensor:
    # looked up at call time, so the tests' NaN-poisoning hook on recurrent._empty reaches us too
    return _recurrent._empty(*shape, **kw)


@triton.jit
def _chunk_bounds(offsets, chunk_indices, i_c):
    i_n = tl.load(chunk_indices + i_c * 2).to(tl.int64)
    c = tl.load(chunk_indices + i_c * 2 + 1).to(tl.int64)
    bos = tl.load(offsets + i_n).to(tl.int64)
    eos = tl.load(offsets + i_n + 1).to(tl.int64)
    return c, bos, eos


@triton.jit
def _gates(gk, c_start, eos, ok, i_h, o_k, m_k, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
           FAST: tl.constexpr, EX2: tl.constexpr = 0):
    """A chunk's log decays: G (Σ_{s≤t} g_s), Gs (Σ_{s>t} g_s = G_L − G_t) and the total G_L (EX2: in
    log2 units, for exp_units).

    Gs is a reverse cumulative sum of the next rows' g, exact to rounding; FAST (16-bit inputs) takes
    G_L − G_t, off by |G_L| · 6e-8 (1e-4 relative for a chunk decaying by 1300 nats, far below the
    inputs' own rounding) without the second load and scan. (G as a product with the triangular ones
    on the tensor cores was slower: the gate kernel took 0.52 ms against 0.37 with both scans.) Rows
    past the sequence's end (and chunks with ok = False) have g = 0.
    """
    rows = c_start + tl.arange(0, BT)
    m = (rows < eos) & ok
    o_tk = tl.arange(0, BT)[:, None] * (H * K) + o_k[None, :]   # 32-bit offsets from the chunk's first row
    b_g = tl.load(gk + (c_start * H + i_h) * K + o_tk, mask=m[:, None] & m_k[None, :], other=0.0)
    b_g = log_decay(b_g)
    if EX2:
        b_g = b_g * LOG2E
    b_G = tl.cumsum(b_g, axis=0)
    b_GL = tl.sum(b_g, axis=0)
    if FAST:
        b_Gs = b_GL[None, :] - b_G
    else:
        m_n = (rows + 1 < eos) & (tl.arange(0, BT) + 1 < BT) & ok
        b_gn = log_decay(tl.load(gk + ((c_start + 1) * H + i_h) * K + o_tk, mask=m_n[:, None] & m_k[None, :],
                                 other=0.0))
        if EX2:
            b_gn = b_gn * LOG2E
        b_Gs = tl.cumsum(b_gn, axis=0, reverse=True)
    return b_G, b_Gs, b_GL


@triton.jit
def _excl_combine(s1, p1, s2, p2):
    # (inclusive, exclusive) prefix sums in one scan: the exclusive one is never inclusive − x
    return s1 + s2, s1 + p2


@triton.jit
def _gate_kernel(q, k, gk, qd, kd, GL, offsets, chunk_indices,
                 H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, FAST: tl.constexpr,
                 HEADS_INNER: tl.constexpr = False, LOADS_FIRST: tl.constexpr = False, PDL: tl.constexpr = False,
                 EX2: tl.constexpr = 0):
    """Per chunk and key block: Q ⊙ e^{G}, K ⊙ e^{G_L − G} (in the inputs' dtype) and G_L (fp32).

    Every later kernel reads these instead of summing the decays again; the sequential state
    kernels then do no more per chunk than the scalar-decay ones. (The strong chunks' sub-block
    scores are _strong_scores_kernel's: made here, their registers halved this kernel's programs.)
    HEADS_INNER: the grid is (key blocks, heads, chunks), so that programs launched together read
    whole rows (GATE_HEADS_INNER); else (key blocks, chunks, heads). LOADS_FIRST: q and k loaded
    before the decays are summed (GATE_LOADS_FIRST). PDL: the first link of the one pass's chain of
    dependent launches (PASS_PDL). EX2: the decays summed in log2 units and each exp exp_units's
    (GATE_EX2); G_L stored in nats all the same.
    """
    chain_link(PDL)
    i_k = tl.program_id(0)
    i_c, i_h = chunk_head(1, HEADS_INNER)
    c, bos, eos = _chunk_bounds(offsets, chunk_indices, i_c)
    c_start = bos + c * BT
    t_rows = c_start + tl.arange(0, BT)
    m_t = t_rows < eos
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    r_k = (c_start * H + i_h) * K                                       # the chunk's first row
    o_tk = tl.arange(0, BT)[:, None] * (H * K) + o_k[None, :]
    if LOADS_FIRST:   # q and k in flight while the decays' sums wait on gk
        b_q = tl.load(q + r_k + o_tk, mask=m_tk, other=0.0)
        b_k = tl.load(k + r_k + o_tk, mask=m_tk, other=0.0)
        b_G, b_Gs, b_GL = _gates(gk, c_start, eos, True, i_h, o_k, m_k, H, K, BT, FAST, EX2)
        b_q, b_k = b_q.to(tl.float32), b_k.to(tl.float32)
    else:
        b_G, b_Gs, b_GL = _gates(gk, c_start, eos, True, i_h, o_k, m_k, H, K, BT, FAST, EX2)
        b_q = tl.load(q + r_k + o_tk, mask=m_tk, other=0.0).to(tl.float32)
        b_k = tl.load(k + r_k + o_tk, mask=m_tk, other=0.0).to(tl.float32)
    tl.store(qd + r_k + o_tk, (b_q * exp_units(b_G, EX2)).to(qd.dtype.element_ty), mask=m_tk)
    tl.store(kd + r_k + o_tk, (b_k * exp_units(b_Gs, EX2)).to(kd.dtype.element_ty), mask=m_tk)
    if EX2:
        b_GL = b_GL * LN2
    tl.store(GL + (i_c.to(tl.int64) * H + i_h) * K + o_k, b_GL, mask=m_k)


@triton.jit
def _state_kernel(kd, v, GL, h0, h, ht, offsets, chunk_offsets, MAXC,
                  H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                  BV: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, PREC: tl.constexpr,
                  STORE_H: tl.constexpr = True, logw=None, STORE_LOGW: tl.constexpr = False,
                  NSEG=1, SKIP_LAST: tl.constexpr = False, NSKIP=1):
    """h[c] = state entering chunk c; walks one sequence's chunks (the only sequential forward part).

    Reads K ⊙ e^{G_L − G} and G_L from _gate_kernel. STORE_LOGW: also the sequence's total log decay
    per key (the sum of its chunks' G_L) into logw ([·, H, K]). SKIP_LAST: the sequences are segments
    (or pieces of segments), NSEG to a batch sequence, and the programs cover all but each one's last
    NSKIP.
    """
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    if SKIP_LAST:
        i_n += i_n // (NSEG - NSKIP) * NSKIP
        i_nh = i_n * H + i_h
    bos, eos, c0, nc = chunk_span(offsets, chunk_offsets, i_n)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v, m_kv, p_state, b_h = state_tile(h0, i_nh, o_k, o_v, K, V, BK, BV, HAS_H0)
    b_lw = tl.zeros([BK], dtype=tl.float32)
    for c in range(0, MAXC):
        # chunks past a short sequence's end load nothing: e^0 keeps the state, zero keys add nothing
        ok = c < nc
        if STORE_H:
            tl.store(h + ((c0 + c) * H + i_h) * K * V + p_state, b_h, mask=m_kv & ok)
        t_rows = bos + c * BT + tl.arange(0, BT)
        m_t = (t_rows < eos) & ok
        b_kd = tl.load(kd + (t_rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :],
                       other=0.0)
        b_v = tl.load(v + (t_rows[:, None] * H + i_h) * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :],
                      other=0.0)
        b_GL = tl.load(GL + ((c0 + c) * H + i_h) * K + o_k, mask=m_k & ok, other=0.0)
        b_h = b_h * tl.exp(b_GL)[:, None] + tl.dot(tl.trans(b_kd), b_v, input_precision=PREC)
        if STORE_LOGW:
            b_lw += b_GL
    if STORE_HT:
        tl.store(ht + i_nh.to(tl.int64) * K * V + p_state, b_h, mask=m_kv)
    if STORE_LOGW:
        tl.store(logw + i_nh.to(tl.int64) * K + o_k, b_lw, mask=m_k & (i_v == 0))


@triton.jit
def _chunk_span(p_GL, K: tl.constexpr, BK: tl.constexpr):
    """A chunk's total decay max_k (−G_L[k]): below LIM its scores and intra-chunk gradients are
    computed whole."""
    span = 0.0
    for kb in range(0, tl.cdiv(K, BK)):
        o_k = kb * BK + tl.arange(0, BK)
        span = tl.maximum(span, -tl.min(tl.load(p_GL + o_k, mask=o_k < K, other=0.0), axis=0))
    return span


@triton.jit
def _scores_kernel(q, k, gk, qd, kd, GL, A, offsets, chunk_indices,
                   H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
                   LIM: tl.constexpr, PREC: tl.constexpr):
    """Rows of sub-block b of A (causal, zero above the diagonal): [BC, BT] per program.

    When the whole chunk decays by less than LIM in every key channel, the first program of the chunk
    computes all of A as one matmul, (Q ⊙ e^{G} ⊙ e^{−G_L}) (K ⊙ e^{G_L − G})ᵀ, each factor ≤ e^{LIM},
    and the others have nothing to do.
    """
    i_b, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c, bos, eos = _chunk_bounds(offsets, chunk_indices, i_c)
    c_start = bos + c * BT
    p_GL = GL + (i_c.to(tl.int64) * H + i_h) * K
    if _chunk_span(p_GL, K, BK) < LIM:
        if i_b == 0:
            _whole_chunk_scores(qd, kd, p_GL, A, c_start, eos, i_h, H, K, BT, BK, PREC)
    else:
        _sub_block_scores(q, k, gk, A, c_start, eos, i_b, i_h, H, K, BT, BC, BK, LIM, PREC)


@triton.jit
def _strong_scores_kernel(q, k, gk, GL, A, offsets, chunk_indices, NC,
                          H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, BKP: tl.constexpr,
                          CPP: tl.constexpr, LIM: tl.constexpr, PREC: tl.constexpr, PDL: tl.constexpr = False):
    """The one pass's sub-block scores of the chunks decaying by LIM or more, CPP chunks a program:
    their G_L read at once ([CPP, K]), then each strong one's sub-blocks into A. The other chunks'
    rows are left alone (the one pass makes their scores in registers). BKP: K padded."""
    chain_link(PDL)
    i_g, i_h = tl.program_id(0), tl.program_id(1)
    o_j = tl.arange(0, CPP)
    o_k = tl.arange(0, BKP)
    i_cs = i_g * CPP + o_j
    m_c = i_cs < NC
    b_GL = tl.load(GL + (i_cs.to(tl.int64)[:, None] * H + i_h) * K + o_k[None, :],
                   mask=m_c[:, None] & (o_k < K)[None, :], other=0.0)
    spans = -tl.min(b_GL, axis=1)   # the chunks' decay over all keys (0 past the last chunk)
    for j in range(0, CPP):
        if tl.sum(tl.where(o_j == j, spans, 0.0), axis=0) >= LIM:
            c, bos, eos = _chunk_bounds(offsets, chunk_indices, i_g * CPP + j)
            for i_b in range(0, BT // BC):
                # (in key blocks of BC: this rare path keeps the kernel's registers few)
                _sub_block_scores(q, k, gk, A, bos + c * BT, eos, i_b, i_h, H, K, BT, BC, BC, LIM, PREC)


@triton.jit
def _whole_chunk_scores(qd, kd, p_GL, A, c_start, eos, i_h, H: tl.constexpr, K: tl.constexpr,
                        BT: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    o_t = tl.arange(0, BT)
    r_t = c_start + o_t
    m_t = r_t < eos
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BK)):
        o_k = kb * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        p_tk = (r_t[:, None] * H + i_h) * K + o_k[None, :]
        b_qd = tl.load(qd + p_tk, mask=m_tk, other=0.0)
        b_kd = tl.load(kd + p_tk, mask=m_tk, other=0.0)
        b_GL = tl.load(p_GL + o_k, mask=m_k, other=0.0)
        b_qs = (b_qd.to(tl.float32) * tl.exp(-b_GL)[None, :]).to(b_qd.dtype)
        b_A += tl.dot(b_qs, tl.trans(b_kd), input_precision=PREC)
    b_A = tl.where(o_t[:, None] >= o_t[None, :], b_A, 0.0)
    tl.store(A + (r_t[:, None] * H + i_h) * BT + o_t[None, :], b_A.to(A.dtype.element_ty), mask=m_t[:, None])


@triton.jit
def _sub_block_scores(q, k, gk, A, c_start, eos, i_b, i_h, H: tl.constexpr, K: tl.constexpr,
                      BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, LIM: tl.constexpr,
                      PREC: tl.constexpr):
    """Rows of sub-block i_b of a chunk's scores A ([BC, BT], zero above the diagonal), from the inputs."""
    s0 = i_b * BC                                  # first row of the sub-block, chunk-local
    o_l = tl.arange(0, BC)
    o_j = tl.arange(0, BT)
    r_i, r_j = c_start + s0 + o_l, c_start + o_j
    m_i, m_j = r_i < eos, r_j < eos
    m_jn = (r_j + 1 < eos) & (o_j + 1 < s0)        # g_{j+1} for the sums from j+1 to the reference
    b_A = tl.zeros([BC, BT], dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BK)):
        o_k = kb * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_ik, m_jk = m_i[:, None] & m_k[None, :], m_j[:, None] & m_k[None, :]
        b_q = tl.load(q + (r_i[:, None] * H + i_h) * K + o_k[None, :], mask=m_ik, other=0.0)
        b_k = tl.load(k + (r_j[:, None] * H + i_h) * K + o_k[None, :], mask=m_jk, other=0.0)
        b_gi = log_decay(tl.load(gk + (r_i[:, None] * H + i_h) * K + o_k[None, :], mask=m_ik, other=0.0))
        b_gj = log_decay(tl.load(gk + (r_j[:, None] * H + i_h) * K + o_k[None, :], mask=m_jk, other=0.0))
        b_gjn = log_decay(tl.load(gk + ((r_j + 1)[:, None] * H + i_h) * K + o_k[None, :],
                                  mask=m_jn[:, None] & m_k[None, :], other=0.0))
        b_Gi = tl.cumsum(b_gi, axis=0)                                    # G_i − G_r, ≤ 0
        # G_r − G_j: Σ_{j<s≤r} g_s (≤ 0) before the sub-block, −Σ_{r<s≤j} g_s (≥ 0) inside it
        b_Ej = (tl.cumsum(b_gjn, axis=0, reverse=True)
                - tl.cumsum(tl.where(o_j[:, None] >= s0, b_gj, 0.0), axis=0))
        span = -tl.min(tl.sum(b_gi, axis=0), axis=0)                     # max_k (G_r − G_end)
        mild, strong = span < LIM, span >= LIM
        # columns before the sub-block always; the sub-block's own columns too when its decay is mild
        sel = o_j < s0 + tl.where(mild, BC, 0)
        b_kr = b_k.to(tl.float32) * tl.exp(tl.where(sel[:, None], b_Ej, float("-inf")))
        b_qr = b_q.to(tl.float32) * tl.exp(b_Gi)
        b_A += tl.dot(b_qr.to(b_q.dtype), tl.trans(b_kr.to(b_k.dtype)), input_precision=PREC)
        if strong:
            # strong decay inside the sub-block: e^{G_i − G_j} directly, one column j at a time
            b_qf = b_q.to(tl.float32)
            for jj in range(0, BC):
                r_c = c_start + s0 + jj
                b_kc = tl.load(k + (r_c * H + i_h) * K + o_k, mask=m_k & (r_c < eos), other=0.0).to(tl.float32)
                b_Gc = tl.cumsum(tl.where(o_l[:, None] > jj, b_gi, 0.0), axis=0)   # G_i − G_c, i ≥ c
                e = tl.exp(tl.where(o_l[:, None] >= jj, b_Gc, float("-inf")))
                col = tl.sum(b_qf * b_kc[None, :] * e, axis=1)
                b_A += tl.where(o_j[None, :] == s0 + jj, col[:, None], 0.0)
    b_A = tl.where((s0 + o_l)[:, None] >= o_j[None, :], b_A, 0.0)
    tl.store(A + (r_i[:, None] * H + i_h) * BT + o_j[None, :], b_A.to(A.dtype.element_ty), mask=m_i[:, None])


@triton.jit
def _output_kernel(qd, v, h, A, o, offsets, chunk_indices, scale,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr, PREC: tl.constexpr):
    """O = (Q ⊙ e^G) S_c + A V for one chunk and value block."""
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c, bos, eos = _chunk_bounds(offsets, chunk_indices, i_c)
    t_rows = bos + c * BT + tl.arange(0, BT)
    m_t = t_rows < eos
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    p_h = h + (i_c.to(tl.int64) * H + i_h) * K * V
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BK)):
        o_k = kb * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_qd = tl.load(qd + (t_rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :],
                       other=0.0)
        b_h = tl.load(p_h + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.0)
        b_o += tl.dot(b_qd, b_h.to(b_qd.dtype), input_precision=PREC)
    o_j = tl.arange(0, BT)
    b_A = tl.load(A + (t_rows[:, None] * H + i_h) * BT + o_j[None, :], mask=m_t[:, None], other=0.0)
    b_v = tl.load(v + (t_rows[:, None] * H + i_h) * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :],
                  other=0.0)
    b_o += tl.dot(b_A.to(b_v.dtype), b_v, input_precision=PREC)
    tl.store(o + (t_rows[:, None] * H + i_h) * V + o_v[None, :], (b_o * scale).to(o.dtype.element_ty),
             mask=m_t[:, None] & m_v[None, :])


@triton.jit
def _fused_fwd_kernel(qd, kd, GL, A, v, h0, h, o, ht, offsets, chunk_offsets, MAXC, scale,
                      H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                      BV: tl.constexpr, LIM: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
                      PREC: tl.constexpr, STORE: tl.constexpr, AHEAD: tl.constexpr = False, PDL: tl.constexpr = False,
                      TMA: tl.constexpr = False, q_d=None, k_d=None, v_d=None, o_d=None, T_seq=1):
    """The forward without a backward after _gate_kernel, in one pass: a program per (sequence, head,
    value tile) walks the chunks with the state in registers and does what the output and state
    kernels do for its chunk, its scores made whole in registers — or, for a chunk decaying by LIM or
    more, read from A, where _strong_scores_kernel put those chunks' sub-block scores. BK covers
    all of K. (Gates and sub-block scores stay in their own kernels: formed here, in the middle of
    the sequential walk, the gate work alone made the pass 4.7x slower, whatever its spills;
    kernels/results/experiments_2026-12-03b.md §1.) STORE (for
    a backward): also the state entering each chunk into h, and the first value tile's programs the
    mild chunks' scores into A, as the state and scores kernels would. AHEAD: each chunk's G_L loaded
    during the chunk before it (PASS_AHEAD). TMA (without STORE, an equal-length batch): qd, kd, v and o
    through the descriptors q_d, k_d, v_d, o_d of the batch (PASS_TMA; over segments,
    SEGMENTS_PASS_TMA)."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos, c0, nc = chunk_span(offsets, chunk_offsets, i_n)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    o_t = tl.arange(0, BT)
    m_k, m_v, m_kv, p_state, b_h = state_tile(h0, i_nh, o_k, o_v, K, V, BK, BV, HAS_H0)
    o_tk, o_tv = tile_offsets(H, K, V, BT, o_k, o_v)
    o_tt = o_t[:, None] * (H * BT) + o_t[None, :]
    i_b, t0 = batch_place(bos, T_seq)
    chain_link(PDL)   # (the state entering was read: the caller's, not the chain's)
    if AHEAD:   # chunk 0's G_L before the walk; each step loads the next chunk's
        n_GL = tl.load(GL + (c0 * H + i_h) * K + o_k, mask=m_k & (0 < nc), other=0.0)
    for c in range(0, MAXC):
        ok = c < nc
        if STORE:
            tl.store(h + ((c0 + c) * H + i_h) * K * V + p_state, b_h, mask=m_kv & ok)
        c_start = bos + c * BT
        m_t = (c_start + o_t < eos) & ok
        b_qd, b_kd, b_v = chunk_qkv(qd, kd, v, q_d, k_d, v_d, TMA, i_b, t0, c, c_start, i_h, i_v, m_t, m_k,
                                    m_v, o_tk, o_tv, H, K, V, BT, BK, BV)
        if AHEAD:
            b_GL = n_GL
            n_GL = tl.load(GL + ((c0 + c + 1) * H + i_h) * K + o_k, mask=m_k & (c + 1 < nc), other=0.0)
        else:
            b_GL = tl.load(GL + ((c0 + c) * H + i_h) * K + o_k, mask=m_k & ok, other=0.0)
        # the state enters the product in the input dtype, as the stored states of the two-pass path
        b_o = tl.dot(b_qd, b_h.to(b_qd.dtype), input_precision=PREC)
        if -tl.min(b_GL, axis=0) < LIM:
            b_qs = (b_qd.to(tl.float32) * tl.exp(-b_GL)[None, :]).to(b_qd.dtype)
            b_A = tl.dot(b_qs, tl.trans(b_kd), input_precision=PREC)
            if STORE:
                if i_v == 0:
                    tl.store(A + (c_start * H + i_h) * BT + o_tt,
                             tl.where(o_t[:, None] >= o_t[None, :], b_A, 0.0).to(A.dtype.element_ty),
                             mask=m_t[:, None])
        else:   # a strongly decaying chunk: its scores, by sub-blocks, from _gate_kernel
            b_A = tl.load(A + (c_start * H + i_h) * BT + o_tt, mask=m_t[:, None], other=0.0).to(tl.float32)
        b_A = tl.where(o_t[:, None] >= o_t[None, :], b_A, 0.0)
        b_o += tl.dot(b_A.to(b_v.dtype), b_v, input_precision=PREC)
        store_chunk(o, o_d, (b_o * scale).to(o.dtype.element_ty), TMA, i_b, t0, c, c_start, i_h, i_v, m_t, m_v,
                    o_tv, H, V, BT, BV)
        b_h = b_h * tl.exp(b_GL)[:, None] + tl.dot(tl.trans(b_kd), b_v, input_precision=PREC)
    if STORE_HT:
        tl.store(ht + i_nh.to(tl.int64) * K * V + p_state, b_h, mask=m_kv)


@triton.jit
def _dstate_kernel(qd, do, GL, dht, dh, dh0, offsets, chunk_offsets, MAXC, do_scale,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr, HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr, PREC: tl.constexpr,
                   SCALE_DO: tl.constexpr = False):
    """dh[c] = gradient of the state leaving chunk c; walks the chunks backwards. SCALE_DO: dO
    tiles times do_scale as loaded (DO_SCALE_IN_KERNELS); so in _dv_kernel and
    _dqk_inter_kernel."""
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos, c0, nc = chunk_span(offsets, chunk_offsets, i_n)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v, m_kv, p_state, b_dh = state_tile(dht, i_nh, o_k, o_v, K, V, BK, BV, HAS_DHT)
    for i in range(0, MAXC):
        c = nc - 1 - i
        ok = c >= 0
        tl.store(dh + ((c0 + c) * H + i_h) * K * V + p_state, b_dh, mask=m_kv & ok)
        t_rows = bos + c * BT + tl.arange(0, BT)
        m_t = (t_rows < eos) & (t_rows >= bos) & ok
        b_qd = tl.load(qd + (t_rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :],
                       other=0.0)
        b_do = load_scaled(do + (t_rows[:, None] * H + i_h) * V + o_v[None, :],
                           m_t[:, None] & m_v[None, :], do_scale, SCALE_DO)
        b_GL = tl.load(GL + ((c0 + c) * H + i_h) * K + o_k, mask=m_k & ok, other=0.0)
        b_dh = b_dh * tl.exp(b_GL)[:, None] + tl.dot(tl.trans(b_qd.to(b_do.dtype)), b_do, input_precision=PREC)
    if STORE_DH0:
        tl.store(dh0 + i_nh.to(tl.int64) * K * V + p_state, b_dh, mask=m_kv)


@triton.jit
def _dv_kernel(kd, v, A, do, dh, dv, dA, offsets, chunk_indices, do_scale,
               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
               BV: tl.constexpr, PREC: tl.constexpr, SCALE_DO: tl.constexpr = False,
               HEADS_INNER: tl.constexpr = False):
    """dV = Aᵀ dO + (K ⊙ e^{G_L − G}) dh[c], and dA = causal(dO Vᵀ), for one chunk (all of V)."""
    i_c, i_h = chunk_head(0, HEADS_INNER)
    c, bos, eos = _chunk_bounds(offsets, chunk_indices, i_c)
    t_rows = bos + c * BT + tl.arange(0, BT)
    m_t = t_rows < eos
    o_j = tl.arange(0, BT)
    p_state = dh + (i_c.to(tl.int64) * H + i_h) * K * V
    b_A = tl.load(A + (t_rows[:, None] * H + i_h) * BT + o_j[None, :], mask=m_t[:, None], other=0.0)
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)
    for vb in range(0, tl.cdiv(V, BV)):
        o_v = vb * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        p_tv = (t_rows[:, None] * H + i_h) * V + o_v[None, :]
        b_do = load_scaled(do + p_tv, m_tv, do_scale, SCALE_DO)
        b_v = tl.load(v + p_tv, mask=m_tv, other=0.0)
        b_dA += tl.dot(b_do, tl.trans(b_v), input_precision=PREC)
        b_dv = tl.dot(tl.trans(b_A).to(b_do.dtype), b_do, input_precision=PREC)
        for kb in range(0, tl.cdiv(K, BK)):
            o_k = kb * BK + tl.arange(0, BK)
            m_k = o_k < K
            b_kd = tl.load(kd + (t_rows[:, None] * H + i_h) * K + o_k[None, :],
                           mask=m_t[:, None] & m_k[None, :], other=0.0)
            b_dh = tl.load(p_state + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :],
                           other=0.0)
            b_dv += tl.dot(b_kd, b_dh.to(b_kd.dtype), input_precision=PREC)
        tl.store(dv + p_tv, b_dv, mask=m_tv)
    b_dA = tl.where(o_j[:, None] >= o_j[None, :], b_dA, 0.0)
    tl.store(dA + (t_rows[:, None] * H + i_h) * BT + o_j[None, :], b_dA, mask=m_t[:, None])


@triton.jit
def _dqk_intra_kernel(q, k, gk, qd, kd, GL, dA, dq, dk, offsets, chunk_indices,
                      H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
                      NB: tl.constexpr, LIM: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr,
                      HEADS_INNER: tl.constexpr = False):
    """Strictly intra-chunk dQ and dK (pairs i > j) of the rows of sub-block b.

    dq_i = Σ_{j<i} dA_ij k_j e^{G_i − G_j}  (factored about r, the row before b),
    dk_j = Σ_{i>j} dA_ij q_i e^{G_i − G_j}  (factored about e, the last row of b).
    The diagonal pairs and the inter-chunk parts are added by _dqk_inter_kernel. A chunk whose whole
    decay is mild is done by its first program at once, factored about the chunk's end.
    """
    i_kb = tl.program_id(0)
    i_c, i_h = chunk_head(1, HEADS_INNER)
    i_k, i_b = i_kb // NB, i_kb % NB
    c, bos, eos = _chunk_bounds(offsets, chunk_indices, i_c)
    c_start = bos + c * BT
    p_GL = GL + (i_c.to(tl.int64) * H + i_h) * K
    if _chunk_span(p_GL, K, BK) < LIM:
        if i_b == 0:
            _whole_chunk_dqk(gk, qd, kd, p_GL, dA, dq, dk, c_start, eos, i_k, i_h, H, K, BT, BK, PREC, FAST)
    else:
        _sub_block_dqk(q, k, gk, dA, dq, dk, c_start, eos, i_k, i_b, i_h, H, K, BT, BC, BK, LIM, PREC)


@triton.jit
def _whole_chunk_dqk(gk, qd, kd, p_GL, dA, dq, dk, c_start, eos, i_k, i_h, H: tl.constexpr, K: tl.constexpr,
                     BT: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr):
    """dq = e^{G − G_L} ⊙ (dA K̃), dk = e^{G_L − G} ⊙ (dAᵀ (Q̃ ⊙ e^{−G_L})), dA strictly lower,
    K̃ = K ⊙ e^{G_L − G}, Q̃ = Q ⊙ e^{G}: every factor ≤ e^{LIM}."""
    o_t = tl.arange(0, BT)
    r_t = c_start + o_t
    m_t = r_t < eos
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    p_tk = (r_t[:, None] * H + i_h) * K + o_k[None, :]
    b_dA = tl.load(dA + (r_t[:, None] * H + i_h) * BT + o_t[None, :], mask=m_t[:, None], other=0.0)
    b_dA = tl.where(o_t[:, None] > o_t[None, :], b_dA, 0.0)
    b_qd = tl.load(qd + p_tk, mask=m_tk, other=0.0)
    b_kd = tl.load(kd + p_tk, mask=m_tk, other=0.0)
    b_GL = tl.load(p_GL + o_k, mask=m_k, other=0.0)
    _, b_Gs, _ = _gates(gk, c_start, eos, True, i_h, o_k, m_k, H, K, BT, FAST)       # G_L − G
    dt = b_qd.dtype
    b_qs = (b_qd.to(tl.float32) * tl.exp(-b_GL)[None, :]).to(dt)
    b_dq = tl.dot(b_dA.to(dt), b_kd, input_precision=PREC) * tl.exp(-b_Gs)
    b_dk = tl.dot(tl.trans(b_dA).to(dt), b_qs, input_precision=PREC) * tl.exp(b_Gs)
    tl.store(dq + p_tk, b_dq, mask=m_tk)
    tl.store(dk + p_tk, b_dk, mask=m_tk)


@triton.jit
def _sub_block_dqk(q, k, gk, dA, dq, dk, c_start, eos, i_k, i_b, i_h, H: tl.constexpr, K: tl.constexpr,
                   BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, LIM: tl.constexpr, PREC: tl.constexpr):
    s0 = i_b * BC
    e0 = s0 + BC - 1
    o_l = tl.arange(0, BC)
    o_b = s0 + o_l
    o_t = tl.arange(0, BT)
    r_b, r_t = c_start + o_b, c_start + o_t
    m_b, m_t = r_b < eos, r_t < eos
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    m_bk, m_tk = m_b[:, None] & m_k[None, :], m_t[:, None] & m_k[None, :]
    p_b = (r_b[:, None] * H + i_h) * K + o_k[None, :]
    p_t = (r_t[:, None] * H + i_h) * K + o_k[None, :]
    b_qb = tl.load(q + p_b, mask=m_bk, other=0.0)
    b_qt = tl.load(q + p_t, mask=m_tk, other=0.0)
    b_kt = tl.load(k + p_t, mask=m_tk, other=0.0)
    m_bn = (r_b + 1 < eos) & (o_l + 1 < BC)
    m_tn = (r_t + 1 < eos) & (o_t + 1 < BT)
    b_gb = log_decay(tl.load(gk + p_b, mask=m_bk, other=0.0))
    b_gbn = log_decay(tl.load(gk + p_b + H * K, mask=m_bn[:, None] & m_k[None, :], other=0.0))
    b_gt = log_decay(tl.load(gk + p_t, mask=m_tk, other=0.0))
    b_gtn = log_decay(tl.load(gk + p_t + H * K, mask=m_tn[:, None] & m_k[None, :], other=0.0))
    span = -tl.min(tl.sum(b_gb, axis=0), axis=0)
    mild, strong = span < LIM, span >= LIM
    # dA rows of the sub-block [BC, BT] and its columns [BT, BC], strictly below the diagonal
    b_dA_rows = tl.load(dA + (r_b[:, None] * H + i_h) * BT + o_t[None, :], mask=m_b[:, None], other=0.0)
    b_dA_rows = tl.where(o_b[:, None] > o_t[None, :], b_dA_rows, 0.0)
    b_dA_cols = tl.load(dA + (r_t[:, None] * H + i_h) * BT + o_b[None, :], mask=m_t[:, None], other=0.0)
    b_dA_cols = tl.where(o_t[:, None] > o_b[None, :], b_dA_cols, 0.0)
    dt = b_qb.dtype
    # dQ: keys before the sub-block (and inside it when mild), both factors about r
    b_Gi = tl.cumsum(b_gb, axis=0)                                          # G_i − G_r
    b_Ej = (tl.cumsum(tl.where((o_t + 1 < s0)[:, None], b_gtn, 0.0), axis=0, reverse=True)
            - tl.cumsum(tl.where((o_t >= s0)[:, None], b_gt, 0.0), axis=0))  # G_r − G_j
    sel_j = o_t < s0 + tl.where(mild, BC, 0)
    b_kr = b_kt.to(tl.float32) * tl.exp(tl.where(sel_j[:, None], b_Ej, float("-inf")))
    b_dq = tl.dot(b_dA_rows.to(dt), b_kr.to(dt), input_precision=PREC) * tl.exp(b_Gi)
    # dK: queries after the sub-block (and inside it when mild), both factors about e
    b_Ge = tl.cumsum(tl.where((o_l < BC - 1)[:, None], b_gbn, 0.0), axis=0, reverse=True)   # G_e − G_j
    b_Ei = (tl.cumsum(tl.where((o_t > e0)[:, None], b_gt, 0.0), axis=0)
            - tl.cumsum(tl.where(((o_t >= s0) & (o_t < e0))[:, None], b_gtn, 0.0), axis=0, reverse=True))
    sel_i = o_t >= s0 + tl.where(mild, 0, BC)
    b_qe = b_qt.to(tl.float32) * tl.exp(tl.where(sel_i[:, None], b_Ei, float("-inf")))  # G_i − G_e
    b_dk = tl.dot(tl.trans(b_dA_cols).to(dt), b_qe.to(dt), input_precision=PREC) * tl.exp(b_Ge)
    if strong:
        for jj in range(0, BC):
            r_c = c_start + s0 + jj
            ok = r_c < eos
            # dq_i += dA_ic k_c e^{G_i − G_c} for rows i > c of the sub-block
            b_kc = tl.load(k + (r_c * H + i_h) * K + o_k, mask=m_k & ok, other=0.0).to(tl.float32)
            b_dAc = tl.load(dA + (r_b * H + i_h) * BT + s0 + jj, mask=m_b & (o_l > jj), other=0.0)
            b_Gc = tl.cumsum(tl.where(o_l[:, None] > jj, b_gb, 0.0), axis=0)
            b_dq += b_dAc[:, None] * b_kc[None, :] * tl.exp(tl.where(o_l[:, None] > jj, b_Gc, float("-inf")))
            # dk_j += dA_cj q_c e^{G_c − G_j} for rows j < c of the sub-block
            b_qc = tl.load(q + (r_c * H + i_h) * K + o_k, mask=m_k & ok, other=0.0).to(tl.float32)
            b_dAr = tl.load(dA + (r_c * H + i_h) * BT + o_b, mask=ok & (o_l < jj), other=0.0)
            b_Gj = tl.cumsum(tl.where(o_l[:, None] < jj, b_gbn, 0.0), axis=0, reverse=True)
            b_dk += b_dAr[:, None] * b_qc[None, :] * tl.exp(tl.where(o_l[:, None] < jj, b_Gj, float("-inf")))
    tl.store(dq + p_b, b_dq, mask=m_bk)
    tl.store(dk + p_b, b_dk, mask=m_bk)


@triton.jit
def _dqk_inter_kernel(q, k, v, gk, h, do, dh, dA, dq, dk, dqo, dko, dg, offsets, chunk_indices, do_scale,
                      H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                      BV: tl.constexpr, DG: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr,
                      SCALE_DO: tl.constexpr = False, HEADS_INNER: tl.constexpr = False):
    """Completes dQ, dK (inter-chunk part and the diagonal pairs) and, with DG, the decay gradient

    dg_t = e^{G_L} Σ_v S_c ⊙ dh_c + Σ_{i≥t} q_i ⊙ dq_i^inter + Σ_{j<t} k_j ⊙ dk_j^inter
           + Σ_{i≥t} (q_i ⊙ dq_i^strict − k_i ⊙ dk_i^strict)

    where the last sum equals Σ_{i≥t>j} of the intra-chunk pair terms (the pairs on both sides of t
    cancel); the diagonal pairs, by far the largest under strong decay, never enter it.
    """
    i_k = tl.program_id(0)
    i_c, i_h = chunk_head(1, HEADS_INNER)
    c, bos, eos = _chunk_bounds(offsets, chunk_indices, i_c)
    t_rows = bos + c * BT + tl.arange(0, BT)
    m_t = t_rows < eos
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    p_tk = (t_rows[:, None] * H + i_h) * K + o_k[None, :]
    p_state = (i_c.to(tl.int64) * H + i_h) * K * V
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_hdh = tl.zeros([BK], dtype=tl.float32)
    for vb in range(0, tl.cdiv(V, BV)):
        o_v = vb * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        p_tv = (t_rows[:, None] * H + i_h) * V + o_v[None, :]
        b_v = tl.load(v + p_tv, mask=m_tv, other=0.0)
        b_do = load_scaled(do + p_tv, m_tv, do_scale, SCALE_DO)
        m_kv = m_k[:, None] & m_v[None, :]
        b_h = tl.load(h + p_state + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)
        b_dh = tl.load(dh + p_state + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)
        b_dq += tl.dot(b_do, tl.trans(b_h.to(b_v.dtype)), input_precision=PREC)
        b_dk += tl.dot(b_v, tl.trans(b_dh.to(b_v.dtype)), input_precision=PREC)
        if DG:
            b_hdh += tl.sum(b_h.to(tl.float32) * b_dh.to(tl.float32), axis=1)
    b_G, b_Gs, b_GL = _gates(gk, bos + c * BT, eos, True, i_h, o_k, m_k, H, K, BT, FAST)
    b_dq = b_dq * tl.exp(b_G)
    b_dk = b_dk * tl.exp(b_Gs)
    b_q = tl.load(q + p_tk, mask=m_tk, other=0.0).to(tl.float32)
    b_k = tl.load(k + p_tk, mask=m_tk, other=0.0).to(tl.float32)
    b_dqs = tl.load(dq + p_tk, mask=m_tk, other=0.0)
    b_dks = tl.load(dk + p_tk, mask=m_tk, other=0.0)
    b_dAd = tl.load(dA + (t_rows * H + i_h) * BT + tl.arange(0, BT), mask=m_t, other=0.0)
    # the finished gradients go straight to the inputs' dtype (no separate cast pass)
    tl.store(dqo + p_tk, (b_dq + b_dqs + b_dAd[:, None] * b_k).to(dqo.dtype.element_ty), mask=m_tk)
    tl.store(dko + p_tk, (b_dk + b_dks + b_dAd[:, None] * b_q).to(dko.dtype.element_ty), mask=m_tk)
    if DG:
        b_suf = tl.cumsum(b_q * (b_dq + b_dqs) - b_k * b_dks, axis=0, reverse=True)
        _, b_pre = tl.associative_scan((b_k * b_dk, tl.zeros_like(b_dk)), 0, _excl_combine)
        b_dg = (tl.exp(b_GL) * b_hdh)[None, :] + b_suf + b_pre
        tl.store(dg + p_tk, b_dg.to(dg.dtype.element_ty), mask=m_tk)


_prec = _scalar._prec   # (FP32_PRODUCTS for fp32 inputs, as the scalar family)


def _lim(dtype: torch.dtype) -> float:
    """Largest decay across a sub-block that is factored into the scores' matmul.

    The factor e^{G_r − G_j} ≤ e^{LIM} scales keys in the matmul's input dtype: e^8 ≈ 3e3 keeps fp16
    far from its 65504 ceiling; bf16 and fp32 have fp32's range, where e^20 ≈ 5e8 costs no precision
    (each factor is exact to rounding, and no terms cancel that did not before).
    """
    return 8.0 if dtype == torch.float16 else 20.0


def _blocks(K: int, V: int) -> tuple[int, int]:
    return max(16, min(64, next_pow2(K))), max(16, min(64, next_pow2(V)))


def _gated(q: Tensor, k: Tensor, gk: Tensor, offsets: Tensor, chunk_indices: Tensor,
           BK: int, pdl: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Q ⊙ e^{G}, K ⊙ e^{G_L − G} ([T, H, K], the inputs' dtype) and G_L ([NC, H, K], fp32)."""
    Tt, H, K = q.shape
    NC = chunk_indices.shape[0]
    qd, kd = _alloc(Tt, H, K, dtype=q.dtype, device=q.device), _alloc(Tt, H, K, dtype=k.dtype, device=q.device)
    GL = _alloc(NC, H, K, dtype=torch.float32, device=q.device)
    if NC:
        grid, inner = chunk_grid((cdiv(K, BK),), NC, H, on=GATE_HEADS_INNER)
        products(_gate_kernel, "key.gate")[grid](
            q, k, gk, qd, kd, GL, offsets, chunk_indices, H=H, K=K, BT=BT, BK=BK, FAST=_fast(q.dtype),
            HEADS_INNER=inner, LOADS_FIRST=GATE_LOADS_FIRST, EX2=_gate_ex2(q.dtype),
            **dependent_launch(pdl, q.device, first=True), **_launch("gate", q.dtype, K, K))   # no value tile
    return qd, kd, GL


def _one_pass(q, k, v, gk, h0, ht, offsets, chunk_offsets, chunk_indices, maxc: int, nseg: int, scale: float,
              keep: bool) -> tuple[Tensor, tuple | None]:
    """The forward in two kernels: the gate kernel (and the strong chunks' scores, a kernel that
    returns at once where none is), then the one pass over whole sequences (nseg = 1), or over nseg
    segments of each (an equal-length batch) that run in parallel, each from the state its segment
    pass gives it. Writes the final state into ht. With ``keep``, also what the backward reads —
    (h, A, qd, kd, GL) — else None."""
    Tt, H, K = q.shape
    V = v.shape[-1]
    N = offsets.numel() - 1
    BK, BV = _blocks(K, V)
    prec, lim = _prec(q.dtype), _lim(q.dtype)
    o = _alloc(Tt, H, V, dtype=v.dtype, device=q.device)
    A = _alloc(Tt, H, BT, dtype=_state_dtype(q.dtype), device=q.device)   # strong chunks' rows only
    pdl = PASS_PDL and nseg == 1
    qd, kd, GL = _gated(q, k, gk, offsets, chunk_indices, BK, pdl)
    NC = chunk_indices.shape[0]
    if NC:
        cpp = STRONG_SCORES_CHUNKS
        _strong_scores_kernel[(cdiv(NC, cpp), H)](
            q, k, gk, GL, A, offsets, chunk_indices, NC, H=H, K=K, BT=BT, BC=BC, BKP=max(16, next_pow2(K)),
            CPP=cpp, LIM=lim, PREC=prec, **dependent_launch(pdl, q.device),
            **_launch("strong_scores", q.dtype, K, V))
    h = _alloc(NC, H, K, V, dtype=_state_dtype(q.dtype), device=q.device) if keep else None
    saved = (h, A, qd, kd, GL) if keep else None
    BVf = min(_scalar.FUSED_BV, max(16, next_pow2(V)))
    BKf = max(16, next_pow2(K))
    launch = dict(H=H, K=K, V=V, BT=BT, BK=BKf, BV=BVf, LIM=lim, PREC=prec, STORE=keep, AHEAD=PASS_AHEAD,
                  **_launch("fused_fwd", q.dtype, K, V))
    fused_fwd = products(_fused_fwd_kernel, "key.pass")
    if nseg == 1:
        desc = tensor_descriptors(PASS_TMA and not keep, offsets, BT, q=(qd, BKf), k=(kd, BKf), v=(v, BVf),
                                  o=(o, BVf))
        fused_fwd[(cdiv(V, BVf), N * H)](qd, kd, GL, A, v, h0, h, o, ht, offsets, chunk_offsets, maxc,
                                         scale, HAS_H0=h0 is not None, STORE_HT=ht is not None,
                                         **dependent_launch(pdl and NC > 0, q.device), **desc, **launch)
        return o, saved
    B, T = offsets._dense
    s_offsets, s_chunk_offsets, per = _scalar._segment_layout(B, T, nseg, q.device)
    NS = B * nseg
    # each segment's own state from zero, then the states entering the segments, then the pass;
    # segments are whole chunks in order, so a segment's chunk c0 + c is the batch's own (GL, A)
    # (by pieces of a segment with SEGMENT_STATE_CHUNKS: shorter chains, more programs; the last
    # segments' own states only for ht)
    pc = _scalar.segment_pieces(B, T, nseg, per, ht is not None, q.device)
    dS = _alloc(NS * pc.split, H, K, V, dtype=torch.float32, device=q.device)
    # (each piece's log decay per key from the same kernel, with SEGMENT_DECAY_IN_SCAN)
    logw = _alloc(NS * pc.split, H, K, dtype=torch.float32, device=q.device) if _scalar.SEGMENT_DECAY_IN_SCAN \
        else None
    # (SEGMENT_STATE_TILES, each at most the padded head dim)
    BKs, BVs = (min(d, t) for d, t in zip(_scalar._tiles(K, V), SEGMENT_STATE_TILES))
    products(_state_kernel, "key.segment_state")[(cdiv(K, BKs), cdiv(V, BVs), pc.count * H)](
        kd, v, GL, None, None, dS, pc.offsets, pc.chunk_offsets, pc.most, H=H, K=K, V=V, BT=BT, BK=BKs, BV=BVs,
        HAS_H0=False, STORE_HT=True, PREC=prec, STORE_H=False, logw=logw, STORE_LOGW=logw is not None,
        **pc.skip_kw, **_launch("segment_state", q.dtype, K, V))
    if logw is None:   # a segment's log decay per key: the sum of its chunks' G_L, in fp64
        nc = cdiv(T, BT)
        GLp = torch.nn.functional.pad(GL.view(B, nc, H, K).double(), (0, 0, 0, 0, 0, nseg * per - nc))
        logw = GLp.view(B, nseg, per, H, K).sum(2).float().reshape(NS, H, K)
    # (in bf16 for bf16 inputs without a backward: kernels.diag.chunk.SEGMENT_ENTRY_16BIT)
    S_in = _scalar.segment_states(dS, logw, h0, ht, nseg, pc.split, SEGMENT_PASS_ROWS,
                                  dtype=torch.float32 if keep else _scalar._entry_dtype(q.dtype))
    desc = tensor_descriptors(SEGMENTS_PASS_TMA and not keep, offsets, BT, q=(qd, BKf), k=(kd, BKf), v=(v, BVf),
                              o=(o, BVf))
    fused_fwd[(cdiv(V, BVf), NS * H)](qd, kd, GL, A, v, S_in, h, o, None, s_offsets, s_chunk_offsets,
                                      per, scale, HAS_H0=True, STORE_HT=False, **desc, **launch)
    return o, saved


def _passes(offsets: Tensor, N: int, H: int, V: int, K: int, device, keep: bool) -> int | None:
    """None for the four kernels, else the one pass over that many segments per sequence
    (kernels.diag.chunk._fused_segments without the scalar family's limits): on CUDA by default
    (FUSED_FORWARD None), anywhere when forced, never when off; with a backward to follow too (``keep``:
    the pass then stores what the backward reads). A packed batch with too few sequence-heads for the
    SMs keeps the four kernels. H200, bf16, H = 16, K = V = 128, B·T = 32K (`python -m kernels.bench
    --ops key --impls ours,ours-fused`, 2026-12-01), forward alone / forward + backward in ms:
    T = 1K 0.534 / 3.65 against 1.02 / 3.93 for the four kernels, 4K 0.526 / 3.63 against 1.02 / 3.89;
    over segments 16K 0.829 / 4.08 against 1.22 / 4.61, 32K 0.875 / 4.31 against 1.22 / 4.59 (with
    kernels.diag.chunk.SEGMENT_PROGRAMS_PER_SM = 8 instead of 2 since: 0.679 / 3.94 and 0.698 / 4.17)."""
    forced = _scalar.FUSED_FORWARD
    if forced is False or (forced is None and torch.device(device).type != "cuda"):
        return None
    return _scalar._fused_segments(offsets, N, H, V, K, device, keep, auto=False)


class ChunkKeyDecay(torch.autograd.Function):
    """Autograd wrapper; tensors flattened to [T_total, H, ·], states [N, H, K, V] in fp32."""

    @staticmethod
    def forward(ctx, q, k, v, gk, h0, offsets, store_ht: bool, scale: float = 1.0):
        Tt, H, K = q.shape
        ctx.scale = scale
        V = v.shape[-1]
        N = offsets.numel() - 1
        BK, BV = _blocks(K, V)
        NK, NV = cdiv(K, BK), cdiv(V, BV)
        chunk_offsets, chunk_indices, maxc = chunk_layout(offsets, BT)
        NC = chunk_indices.shape[0]
        prec, lim = _prec(q.dtype), _lim(q.dtype)
        ht = _alloc(N, H, K, V, dtype=torch.float32, device=q.device) if store_ht else None
        keep = any(ctx.needs_input_grad[:5])   # what the backward reads is stored only for one
        nseg = _passes(offsets, N, H, V, K, q.device, keep)
        if nseg is not None:
            o, saved = _one_pass(q, k, v, gk, h0, ht, offsets, chunk_offsets, chunk_indices, maxc, nseg, scale, keep)
        else:   # the four kernels (their states and scores are what the backward reads)
            h = _alloc(NC, H, K, V, dtype=_state_dtype(q.dtype), device=q.device)
            A = _alloc(Tt, H, BT, dtype=_state_dtype(q.dtype), device=q.device)   # enters bf16 products only
            o = _alloc(Tt, H, V, dtype=v.dtype, device=q.device)
            qd, kd, GL = _gated(q, k, gk, offsets, chunk_indices, BK)
            _state_kernel[(NK, NV, N * H)](
                kd, v, GL, h0, h, ht, offsets, chunk_offsets, maxc, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV,
                HAS_H0=h0 is not None, STORE_HT=store_ht, PREC=prec, **_launch("state", q.dtype, K, V))
            if NC:
                _scores_kernel[(BT // BC, NC, H)](q, k, gk, qd, kd, GL, A, offsets, chunk_indices, H=H, K=K,
                                                  BT=BT, BC=BC, BK=BK, LIM=lim, PREC=prec,
                                                  **_launch("scores", q.dtype, K, V))
                _output_kernel[(NV, NC, H)](qd, v, h, A, o, offsets, chunk_indices, scale, H=H, K=K, V=V, BT=BT,
                                            BK=BK, BV=BV, PREC=prec, **_launch("output", q.dtype, K, V))
            saved = (h, A, qd, kd, GL)
        if keep:
            h, A, qd, kd, GL = saved
            ctx.save_for_backward(q, k, v, gk, h0, offsets, h, A, chunk_offsets, chunk_indices, qd, kd, GL)
            ctx.maxc = maxc
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, gk, h0, offsets, h, A, chunk_offsets, chunk_indices, qd, kd, GL = ctx.saved_tensors
        Tt, H, K = q.shape
        V = v.shape[-1]
        N = offsets.numel() - 1
        NC = chunk_indices.shape[0]
        BK, BV = _blocks(K, V)
        NK, NV = cdiv(K, BK), cdiv(V, BV)
        prec, lim = _prec(q.dtype), _lim(q.dtype)
        want_dg = ctx.needs_input_grad[3]
        # o = scale · (what the kernels compute): every gradient through o carries the scale: dO
        # times it in torch, or in the kernels as they load it (DO_SCALE_IN_KERNELS)
        sdo = DO_SCALE_IN_KERNELS and ctx.scale != 1.0
        do = do.contiguous() if sdo or ctx.scale == 1.0 else do * ctx.scale
        dev = q.device
        dh = _alloc(NC, H, K, V, dtype=_state_dtype(q.dtype), device=dev)
        dh0 = _alloc(N, H, K, V, dtype=torch.float32, device=dev) if h0 is not None else None
        BKd, BVd = _scalar.dstate_tiles(BK, BV)   # (the scalar module's DSTATE_TILES, where set)
        _dstate_kernel[(cdiv(K, BKd), cdiv(V, BVd), N * H)](
            qd, do, GL, dht.contiguous() if dht is not None else None, dh, dh0, offsets, chunk_offsets,
            ctx.maxc, ctx.scale, H=H, K=K, V=V, BT=BT, BK=BKd, BV=BVd, HAS_DHT=dht is not None,
            STORE_DH0=h0 is not None, PREC=prec, SCALE_DO=sdo, **_launch("dstate", q.dtype, K, V))
        dq = _alloc(Tt, H, K, dtype=torch.float32, device=dev)
        dk = _alloc(Tt, H, K, dtype=torch.float32, device=dev)
        dv = _alloc(Tt, H, V, dtype=v.dtype, device=dev)   # written once: in v's dtype
        dA = _alloc(Tt, H, BT, dtype=torch.float32, device=dev)
        dqo, dko = _alloc(Tt, H, K, dtype=q.dtype, device=dev), _alloc(Tt, H, K, dtype=k.dtype, device=dev)
        dg = _alloc(Tt, H, K, dtype=gk.dtype, device=dev) if want_dg else None
        if NC:
            grid, inner = chunk_grid((), NC, H)
            _dv_kernel[grid](kd, v, A, do, dh, dv, dA, offsets, chunk_indices, ctx.scale, HEADS_INNER=inner, H=H, K=K,
                             V=V, BT=BT, BK=BK, BV=BV, PREC=prec, SCALE_DO=sdo, **_launch("dv", q.dtype, K, V))
            NB = BT // BC
            grid, inner = chunk_grid((NK * NB,), NC, H)
            _dqk_intra_kernel[grid](q, k, gk, qd, kd, GL, dA, dq, dk, offsets, chunk_indices, HEADS_INNER=inner,
                                    H=H, K=K, BT=BT, BC=BC, BK=BK, NB=NB, LIM=lim, PREC=prec,
                                    FAST=_fast(q.dtype), **_launch("dqk_intra", q.dtype, K, V))
            grid, inner = chunk_grid((NK,), NC, H)
            _dqk_inter_kernel[grid](q, k, v, gk, h, do, dh, dA, dq, dk, dqo, dko, dg, offsets, chunk_indices,
                                    ctx.scale, HEADS_INNER=inner, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, DG=want_dg,
                                    PREC=prec, FAST=_fast(q.dtype), SCALE_DO=sdo,
                                    **_launch("dqk_inter", q.dtype, K, V))
        return dqo, dko, dv, dg, dh0, None, None, None
