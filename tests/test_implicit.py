"""Implicit differentiation: every autodiff mode against closed forms and finite differences."""

import os
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxsecond
from tests.helpers import assert_tree_allclose, finite_difference_jvp

# Ridge regression: w*(lam) = (X^T X + lam I)^{-1} X^T y, so every derivative in lam has a
# closed form that JAX differentiates exactly through `jnp.linalg.solve`.


def _ridge_data(key, n=30, d=6, dtype=jnp.float64):
    kx, ky = jax.random.split(key)
    X = jax.random.normal(kx, (n, d), dtype)
    y = jax.random.normal(ky, (n,), dtype)
    return X, y


def ridge_grad(w, X, y, lam):
    return X.T @ (X @ w - y) + lam * w


def ridge_closed_form(X, y, lam):
    d = X.shape[1]
    return jnp.linalg.solve(X.T @ X + lam * jnp.eye(d, dtype=X.dtype), X.T @ y)


def _gradient_descent_ridge(w0, X, y, lam, steps=2000):
    # A genuine iterative solver: the implicit derivative must not depend on how the
    # root was found, only on the root.
    L = jnp.linalg.norm(X, ord=2) ** 2 + lam
    return jax.lax.fori_loop(0, steps, lambda _, w: w - ridge_grad(w, X, y, lam) / L, w0)


ridge_cg = jaxsecond.custom_root(ridge_grad, symmetric=True)(_gradient_descent_ridge)
ridge_lu = jaxsecond.custom_root(ridge_grad, solve="lu")(_gradient_descent_ridge)
ridge_gmres = jaxsecond.custom_root(ridge_grad, solve="gmres")(_gradient_descent_ridge)


@pytest.fixture
def ridge(getkey):
    X, y = _ridge_data(getkey())
    return X, y, jnp.asarray(0.8)


# Tolerance 1e-10: the forward solve converges to ~1e-15 and CG to 1e-12 relative; the
# solution's derivatives are O(1), so anything above 1e-10 is a real discrepancy.
TOL = 1e-10


@pytest.mark.parametrize("solver", [ridge_cg, ridge_lu, ridge_gmres], ids=["cg", "lu", "gmres"])
@pytest.mark.parametrize(
    "mode",
    ["jacrev", "jacfwd", "grad", "jvp", "vjp", "hessian", "jacrev_jacrev", "jacfwd_jacfwd"],
)
def test_ridge_every_mode_matches_closed_form(ridge, solver, mode):
    X, y, lam = ridge
    w0 = jnp.zeros(X.shape[1])
    ours = lambda lam: solver(w0, X, y, lam)
    ref = lambda lam: ridge_closed_form(X, y, lam)
    scalar = lambda f: lambda lam: jnp.sum(jnp.sin(f(lam)))
    if mode == "jacrev":
        a, b = jax.jacrev(ours)(lam), jax.jacrev(ref)(lam)
    elif mode == "jacfwd":
        a, b = jax.jacfwd(ours)(lam), jax.jacfwd(ref)(lam)
    elif mode == "grad":
        a, b = jax.grad(scalar(ours))(lam), jax.grad(scalar(ref))(lam)
    elif mode == "jvp":
        a = jax.jvp(ours, (lam,), (jnp.asarray(1.3),))
        b = jax.jvp(ref, (lam,), (jnp.asarray(1.3),))
    elif mode == "vjp":
        ct = jnp.arange(X.shape[1], dtype=X.dtype)
        a = jax.vjp(ours, lam)[1](ct)
        b = jax.vjp(ref, lam)[1](ct)
    elif mode == "hessian":
        a, b = jax.hessian(ours)(lam), jax.hessian(ref)(lam)
    elif mode == "jacrev_jacrev":
        a, b = jax.jacrev(jax.jacrev(ours))(lam), jax.jacrev(jax.jacrev(ref))(lam)
    else:
        a, b = jax.jacfwd(jax.jacfwd(ours))(lam), jax.jacfwd(jax.jacfwd(ref))(lam)
    assert_tree_allclose(a, b, rtol=TOL, atol=TOL)


