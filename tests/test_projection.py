"""jaxsecond.projection: membership, optimality, jaxopt parity, derivatives, bad input."""

from __future__ import annotations

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxsecond.projection as proj

# Round-off of O(1) inner products and sums in float64 is ~1e-15; 1e-12 leaves room
# for a handful of operations on inputs of size ~3.
EXACT = 1e-12


def _rng(seed=0):
    return np.random.default_rng(seed)


def _case(name, rng):
    """(our function, jaxopt's name, x, set parameter or None) at a generic point: no
    entry on a kink (box faces, simplex threshold, ball boundary)."""
    n = 6
    x = rng.normal(size=n) * 2
    if name == "non_negative":
        return proj.projection_non_negative, x, None
    if name == "box":
        lower, upper = -rng.uniform(0.1, 1.0, n), rng.uniform(0.1, 1.0, n)
        return proj.projection_box, x, (lower, upper)
    if name == "hypercube":
        return proj.projection_hypercube, x, 1.5
    if name == "simplex":
        return proj.projection_simplex, x, 1.7
    if name == "l1_sphere":
        return proj.projection_l1_sphere, x, 1.3
    if name == "l1_ball":
        return proj.projection_l1_ball, x, 1.3
    if name == "l2_sphere":
        return proj.projection_l2_sphere, x, 1.3
    if name == "l2_ball":
        return proj.projection_l2_ball, x, 1.3
    if name == "linf_ball":
        return proj.projection_linf_ball, x, 0.8
    if name == "hyperplane":
        return proj.projection_hyperplane, x, (rng.normal(size=n), 0.7)
    if name == "halfspace":
        a = rng.normal(size=n)
        return proj.projection_halfspace, x, (a, float(a @ x) - 1.0)  # x violates it
    if name == "affine_set":
        return proj.projection_affine_set, x, (rng.normal(size=(2, n)), rng.normal(size=2))
    raise AssertionError(name)


SIMPLE = [
    "non_negative",
    "box",
    "hypercube",
    "simplex",
    "l1_sphere",
    "l1_ball",
    "l2_sphere",
    "l2_ball",
    "linf_ball",
    "hyperplane",
    "halfspace",
    "affine_set",
]
CONVEX = [n for n in SIMPLE if not n.endswith("sphere")]


def _call(fn, x, param):
    return fn(x) if param is None else fn(x, param)


def _member(name, p, param, tol=1e-10):
    p = np.asarray(p)
    if name == "non_negative":
        return np.all(p >= 0)
    if name in ("box", "hypercube", "linf_ball"):
        lo, hi = param if name == "box" else (0, param) if name == "hypercube" else (-param, param)
        return np.all(p >= np.asarray(lo) - tol) and np.all(p <= np.asarray(hi) + tol)
    if name == "simplex":
        return np.all(p >= 0) and abs(p.sum() - param) <= tol
    if name == "l1_ball":
        return np.abs(p).sum() <= param + tol
    if name == "l2_ball":
        return np.linalg.norm(p) <= param + tol
    if name == "hyperplane":
        return abs(param[0] @ p - param[1]) <= tol
    if name == "halfspace":
        return param[0] @ p <= param[1] + tol
    if name == "affine_set":
        return np.all(np.abs(param[0] @ p - param[1]) <= tol)
    raise AssertionError(name)


def _sample_set(name, param, rng, k=64, n=6):
    """Points of the set (each checked with ``_member`` by the caller)."""
    u = rng.uniform(size=(k, 1))
    if name == "non_negative":
        return np.abs(rng.normal(size=(k, n)))
    if name == "box":
        lo, hi = param
        return lo + rng.uniform(size=(k, n)) * (hi - lo)
    if name == "hypercube":
        return rng.uniform(size=(k, n)) * param
    if name == "linf_ball":
        return rng.uniform(-param, param, size=(k, n))
    if name == "simplex":
        return rng.dirichlet(np.full(n, 0.3), size=k) * param
    if name == "l1_ball":
        return rng.choice([-1, 1], size=(k, n)) * rng.dirichlet(np.ones(n), size=k) * param * u
    if name == "l2_ball":
        z = rng.normal(size=(k, n))
        return z / np.linalg.norm(z, axis=1, keepdims=True) * param * u
    z = rng.normal(size=(k, n)) * 3
    if name == "hyperplane":
        a, b = param
        return z - np.outer((z @ a - b) / (a @ a), a)
    if name == "halfspace":
        a, b = param
        return z - np.outer((np.maximum(z @ a - b, 0) + rng.uniform(size=k)) / (a @ a), a)
    if name == "affine_set":
        A, b = param
        return z - (np.linalg.pinv(A) @ (z @ A.T - b).T).T
    raise AssertionError(name)


