"""Choosing and running the linear solve behind implicit differentiation.

The implicit function theorem turns the derivative of a solution into one linear
system with the Jacobian of the optimality condition, ``J u = b``. This module maps
the user's ``solve=`` choice onto a lineax solver, with tolerances that follow the
working precision.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx

from jaxsecond._checks import check_count
from jaxsecond._tree import accumulation_dtype

# Above this many unknowns the automatic choice for a non-symmetric system switches
# from dense LU (exact, but it materialises the n x n Jacobian with n JVPs) to GMRES,
# which for the well-conditioned systems of contractive fixed points needs far fewer.
DENSE_LIMIT = 64

SOLVE_NAMES = ("auto", "cg", "gmres", "bicgstab", "lu", "normal_cg")


def default_tolerance(dtype) -> float:
    """Relative and absolute tolerance of the iterative solvers for ``dtype``.

    About ``eps ** 0.75``: far below the error of any outer optimisation, yet safely
    above the round-off floor where Krylov residuals stagnate (1e-12 in float64,
    1e-5 in float32, ``eps ** 0.75`` of float16 and bfloat16).
    """
    bits = jnp.finfo(dtype).bits
    if bits >= 64:
        return 1e-12
    if bits >= 32:
        return 1e-5
    # Half precision: the operator's products carry its round-off (the solve itself
    # accumulates in float32), ~5e-3 for float16 and ~3e-2 for bfloat16.
    return float(jnp.finfo(dtype).eps) ** 0.75


class LinearSolve(eqx.Module):
    """A resolved linear-solve configuration (all fields static)."""

    solver: lx.AbstractLinearSolver
    tags: frozenset = eqx.field(static=True)
    preconditioner: Callable[..., lx.AbstractLinearOperator] | None = eqx.field(static=True)


def resolve_solver(
    solve,
    *,
    symmetric: bool,
    size: int,
    dtype,
    rtol: float | None,
    atol: float | None,
    max_steps: int | None,
) -> lx.AbstractLinearSolver:
    """Map ``solve=`` (``None``, a name, or a lineax solver) to a lineax solver."""
    if max_steps is not None:
        # An iterative solve of 0 steps returns its zero initial guess: derivatives that
        # are silently all zeros.
        max_steps = check_count(max_steps, "max_steps")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if tol is not None and (
            isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not tol >= 0
        ):
            raise ValueError(f"{name} must be a real number >= 0, got {tol!r}")
    if isinstance(solve, lx.AbstractLinearSolver):
        if rtol is not None or atol is not None or max_steps is not None:
            raise ValueError(
                "solve: a lineax solver was given, so set rtol/atol/max_steps on it "
                f"(e.g. lineax.CG(rtol=..., atol=...)), not as separate arguments; got {solve!r}"
            )
        return solve
    if solve is None:
        solve = "auto"
    if not isinstance(solve, str) or solve not in SOLVE_NAMES:
        raise ValueError(
            f"solve must be None, a lineax.AbstractLinearSolver or one of {SOLVE_NAMES}; "
            f"got {solve!r}"
        )
    if solve == "auto":
        solve = "cg" if symmetric else ("lu" if size <= DENSE_LIMIT else "gmres")
    if solve == "cg" and not symmetric:
        raise ValueError(
            "solve='cg' needs a symmetric positive definite Jacobian: pass symmetric=True "
            "when the optimality function is the gradient of a function being minimised "
            "(otherwise use 'gmres', 'bicgstab' or 'lu')"
        )
    if solve == "lu":
        if rtol is not None or atol is not None or max_steps is not None:
            raise ValueError("solve='lu' is a direct solver: rtol, atol and max_steps do not apply")
        return lx.LU()
    tol = default_tolerance(dtype)
    kw: dict[str, Any] = dict(
        rtol=tol if rtol is None else rtol,
        atol=tol if atol is None else atol,
        max_steps=max_steps,
    )
    if solve == "cg":
        return EuclideanCG(**kw)
    if solve == "gmres":
        return lx.GMRES(**kw)
    if solve == "bicgstab":
        return EuclideanBiCGStab(**kw)
    return lx.NormalCG(**kw)


def tags_for(symmetric: bool) -> frozenset:
    if symmetric:
        return frozenset({lx.symmetric_tag, lx.positive_semidefinite_tag})
    return frozenset()


class _ScipyKrylov(lx.AbstractLinearSolver):
    """A lineax solver (so lineax supplies transposition and differentiation) whose
    iteration is one of ``jax.scipy.sparse.linalg``'s, stopping when ``||b - A x||_2 <=
    max(rtol ||b||_2, atol)``; afterwards the true residual is checked, and a solve that
    missed its tolerance by more than 10x (or is not finite) is reported as a failure."""

    rtol: float
    atol: float
    max_steps: int | None = None

    def _iterate(self, matvec, vector, max_steps, preconditioner):
        raise NotImplementedError

    def init(self, operator, options):
        del options
        return lx.linearise(operator)

    def compute(self, state, vector, options):
        operator = state
        preconditioner = options.get("preconditioner")
        size = sum(leaf.size for leaf in jax.tree.leaves(vector))
        max_steps = 10 * size if self.max_steps is None else self.max_steps
        solution = self._iterate(
            operator.mv, vector, max_steps, None if preconditioner is None else preconditioner.mv
        )
        residual = jax.tree.map(jnp.subtract, vector, operator.mv(solution))
        target = jnp.maximum(self.rtol * _norm(vector), self.atol)
        ok = (_norm(residual) <= 10 * target) & jnp.isfinite(_norm(solution))
        result = lx.RESULTS.where(ok, lx.RESULTS.successful, lx.RESULTS.max_steps_reached)
        return solution, result, {}

    def transpose(self, state, options):
        options = dict(options)
        if "preconditioner" in options:
            options["preconditioner"] = options["preconditioner"].transpose()
        return state.transpose(), options

    def conj(self, state, options):
        options = dict(options)
        if "preconditioner" in options:
            options["preconditioner"] = lx.conj(options["preconditioner"])
        return lx.conj(state), options

    def assume_full_rank(self):
        return True


class EuclideanCG(_ScipyKrylov):
    """Conjugate gradients for symmetric positive definite operators, stopping when
    ``||b - A x||_2 <= max(rtol ||b||_2, atol)``.

    It differs from ``lineax.CG`` in two ways that matter for implicit
    differentiation. The stopping rule is the usual scale-invariant Euclidean one, where
    lineax's is elementwise (a right-hand side with tiny entries then demands a tiny
    residual there). And there is no breakdown guard in absolute units: lineax's CG
    gives up when a Rayleigh quotient falls below ``200 n eps`` (0.015 for 650 unknowns
    in float32), so well-posed systems whose eigenvalues are merely small fail. After
    the iteration the true residual is checked; a solve that missed its tolerance by
    more than 10x (or is not finite) is reported as a failure.

    Example:
        >>> import jax.numpy as jnp, lineax as lx
        >>> from jaxsecond.implicit import EuclideanCG
        >>> A = lx.MatrixLinearOperator(jnp.diag(jnp.array([0.01, 1.0])),
        ...                             (lx.symmetric_tag, lx.positive_semidefinite_tag))
        >>> print(lx.linear_solve(A, jnp.ones(2), EuclideanCG(rtol=1e-6, atol=0.0)).value)
        [100.   1.]
    """

    def init(self, operator, options):
        if not (lx.is_symmetric(operator) and lx.is_positive_semidefinite(operator)):
            raise ValueError(
                "EuclideanCG needs an operator tagged symmetric and positive semidefinite "
                "(pass symmetric=True when the optimality function is a gradient)"
            )
        return super().init(operator, options)

    def _iterate(self, matvec, vector, max_steps, preconditioner):
        return jax.scipy.sparse.linalg.cg(
            matvec, vector, tol=self.rtol, atol=self.atol, maxiter=max_steps, M=preconditioner
        )[0]


class EuclideanBiCGStab(_ScipyKrylov):
    """BiCGStab for general square operators, with the stopping rule and final residual
    check of :class:`EuclideanCG`. Unlike ``lineax.BiCGStab`` it survives a right-hand
    side solved exactly in one step (``lineax.BiCGStab`` divides 0 by 0 there and
    returns NaN: e.g. a diagonal operator and a unit vector, which every column of a
    Jacobian through ``custom_root`` is).

    Example:
        >>> import jax.numpy as jnp, lineax as lx
        >>> from jaxsecond.implicit import EuclideanBiCGStab
        >>> A = lx.MatrixLinearOperator(jnp.diag(jnp.array([4.0, 6.0])))
        >>> print(lx.linear_solve(A, jnp.array([1.0, 0.0]), EuclideanBiCGStab(1e-6, 0.0)).value)
        [0.25 0.  ]
    """

    def _iterate(self, matvec, vector, max_steps, preconditioner):
        return jax.scipy.sparse.linalg.bicgstab(
            matvec, vector, tol=self.rtol, atol=self.atol, maxiter=max_steps, M=preconditioner
        )[0]


def _norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.abs(x) ** 2) for x in jax.tree.leaves(tree)))


def solve_linear(operator: lx.AbstractLinearOperator, vector, config: LinearSolve, precond_args):
    """Solve ``operator u = vector``; a solve that fails is reported at run time.

    ``precond_args`` are ``(params, args, kwargs)`` passed to the user's
    preconditioner factory, if there is one. A solve that does not converge (or is
    not finite) raises through equinox's run-time errors, also in the transposed
    solves of reverse mode; ``EQX_ON_ERROR=nan`` turns that into NaN outputs.
    """
    options = {}
    if config.preconditioner is not None:
        params, args, kwargs = precond_args
        options["preconditioner"] = config.preconditioner(params, *args, **kwargs)
    if not any(_is_half(x) for x in jax.tree.leaves(vector)):
        return lx.linear_solve(operator, vector, config.solver, options=options).value
    # Half precision (float16, bfloat16): LAPACK has no such kernels and Krylov
    # recurrences lose orthogonality within a few steps, so the solve accumulates in
    # float32 around the operator's own half-precision products; the solution is cast
    # back.
    up = lambda tree: jax.tree.map(lambda x: x.astype(accumulation_dtype(x.dtype)), tree)
    dtypes = jax.tree.map(lambda x: x.dtype, vector)
    down = lambda tree: jax.tree.map(lambda x, d: x.astype(d), tree, dtypes)
    widen = lambda op: lx.FunctionLinearOperator(
        lambda v: up(op.mv(down(v))), jax.eval_shape(up, vector), tags=config.tags
    )
    if "preconditioner" in options:
        options["preconditioner"] = widen(options["preconditioner"])
    return down(lx.linear_solve(widen(operator), up(vector), config.solver, options=options).value)


def _is_half(x) -> bool:
    return accumulation_dtype(x.dtype) != x.dtype