def test_derivatives_wrt_data_and_forward_over_reverse_hvp(ridge, getkey):
    X, y, lam = ridge
    w0 = jnp.zeros(X.shape[1])
    loss = lambda X, y: jnp.sum(ridge_cg(w0, X, y, lam) ** 2)
    loss_ref = lambda X, y: jnp.sum(ridge_closed_form(X, y, lam) ** 2)
    assert_tree_allclose(
        jax.grad(loss, argnums=(0, 1))(X, y), jax.grad(loss_ref, argnums=(0, 1))(X, y), rtol=TOL
    )
    v = jax.random.normal(getkey(), X.shape)
    hvp = jax.jvp(lambda X: jax.grad(loss)(X, y), (X,), (v,))[1]
    hvp_ref = jax.jvp(lambda X: jax.grad(loss_ref)(X, y), (X,), (v,))[1]
    assert_tree_allclose(hvp, hvp_ref, rtol=TOL, atol=TOL)


def test_init_params_get_zero_derivative(ridge):
    X, y, lam = ridge
    w0 = jnp.ones(X.shape[1])
    g = jax.grad(lambda w0: jnp.sum(ridge_cg(w0, X, y, lam)))(w0)
    np.testing.assert_array_equal(g, np.zeros_like(g))


def test_vmap_and_jit_over_hyperparameters(ridge):
    X, y, _ = ridge
    w0 = jnp.zeros(X.shape[1])
    lams = jnp.array([0.01, 0.5, 3.0, 40.0])
    val = lambda lam: jnp.sum(ridge_cg(w0, X, y, lam) ** 2)
    val_ref = lambda lam: jnp.sum(ridge_closed_form(X, y, lam) ** 2)
    ours = jax.jit(jax.vmap(jax.grad(val)))(lams)
    ref = jax.vmap(jax.grad(val_ref))(lams)
    assert_tree_allclose(ours, ref, rtol=TOL)
    # vmap outside, jit inside, and batched data too.
    Xs = jnp.stack([X, 2 * X])
    ours = jax.vmap(jax.jit(jax.grad(lambda X: jnp.sum(ridge_cg(w0, X, y, 0.5)))))(Xs)
    ref = jax.vmap(jax.grad(lambda X: jnp.sum(ridge_closed_form(X, y, 0.5))))(Xs)
    assert_tree_allclose(ours, ref, rtol=TOL, atol=TOL)


def test_closed_over_traced_values(ridge):
    X, y, lam = ridge
    w0 = jnp.zeros(X.shape[1])

    def through_closure(lam, X):
        # Both the optimality function and the solver close over traced `lam` and `X`.
        def F(w):
            return ridge_grad(w, X, y, lam)

        @jaxsecond.custom_root(F, symmetric=True)
        def solve(w0):
            return _gradient_descent_ridge(w0, X, y, lam)

        return jnp.sum(jnp.cos(solve(w0)))

    ref = lambda lam, X: jnp.sum(jnp.cos(ridge_closed_form(X, y, lam)))
    assert_tree_allclose(
        jax.grad(through_closure, argnums=(0, 1))(lam, X),
        jax.grad(ref, argnums=(0, 1))(lam, X),
        rtol=TOL,
    )
    tangents = (jnp.asarray(0.7), jnp.ones_like(X))
    assert_tree_allclose(
        jax.jvp(through_closure, (lam, X), tangents),
        jax.jvp(ref, (lam, X), tangents),
        rtol=TOL,
    )
    assert_tree_allclose(jax.hessian(through_closure)(lam, X), jax.hessian(ref)(lam, X), rtol=1e-9)


# A pytree problem: params are a dict holding a tuple and an equinox Module; the
# hyperparameters come through kwargs.


class Affine(eqx.Module):
    weight: jax.Array
    bias: jax.Array
    activation: callable = eqx.field(static=True)


def _tree_problem(key):
    k1, k2 = jax.random.split(key)
    A = jax.random.normal(k1, (4, 4))
    A = A @ A.T + 4 * jnp.eye(4)
    target = jax.random.normal(k2, (4,))
    return A, target


