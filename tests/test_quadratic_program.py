"""quadratic_program: solutions proved optimal by their KKT residuals, derivatives against
JAX differentiating the active set's closed form (a dense KKT solve), every mode.

float64 unless stated. The interior point stops at scaled residuals of eps^0.8 (~3e-13);
derivatives are compared at 1e-8: the residuals left, times the KKT matrix's condition
number (~1e3-1e4 here), stay below that.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsecond
from jaxsecond import quadratic_program

pytestmark = pytest.mark.xdist_group("quadratic_program")


def _problem(key, n, p, m):
    """A random convex QP with a strictly feasible point, so it is feasible and bounded."""
    k = jax.random.split(key, 6)
    M = jax.random.normal(k[0], (n, n))
    Q = M @ M.T / n + 0.1 * jnp.eye(n)
    c = jax.random.normal(k[1], (n,))
    A = jax.random.normal(k[2], (p, n))
    x0 = jax.random.normal(k[3], (n,))
    G = jax.random.normal(k[4], (m, n))
    h = G @ x0 + jax.random.uniform(k[5], (m,), minval=0.1, maxval=1.0)
    return Q, c, A, A @ x0, G, h


def _active_set_solution(Q, c, A, b, G, h, active):
    """The solution for a known active set: one dense KKT solve, differentiable by JAX."""
    rows = jnp.concatenate([A, G[active]])
    rhs = jnp.concatenate([b, h[active]])
    k = rows.shape[0]
    kkt = jnp.block([[Q, rows.T], [rows, jnp.zeros((k, k))]])
    return jnp.linalg.solve(kkt, jnp.concatenate([-c, rhs]))[: c.shape[0]]


def _kkt_residuals(Q, c, A, b, G, h, sol):
    x, nu, lam = sol
    return {
        "stationarity": Q @ x + c + A.T @ nu + G.T @ lam,
        "equalities": A @ x - b,
        "feasibility": jnp.maximum(G @ x - h, 0.0),
        "dual feasibility": jnp.minimum(lam, 0.0),
        "complementarity": lam * (G @ x - h),
    }


@pytest.mark.slow  # the benchmark measures the same at 10-200 variables; every mode below
@pytest.mark.parametrize("n", [10, 40])
def test_random_problems_are_solved_and_differentiated(n):
    args = _problem(jax.random.key(n), n, n // 5, n)
    G, h = args[4:]
    sol = jax.jit(quadratic_program)(*args)
    for name, r in _kkt_residuals(*args, sol).items():
        assert float(jnp.max(jnp.abs(r))) < 1e-9, name
    active = np.asarray(sol.dual_ineq > 1e-7)
    assert 0 < active.sum() < n  # both kinds of constraint present
    # Strict complementarity, which the derivative's validity rests on.
    slack = np.asarray(h - G @ sol.primal)
    assert np.all(slack[~active] > 1e-7) and np.all(sol.dual_ineq[active] > 1e-7)

    vectors, matrices = (1, 3, 5), (0, 2, 4)

    def derivatives(solve):
        # Jacobians w.r.t. the vectors (c, b, h); directional derivatives w.r.t. Q, A, G.
        out = {i: jax.jacobian(solve, i)(*args) for i in vectors}
        for i in matrices:
            direction = jax.random.normal(jax.random.key(i), args[i].shape)
            if i == 0:
                direction = direction + direction.T  # keep Q symmetric
            moved = lambda t, i=i, d=direction: [*args[:i], args[i] + t * d, *args[i + 1 :]]
            out[i] = jax.jvp(lambda t, moved=moved: solve(*moved(t)), (0.0,), (1.0,))[1]
        return out

    got = jax.jit(lambda: derivatives(lambda *m: quadratic_program(*m).primal))()
    want = jax.jit(lambda: derivatives(lambda *m: _active_set_solution(*m, active)))()
    for i in got:
        np.testing.assert_allclose(got[i], want[i], rtol=1e-8, atol=1e-8, err_msg=f"arg {i}")


@pytest.mark.integration  # heavy: in the second tier
def test_every_mode_on_a_small_problem():
    # theta scales the diagonal of Q and shifts c: the solution is nonlinear in it.
    Q, c, A, b, G, h = _problem(jax.random.key(3), 6, 1, 6)
    sol = quadratic_program(Q, c, A, b, G, h)
    active = np.asarray(sol.dual_ineq > 1e-7)
    assert 0 < active.sum() < 6

    def build(theta):
        return Q + jnp.diag(theta[:6] ** 2), c + theta[6:]

    ours = lambda theta: quadratic_program(*build(theta), A, b, G, h).primal
    reference = lambda theta: _active_set_solution(*build(theta), A, b, G, h, active)
    theta = jnp.concatenate([jnp.full(6, 0.3), jnp.zeros(6)])
    scalar = lambda f: lambda t: jnp.sum(jnp.sin(f(t)))
    tangent = jnp.linspace(0.2, 1.0, 12)
    checks = {
        "value": lambda f: f(theta),
        "jvp": lambda f: jax.jvp(f, (theta,), (tangent,))[1],
        "grad": lambda f: jax.grad(scalar(f))(theta),
        "hessian": lambda f: jax.hessian(scalar(f))(theta),
        "vmap": lambda f: jax.vmap(f)(theta[None] * jnp.array([[1.0], [0.98], [1.02]])),
    }
    # One compiled program per side: eager evaluation of the reference costs more.
    got = jax.jit(lambda: {name: check(ours) for name, check in checks.items()})()
    want = jax.jit(lambda: {name: check(reference) for name, check in checks.items()})()
    for name in checks:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-8, atol=1e-8, err_msg=name)


def test_constraint_kinds_and_closed_forms():
    Q = jnp.array([[2.0, 0.5], [0.5, 1.0]])
    c = jnp.array([-1.0, 0.5])
    # No constraints: Q x = -c.
    sol = quadratic_program(Q, c)
    np.testing.assert_allclose(sol.primal, jnp.linalg.solve(Q, -c), rtol=1e-10)
    assert sol.dual_eq is None and sol.dual_ineq is None
    # Equalities only: x1 + x2 = 1.
    A, b = jnp.ones((1, 2)), jnp.ones(1)
    sol = quadratic_program(Q, c, A, b)
    np.testing.assert_allclose(
        sol.primal, _active_set_solution(Q, c, A, b, A[:0], b[:0], np.zeros(0, bool))
    )
    assert sol.dual_ineq is None
    # Inequalities only: x >= 0 (non-negative least squares in disguise).
    sol = quadratic_program(Q, c, G=-jnp.eye(2), h=jnp.zeros(2))
    assert sol.dual_eq is None
    np.testing.assert_allclose(sol.primal, [0.5, 0.0], atol=1e-10)  # x2 = 0 is active


def test_float32_keeps_dtype_and_warm_start_agrees(float32):
    Q, c, A, b, G, h = (x.astype(jnp.float32) for x in _problem(jax.random.key(4), 8, 2, 8))

    @jax.jit
    def run(c):
        sol = quadratic_program(Q, c, A, b, G, h)
        warm = quadratic_program(Q, c + 1e-3, A, b, G, h, init=sol)
        cold = quadratic_program(Q, c + 1e-3, A, b, G, h)
        grad = jax.grad(lambda c: jnp.sum(quadratic_program(Q, c, A, b, G, h).primal))(c)
        return sol, warm, cold, grad

    sol, warm, cold, g = run(c)
    assert all(leaf.dtype == jnp.float32 for leaf in sol)
    # float32 KKT residuals stop near eps^0.8 ~ 3e-6 relative; the solution within 1e-4.
    np.testing.assert_allclose(warm.primal, cold.primal, rtol=1e-4, atol=1e-4)
    assert g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g)))


def test_infeasible_problem_is_an_error_at_run_time():
    # x <= -1 and x >= 1: no point is feasible, so the interior point cannot converge.
    G, h = jnp.array([[1.0], [-1.0]]), jnp.array([-1.0, -1.0])
    with pytest.raises(Exception, match="quadratic_program did not converge"):
        jax.block_until_ready(quadratic_program(jnp.eye(1), jnp.zeros(1), G=G, h=h, max_iter=30))


def test_bad_input_is_named():
    Q, c = jnp.eye(2), jnp.zeros(2)
    with pytest.raises(ValueError, match="Q must have shape"):
        quadratic_program(jnp.eye(3), c)
    with pytest.raises(ValueError, match="give G and h together"):
        quadratic_program(Q, c, G=jnp.eye(2))
    with pytest.raises(ValueError, match="A must be a matrix with n = 2 columns"):
        quadratic_program(Q, c, A=jnp.ones(2), b=jnp.ones(1))
    with pytest.raises(ValueError, match="h must have shape"):
        quadratic_program(Q, c, G=jnp.eye(2), h=jnp.ones(3))
    with pytest.raises(TypeError, match="c must be floating point"):
        quadratic_program(Q, jnp.zeros(2, int))
    with pytest.raises(ValueError, match="max_iter must be an integer >= 1"):
        quadratic_program(Q, c, max_iter=0)
    assert jaxsecond.KKTSolution is jaxsecond.implicit.KKTSolution