# --------------------------------------------------------------------------- membership


@pytest.mark.parametrize("name", CONVEX)
def test_output_in_set_and_variational_inequality(name):
    rng = _rng(1)
    fn, x, param = _case(name, rng)
    p = np.asarray(_call(fn, jnp.asarray(x), param))
    assert _member(name, p, param)
    ys = _sample_set(name, param, rng)
    assert all(_member(name, y, param) for y in ys)
    # p is the projection iff <x - p, y - p> <= 0 for every y in the set.
    assert np.max((ys - p) @ (x - p)) <= 1e-10


def test_spheres_land_on_the_sphere_including_at_zero():
    x = jnp.array([0.3, -0.1, 0.0, 2.0])
    assert float(jnp.abs(proj.projection_l1_sphere(x, 1.3)).sum()) == pytest.approx(1.3)
    assert float(jnp.linalg.norm(proj.projection_l2_sphere(x, 1.3))) == pytest.approx(1.3)
    # At 0 every point of the sphere is a projection; one must be returned, not NaN.
    z = jnp.zeros(4)
    np.testing.assert_allclose(proj.projection_l1_sphere(z, 2.0), [0.5, 0.5, 0.5, 0.5])
    np.testing.assert_allclose(proj.projection_l2_sphere(z, 2.0), [2.0, 0, 0, 0])
    assert np.all(np.isfinite(jax.jacobian(proj.projection_l2_sphere)(z)))


def test_closed_forms():
    # l2 sphere/ball: rescaling; hyperplane/affine: least-norm correction via pinv.
    rng = _rng(2)
    x = rng.normal(size=5) * 3
    np.testing.assert_allclose(proj.projection_l2_ball(x, 1.5), 1.5 * x / np.linalg.norm(x))
    A, b = rng.normal(size=(3, 5)), rng.normal(size=3)
    ref = x - np.linalg.pinv(A) @ (A @ x - b)
    np.testing.assert_allclose(proj.projection_affine_set(x, (A, b)), ref, atol=EXACT)
    # Pytree x: the l2 ball and hyperplane act on all leaves at once.
    tree = {"u": jnp.array([3.0]), "v": jnp.array([[4.0]])}
    out = proj.projection_l2_ball(tree, 1.0)
    np.testing.assert_allclose(out["u"], [0.6]) and np.testing.assert_allclose(out["v"], [[0.8]])
    a = {"u": jnp.array([1.0]), "v": jnp.array([[1.0]])}
    out = proj.projection_hyperplane(tree, (a, 1.0))
    np.testing.assert_allclose([out["u"][0], out["v"][0, 0]], [0.0, 1.0])


def _slsqp(fun_x, x0, constraints, bounds=None):
    scipy_optimize = pytest.importorskip("scipy.optimize")
    res = scipy_optimize.minimize(
        lambda y: 0.5 * np.sum((y - fun_x) ** 2),
        x0,
        jac=lambda y: y - fun_x,
        method="SLSQP",
        constraints=constraints,
        bounds=bounds,
        options={"ftol": 1e-12, "maxiter": 500},
    )
    assert res.success, res.message
    return res.x


