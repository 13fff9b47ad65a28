"""``quadratic_program``: a differentiable dense convex QP.

Solved by a primal-dual interior-point method (Mehrotra's predictor-corrector) and
differentiated through its KKT conditions with :func:`custom_root`, so the solution's
derivatives with respect to every problem matrix exist in every mode (``jvp``,
``grad``, ``jax.hessian``) and under ``vmap`` and ``jit``.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from jaxsecond._checks import check_count
from jaxsecond.implicit._conditions import kkt_condition
from jaxsecond.implicit._root import custom_root


class KKTSolution(NamedTuple):
    """A QP's primal solution and its multipliers (``None`` for an absent constraint)."""

    primal: jax.Array
    dual_eq: jax.Array | None
    dual_ineq: jax.Array | None


def _objective(x, Q_c):
    Q, c = Q_c
    return 0.5 * x @ Q @ x + c @ x


def _equalities(x, A_b):
    A, b = A_b
    return A @ x - b


def _inequalities(x, G_h):
    G, h = G_h
    return G @ x - h


def _check_matrix(value, name, shape, dtype):
    value = jnp.asarray(value)
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(f"quadratic_program: {name} must be floating point, got {value.dtype}")
    if value.shape != shape:
        raise ValueError(f"quadratic_program: {name} must have shape {shape}, got {value.shape}")
    return value.astype(dtype)


def _rows(matrix, name, n):
    shape = jnp.shape(matrix)
    if len(shape) != 2 or shape[1] != n:
        raise ValueError(
            f"quadratic_program: {name} must be a matrix with n = {n} columns (as c has "
            f"entries), got shape {shape}"
        )
    return shape[0]


def _interior_point(Q, c, A, b, G, h, init, tol, max_iter):
    """Mehrotra predictor-corrector on the KKT system, dense. Returns the KKT triple
    (zero-size multipliers for absent constraints), the iterations and convergence."""
    n, p, m = c.shape[0], b.shape[0], h.shape[0]
    dtype = c.dtype
    if init is None:
        x, nu = jnp.zeros(n, dtype), jnp.zeros(p, dtype)
        lam = jnp.ones(m, dtype)
    else:
        x, nu, lam = init
        # A warm start must be strictly interior in the multipliers.
        lam = jnp.maximum(lam, jnp.sqrt(tol))
    s = jnp.maximum(h - G @ x, 1.0 if init is None else jnp.sqrt(tol))

    scale_d = 1.0 + jnp.max(jnp.abs(c), initial=0.0)
    scale_p = 1.0 + jnp.maximum(jnp.max(jnp.abs(b), initial=0.0), jnp.max(jnp.abs(h), initial=0.0))

    def residuals(x, nu, lam, s):
        r_d = Q @ x + c + A.T @ nu + G.T @ lam
        return r_d, A @ x - b, G @ x + s - h

    def converged(x, nu, lam, s):
        r_d, r_eq, r_in = residuals(x, nu, lam, s)
        gap = jnp.sum(lam * s) / max(m, 1)
        norm = lambda r: jnp.max(jnp.abs(r), initial=0.0)
        return (
            (norm(r_d) <= tol * scale_d)
            & (norm(r_eq) <= tol * scale_p)
            & (norm(r_in) <= tol * scale_p)
            & (gap <= tol)
        )

    def max_step(v, dv):
        # Largest alpha in (0, 1] keeping v + alpha dv >= 0, with a margin.
        ratios = jnp.where(dv < 0, -v / jnp.where(dv < 0, dv, -1.0), jnp.inf)
        return jnp.minimum(1.0, 0.99 * jnp.min(ratios, initial=jnp.inf))

    def body(carry):
        x, nu, lam, s, k = carry
        r_d, r_eq, r_in = residuals(x, nu, lam, s)
        mu = jnp.sum(lam * s) / max(m, 1)
        # Reduced KKT matrix after eliminating the slacks: [Q A^T G^T; A 0 0; G 0 -S/L].
        kkt = jnp.block(
            [
                [Q, A.T, G.T],
                [A, jnp.zeros((p, p), dtype), jnp.zeros((p, m), dtype)],
                [G, jnp.zeros((m, p), dtype), -jnp.diag(s / lam)],
            ]
        )
        factors = jsl.lu_factor(kkt)

        def newton(r_c):
            rhs = jnp.concatenate([-r_d, -r_eq, -r_in + r_c / lam])
            d = jsl.lu_solve(factors, rhs)
            dx, dnu, dlam = d[:n], d[n : n + p], d[n + p :]
            ds = -(r_c + s * dlam) / lam
            return dx, dnu, dlam, ds

        # Predictor (affine scaling), then the centring-corrector step.
        _, _, dlam_a, ds_a = newton(lam * s)
        alpha_a = jnp.minimum(max_step(lam, dlam_a), max_step(s, ds_a))
        mu_a = jnp.sum((lam + alpha_a * dlam_a) * (s + alpha_a * ds_a)) / max(m, 1)
        sigma = (mu_a / jnp.maximum(mu, jnp.finfo(dtype).tiny)) ** 3
        dx, dnu, dlam, ds = newton(lam * s + dlam_a * ds_a - sigma * mu)
        alpha = jnp.minimum(max_step(lam, dlam), max_step(s, ds))
        return x + alpha * dx, nu + alpha * dnu, lam + alpha * dlam, s + alpha * ds, k + 1

    def cond(carry):
        x, nu, lam, s, k = carry
        return (k < max_iter) & ~converged(x, nu, lam, s)

    x, nu, lam, s, k = jax.lax.while_loop(cond, body, (x, nu, lam, s, jnp.int32(0)))
    return (x, nu, lam), k, converged(x, nu, lam, s)


