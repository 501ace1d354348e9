"""Hands-on exercises for ``dsf``: write a piece of a sequence mixer, check it against the package.

Each exercise lives in ``exercises/exNN_<topic>/``: ``README.md`` (the task, the math, hints),
``stub.py`` (the function to fill in), ``check.py`` (the checks, with ``dsf`` as the oracle) and
``solution.py`` (a reference answer). From the repository root::

    python -m exercises list                 # what there is
    python -m exercises check 1              # check your stub.py of exercise 1
    python -m exercises check 1 --solution   # check the reference solution instead

From Python or a notebook, ``exercises.check(1, fn=my_function)`` checks any function.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Callable

__all__ = ["EXERCISES", "check", "checks", "load", "module", "number_of"]

# number -> folder; the order is the order to do them in
EXERCISES: dict[int, str] = {
    1: "ex01_phi_scalar",
    2: "ex02_chunked_linear_attention",
    3: "ex03_delta_segments",
    4: "ex04_softmax_merge",
    5: "ex05_memory_gradient_step",
    6: "ex06_wy_chunk",
}


def number_of(name: int | str) -> int:
    """Accept 1, "1", "01", "ex01" or a folder name and return the exercise number."""
    if isinstance(name, int) and name in EXERCISES:
        return name
    text = str(name).strip().lower()
    for number, folder in EXERCISES.items():
        if text in (str(number), f"{number:02d}", folder[:4], folder):
            return number
    raise KeyError(f"no exercise {name!r}; there are: "
                   + ", ".join(f"{n} ({f})" for n, f in EXERCISES.items()))


def module(number: int | str, part: str) -> ModuleType:
    """The ``stub``, ``solution`` or ``check`` module of an exercise."""
    return importlib.import_module(f"{__name__}.{EXERCISES[number_of(number)]}.{part}")


def checks(number: int | str) -> list[Callable]:
    """The check functions of an exercise; each takes the function under test."""
    return list(module(number, "check").CHECKS)


def load(number: int | str, solution: bool = False) -> Callable:
    """The learner's function from ``stub.py``, or the reference one from ``solution.py``."""
    spec = module(number, "check")
    return getattr(module(number, "solution" if solution else "stub"), spec.FUNCTION)


def check(number: int | str, solution: bool = False, fn: Callable | None = None) -> bool:
    """Run an exercise's checks, print a summary, and return True when every check passes.

    ``fn`` is checked when given; otherwise the function in ``stub.py`` (or ``solution.py``).
    """
    from ._checking import run_checks

    n = number_of(number)
    spec = module(n, "check")
    if fn is None:
        fn = load(n, solution)
        where = f"exercises/{EXERCISES[n]}/{'solution' if solution else 'stub'}.py"
    else:
        where = getattr(fn, "__qualname__", "your function")
    return run_checks(spec.TITLE, spec.CHECKS, fn, where)