def test_brute_force_references_slsqp():
    # SLSQP solves each tiny problem to ~1e-7 (its line search ends there), hence 1e-6.
    rng = _rng(3)
    x = rng.normal(size=5)
    ref = _slsqp(x, np.full(5, 0.2), [{"type": "eq", "fun": lambda y: y.sum() - 1.0}],
                 bounds=[(0, None)] * 5)  # fmt: skip
    np.testing.assert_allclose(proj.projection_simplex(x), ref, atol=1e-6)
    # l1 ball as y = u - v with u, v >= 0 and sum(u + v) <= r (a smooth program).
    x = rng.normal(size=4) * 2
    uv = _slsqp(
        np.concatenate([x, -x]),
        np.zeros(8),
        [{"type": "ineq", "fun": lambda z: 1.0 - z.sum()}],
        bounds=[(0, None)] * 8,
    )
    np.testing.assert_allclose(proj.projection_l1_ball(x), uv[:4] - uv[4:], atol=1e-6)
    S = rng.normal(size=(4, 4))
    cons = [{"type": "eq", "fun": lambda y: y.reshape(4, 4).sum(1) - 1.0}]
    # The last column sum follows from the others; SLSQP wants independent constraints.
    cons.append({"type": "eq", "fun": lambda y: y.reshape(4, 4).sum(0)[:3] - 1.0})
    ref = _slsqp(S.ravel(), np.full(16, 0.25), cons, bounds=[(0, None)] * 16).reshape(4, 4)
    np.testing.assert_allclose(_birkhoff(jnp.asarray(S)), ref, atol=1e-6)


# --------------------------------------------------------------------------- jaxopt


@pytest.mark.parametrize("name", SIMPLE)
def test_matches_jaxopt_values_and_jacobians(name):
    jp = pytest.importorskip("jaxopt.projection")
    rng = _rng(4)
    fn, x, param = _case(name, rng)
    theirs = getattr(jp, f"projection_{name}")
    x = jnp.asarray(x)
    param = jax.tree.map(jnp.asarray, param)
    # jaxopt solves the affine projection's KKT system by GMRES with tolerance 1e-5.
    if name == "affine_set":
        # jaxopt solves its KKT system by GMRES with tolerance 1e-5 (and differentiates
        # that solve); ours is checked against the closed form in test_closed_forms.
        np.testing.assert_allclose(fn(x, param), theirs(x, param), atol=1e-5)
        return
    np.testing.assert_allclose(_call(fn, x, param), _call(theirs, x, param), atol=EXACT)
    # Our forward mode against jaxopt's reverse mode (ours' reverse mode is checked
    # against finite differences below).
    if param is None:
        ours_j, theirs_j = jax.jacfwd(fn)(x), jax.jacrev(theirs)(x)
    else:
        ours_j = jax.jacfwd(fn, argnums=(0, 1))(x, param)
        theirs_j = jax.jacrev(theirs, argnums=(0, 1))(x, param)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=EXACT), ours_j, theirs_j)


def test_l1_sphere_matches_jaxopt_away_from_zero_entries():
    # jaxopt's jnp.sign(0) = 0 leaves zero entries at 0 (off the sphere when inside);
    # with no zero entry both agree.
    jp = pytest.importorskip("jaxopt.projection")
    x = jnp.array([0.1, -0.2, 0.05])
    np.testing.assert_allclose(
        proj.projection_l1_sphere(x, 2.0), jp.projection_l1_sphere(x, 2.0), atol=EXACT
    )


# --------------------------------------------------------------------------- derivatives


# Second order where the projection is curved (or its kink structure is rich); the
# piecewise-linear rest (zero Hessian between kinks) run with `pytest -m slow`.
CURVED = {"simplex", "l1_ball", "l2_ball", "l2_sphere", "affine_set"}


@pytest.mark.parametrize(
    "name", [n if n in CURVED else pytest.param(n, marks=pytest.mark.slow) for n in SIMPLE]
)
def test_check_grads_second_order(name):
    # Reverse mode, first and second order, against central differences in x and in the
    # set's parameters (forward mode is checked against jaxopt above and by the closed
    # forms). eps = 1e-6 stays away from the kinks at these generic points.
    fn, x, param = _case(name, _rng(5))
    args = (
        (jnp.asarray(x),) if param is None else (jnp.asarray(x), jax.tree.map(jnp.asarray, param))
    )
    check_grads(jax.jit(fn), args, order=2, modes=("rev",), eps=1e-6)


