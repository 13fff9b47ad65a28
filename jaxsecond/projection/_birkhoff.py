"""Projections onto the transportation and Birkhoff polytopes, Euclidean and KL.

The Euclidean projection of ``S`` onto ``{P >= 0, P 1 = a, P^T 1 = b}`` has the dual
form ``P = max(S + alpha 1^T + 1 beta^T, 0)``. We find the potentials by exact block
coordinate ascent on the (concave, smooth) dual: for fixed ``beta`` each ``alpha_i``
makes row ``i`` sum to ``a_i``, which is a simplex projection of the row; then the same
for the columns. This is Dykstra's algorithm for the two sets "rows on their
simplices" and "columns on their simplices", each step a batch of sort-based simplex
projections; it converges linearly to the projection.

Derivatives are implicit (never through the iterations): ``alpha`` is a root of the
semi-dual optimality condition ``F(alpha) = sum_j proj_simplex(S_j + alpha, b_j) - a``
(the row sums of the plan whose columns are projected exactly), differentiated with
:func:`jaxsecond.custom_root`. ``dF/dalpha = sum_j (diag(s_j) - s_j s_j^T / |s_j|)`` is
a graph Laplacian: positive semidefinite and always singular (shifting ``alpha`` by a
constant does not change ``P``), more so when the support of ``P`` splits into blocks.
Every right-hand side lies in its range and every null vector leaves ``P`` unchanged,
so the minimum-norm (SVD) solution gives the exact derivative of ``P``.

The KL projection (Sinkhorn) is the same construction with softmax in place of the
simplex projection.

References:
    M. Blondel, V. Seguy, A. Rolet, "Smooth and Sparse Optimal Transport", AISTATS 2018
    (the semi-dual).
    M. Blondel, Q. Berthet, M. Cuturi, R. Frostig, S. Hoyer, F. Llinares-Lopez,
    F. Pedregosa, J.-P. Vert, "Efficient and Modular Implicit Differentiation",
    NeurIPS 2022 (implicit differentiation of projections).
    R. Sinkhorn, P. Knopp, "Concerning nonnegative matrices and doubly stochastic
    matrices", Pacific J. Math. 1967; M. Cuturi, "Sinkhorn Distances", NeurIPS 2013.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jax.scipy.special import logsumexp

from jaxsecond._checks import check_count, concrete_value
from jaxsecond.implicit._root import custom_root
from jaxsecond.projection._projection import (
    _as_float_array,
    simplex,
    simplex_threshold,
)

DEFAULT_MAX_ITER = 10_000


def _default_tol(sim_matrix):
    # The marginals are sums of entries of size ~|S|, so round-off sets a floor
    # proportional to the scale of S: an absolute tolerance would fail for large S.
    base = 1e-10 if jnp.finfo(sim_matrix.dtype).bits >= 64 else 1e-4
    scale = jnp.maximum(1, jax.lax.stop_gradient(jnp.max(jnp.abs(sim_matrix))))
    return base * scale


def _check_inputs(sim_matrix, marginals, fn, max_iter, tol):
    S = _as_float_array(sim_matrix, "sim_matrix", fn)
    if S.ndim != 2 or 0 in S.shape:
        raise ValueError(f"{fn}: sim_matrix must be a non-empty 2-D array, got shape {S.shape}")
    max_iter = check_count(max_iter, "max_iter")
    if tol is not None and (isinstance(tol, bool) or not float(tol) > 0):
        raise ValueError(f"{fn}: tol must be a positive number or None, got {tol!r}")
    if not (isinstance(marginals, tuple | list) and len(marginals) == 2):
        raise TypeError(f"{fn}: marginals must be a pair (a, b), got {marginals!r}")
    a_known, b_known = concrete_value(marginals[0]), concrete_value(marginals[1])
    a = _as_float_array(marginals[0], "marginals[0]", fn)
    b = _as_float_array(marginals[1], "marginals[1]", fn)
    if a.shape != (S.shape[0],) or b.shape != (S.shape[1],):
        raise ValueError(
            f"{fn}: marginals must have shapes ({S.shape[0]},) and ({S.shape[1]},) to match "
            f"sim_matrix of shape {S.shape}, got {a.shape} and {b.shape}"
        )
    if a_known is not None and b_known is not None:
        a_np, b_np = a_known.astype(np.float64), b_known.astype(np.float64)
        if not (np.all(a_np > 0) and np.all(b_np > 0)):
            raise ValueError(f"{fn}: marginals must be positive")
        if not np.isclose(a_np.sum(), b_np.sum(), rtol=1e-6, atol=0):
            raise ValueError(
                f"{fn}: the marginals must have equal totals (no plan exists otherwise), got "
                f"{a_np.sum()!r} and {b_np.sum()!r}"
            )
    return S, a.astype(S.dtype), b.astype(S.dtype), max_iter


# ---------------------------------------------------------------------------------------
# Euclidean projection.
# ---------------------------------------------------------------------------------------

_columns_on_simplices = jax.vmap(simplex, in_axes=(1, 0), out_axes=1)
_column_thresholds = jax.vmap(simplex_threshold, in_axes=(1, 0))
_row_thresholds = jax.vmap(simplex_threshold, in_axes=(0, 0))


def _euclidean_plan(alpha, S, b):
    """The plan whose columns are exactly on their simplices, given row potentials."""
    return _columns_on_simplices(S + alpha[:, None], b)


def _euclidean_residual(alpha, S, a, b):
    # Semi-dual optimality: the row sums of that plan match a.
    return jnp.sum(_euclidean_plan(alpha, S, b), axis=1) - a


def _euclidean_solver(max_iter, tol):
    @custom_root(_euclidean_residual, solve=lx.SVD(), symmetric=True)
    def solve(alpha0, S, a, b):
        del alpha0  # Coordinate ascent starts from beta = 0.
        S, a, b = jax.lax.stop_gradient((S, a, b))
        limit = _default_tol(S) if tol is None else tol

        def body(carry):
            _, beta, it, _ = carry
            alpha = -_row_thresholds(S + beta[None, :], a)
            beta = -_column_thresholds(S + alpha[:, None], b)
            rows = jnp.sum(jnp.maximum(S + alpha[:, None] + beta[None, :], 0), axis=1)
            return alpha, beta, it + 1, jnp.max(jnp.abs(rows - a))

        def cond(carry):
            _, _, it, err = carry
            return (it < max_iter) & ~(err <= limit)

        init = (jnp.zeros_like(a), jnp.zeros_like(b), 0, jnp.array(jnp.inf, S.dtype))
        alpha, _, _, _ = jax.lax.while_loop(cond, body, init)
        return alpha

    return solve


def _report(P, residual, limit, fn, max_iter):
    err = jnp.max(jnp.abs(residual))
    return eqx.error_if(
        P,
        ~(err <= limit),
        f"{fn} did not converge: after max_iter={max_iter} iterations a marginal is still "
        "violated by more than tol (or the result is not finite); raise max_iter or tol, "
        "or set EQX_ON_ERROR=nan to get NaN instead",
    )


def projection_transport(
    sim_matrix: jax.Array,
    marginals: tuple,
    *,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float | None = None,
) -> jax.Array:
    r"""Euclidean projection onto the transportation polytope.

    Solves ``argmin_P ||P - S||_F`` subject to ``P >= 0``, ``P 1 = a``, ``P^T 1 = b``
    (equivalently optimal transport with cost ``-S`` and squared-l2 regularization).
    The dual potentials are found by exact block coordinate ascent (alternating
    row-wise and column-wise simplex projections of the dual, i.e. Dykstra's
    algorithm), which stops when every row sum is within ``tol`` of ``a`` (the columns
    are exact). The derivative is implicit, through the semi-dual optimality
    condition (see the module docstring): exact at the returned plan, never through
    the iterations, and available to second order. At a degenerate plan (an entry
    exactly 0 on the boundary of the support) it is the generalized Jacobian that
    counts that entry as off the support.

    Non-convergence is reported at run time through ``equinox.error_if`` (set
    ``EQX_ON_ERROR=nan`` for NaN instead).

    jaxopt's version takes ``make_solver`` and ``use_semi_dual`` (an L-BFGS solve of the
    semi-dual with tolerance 1e-3); here ``max_iter`` and ``tol`` control the solve.

    Args:
        sim_matrix: similarity matrix ``S``, shape ``(n, m)``.
        marginals: ``(a, b)``, positive vectors of shapes ``(n,)`` and ``(m,)`` with
            equal sums.
        max_iter: iteration cap of the coordinate ascent (default 10000).
        tol: largest accepted violation of a row sum; ``None`` means ``1e-10`` (float64)
            or ``1e-4`` (float32), times ``max(1, max|S|)``.

    Returns:
        The plan ``P``, shape ``(n, m)``, of ``sim_matrix``'s dtype.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsecond.projection import projection_transport
        >>> S = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        >>> marginals = (jnp.array([1.5, 1.5]), jnp.array([1.0, 1.0, 1.0]))
        >>> print(projection_transport(S, marginals).round(4))
        [[1.  0.  0.5]
         [0.  1.  0.5]]

    Reference: Blondel, Seguy, Rolet, "Smooth and Sparse Optimal Transport" (AISTATS
    2018); Blondel et al., "Efficient and Modular Implicit Differentiation" (2022).
    """
    fn = "projection_transport"
    S, a, b, max_iter = _check_inputs(sim_matrix, marginals, fn, max_iter, tol)
    alpha = _euclidean_solver(max_iter, tol)(jnp.zeros_like(a), S, a, b)
    P = _euclidean_plan(alpha, S, b)
    limit = _default_tol(S) if tol is None else tol
    return _report(P, jnp.sum(P, axis=1) - a, limit, fn, max_iter)


def _check_square(sim_matrix, fn):
    S = _as_float_array(sim_matrix, "sim_matrix", fn)
    if S.ndim != 2 or S.shape[0] != S.shape[1] or S.shape[0] == 0:
        raise ValueError(
            f"{fn}: sim_matrix must be a non-empty square matrix (doubly stochastic matrices "
            f"are square), got shape {S.shape}; for a rectangular matrix use "
            f"{fn.replace('birkhoff', 'transport')} with marginals of equal totals"
        )
    ones = jnp.ones(S.shape[0], S.dtype)
    return S, (ones, ones)


def projection_birkhoff(
    sim_matrix: jax.Array, *, max_iter: int = DEFAULT_MAX_ITER, tol: float | None = None
) -> jax.Array:
    r"""Euclidean projection onto the Birkhoff polytope (doubly stochastic matrices).

    ``argmin_P ||P - S||_F`` subject to ``P >= 0`` with every row and column summing to
    1: :func:`projection_transport` with unit marginals; the same method, tolerance,
    implicit derivative and run-time error. Unlike the KL projection
    (:func:`kl_projection_birkhoff`, Sinkhorn) the result can be sparse: a matrix
    close to a permutation projects onto that permutation.

    Args:
        sim_matrix: square matrix ``S``, shape ``(n, n)``.
        max_iter: iteration cap (default 10000).
        tol: largest accepted violation of a row sum; ``None`` means ``1e-10`` (float64)
            or ``1e-4`` (float32), times ``max(1, max|S|)``.

    Returns:
        A doubly stochastic matrix, shape ``(n, n)``, of ``sim_matrix``'s dtype.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsecond.projection import projection_birkhoff
        >>> S = jnp.array([[1.0, 0.0], [0.5, 0.0]])
        >>> print(projection_birkhoff(S).round(4))
        [[0.625 0.375]
         [0.375 0.625]]

    Reference: Blondel, Seguy, Rolet, "Smooth and Sparse Optimal Transport" (AISTATS
    2018); Blondel et al., "Efficient and Modular Implicit Differentiation" (2022).
    """
    S, marginals = _check_square(sim_matrix, "projection_birkhoff")
    return projection_transport(S, marginals, max_iter=max_iter, tol=tol)


# ---------------------------------------------------------------------------------------
# KL projection (Sinkhorn).
# ---------------------------------------------------------------------------------------


def _kl_plan(alpha, S, b):
    # Columns exactly on their marginals: P_j = b_j softmax(S_j + alpha).
    return jax.nn.softmax(S + alpha[:, None], axis=0) * b[None, :]


def _kl_residual(alpha, S, a, b):
    return jnp.sum(_kl_plan(alpha, S, b), axis=1) - a


def _kl_solver(max_iter, tol):
    @custom_root(_kl_residual, solve=lx.SVD(), symmetric=True)
    def solve(alpha0, S, a, b):
        del alpha0
        S, a, b = jax.lax.stop_gradient((S, a, b))
        limit = _default_tol(S) if tol is None else tol
        log_a, log_b = jnp.log(a), jnp.log(b)

        # Log-domain Sinkhorn: no overflow of exp(S) for large S.
        def body(carry):
            _, beta, it, _ = carry
            alpha = log_a - logsumexp(S + beta[None, :], axis=1)
            beta = log_b - logsumexp(S + alpha[:, None], axis=0)
            rows = jnp.sum(jnp.exp(S + alpha[:, None] + beta[None, :]), axis=1)
            return alpha, beta, it + 1, jnp.max(jnp.abs(rows - a))

        def cond(carry):
            _, _, it, err = carry
            return (it < max_iter) & ~(err <= limit)

        init = (jnp.zeros_like(a), jnp.zeros_like(b), 0, jnp.array(jnp.inf, S.dtype))
        alpha, _, _, _ = jax.lax.while_loop(cond, body, init)
        return alpha

    return solve


def kl_projection_transport(
    sim_matrix: jax.Array,
    marginals: tuple,
    *,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float | None = None,
) -> jax.Array:
    r"""Kullback-Leibler projection of ``exp(S)`` onto the transportation polytope.

    ``argmin_{P > 0} KL(P, exp(S))`` subject to ``P 1 = a``, ``P^T 1 = b``
    (entropy-regularized optimal transport with cost ``-S``), so
    ``P = exp(S + alpha 1^T + 1 beta^T)``. Solved by log-domain Sinkhorn iterations
    until every row sum is within ``tol`` of ``a``; differentiated implicitly through
    the semi-dual condition ``sum_j b_j softmax(S_j + alpha) = a``. Non-convergence
    raises at run time (``equinox.error_if``; ``EQX_ON_ERROR=nan`` for NaN).

    Args:
        sim_matrix: similarity matrix ``S``, shape ``(n, m)``.
        marginals: ``(a, b)``, positive vectors of shapes ``(n,)`` and ``(m,)`` with
            equal sums.
        max_iter: iteration cap (default 10000).
        tol: largest accepted violation of a row sum; ``None`` means ``1e-10`` (float64)
            or ``1e-4`` (float32), times ``max(1, max|S|)``.

    Returns:
        The plan ``P``, shape ``(n, m)``, of ``sim_matrix``'s dtype.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsecond.projection import kl_projection_transport
        >>> S = jnp.zeros((2, 3))
        >>> print(kl_projection_transport(S, (jnp.array([1.0, 2.0]), jnp.ones(3))).round(4))
        [[0.3333 0.3333 0.3333]
         [0.6667 0.6667 0.6667]]

    Reference: Cuturi, "Sinkhorn Distances" (NeurIPS 2013); Blondel, Seguy, Rolet,
    "Smooth and Sparse Optimal Transport" (AISTATS 2018).
    """
    fn = "kl_projection_transport"
    S, a, b, max_iter = _check_inputs(sim_matrix, marginals, fn, max_iter, tol)
    alpha = _kl_solver(max_iter, tol)(jnp.zeros_like(a), S, a, b)
    P = _kl_plan(alpha, S, b)
    limit = _default_tol(S) if tol is None else tol
    return _report(P, jnp.sum(P, axis=1) - a, limit, fn, max_iter)


def kl_projection_birkhoff(
    sim_matrix: jax.Array, *, max_iter: int = DEFAULT_MAX_ITER, tol: float | None = None
) -> jax.Array:
    r"""Kullback-Leibler projection of ``exp(S)`` onto the Birkhoff polytope.

    ``argmin_{P > 0} KL(P, exp(S))`` with unit row and column sums: Sinkhorn's
    matrix scaling of ``exp(S)``, computed in the log domain. A special case of
    :func:`kl_projection_transport`; the same tolerance, implicit derivative and
    run-time error. The result is dense (every entry positive), unlike the Euclidean
    :func:`projection_birkhoff`.

    Args:
        sim_matrix: square matrix ``S``, shape ``(n, n)``.
        max_iter: iteration cap (default 10000).
        tol: largest accepted violation of a row sum; ``None`` means ``1e-10`` (float64)
            or ``1e-4`` (float32), times ``max(1, max|S|)``.

    Returns:
        A doubly stochastic matrix, shape ``(n, n)``, of ``sim_matrix``'s dtype.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsecond.projection import kl_projection_birkhoff
        >>> S = jnp.log(jnp.array([[3.0, 1.0], [1.0, 3.0]]))
        >>> print(kl_projection_birkhoff(S).round(4))
        [[0.75 0.25]
         [0.25 0.75]]

    Reference: Sinkhorn & Knopp (1967); Cuturi, "Sinkhorn Distances" (NeurIPS 2013).
    """
    S, marginals = _check_square(sim_matrix, "kl_projection_birkhoff")
    return kl_projection_transport(S, marginals, max_iter=max_iter, tol=tol)