def tree_objective(p, A, *, target, scale):
    # Strongly convex quadratic in (a, b, weight, bias).
    a, b = p["pair"]
    m = p["module"]
    z = jnp.concatenate([a, b, m.weight.reshape(-1), m.bias])
    return 0.5 * z @ jnp.kron(jnp.eye(3), A) @ z - scale * jnp.tile(target, 3) @ z


tree_optimality = jax.grad(tree_objective)


def tree_closed_form(A, target, scale):
    K = jnp.kron(jnp.eye(3), A)
    # The objective sees only the symmetric part of K, so derivatives in A do too.
    z = jnp.linalg.solve(0.5 * (K + K.T), scale * jnp.tile(target, 3))
    return {
        "pair": (z[:2], z[2:4]),
        "module": Affine(z[4:8].reshape(2, 2), z[8:], activation=jnp.tanh),
    }


@jaxsecond.custom_root(tree_optimality, symmetric=True)
def tree_solver(p, A, *, target, scale):
    step = 1.0 / (jnp.linalg.norm(A, ord=2) + 1.0)
    grad = lambda p: tree_optimality(p, A, target=target, scale=scale)
    return jax.lax.fori_loop(
        0, 3000, lambda _, p: jax.tree.map(lambda x, g: x - step * g, p, grad(p)), p
    )


def test_pytree_params_and_kwargs(getkey):
    A, target = _tree_problem(getkey())
    p0 = {
        "pair": (jnp.zeros(2), jnp.zeros(2)),
        "module": Affine(jnp.zeros((2, 2)), jnp.zeros(4), activation=jnp.tanh),
    }

    def loss(A, target, scale, fn):
        sol = fn(A, target, scale)
        return sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(sol))

    ours = lambda A, t, s: tree_solver(p0, A, target=t, scale=s)
    grads = jax.grad(loss, argnums=(0, 1, 2))(A, target, 1.5, ours)
    grads_ref = jax.grad(loss, argnums=(0, 1, 2))(A, target, 1.5, tree_closed_form)
    assert_tree_allclose(grads, grads_ref, rtol=1e-9)
    sol = ours(A, target, 1.5)
    assert sol["module"].activation is jnp.tanh
    tangent = jax.jvp(lambda s: ours(A, target, s), (1.5,), (1.0,))[1]
    tangent_ref = jax.jvp(lambda s: tree_closed_form(A, target, s), (1.5,), (1.0,))[1]
    assert_tree_allclose(
        eqx.filter(tangent, eqx.is_array), eqx.filter(tangent_ref, eqx.is_array), rtol=1e-9
    )


def test_float32_keeps_dtype(float32):
    X, y = _ridge_data(jax.random.key(0), dtype=jnp.float32)
    lam = jnp.float32(0.8)
    w0 = jnp.zeros(X.shape[1], jnp.float32)
    g = jax.grad(lambda lam: jnp.sum(ridge_cg(w0, X, y, lam) ** 2))(lam)
    g_ref = jax.grad(lambda lam: jnp.sum(ridge_closed_form(X, y, lam) ** 2))(lam)
    assert g.dtype == jnp.float32
    assert ridge_cg(w0, X, y, lam).dtype == jnp.float32
    # float32 round-off (1e-7) amplified by the condition number (~10 here) and the
    # 1e-5 default CG tolerance.
    np.testing.assert_allclose(g, g_ref, rtol=1e-4)


# Logistic regression with L2: no closed form, so compare with finite differences.


def logistic_objective(w, X, y, lam):
    logits = X @ w
    return jnp.mean(jnp.logaddexp(0.0, logits) - y * logits) + 0.5 * lam * w @ w


logistic_optimality = jax.grad(logistic_objective)


@jaxsecond.custom_root(logistic_optimality, symmetric=True)
def logistic_newton(w0, X, y, lam):
    def step(_, w):
        H = jax.hessian(logistic_objective)(w, X, y, lam)
        return w - jnp.linalg.solve(H, logistic_optimality(w, X, y, lam))

    return jax.lax.fori_loop(0, 30, step, w0)


@pytest.fixture
def logistic(getkey):
    kx, kw = jax.random.split(getkey())
    X = jax.random.normal(kx, (40, 5))
    y = (X @ jax.random.normal(kw, (5,)) > 0).astype(X.dtype)
    return X, y, jnp.asarray(0.3)