def test_simplex_jacobian_closed_form():
    x = jnp.array([0.9, -0.3, 0.4, 0.75, -1.0])
    p = proj.projection_simplex(x, 1.2)
    s = np.asarray(p > 0, dtype=float)
    assert s.sum() == 3  # a point with a nontrivial support and zeros
    expected = np.diag(s) - np.outer(s, s) / s.sum()
    np.testing.assert_allclose(jax.jacrev(proj.projection_simplex)(x, 1.2), expected, atol=EXACT)
    np.testing.assert_allclose(jax.jacfwd(proj.projection_simplex)(x, 1.2), expected, atol=EXACT)
    d_value = jax.jacobian(proj.projection_simplex, argnums=1)(x, 1.2)
    np.testing.assert_allclose(d_value, s / s.sum(), atol=EXACT)


def test_kink_conventions():
    # Box: at x == bound the derivative goes to the bound. l2 ball: finite at 0.
    x = jnp.array([0.0, 0.5, 1.0])
    j = jax.jacobian(proj.projection_box, argnums=(0, 1))(x, (0.0, 1.0))
    np.testing.assert_allclose(jnp.diag(j[0]), [0.0, 1.0, 0.0])
    np.testing.assert_allclose(j[1], ([1.0, 0.0, 0.0], [0.0, 0.0, 1.0]))
    z = jnp.zeros(3)
    np.testing.assert_allclose(jax.jacobian(proj.projection_l2_ball)(z), np.eye(3))
    assert np.all(np.isfinite(jax.hessian(lambda v: proj.projection_l2_ball(v).sum())(z)))
    g = jax.grad(lambda v: proj.projection_l2_ball(v, 1.0).sum())(jnp.array([3.0, 4.0]))
    np.testing.assert_allclose(g, (np.eye(2) - np.outer([0.6, 0.8], [0.6, 0.8])) @ [1, 1] / 5)


@pytest.mark.parametrize("name", SIMPLE)
def test_idempotent(name):
    fn, x, param = _case(name, _rng(6))
    p = _call(fn, jnp.asarray(x), param)
    np.testing.assert_allclose(_call(fn, p, param), p, atol=EXACT)


# --------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("name", SIMPLE)
def test_jit_vmap_equal_loop_and_float32(name, float32):
    fn, x, param = _case(name, _rng(7))
    xs = np.stack([x, -x, 0.5 * x]).astype(np.float32)
    param = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), param)
    batched = jax.jit(jax.vmap(lambda v: _call(fn, v, param)))(jnp.asarray(xs))
    assert batched.dtype == jnp.float32
    looped = np.stack([_call(fn, jnp.asarray(v), param) for v in xs])
    # The same float32 arithmetic, up to XLA fusion reordering sums.
    np.testing.assert_allclose(batched, looped, atol=1e-6)
    g = jax.grad(lambda v: jnp.sum(_call(fn, v, param) ** 2))(jnp.asarray(xs[0]))
    assert g.dtype == jnp.float32


# --------------------------------------------------------------------------- Birkhoff


def _birkhoff_batch(seed=8, k=3, n=4):
    return jnp.asarray(_rng(seed).normal(size=(k, n, n)))


_birkhoff = jax.jit(proj.projection_birkhoff)
_birkhoff_batched = jax.jit(jax.vmap(proj.projection_birkhoff))


def test_birkhoff_membership_and_optimality_over_all_vertices():
    S = _birkhoff_batch()
    P = np.asarray(_birkhoff_batched(S))
    # Rows within the default tol (1e-10 max|S|); columns exact to round-off.
    assert np.all(P >= 0)
    np.testing.assert_allclose(P.sum(-1), 1, atol=1e-9)
    np.testing.assert_allclose(P.sum(-2), 1, atol=EXACT)
    # The polytope is the hull of the permutation matrices (Birkhoff-von Neumann), so
    # checking the variational inequality at all 24 vertices proves optimality.
    perms = np.stack([np.eye(4)[list(p)] for p in itertools.permutations(range(4))])
    for s, p in zip(np.asarray(S), P, strict=True):
        assert np.max(np.einsum("kij,ij->k", perms - p, s - p)) <= 1e-8
    # vmap equals a loop of single calls; idempotent.
    for s, p in zip(S, P, strict=True):
        np.testing.assert_allclose(_birkhoff(s), p, atol=1e-9)
    np.testing.assert_allclose(_birkhoff(jnp.asarray(P[0])), P[0], atol=1e-9)


