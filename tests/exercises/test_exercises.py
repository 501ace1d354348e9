"""The exercises: every check passes on the reference solution and fails on the untouched stub.

Run one exercise with its marker, e.g. ``pytest -m ex01 tests/exercises``.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `exercises` is a top-level folder of the repository
    sys.path.insert(0, str(ROOT))

import exercises  # noqa: E402
from exercises.__main__ import main  # noqa: E402


def _marked(number: int, *values):
    return pytest.param(number, *values, marks=getattr(pytest.mark, f"ex{number:02d}"),
                        id=f"ex{number:02d}" + "".join(f"-{getattr(v, '__name__', v)}" for v in values))


NUMBERS = [_marked(n) for n in exercises.EXERCISES]
CHECKS = [_marked(n, c) for n in exercises.EXERCISES for c in exercises.checks(n)]


@pytest.mark.parametrize("number, check", CHECKS)
def test_solution_passes(number, check):
    check(exercises.load(number, solution=True))


@pytest.mark.parametrize("number, check", CHECKS)
def test_stub_raises_not_implemented(number, check):
    with pytest.raises(NotImplementedError, match=f"exercise {number}"):
        check(exercises.load(number))


@pytest.mark.parametrize("number", NUMBERS)
def test_stub_and_solution_share_the_signature(number):
    stub, solution = exercises.load(number), exercises.load(number, solution=True)
    assert inspect.signature(stub) == inspect.signature(solution)
    assert stub.__doc__ and "Args:" in stub.__doc__ and "Returns:" in stub.__doc__


@pytest.mark.parametrize("number", NUMBERS)
def test_exercise_folder_is_complete(number):
    folder = ROOT / "exercises" / exercises.EXERCISES[number]
    for name in ("README.md", "stub.py", "solution.py", "check.py"):
        assert (folder / name).is_file(), f"{folder.name}/{name} is missing"
    assert folder.name.startswith(f"ex{number:02d}_")


@pytest.mark.parametrize("number", NUMBERS)
@pytest.mark.parametrize("solution, code", [(True, 0), (False, 1)], ids=["solution", "stub"])
def test_command_line_check(number, solution, code):
    cmd = [sys.executable, "-m", "exercises", "check", str(number)] + ["--solution"] * solution
    env = {**os.environ, "DSF_EXERCISE_EXAMPLES": "10"}
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == code, run.stdout + run.stderr
    n = len(exercises.checks(number))
    assert f"{n if solution else 0} of {n} checks pass" in run.stdout
    assert ("TODO" in run.stdout) != solution


def test_list_and_unknown_exercise(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(folder in out for folder in exercises.EXERCISES.values())
    assert main(["check", "99"]) == 2
    assert "no exercise" in capsys.readouterr().err


def test_check_accepts_a_function(capsys):
    solution = exercises.load(1, solution=True)
    assert exercises.check("ex01", fn=lambda q, k, g, scale=None: 2 * solution(q, k, g, scale)) is False
    assert "FAIL" in capsys.readouterr().out


_ANSWER_KEYS = {   # 'answers' that hand back what the checks compare with: dsf's own results
    1: "def answer(q, k, g, scale=None):\n    return dsf.phi('mamba2', q=q, k=k, v=q, g=g, scale=scale)\n",
    2: "def answer(q, k, v, scale=None, chunk_size=64, initial_state=None):\n"
       "    return dsf.recurrent('linear_attention', q=q, k=k, v=v, scale=scale, initial_state=initial_state)\n"}


def _answer_key(number: int):
    """Defined as in a notebook (no source file to read): only its calls can give it away."""
    import dsf

    namespace = {"dsf": dsf}
    exec(_ANSWER_KEYS[number], namespace)
    return namespace["answer"]


@pytest.mark.parametrize("number", [_marked(1), _marked(2)])
def test_an_answer_that_calls_dsf_is_refused(number, capsys):
    """Returning dsf's own result passed every check (the checks compare values only)."""
    last = exercises.checks(number)[-1]
    with pytest.raises(AssertionError, match="called one of dsf's forms"):
        last(_answer_key(number))


@pytest.mark.parametrize("how", ["from dsf import chunked", "import sys, torch, dsf",
                                 "import dsf.forms.parallel as par",
                                 "import importlib\nd = importlib.import_module('d' + 'sf')",
                                 "def helper():\n    from dsf.forms import parallel"],
                         ids=["from", "in-a-list", "submodule", "importlib", "in-a-function"])
def test_an_answer_module_that_imports_dsf_is_refused(tmp_path, monkeypatch, how):
    """However the module gets dsf: `import sys, torch, dsf` passed the first version of the check."""
    name = f"my_answer_{abs(hash(how))}"
    (tmp_path / f"{name}.py").write_text(
        f"import torch\n{how}\n\n\ndef seg(k, v, beta):\n    raise NotImplementedError\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = __import__(name)

    with pytest.raises(AssertionError, match=rf"{name}.py imports dsf"):
        exercises.checks(3)[-1](module.seg)


def test_an_answer_module_without_dsf_is_not_refused(tmp_path, monkeypatch):
    """`dsf_like` names and a string mentioning dsf are not imports of it."""
    (tmp_path / "clean_answer.py").write_text(
        "import torch\ndsf_like = 1\nNOTE = 'import dsf'\n\n\ndef seg(k, v, beta):\n    raise NotImplementedError\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import clean_answer

    with pytest.raises(NotImplementedError):
        exercises.checks(3)[-1](clean_answer.seg)


def _altered(fn, how):
    """``fn`` with its returned tensors changed by ``how`` (a tuple's tensors each)."""
    import torch

    def change(x):
        return how(x) if isinstance(x, torch.Tensor) else x

    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        return tuple(change(x) for x in out) if isinstance(out, tuple) else change(out)
    return wrapped


def _one_entry_off(x):
    x = x.contiguous().clone()   # (an answer may return a transposed view)
    if x.numel():
        x.view(-1)[x.numel() // 2] += 1e-3
    return x


@pytest.mark.parametrize("number", NUMBERS)
@pytest.mark.parametrize("how, message", [(_one_entry_off, r"1 of \d+ entries differ"),
                                          (lambda x: x.float(), r"expected dtype (torch\.)?float64")],
                         ids=["one-entry-off", "float32"])
def test_a_nearly_right_answer_fails_a_check(number, how, message):
    """One entry off by 1e-3, or the right values in float32: some value check must say so."""
    answer = _altered(exercises.load(number, solution=True), how)
    failures = []
    for check in exercises.checks(number)[:-1]:   # the last asks that the answer is written without dsf
        try:
            check(answer)
        except AssertionError as err:
            failures.append(str(err))
    assert any(re.search(message, f) for f in failures), failures


def test_assert_close_says_what_differs():
    import torch

    from exercises._checking import assert_close

    want = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    assert_close("x", want + 1e-12, want)
    for got, message in [(want.float(), r"x: expected dtype torch.float64, got torch.float32"),
                         (want[:1], r"x: expected shape \[2, 3\], got \[1, 3\]"),
                         (want.tolist(), "x: expected a torch.Tensor, got list"),
                         (want.index_put((torch.tensor(1), torch.tensor(2)), nan),
                          r"x: contains inf or nan \(1 entries\)"),
                         (want.index_put((torch.tensor(0), torch.tensor(1)), torch.tensor(1.5, dtype=torch.float64)),
                          r"x: 1 of 6 entries differ; the worst, at index \(0, 1\), is 1.5 but dsf says 1")]:
        with pytest.raises(AssertionError, match=message):
            assert_close("x", got, want)
