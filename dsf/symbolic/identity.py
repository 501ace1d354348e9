"""The :class:`Identity` record: a named claim ``lhs == rhs`` that sympy can check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sympy as sp

__all__ = ["Identity", "canonical", "is_zero"]


def _reduce_expr(e: Any) -> sp.Expr:
    """Bring one expression to a canonical form; zero iff it is identically zero.

    ``cancel`` is exact and fast for rational functions (of the symbols and of any exp/log atoms),
    which is all the recurrences produce; ``simplify`` is kept as a fallback for the rest.
    """
    e = sp.sympify(e)
    if e == 0:
        return sp.S.Zero
    r = sp.cancel(sp.together(e))
    if r == 0 or r.is_rational_function():
        # A reduced fraction of polynomials is canonical: nonzero here means nonzero, and the
        # (slow) simplify below could not change that.
        return r
    return sp.simplify(r)


def canonical(x: Any) -> Any:
    """:func:`_reduce_expr` applied to an expression or entrywise to a matrix."""
    if isinstance(x, sp.MatrixBase):
        return x.applyfunc(_reduce_expr)
    return _reduce_expr(x)


def is_zero(x: Any) -> bool:
    """True iff the (already reduced) expression or every matrix entry is exactly zero."""
    if isinstance(x, sp.MatrixBase):
        return all(e == 0 for e in x)
    return x == 0


@dataclass(eq=False)
class Identity:
    """A claim ``lhs == rhs`` with its one-line ``statement``; :meth:`holds` checks it exactly."""

    name: str
    statement: str
    lhs: Any  # sympy expression or Matrix
    rhs: Any

    def difference(self) -> Any:
        """lhs − rhs, simplified (zero, or a zero matrix, exactly when the identity holds)."""
        if isinstance(self.lhs, sp.MatrixBase) != isinstance(self.rhs, sp.MatrixBase):
            raise TypeError(f"{self.name}: lhs and rhs must both be matrices or both expressions")
        if isinstance(self.lhs, sp.MatrixBase) and self.lhs.shape != self.rhs.shape:
            raise ValueError(f"{self.name}: lhs has shape {self.lhs.shape}, rhs {self.rhs.shape}")
        return canonical(self.lhs - self.rhs)

    def holds(self) -> bool:
        """True iff lhs − rhs simplifies to exactly zero."""
        return is_zero(self.difference())

    def __repr__(self) -> str:
        return f"Identity({self.name!r}: {self.statement})"