@pytest.mark.slow  # jaxopt's L-BFGS at a tight tolerance; optimality is proved above
def test_birkhoff_matches_jaxopt():
    jp = pytest.importorskip("jaxopt.projection")
    from jaxopt import LBFGS

    # jaxopt's default L-BFGS stops at gradient norm 1e-3; tightened to 1e-10, both
    # agree to ~1e-10 (1e-7 leaves room for L-BFGS's last step).
    solver = lambda fun: LBFGS(fun=fun, tol=1e-10, maxiter=2000, linesearch="backtracking")
    S = _birkhoff_batch(9, k=1)[0]
    np.testing.assert_allclose(
        _birkhoff(S), jp.projection_birkhoff(S, make_solver=solver), atol=1e-7
    )


def test_kl_birkhoff_recovers_a_scaled_doubly_stochastic_matrix():
    # exp(S) = diag(u) M diag(v) with M doubly stochastic: Sinkhorn's scaling returns M.
    rng = _rng(15)
    perms = [np.eye(4)[rng.permutation(4)] for _ in range(5)]
    M = np.einsum("k,kij->ij", rng.dirichlet(np.ones(5)), perms) * 0.9 + 0.1 / 4
    S = np.log(rng.uniform(0.5, 2, (4, 1)) * M * rng.uniform(0.5, 2, (1, 4)))
    np.testing.assert_allclose(_kl_birkhoff(jnp.asarray(S)), M, atol=1e-9)


_kl_birkhoff = jax.jit(proj.kl_projection_birkhoff)
_JACOBIANS = {
    "euclidean": jax.jit(jax.jacrev(proj.projection_birkhoff)),
    "kl": jax.jit(jax.jacrev(proj.kl_projection_birkhoff)),
}


@pytest.mark.parametrize("kind", ["euclidean", "kl"])
def test_birkhoff_implicit_derivatives_against_finite_differences(kind):
    fn = proj.projection_birkhoff if kind == "euclidean" else proj.kl_projection_birkhoff
    f = _birkhoff if kind == "euclidean" else _kl_birkhoff
    jac = _JACOBIANS[kind]
    S = _birkhoff_batch(10, k=1)[0]
    P = np.asarray(f(S))
    # A generic point: every positive entry is far (vs eps) from 0, so central
    # differences do not cross a kink of the piecewise linear Euclidean projection.
    assert kind == "kl" or np.min(P[P > 0]) > 1e-3
    # The whole implicit Jacobian against central differences of the compiled solve
    # (h = 1e-4: truncation ~h^2, zero where piecewise linear; solver noise ~tol / h).
    J = np.asarray(jac(S)).reshape(16, 16)
    E = np.eye(16).reshape(16, 4, 4) * 1e-4
    fd = np.stack([(f(S + e) - f(S - e)).ravel() / 2e-4 for e in E], axis=1)
    np.testing.assert_allclose(J, fd, atol=1e-5)
    # Second order through the implicit rule (forward over reverse).
    W, V = jnp.asarray(_rng(11).normal(size=(2, 4, 4)))
    loss = lambda s: jnp.sum(W * fn(s) ** 2)
    hvp = jax.jit(lambda s, v: jax.jvp(jax.grad(loss), (s,), (v,))[1])(S, V)
    Jm = J
    if kind == "euclidean":
        # P is piecewise linear in S, so the Hessian of the loss is 2 J^T diag(W) J.
        expected = 2 * Jm.T @ (np.asarray(W).ravel() * (Jm @ np.asarray(V).ravel()))
        # Near a permutation the support splits into 1 x 1 blocks and the semi-dual
        # Jacobian is the zero matrix: the derivative is exactly 0, not NaN.
        Q = 5.0 * jnp.eye(4)[jnp.array([2, 0, 3, 1])]
        np.testing.assert_allclose(f(Q), Q / 5.0, atol=EXACT)
        np.testing.assert_array_equal(jac(Q), 0.0)
    else:
        # grad = 2 J^T (W P); differentiate it along V by central differences (h = 1e-4:
        # truncation ~1e-8, solver noise ~tol / h = 1e-6).
        g = lambda s: np.asarray(jac(s)).reshape(16, 16).T @ np.asarray(2 * W * f(s)).ravel()
        expected = (g(S + 1e-4 * V) - g(S - 1e-4 * V)) / 2e-4
    np.testing.assert_allclose(np.asarray(hvp).ravel(), expected, atol=1e-5)