@pytest.mark.integration  # heavy: in the second tier
def test_logistic_finite_differences_orders_1_and_2(logistic):
    X, y, lam = logistic
    w0 = jnp.zeros(X.shape[1])
    # Jitted: check_grads evaluates f and its derivatives at many perturbed points, and
    # each eager call would trace and compile the Newton loop again.
    f = jax.jit(lambda X, lam: logistic_newton(w0, X, y, lam))
    # check_grads uses eps=1e-4 central differences in float64 and compares at
    # rtol/atol 1e-5 (JAX's default for float64 second order).
    check_grads(f, (X, lam), order=2, modes=("fwd", "rev"))


def test_fixed_point_form_matches_root_form(logistic):
    X, y, lam = logistic
    w0 = jnp.zeros(X.shape[1])
    eta = 1.0

    def gd_step(w, X, y, lam):
        return w - eta * logistic_optimality(w, X, y, lam)

    fp_solver = jaxsecond.custom_fixed_point(gd_step)(logistic_newton.__wrapped__)
    fp_sym = jaxsecond.custom_fixed_point(gd_step, symmetric=True)(logistic_newton.__wrapped__)
    for mode in (jax.jacrev, jax.jacfwd):
        # Each Jacobian is one compiled program; the root form's is computed once.
        jacobian = lambda solver: jax.jit(mode(solver, argnums=(1, 3)))(w0, X, y, lam)
        ref = jacobian(logistic_newton)
        for solver in (fp_solver, fp_sym):
            assert_tree_allclose(jacobian(solver), ref, rtol=1e-9, atol=1e-12)


def test_has_aux_passes_through_without_derivative(ridge):
    X, y, lam = ridge

    @jaxsecond.custom_root(ridge_grad, symmetric=True, has_aux=True)
    def solver(w0, X, y, lam):
        w = _gradient_descent_ridge(w0, X, y, lam)
        return w, {"iterations": jnp.asarray(2000), "residual": jnp.sum(w), "name": "gd"}

    w0 = jnp.zeros(X.shape[1])
    _, aux = solver(w0, X, y, lam)
    assert aux["name"] == "gd" and int(aux["iterations"]) == 2000

    def arrays_only(lam):
        w, aux = solver(w0, X, y, lam)
        return w, {"residual": aux["residual"]}

    (_, _), (tw, taux) = jax.jvp(arrays_only, (lam,), (1.0,))
    assert_tree_allclose(tw, jax.jvp(lambda lam_: ridge_closed_form(X, y, lam_), (lam,), (1.0,))[1])
    assert float(taux["residual"]) == 0.0
    g = jax.grad(lambda lam: solver(w0, X, y, lam)[1]["residual"])(lam)
    assert float(g) == 0.0


def test_root_jvp_and_root_vjp_agree_with_closed_form(ridge):
    X, y, lam = ridge
    sol = ridge_closed_form(X, y, lam)
    t = jaxsecond.root_jvp(ridge_grad, sol, (X, y, lam), (None, None, 1.0), symmetric=True)
    assert_tree_allclose(t, jax.jacfwd(ridge_closed_form, argnums=2)(X, y, lam), rtol=TOL)
    ct = jnp.linspace(-1, 1, X.shape[1])
    cts = jaxsecond.root_vjp(ridge_grad, sol, (X, y, lam), ct, solve="lu")
    ref = jax.vjp(ridge_closed_form, X, y, lam)[1](ct)
    assert_tree_allclose(cts, ref, rtol=TOL, atol=TOL)