def quadratic_program(
    Q,
    c,
    A=None,
    b=None,
    G=None,
    h=None,
    *,
    init: KKTSolution | None = None,
    tol: float | None = None,
    max_iter: int = 100,
) -> KKTSolution:
    """Solve ``min 0.5 x^T Q x + c^T x  s.t.  A x = b,  G x <= h``, differentiably.

    ``Q`` (``n x n``, symmetric positive semidefinite), ``c`` (``n``), and optionally
    the equalities ``A`` (``p x n``), ``b`` (``p``) and inequalities ``G``
    (``m x n``), ``h`` (``m``). Returns :class:`KKTSolution` ``(primal, dual_eq,
    dual_ineq)``, the multipliers ``None`` where a constraint is absent.

    Solved by a dense primal-dual interior-point method (Mehrotra's
    predictor-corrector, infeasible start), about 10-30 iterations of one LU
    factorisation of the ``(n + p + m)``-square KKT matrix each; suited to dense
    problems of up to a few hundred variables. The derivatives, with respect to
    every one of ``Q, c, A, b, G, h``, come from the KKT conditions
    (:func:`kkt_condition`, complementary slackness in its smooth form) by the
    implicit function theorem, in every mode, under ``vmap`` and ``jit``. They are
    those of the solution where strict complementarity holds (each active
    inequality has a positive multiplier) and the active constraints' rows are
    linearly independent.

    Args:
        Q: the quadratic term, ``n x n``.
        c: the linear term, ``n``.
        A: the equality constraints' matrix, ``p x n``, given with ``b``.
        b: the equality constraints' right-hand side, ``p``, given with ``A``.
        G: the inequality constraints' matrix, ``m x n``, given with ``h``.
        h: the inequality constraints' right-hand side, ``m``, given with ``G``.
        init: a previous :class:`KKTSolution` to start from (warm start): its
            multipliers are kept strictly positive.
        tol: stopping tolerance on the scaled KKT residuals and the duality gap;
            default ``eps^0.8`` of the dtype (about 3e-13 in float64, 3e-6 in
            float32): the derivatives' error follows the residuals, times the KKT
            matrix's condition number.
        max_iter: iteration cap. Not converging within it (an infeasible or
            unbounded problem, or a tolerance below what the dtype resolves) is an
            error at run time, through equinox's ``error_if`` (``EQX_ON_ERROR=nan``
            gives NaN instead).

    Example:
        >>> import jax, jax.numpy as jnp, jaxsecond
        >>> Q, c = jnp.eye(2), jnp.array([-1.0, -1.0])  # min 0.5|x|^2 - x1 - x2
        >>> G, h = jnp.array([[1.0, 1.0]]), jnp.array([1.0])  # s.t. x1 + x2 <= 1
        >>> sol = jaxsecond.quadratic_program(Q, c, G=G, h=h)
        >>> print(sol.primal.round(4), sol.dual_ineq.round(4))
        [0.5 0.5] [0.5]
        >>> grad_h = jax.grad(lambda h: jaxsecond.quadratic_program(Q, c, G=G, h=h).primal[0])
        >>> print(grad_h(h).round(4))
        [0.5]

    References: S. Mehrotra, "On the implementation of a primal-dual interior point
    method", SIAM J. Optim. (1992); B. Amos and J. Z. Kolter, "OptNet: Differentiable
    optimization as a layer in neural networks", ICML 2017; Blondel et al. (2022).
    """
    c = jnp.asarray(c)
    if c.ndim != 1:
        raise ValueError(f"quadratic_program: c must be a vector, got shape {c.shape}")
    if not jnp.issubdtype(c.dtype, jnp.floating):
        raise TypeError(f"quadratic_program: c must be floating point, got {c.dtype}")
    n = c.shape[0]
    dtype = jnp.result_type(c, Q)
    Q = _check_matrix(Q, "Q", (n, n), dtype)
    for matrix, vector, names in ((A, b, ("A", "b")), (G, h, ("G", "h"))):
        if (matrix is None) != (vector is None):
            raise ValueError(f"quadratic_program: give {names[0]} and {names[1]} together")
    has_eq, has_ineq = A is not None, G is not None
    if has_eq:
        A = _check_matrix(A, "A", (_rows(A, "A", n), n), dtype)
        b = _check_matrix(b, "b", (A.shape[0],), dtype)
    if has_ineq:
        G = _check_matrix(G, "G", (_rows(G, "G", n), n), dtype)
        h = _check_matrix(h, "h", (G.shape[0],), dtype)
    max_iter = check_count(max_iter, "max_iter")
    if tol is None:
        tol = float(jnp.finfo(dtype).eps) ** 0.8
    elif not tol > 0:
        raise ValueError(f"quadratic_program: tol must be positive, got {tol!r}")
    c = c.astype(dtype)

    condition = kkt_condition(
        _objective, _equalities if has_eq else None, _inequalities if has_ineq else None
    )

    @custom_root(condition, solve="lu")
    def solve(params0, Q_c, A_b, G_h):
        Q, c = Q_c
        A, b = A_b if has_eq else (jnp.zeros((0, n), dtype), jnp.zeros(0, dtype))
        G, h = G_h if has_ineq else (jnp.zeros((0, n), dtype), jnp.zeros(0, dtype))
        start = None
        if init is not None:
            start = (
                jnp.asarray(init.primal, dtype),
                jnp.asarray(init.dual_eq, dtype) if has_eq else jnp.zeros(0, dtype),
                jnp.asarray(init.dual_ineq, dtype) if has_ineq else jnp.zeros(0, dtype),
            )
        (x, nu, lam), _, ok = _interior_point(Q, c, A, b, G, h, start, tol, max_iter)
        x = eqx.error_if(
            x,
            ~ok,
            "quadratic_program did not converge within max_iter iterations (is the problem "
            "infeasible or unbounded, Q not positive semidefinite, or tol below what the "
            "dtype resolves?)",
        )
        return KKTSolution(x, nu if has_eq else None, lam if has_ineq else None)

    return solve(
        None,
        (Q, c),
        (A, b) if has_eq else None,
        (G, h) if has_ineq else None,
    )