def test_transport_rectangular_marginals():
    rng = _rng(12)
    S = jnp.asarray(rng.normal(size=(3, 5)))
    a, b = jnp.array([1.0, 2.0, 2.0]), jnp.ones(5)
    P = proj.projection_transport(S, (a, b))
    assert np.all(np.asarray(P) >= 0)
    np.testing.assert_allclose(P.sum(1), a, atol=1e-9)
    np.testing.assert_allclose(P.sum(0), b, atol=EXACT)


def test_birkhoff_float32_keeps_dtype(float32):
    S = jnp.asarray(_rng(13).normal(size=(5, 5)) * 10, jnp.float32)
    P = proj.projection_birkhoff(S)
    assert P.dtype == jnp.float32
    # Default float32 tolerance 1e-4 max|S|.
    np.testing.assert_allclose(P.sum(1), 1, atol=1e-4 * float(jnp.abs(S).max()))


def test_birkhoff_non_convergence_raises_at_run_time():
    S = _birkhoff_batch(14, k=1)[0] * 10
    # Under jax.jit equinox's error surfaces as a JaxRuntimeError carrying the message.
    errors = (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError)
    with pytest.raises(errors, match="projection_transport did not converge"):
        jax.block_until_ready(jax.jit(lambda s: proj.projection_birkhoff(s, max_iter=1))(S))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: proj.projection_simplex(jnp.ones(3), 0.0), ValueError, "value must be > 0"),
        (lambda: proj.projection_l2_ball(jnp.ones(3), -1), ValueError, "max_value must be > 0"),
        (lambda: proj.projection_simplex(jnp.ones(3), "1"), TypeError, "value must be a positive"),
        (lambda: proj.projection_simplex(jnp.ones((2, 3))), ValueError, "x must be a vector"),
        (lambda: proj.projection_simplex(jnp.arange(3)), TypeError, "x must have a real float"),
        (lambda: proj.projection_box(jnp.ones(3), (1.0, 0.0)), ValueError, "box is empty"),
        (lambda: proj.projection_box(jnp.ones(3), 1.0), TypeError, r"pair \(lower, upper\)"),
        (
            lambda: proj.projection_box({"a": jnp.ones(2)}, ({"b": 0.0}, 1.0)),
            ValueError,
            "lower must be a scalar or a pytree with the structure of x",
        ),
        (
            lambda: proj.projection_hyperplane(jnp.ones(3), (jnp.zeros(3), 1.0)),
            ValueError,
            "a must be nonzero",
        ),
        (
            lambda: proj.projection_affine_set(jnp.ones(3), (jnp.ones((2, 4)), jnp.ones(2))),
            ValueError,
            r"A must have shape \(m, 3\)",
        ),
        (
            lambda: proj.projection_affine_set(jnp.ones(3), (jnp.ones((2, 3)), jnp.ones(3))),
            ValueError,
            r"b must have shape \(2,\)",
        ),
        (lambda: proj.projection_birkhoff(jnp.ones((2, 3))), ValueError, "square matrix"),
        (
            lambda: proj.projection_transport(jnp.ones((2, 3)), (jnp.ones(2), jnp.ones(3))),
            ValueError,
            "equal totals",
        ),
        (lambda: proj.projection_birkhoff(jnp.ones((2, 2)), max_iter=0), ValueError, "max_iter"),
        # Python constants are checked under jit too.
        (
            lambda: jax.jit(lambda x: proj.projection_simplex(x, -1.0))(jnp.ones(3)),
            ValueError,
            "value must be > 0",
        ),
    ],
)
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_rank_deficient_affine_set_raises_at_run_time():
    A = jnp.array([[1.0, 1.0, 0.0], [2.0, 2.0, 0.0]])
    with pytest.raises(eqx.EquinoxRuntimeError, match="rank deficient"):
        jax.block_until_ready(proj.projection_affine_set(jnp.ones(3), (A, jnp.ones(2))))
