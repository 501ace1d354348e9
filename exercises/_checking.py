"""What the exercise checks share: random cases, a named comparison and the friendly runner.

A *check* is a function ``check(fn)`` that raises ``AssertionError`` (with a message saying what is
wrong) when the learner's ``fn`` disagrees with the ``dsf`` package, and returns ``None`` otherwise.
"""

from __future__ import annotations

import ast
import inspect
import os
import traceback
from typing import Callable, NamedTuple, Sequence

import torch
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

__all__ = ["Case", "cases", "for_all_cases", "assert_close", "run_checks", "max_examples", "without_dsf"]


class Case(NamedTuple):
    """One random problem: sizes, the seed of ``dsf.random_inputs`` and the query scale."""

    B: int
    T: int
    H: int
    K: int
    V: int
    seed: int
    scale: float | None

    def inputs(self, mixer: str) -> dict:
        import dsf

        return dsf.random_inputs(mixer, self.B, self.T, self.H, self.K, self.V, seed=self.seed)


def cases(max_T: int = 33) -> st.SearchStrategy[Case]:
    """Random cases: T from 1 (a single token) to ``max_T``, odd and even, small heads."""
    return st.builds(
        Case,
        B=st.integers(1, 2), T=st.integers(1, max_T), H=st.integers(1, 3),
        K=st.integers(1, 6), V=st.integers(1, 5), seed=st.integers(0, 2**16),
        scale=st.one_of(st.none(), st.floats(0.1, 2.0)),
    )


# Always tried first, whatever hypothesis draws: a single token, and an odd length with every size > 1.
EDGE_CASES = (Case(1, 1, 1, 1, 1, 0, None), Case(2, 7, 3, 4, 5, 1, 0.5))


def max_examples() -> int:
    """Random cases per check; set DSF_EXERCISE_EXAMPLES to change it (default 30)."""
    return int(os.environ.get("DSF_EXERCISE_EXAMPLES", "30"))


def for_all_cases(body: Callable[..., None], edge_values: Callable[[Case], dict] | None = None,
                  **strategies: st.SearchStrategy) -> None:
    """Run ``body(case, **drawn)`` on the edge cases, then on random ones; the first failure raises.

    ``strategies`` draw any further arguments of ``body``; ``edge_values(case)`` gives their values
    for the edge cases.
    """
    def run(case, **drawn):
        try:
            body(case, **drawn)
        except AssertionError as exc:  # say which input failed (hypothesis shrinks it first)
            extra = "".join(f", {name}={value}" for name, value in drawn.items())
            raise AssertionError(f"{exc}\non {case}{extra}") from None

    test = given(case=cases(), **strategies)(run)
    for edge in EDGE_CASES:
        test = example(case=edge, **(edge_values(edge) if edge_values else {}))(test)
    test = settings(max_examples=max_examples(), deadline=None, database=None, derandomize=True,
                    print_blob=False, suppress_health_check=list(HealthCheck),
                    # no 'explain' phase: it traces every line and its report is not for learners
                    phases=[Phase.explicit, Phase.generate, Phase.shrink])(test)
    test()


def float64_tensor(name: str, got):
    """``got``, after failing with a readable message unless it is a float64 tensor (a check that
    computes with an answer would otherwise stop at a bare dtype error of torch)."""
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"{name}: expected a torch.Tensor, got {type(got).__name__}")
    if got.dtype != torch.float64:
        raise AssertionError(f"{name}: expected dtype torch.float64 (the inputs' dtype), got {got.dtype}")
    return got


