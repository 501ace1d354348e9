"""kernels.compile_check: every chunked kernel family compiled for sm_90 on the CPU, as launched.

The interpreter accepts things the GPU compiler does not, so CI compiles each family once for the
H200's architecture (Triton ships ptxas) in a process of its own, without TRITON_INTERPRET.
"""

import os
import subprocess
import sys

import pytest

# (family, kernels its forward paths and backward must launch)
FAMILIES = [
    ("scalar", {"_state_kernel", "_output_kernel", "_fused_fwd_kernel", "_segment_pass_kernel", "_dstate_kernel",
                "_dqdk_kernel", "_dv_kernel"}),
    ("key", {"_gate_kernel", "_state_kernel", "_scores_kernel", "_output_kernel", "_fused_fwd_kernel",
             "_strong_scores_kernel",
             "_segment_pass_kernel", "_dstate_kernel", "_dv_kernel", "_dqk_intra_kernel", "_dqk_inter_kernel"}),
    ("delta", {"_ut_kernel", "_state_kernel", "_segment_chain_kernel", "_dstate_kernel", "_dqkw_kernel",
               "_wy_bwd_kernel"}),
    ("titans", {"_prep_kernel", "_state_kernel", "_output_kernel", "_dstate_kernel", "_grad_kernel",
                "_dgate_kernel", "_fwd_kernel", "_bwd_kernel"}),
]


def _run(*args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", "kernels.compile_check", *args], capture_output=True, text=True,
                          env=env, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))), timeout=600)


@pytest.mark.parametrize("family,kernels", FAMILIES)
def test_every_kernel_of_a_family_compiles_for_sm90(family, kernels):
    """bf16 at K = V = 64 with the segments: every kernel a row, none over shared memory, registers read."""
    res = _run("--family", family, "--dtype", "bf16", "--K", "64", "--segments")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in res.stdout.splitlines() if line.startswith(f"| {family} |")]
    assert {r[3].strip() for r in rows} >= kernels, res.stdout
    assert all(r[8].strip().isdigit() and int(r[8]) <= 255 for r in rows), res.stdout   # registers a thread
    assert "0 kernels over the 227 KB of shared memory of sm_90" in res.stdout
    if family == "titans":   # both kernels, both directions
        assert {r[4].strip() for r in rows} == {f"{f} {d}" for f in ("chunked", "recurrent")
                                                for d in ("forward", "backward")}, rows
    if family in ("scalar", "key"):   # each forward path names itself
        where = {r[4].strip() for r in rows}
        assert {"two passes forward", "one pass forward", "segments forward", "backward"} <= where, where


def test_a_launchs_register_cap_reaches_the_compiler():
    """A LAUNCH entry's maxnreg is compiled with, as the launch passes it (the report used to drop it
    and print the uncapped build's registers)."""
    res = _run("--family", "scalar", "--dtype", "bf16", "--K", "64", "--set",
               "kernels.diag.chunk.LAUNCH[state]={'num_warps': 4, 'num_stages': 2, 'maxnreg': 96}")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in res.stdout.splitlines() if "_state_kernel" in line]
    assert rows and all(int(r[8]) <= 96 for r in rows), rows


def test_launches_are_specialised_as_on_the_gpu():
    """Each launch is compiled with the alignment marks Triton's launcher gives it on the GPU, so the
    pointer loads of the delta rule's scans are vectorised and pipelined (asynchronous copies in the PTX;
    without the marks there were none, and ptxas reported spills the launched build does not have).
    With --sass, the SASS instructions of each kernel's longest loop and of all of it: the scans have a
    chunk loop, the UT kernel none."""
    res = _run("--family", "delta", "--dtype", "bf16", "--K", "128", "--sass")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    rows = {(r[3].strip(), r[4].strip()): r for r in
            (line.split("|")[1:-1] for line in res.stdout.splitlines() if line.startswith("| delta |"))}
    # (unmarked, both builds had none)
    assert int(rows[("_output_kernel", "forward")][10]) > 0, res.stdout
    assert int(rows[("_dqkw_kernel", "backward")][10]) > 0, res.stdout
    loop, total = (x.strip() for x in rows[("_state_kernel", "forward, alone")][12].split("/"))
    assert 100 < int(loop) < int(total), res.stdout
    loop, total = (x.strip() for x in rows[("_ut_kernel", "forward")][12].split("/"))
    assert loop == "-" and int(total) > 1000, res.stdout


_LISTING = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_1:
        /*0010*/                   IADD3 R2, R2, 0x1, RZ ;
.L_x_2:
        /*0020*/                   FADD R3, R3, R4 ;
        /*0030*/                   ISETP.GE.AND P0, PT, R2, 0x8, PT ;
        /*0040*/               @!P0 BRA `(.L_x_2) ;
        /*0050*/                   FMUL R3, R3, R3 ;
        /*0060*/               @!P0 BRA `(.L_x_1) ;
        /*0070*/                   BRA `(.L_x_3) ;
        /*0080*/                   EXIT ;
.L_x_3:
        /*0090*/                   BRA `(.L_x_3) ;
