"""The optimality-condition catalogue: each condition, decorated onto a solver, gives
the solution's derivatives in every mode (jvp, grad, hessian, vmap, jit), checked
against JAX differentiating a closed-form solution, or a dense implicit-function solve.

The solvers here return the exact solution (closed forms), so a mismatch can only come
from the condition or the implicit differentiation. float64; tolerances are round-off
of a small dense solve (1e-10) unless stated.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsecond
from jaxsecond.implicit import (
    kkt_condition,
    mirror_descent_condition,
    newton_condition,
    projected_gradient_condition,
    proximal_gradient_condition,
    stationarity_condition,
)

RTOL = 1e-10


def _check_every_mode(solution, reference, theta, rtol=RTOL):
    """``solution(theta)`` (implicit) against ``reference(theta)`` (a closed form that
    JAX differentiates directly): value, jvp, grad, hessian, vmap, each under jit."""
    scalar = lambda f: lambda t: jnp.sum(jnp.sin(f(t)))  # every output entry counts
    tangent = jnp.linspace(0.3, 1.1, theta.size).reshape(theta.shape)
    batch = theta[None] * jnp.array([1.0, 0.9, 1.1]).reshape((3,) + (1,) * theta.ndim)
    checks = {
        "value": lambda f, theta, tangent, batch: f(theta),
        "jvp": lambda f, theta, tangent, batch: jax.jvp(f, (theta,), (tangent,))[1],
        "grad": lambda f, theta, tangent, batch: jax.grad(scalar(f))(theta),
        "hessian": lambda f, theta, tangent, batch: jax.hessian(scalar(f))(theta),
        "vmap": lambda f, theta, tangent, batch: jax.vmap(f)(batch),
    }
    # One compiled program per side for all the checks (compiling each mode apart costs
    # more), with theta an argument so that a second point reuses it.
    got = _compiled(solution, checks)(theta, tangent, batch)
    want = _compiled(reference, checks)(theta, tangent, batch)
    for name in checks:
        np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=rtol, err_msg=name)


_COMPILED: dict = {}


def _compiled(f, checks):
    if f not in _COMPILED:
        _COMPILED[f] = jax.jit(lambda *a: {name: check(f, *a) for name, check in checks.items()})
    return _COMPILED[f]


def _dense_ift(optimality, x, theta):
    """dx/dtheta = -(dF/dx)^{-1} dF/dtheta, from dense Jacobians (flat x and theta)."""
    jx = jax.jacobian(optimality, 0)(x, theta)
    jt = jax.jacobian(optimality, 1)(x, theta)
    return -jnp.linalg.solve(jx, jt)


# --------------------------------------------------------------------------- stationarity


def test_stationarity_ridge_in_every_mode():
    X = jax.random.normal(jax.random.key(0), (10, 4))
    y = jax.random.normal(jax.random.key(1), (10,))

    def loss(w, lam_and_y):
        lam, y = lam_and_y[0], lam_and_y[1:]
        return 0.5 * jnp.sum((X @ w - y) ** 2) + 0.5 * lam * jnp.sum(w**2)

    def closed_form(theta):
        lam, y = theta[0], theta[1:]
        return jnp.linalg.solve(X.T @ X + lam * jnp.eye(4), X.T @ y)

    solver = jaxsecond.custom_root(stationarity_condition(loss))(
        lambda w0, theta: closed_form(theta)
    )
    theta = jnp.concatenate([jnp.array([0.7]), y])
    _check_every_mode(lambda t: solver(None, t), closed_form, theta)


# --------------------------------------------------------------------------- KKT


def test_kkt_equality_constrained_quadratic_in_every_mode():
    # min 0.5 x^T Q x + c^T x s.t. A x = b: one linear KKT system, solved in closed form.
    Q = jnp.array([[3.0, 0.5, 0.0], [0.5, 2.0, 0.3], [0.0, 0.3, 1.5]])
    A = jnp.array([[1.0, 1.0, 1.0]])

    def closed_form(theta):  # theta = (c, b)
        c, b = theta[:3], theta[3:]
        kkt = jnp.block([[Q, A.T], [A, jnp.zeros((1, 1))]])
        sol = jnp.linalg.solve(kkt, jnp.concatenate([-c, b]))
        return sol[:3], sol[3:]

    fun = lambda x, c: 0.5 * x @ Q @ x + c @ x
    eq = lambda x, b: A @ x - b
    condition = kkt_condition(fun, eq_fun=eq)

    @jaxsecond.custom_root(condition)
    def solve(params0, c, b, params_ineq=None):
        x, nu = closed_form(jnp.concatenate([c, b]))
        return x, nu, None

    solution = lambda t: jnp.concatenate(solve(None, t[:3], t[3:])[:2])
    theta = jnp.array([0.2, -1.0, 0.5, 2.0])
    _check_every_mode(solution, lambda t: jnp.concatenate(closed_form(t)), theta)


def test_kkt_inequality_active_and_inactive_in_every_mode():
    # Projection of z onto the half-space a^T x <= b: x = z - max(a^T z - b, 0) a / |a|^2,
    # multiplier max(a^T z - b, 0) / |a|^2. Theta = (z, a, b): both the point and the set.
    def closed_form(theta):
        z, a, b = theta[:3], theta[3:6], theta[6]
        dual = jnp.maximum(a @ z - b, 0.0) / (a @ a)
        return jnp.concatenate([z - dual * a, dual[None]])

    fun = lambda x, z: 0.5 * jnp.sum((x - z) ** 2)
    ineq = lambda x, ab: ab[:3] @ x[None].T - ab[3]  # shape (1,)
    condition = kkt_condition(fun, ineq_fun=ineq)

    @jaxsecond.custom_root(condition)
    def project(params0, z, params_eq, ab):
        sol = closed_form(jnp.concatenate([z, ab]))
        return sol[:3], None, sol[3:]

    def solution(t):
        x, _, dual = project(None, t[:3], None, t[3:])
        return jnp.concatenate([x, dual])

    a = jnp.array([1.0, 2.0, -0.5])
    for z, b in ((jnp.array([1.0, 2.0, 0.3]), 1.0), (jnp.array([0.1, -0.2, 0.3]), 1.0)):
        theta = jnp.concatenate([z, a, jnp.array([b])])
        _check_every_mode(solution, closed_form, theta)


def test_kkt_refuses_a_dual_without_its_constraint():
    condition = kkt_condition(lambda x, _: jnp.sum(x**2))
    with pytest.raises(ValueError, match="eq_dual is given but the constraint function is absent"):
        condition((jnp.ones(2), jnp.ones(1), None), None)
    with pytest.raises(TypeError, match="params must be a triple"):
        condition(jnp.ones(2), None)


# --------------------------------------------------------------------------- fixed points


def _soft_threshold(x, l1reg, scaling):
    return jnp.sign(x) * jnp.maximum(jnp.abs(x) - l1reg * scaling, 0.0)


@pytest.mark.parametrize("stepsize", [1.0, 0.3])
def test_proximal_gradient_lasso_in_every_mode(stepsize):
    # Orthonormal design: the lasso solution is soft-thresholding of X^T y, whose
    # derivative in l1reg is -sign on the support (and in y, the support's identity).
    X = jnp.linalg.qr(jax.random.normal(jax.random.key(2), (8, 4)))[0]
    y = X @ jnp.array([2.0, 0.1, -1.5, 0.05]) + 0.01
    fun = lambda w, y: 0.5 * jnp.sum((X @ w - y) ** 2)
    closed_form = lambda theta: _soft_threshold(X.T @ theta[1:], theta[0], 1.0)
    condition = proximal_gradient_condition(fun, _soft_threshold, stepsize=stepsize)
    solver = jaxsecond.custom_root(condition)(lambda w0, l1reg, y: closed_form(jnp.r_[l1reg, y]))
    theta = jnp.concatenate([jnp.array([0.25]), y])
    assert jnp.sum(closed_form(theta) != 0) not in (0, 4)  # both regions exercised
    _check_every_mode(lambda t: solver(jnp.zeros(4), t[0], t[1:]), closed_form, theta)


def test_projected_gradient_box_quadratic_in_every_mode():
    # Diagonal quadratic over a box: the minimiser is clip(-c / q, lower, upper).
    q = jnp.array([1.0, 2.0, 4.0, 0.5])
    box = lambda x, bounds: jnp.clip(x, bounds[0], bounds[1])
    fun = lambda x, c: 0.5 * jnp.sum(q * x**2) + c @ x
    closed_form = lambda theta: jnp.clip(-theta[:4] / q, theta[4], theta[5])
    solver = jaxsecond.custom_root(projected_gradient_condition(fun, box, stepsize=0.4))(
        lambda x0, bounds, c: closed_form(jnp.concatenate([c, bounds]))
    )
    theta = jnp.array([-3.0, 0.5, -1.0, 2.0, -0.5, 1.0])  # above, inside, inside, below
    _check_every_mode(lambda t: solver(jnp.zeros(4), t[4:], t[:4]), closed_form, theta)


def test_mirror_descent_entropy_on_the_simplex_in_every_mode():
    # min <x, log x> - <theta, x> over the simplex is solved by softmax(theta).
    fun = lambda x, theta: jnp.sum(x * jnp.log(x)) - theta @ x
    condition = mirror_descent_condition(fun, lambda y, _: jax.nn.softmax(y), jnp.log, stepsize=0.5)
    solver = jaxsecond.custom_root(condition)(lambda x0, hp, theta: jax.nn.softmax(theta))
    theta = jnp.array([0.3, -1.0, 2.0, 0.0])
    _check_every_mode(lambda t: solver(jnp.full(4, 0.25), None, t), jax.nn.softmax, theta)


@pytest.mark.integration  # heavy: in the second tier
def test_mirror_and_projected_conditions_agree_on_a_simplex_quadratic():
    # The same problem (an interior solution of a quadratic on the simplex) through two
    # conditions: both derivatives equal the dense implicit-function solve of the KKT
    # system with the sum constraint.
    Q = jnp.array([[2.0, 0.2, 0.0], [0.2, 1.5, 0.1], [0.0, 0.1, 1.0]])
    fun = lambda x, c: 0.5 * x @ Q @ x + c @ x
    c = jnp.array([0.1, -0.2, 0.05])

    def interior_solution(c):  # interior: only sum(x) = 1 is active
        kkt = jnp.block([[Q, jnp.ones((3, 1))], [jnp.ones((1, 3)), jnp.zeros((1, 1))]])
        return jnp.linalg.solve(kkt, jnp.concatenate([-c, jnp.ones(1)]))[:3]

    x = interior_solution(c)
    assert jnp.all(x > 0.05)
    simplex_proj = lambda y, _: _project_simplex(y)
    pg = projected_gradient_condition(fun, simplex_proj, stepsize=0.2)
    md = mirror_descent_condition(fun, lambda y, _: jax.nn.softmax(y), jnp.log, stepsize=0.2)
    want = jax.jacobian(interior_solution)(c)
    for condition in (pg, md):
        solver = jaxsecond.custom_root(condition)(lambda x0, hp, c: interior_solution(c))
        got = jax.jit(jax.jacobian(lambda c: solver(jnp.full(3, 1 / 3), None, c)))(c)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL)
        dense = _dense_ift(lambda x, c: condition(x, None, c), x, c)
        np.testing.assert_allclose(dense, want, rtol=RTOL, atol=RTOL)


def _project_simplex(y):
    # Sort-based Euclidean projection onto the probability simplex.
    u = jnp.sort(y)[::-1]
    cumulative = jnp.cumsum(u) - 1.0
    index = jnp.arange(1, y.size + 1)
    rho = jnp.max(jnp.where(u - cumulative / index > 0, index, 0))
    tau = cumulative[rho - 1] / rho
    return jnp.maximum(y - tau, 0.0)


def test_newton_condition_matches_the_root_form():
    F = lambda x, a: jnp.stack([x[0] ** 3 + x[1] - a[0], x[1] ** 3 - a[1] + 0.5 * x[0]])

    def solve(x0, a):  # Newton iterations to full precision
        step = lambda _, x: x - jnp.linalg.solve(jax.jacfwd(F)(x, a), F(x, a))
        return jax.lax.fori_loop(0, 50, step, x0)

    newton = jaxsecond.custom_root(newton_condition(F))(solve)
    root = jaxsecond.custom_root(F)(solve)
    a = jnp.array([2.0, 1.5])
    _check_every_mode(lambda a: newton(jnp.ones(2), a), lambda a: root(jnp.ones(2), a), a)


def test_conditions_refuse_bad_arguments():
    fun = lambda x: jnp.sum(x**2)
    with pytest.raises(TypeError, match="stationarity_condition: fun must be callable"):
        stationarity_condition(3.0)
    with pytest.raises(ValueError, match="stepsize must be a positive number, got 0"):
        proximal_gradient_condition(fun, _soft_threshold, stepsize=0)
    with pytest.raises(TypeError, match="projection must be callable"):
        projected_gradient_condition(fun, None)
    with pytest.raises(TypeError, match="mapping_fun must be callable"):
        mirror_descent_condition(fun, jax.nn.softmax, "log")


def test_readme_catalogue_example_runs_and_is_right():
    # The README's lasso example, as a user pastes it; its forward-mode derivative is
    # -(X_S^T X_S)^{-1} sign(w_S) on the support S (zero elsewhere).
    import pathlib

    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index("```python\n", text.index("### The catalogue")) + len("```python\n")
    namespace: dict = {}
    exec(compile(text[start : text.index("```", start)], "README.md", "exec"), namespace)
    X, y, dw = namespace["X"], namespace["y"], namespace["dw_dl1reg"]
    w = namespace["lasso"](jnp.zeros(10), 10.0, X, y)
    support = np.abs(np.asarray(w)) > 1e-8
    XS = X[:, support]
    expected = -jnp.linalg.solve(XS.T @ XS, jnp.sign(w[support]))
    # 500 ISTA steps leave the solution ~1e-6 from exact; the derivative inherits it.
    np.testing.assert_allclose(dw[support], expected, rtol=1e-5, atol=1e-5)
    assert np.all(np.abs(np.asarray(dw)[~support]) < 1e-12)  # round-off of the solve