def assert_close(name: str, got, want: torch.Tensor, atol: float = 1e-10, rtol: float = 1e-8) -> None:
    """Fail with a readable message unless ``got`` has ``want``'s shape and values."""
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"{name}: expected a torch.Tensor, got {type(got).__name__}")
    if tuple(got.shape) != tuple(want.shape):
        raise AssertionError(f"{name}: expected shape {list(want.shape)}, got {list(got.shape)}")
    if got.dtype != want.dtype:
        raise AssertionError(f"{name}: expected dtype {want.dtype}, got {got.dtype}")
    if not bool(torch.isfinite(got).all()):
        raise AssertionError(f"{name}: contains inf or nan ({int((~torch.isfinite(got)).sum())} entries)")
    err = (got - want).abs()
    bad = err > atol + rtol * want.abs()
    if bool(bad.any()):
        where = tuple(int(i) for i in torch.nonzero(err == err.max())[0])
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {want.numel()} entries differ; the worst, at index {where}, "
            f"is {got[where].item():.6g} but dsf says {want[where].item():.6g}")


_FORMS = ("recurrent", "chunked", "parallel", "phi")


def _is_dsf(name: str | None) -> bool:
    return name is not None and (name == "dsf" or name.startswith("dsf."))


def _imports_dsf(source: str) -> bool:
    """True if any import statement of ``source`` (at any depth: in a function too) names dsf."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(_is_dsf(a.name) for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and _is_dsf(node.module):
            return True
    return False


def _holds_dsf(module) -> bool:
    """True if the module's globals hold a dsf module or one of its functions (however it got them)."""
    for value in vars(module).values() if module is not None else ():
        name = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
        if isinstance(name, str) and _is_dsf(name):
            return True
    return False


def without_dsf(fn: Callable, run: Callable[[], object]) -> None:
    """Fail unless ``fn`` is written without dsf, the checks' answer key: its module does not import
    dsf, and ``run()`` (a call of ``fn``) calls none of dsf's forms."""
    module = inspect.getmodule(fn)
    try:
        source = inspect.getsource(module) if module is not None else ""
    except (OSError, TypeError):   # a notebook's function: only the calls below are watched
        source = ""
    if _imports_dsf(source) or _holds_dsf(module):
        raise AssertionError(f"{getattr(module, '__file__', 'your module')} imports dsf: the checks compare "
                             "with dsf, so write the answer with torch alone")

    def refuse(*args, **kwargs):
        raise AssertionError("your function called one of dsf's forms (dsf.recurrent, dsf.chunked, "
                             "dsf.parallel or dsf.phi): write the answer with torch alone")

    import dsf
    import dsf.forms

    saved = {(m, name): getattr(m, name) for m in (dsf, dsf.forms) for name in _FORMS}
    try:
        for m, name in saved:
            setattr(m, name, refuse)
        run()
    finally:
        for (m, name), f in saved.items():
            setattr(m, name, f)


def _describe(exc: BaseException) -> str:
    """The message of a failed check (hypothesis's own notes are left out: they are long)."""
    return str(exc) if isinstance(exc, AssertionError) else f"{type(exc).__name__}: {exc}"


def run_checks(title: str, checks: Sequence[Callable], fn: Callable, where: str = "") -> bool:
    """Run every check on ``fn``, print one line per check and a summary; True when all pass."""
    print(f"{title}" + (f"  [{where}]" if where else ""))
    passed, todo = 0, None
    for check in checks:
        label = (check.__doc__ or check.__name__).strip().splitlines()[0]
        try:
            check(fn)
        except NotImplementedError as exc:
            todo = todo or str(exc)
            print(f"  TODO  {label}")
        except AssertionError as exc:
            print(f"  FAIL  {label}\n" + _indent(_describe(exc)))
        except Exception as exc:  # a crash in the learner's code: show where it happened
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            print(f"  ERROR {label}\n" + _indent(f"{_describe(exc)}\n(at {tb.filename}:{tb.lineno})"))
        else:
            passed += 1
            print(f"  PASS  {label}")
    ok = passed == len(checks)
    if todo:
        print(f"TODO = not implemented yet: {todo}")
    verdict = "all checks pass, well done!" if ok else "keep going: fix the first check that is not PASS."
    print(f"{passed} of {len(checks)} checks pass: {verdict}")
    return ok


def _indent(text: str) -> str:
    return "\n".join("        " + line for line in text.splitlines())