def test_lineax_solver_and_preconditioner(ridge):
    X, y, lam = ridge
    d = X.shape[1]

    def jacobi(w, X, y, lam):
        diag = jnp.sum(X**2, axis=0) + lam
        return lx.DiagonalLinearOperator(1.0 / diag)

    pre = lx.TaggedLinearOperator
    precond = lambda *a: pre(jacobi(*a), lx.positive_semidefinite_tag)
    solver = jaxsecond.custom_root(
        ridge_grad, symmetric=True, solve="cg", preconditioner=precond, rtol=1e-13, atol=1e-13
    )(_gradient_descent_ridge)
    solver2 = jaxsecond.custom_root(ridge_grad, solve=lx.BiCGStab(rtol=1e-13, atol=1e-13))(
        _gradient_descent_ridge
    )
    ref = jax.jacfwd(ridge_closed_form, argnums=2)(X, y, lam)
    for s in (solver, solver2):
        assert_tree_allclose(jax.jacfwd(s, argnums=3)(jnp.zeros(d), X, y, lam), ref, rtol=TOL)


# Bad input and run-time failures.


def test_optimality_output_mismatch_is_a_value_error(ridge):
    X, y, lam = ridge
    bad = jaxsecond.custom_root(lambda w, X, y, lam: ridge_grad(w, X, y, lam)[:-1])(
        _gradient_descent_ridge
    )
    with pytest.raises(ValueError, match=r"optimality function .* shaped like params.*shape"):
        bad(jnp.zeros(X.shape[1]), X, y, lam)


def test_non_float_params_is_a_type_error(ridge):
    X, y, lam = ridge
    with pytest.raises(TypeError, match=r"init_params .* dtype int"):
        ridge_cg(jnp.zeros(X.shape[1], dtype=jnp.int32), X, y, lam)


def test_solver_returning_wrong_structure(ridge):
    X, y, lam = ridge
    bad = jaxsecond.custom_root(ridge_grad)(lambda w0, X, y, lam: (w0, w0))
    with pytest.raises(ValueError, match=r"solver .* must return a solution shaped like"):
        bad(jnp.zeros(X.shape[1]), X, y, lam)
    bad_aux = jaxsecond.custom_root(ridge_grad, has_aux=True)(lambda w0, X, y, lam: w0)
    with pytest.raises(ValueError, match="has_aux=True"):
        bad_aux(jnp.zeros(X.shape[1]), X, y, lam)


def test_bad_options():
    with pytest.raises(ValueError, match="solve must be"):
        jaxsecond.custom_root(ridge_grad, solve="magic")
    with pytest.raises(ValueError, match="symmetric=True"):
        jaxsecond.custom_root(ridge_grad, solve="cg")
    with pytest.raises(ValueError, match="residual_tol"):
        jaxsecond.custom_root(ridge_grad, residual_tol=-1.0)
    with pytest.raises(ValueError, match="lineax solver"):
        jaxsecond.custom_root(ridge_grad, solve=lx.CG(rtol=1e-6, atol=1e-6), rtol=1e-3)
    with pytest.raises(TypeError, match="optimality_fun must be callable"):
        jaxsecond.custom_root(3.0)


_FAILING_SOLVE = """
import jax, jax.numpy as jnp, jaxsecond
jax.config.update("jax_enable_x64", True)
# The Jacobian diag(1, 0) is singular and the right-hand side has a component in its
# null space: the system is inconsistent and GMRES cannot converge.
F = lambda x, a: jnp.array([x[0] - a, 0.0 * x[1] - a])
solver = jaxsecond.custom_root(F, solve="gmres", max_steps=20)(lambda x0, a: jnp.array([a, 0.0]))
x0 = jnp.zeros(2)
for name, fn in [
    ("jacfwd", lambda: jax.jacfwd(solver, argnums=1)(x0, 1.0)),
    ("grad", lambda: jax.grad(lambda a: jnp.sum(solver(x0, a)))(1.0)),
]:
    try:
        out = jax.block_until_ready(fn())
        print(name, "nan" if bool(jnp.all(jnp.isnan(out))) else "finite")
    except Exception as e:
        print(name, "raised", type(e).__name__)
"""