"""


def test_sass_counts_the_longest_loop(monkeypatch):
    """sass_counts: the longest span from a label back to a branch to it (the outer loop, 6 instructions,
    not the inner one of 3), not a forward branch nor the one-instruction loop that ends a kernel; and
    every instruction (10). Without a backward branch, no loop."""
    monkeypatch.setenv("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "1"))   # (as above)
    from kernels.compile_check import sass_counts

    assert sass_counts(_LISTING) == (6, 10)
    assert sass_counts(_LISTING.replace("@!P0 BRA `(.L_x_1)", "NOP")) == (3, 10)
    assert sass_counts("        /*0000*/                   EXIT ;\n") == (None, 1)


@pytest.mark.parametrize("args,message", [
    (["--family", "gla"], "--family: gla not one of scalar, key, delta, titans"),
    (["--dtype", "fp8"], "--dtype: fp8 not one of bf16, fp16, fp32"),
    (["--K", "64,x"], "--K: comma-separated integers, got '64,x'"),
    (["--set", "kernels.diag.chunk.NOPE=1"], "has no NOPE"),
])
def test_bad_arguments_are_refused_before_compiling(monkeypatch, capsys, args, message):
    # its import drops TRITON_INTERPRET (it compiles for the GPU): put back for the tests after this one
    monkeypatch.setenv("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "1"))
    from kernels import compile_check

    monkeypatch.setattr(compile_check, "check", lambda *a, **kw: pytest.fail("compiled despite a bad argument"))
    with pytest.raises(SystemExit) as e:
        compile_check.main(args)
    assert e.value.code == 2 and message in capsys.readouterr().err


def _chained_rows(script: str) -> tuple[list, set]:
    """Run a script printing (switch on, kernel, label, built as a chain link) rows, outside the
    interpreter: its rows, and the (kernel, label) chained with the switch on; none may be without it."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [line.split() for line in res.stdout.splitlines()]
    assert not [r for r in rows if r[0] == "False" and r[3] == "True"], rows
    return rows, {(r[1], r[2]) for r in rows if r[0] == "True" and r[3] == "True"}


_PDL_ROWS = """
import torch, kernels.compile_check as cc, kernels.diag.chunk as dc
for on in (False, True):
    for r in cc.check_diag("scalar", torch.bfloat16, 64, 64, 90, True,
                           [(dc, "SEGMENT_PDL", on), (dc, "SEGMENT_ENTRY_16BIT", True)]):
        print(on, r["kernel"], r["label"].replace(" ", "_"), r["pdl"])
"""


def test_segments_chain_their_launches_with_the_switch():
    """SEGMENT_PDL: the forward over segments' three kernels are built as links of a dependent-launch
    chain (their wait in the PTX), and no other kernel; without it none is."""
    rows, chained = _chained_rows(_PDL_ROWS)
    # (the scan again alone: its entering states in bf16 there, SEGMENT_ENTRY_16BIT)
    assert chained == {("_state_kernel", "segments_forward"), ("_segment_pass_kernel", "segments_forward"),
                       ("_segment_pass_kernel", "segments,_alone"), ("_fused_fwd_kernel", "segments_forward"),
                       ("_fused_fwd_kernel", "segments,_alone")}, rows


_KEY_PDL_ROWS = """
import torch, kernels.compile_check as cc, kernels.diag.chunk_key as ck
for on in (False, True):
    for r in cc.check_diag("key", torch.bfloat16, 64, 64, 90, False, [(ck, "PASS_PDL", on)]):
        print(on, r["kernel"], r["label"].replace(" ", "_"), r["pdl"])
"""


def test_gla_one_pass_chains_its_launches_with_the_switch():
    """chunk_key.PASS_PDL: GLA's one pass over whole sequences (gate kernel, strong chunks' scores, the
    pass) is built as a dependent-launch chain, with and without a backward to follow, and no other
    kernel (two passes, backward); without it none is."""
    rows, chained = _chained_rows(_KEY_PDL_ROWS)
    assert chained == {("_gate_kernel", "one_pass_forward"), ("_strong_scores_kernel", "one_pass_forward"),
                       ("_fused_fwd_kernel", "one_pass_forward"), ("_fused_fwd_kernel", "one_pass,_alone")}, rows


_TTGIR = """
  tt.func public @k(%p: !tt.ptr<f32>) {
    %bos_3 = tt.load %p : !tt.ptr<f32>
    %b_h:2 = scf.for %c = %c0_i32 to %n step %c1_i32 iter_args(%a = %x) -> (tensor<64xf32>) : i32 {
      %b_beta_next_151 = tt.load %q, %m, %o : tensor<64x!tt.ptr<bf16>, #blocked>
      %b_k_7 = ttg.async_copy_global_to_local %r, %buf : tensor<64x64x!tt.ptr<bf16>, #blocked>
      %0 = scf.if %strong -> (tensor<64x64xf32>) {
        %b_A_9 = tt.load %s, %m2 : tensor<64x64x!tt.ptr<bf16>, #blocked1>
        scf.yield %b_A_9 : tensor<64x64xf32>
      }
      scf.yield %a : tensor<64xf32>
    } loc(#loc12)
    %after_5 = tt.load %w : !tt.ptr<f32>
    tt.return
  }
"""


def test_loads_left_in_loops_are_named(monkeypatch):
    """The report's last column: loads a loop body still issues itself (a branch's included), named by
    their variable; none outside loops, none copied asynchronously."""
    monkeypatch.setenv("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "1"))
    from kernels.compile_check import loads_in_loops

    assert loads_in_loops(_TTGIR) == ["b_beta_next", "b_A"]
    assert loads_in_loops(_TTGIR.split("%b_h:2")[0]) == []   # the kernel's start: no loop yet