@pytest.mark.parametrize("on_error", ["raise", "nan"])
def test_linear_solve_failure_is_reported(on_error):
    # The policy is read from EQX_ON_ERROR when equinox is imported: a subprocess.
    env = {**os.environ, "EQX_ON_ERROR": on_error, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", _FAILING_SOLVE], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    outcome = dict(line.split()[:2] for line in out.stdout.splitlines())
    expected = "raised" if on_error == "raise" else "nan"
    assert outcome == {"jacfwd": expected, "grad": expected}, out.stdout


def test_forward_solve_residual_check(ridge):
    X, y, lam = ridge
    lazy = lambda w0, X, y, lam: _gradient_descent_ridge(w0, X, y, lam, steps=2)
    checked = jaxsecond.custom_root(ridge_grad, symmetric=True, residual_tol=1e-6)(lazy)
    w0 = jnp.zeros(X.shape[1])
    with pytest.raises(Exception, match="did not converge"):
        jax.block_until_ready(jax.jit(checked)(w0, X, y, lam))
    ok = jaxsecond.custom_root(ridge_grad, symmetric=True, residual_tol=1e-6)(
        _gradient_descent_ridge
    )
    assert_tree_allclose(ok(w0, X, y, lam), ridge_closed_form(X, y, lam), rtol=1e-9)


def test_finite_difference_helper_agrees_with_jvp(ridge):
    # The helper used across the suite is itself checked once against autodiff.
    X, y, lam = ridge
    fd = finite_difference_jvp(lambda lam_: ridge_closed_form(X, y, lam_), (lam,), (1.0,))
    exact = jax.jvp(lambda lam_: ridge_closed_form(X, y, lam_), (lam,), (1.0,))[1]
    np.testing.assert_allclose(fd, exact, rtol=1e-7)


def test_cg_on_small_eigenvalues_in_float32(float32):
    # Positive definite, eigenvalues spread geometrically over [0.01, 1.72]: well posed
    # (condition number 172), but small enough in absolute terms to trip lineax CG's
    # breakdown guard (Rayleigh quotient below 200 n eps = 0.015 here). The default
    # "cg" (EuclideanCG) has no such guard.
    n = 650
    Q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(0), (n, n)))
    eigenvalues = jnp.geomspace(0.01, 1.72, n)
    A = (Q * eigenvalues) @ Q.T
    A = 0.5 * (A + A.T)
    b = jax.random.normal(jax.random.key(1), (n,))
    solver = jaxsecond.custom_root(lambda x, b: A @ x - b, symmetric=True)(
        lambda x0, b: jnp.linalg.solve(A, b)
    )
    g = jax.grad(lambda b: jnp.sum(solver(jnp.zeros(n), b)))(b)
    ref = np.linalg.solve(np.asarray(A, np.float64), np.ones(n))
    assert g.dtype == jnp.float32
    # CG stops at a 1e-5 residual; the condition number 172 amplifies that (and float32
    # round-off) to ~1e-4 relative in the solution.
    np.testing.assert_allclose(g, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


def test_numpy_black_box_solver(ridge):
    X, y, lam = ridge

    @jaxsecond.custom_root(ridge_grad, symmetric=True, has_aux=True)
    def numpy_ridge(w0, X, y, lam):
        X, y = np.asarray(X), np.asarray(y)
        A = X.T @ X + float(lam) * np.eye(X.shape[1])
        return np.linalg.solve(A, X.T @ y), {"solver": "numpy", "cond": np.linalg.cond(A)}

    w0 = jnp.zeros(X.shape[1])
    sol, aux = numpy_ridge(w0, X, y, lam)
    assert aux["solver"] == "numpy" and float(aux["cond"]) > 1
    assert_tree_allclose(sol, ridge_closed_form(X, y, lam), rtol=TOL)
    ref = jax.jacfwd(ridge_closed_form, argnums=2)(X, y, lam)
    for mode in (jax.jacrev, jax.jacfwd):
        jac = mode(lambda lam: numpy_ridge(w0, X, y, lam)[0])(lam)
        assert_tree_allclose(jac, ref, rtol=TOL, atol=TOL)
    with pytest.raises(TypeError, match=r"numpy_ridge cannot be traced .*pure_callback"):
        jax.jit(lambda lam: numpy_ridge(w0, X, y, lam)[0])(lam)


# --------------------------------------------------------------------------- call conventions


def _ridge_optimality(w, X, y, lam):
    return (X @ w - y) @ X + lam * w


def _ridge_closed_form_grad(X, y, lam):
    # d/dlam of sum(w*) with w* = (X^T X + lam I)^{-1} X^T y is -1^T (X^T X + lam I)^{-1} w*.
    M = X.T @ X + lam * jnp.eye(X.shape[1])
    return -jnp.sum(jnp.linalg.solve(M, jnp.linalg.solve(M, X.T @ y)))


def test_init_params_none_takes_the_structure_from_the_output():
    X, y = _ridge_data(jax.random.key(0), n=8, d=3)[:2]

    @jaxsecond.custom_root(_ridge_optimality, symmetric=True, has_aux=True)
    def ridge(w0, X, y, lam):
        assert w0 is None  # handed on unchanged
        M = X.T @ X + lam * jnp.eye(X.shape[1])
        return {"w": jnp.linalg.solve(M, X.T @ y)}["w"], "aux"

    grad = jax.jit(jax.grad(lambda lam: jnp.sum(ridge(None, X, y, lam)[0])))(0.5)
    np.testing.assert_allclose(grad, _ridge_closed_form_grad(X, y, 0.5), rtol=1e-10)
    assert ridge(None, X, y, 0.5)[1] == "aux"


def test_solver_defaults_keywords_and_options_reach_the_optimality_function():
    X, y = _ridge_data(jax.random.key(1), n=8, d=3)[:2]
    expected = _ridge_closed_form_grad(X, y, 0.5)

    def solve(w0, X, y, lam=0.5, maxiter=300):  # a default, and an option F does not take
        step = 1 / jnp.linalg.norm(X.T @ X + lam * jnp.eye(3), 2)
        body = lambda _, w: w - step * _ridge_optimality(w, X, y, lam)
        return jax.lax.fori_loop(0, maxiter, body, w0)

    variants = {
        "named": jaxsecond.custom_root(_ridge_optimality, symmetric=True)(solve),
        # jaxopt's habit: an optimality function of *args, solver called by keyword.
        # (*args takes every argument, so this solver has no option F would choke on.)
        "star_args": jaxsecond.custom_root(
            lambda w, *args: _ridge_optimality(w, *args), symmetric=True
        )(lambda w0, X, y, lam=0.5: solve(w0, X, y, lam)),
    }
    w0 = jnp.zeros(3)
    for name, ridge in variants.items():
        calls = {
            "lam by default": lambda lam: ridge(w0, X, y),
            "lam by keyword": lambda lam: ridge(w0, X=X, y=y, lam=lam),
            "option by keyword": lambda lam: ridge(w0, X, y, lam, maxiter=400),
        }
        if name == "star_args":
            del calls["option by keyword"]
        for call, f in calls.items():
            g = jax.jit(jax.grad(lambda lam: jnp.sum(f(lam))))(0.5)
            # The default lam is not the differentiated one: its derivative is zero.
            want = 0.0 if call == "lam by default" else expected
            np.testing.assert_allclose(g, want, rtol=1e-8, atol=1e-12, err_msg=f"{name}, {call}")
    with pytest.raises(
        TypeError, match="solve cannot take these arguments: missing a required argument"
    ):
        variants["named"](w0, X)


def test_jaxopt_call_sites_port_unchanged():
    jaxopt = pytest.importorskip("jaxopt")
    X, y = _ridge_data(jax.random.key(2), n=8, d=3)[:2]

    def solve(w0, X, y, lam=0.5):
        return jnp.linalg.solve(X.T @ X + lam * jnp.eye(X.shape[1]), X.T @ y)

    ours = jaxsecond.custom_root(_ridge_optimality)(solve)
    theirs = jaxopt.implicit_diff.custom_root(_ridge_optimality)(solve)
    for f in (
        lambda r, lam: r(None, X, y, lam),
        lambda r, lam: r(jnp.zeros(3), X=X, y=y, lam=lam),
        lambda r, lam: r(jnp.zeros(3), X, y=y, lam=lam),
    ):
        g_ours = jax.grad(lambda lam: jnp.sum(f(ours, lam)))(0.7)
        g_theirs = jax.grad(lambda lam: jnp.sum(f(theirs, lam)))(0.7)
        np.testing.assert_allclose(g_ours, g_theirs, rtol=1e-10)
