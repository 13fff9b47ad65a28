"""Proximal operators: closed forms, jaxopt side by side, derivatives (the documented
generalized Jacobian at kinks included), transforms, dtypes and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxsecond
from jaxsecond import prox as P
from tests.helpers import tree_allclose

# Smooth pieces are affine or rational in x and the hyperparameters: float64 results
# differ from a reference only by rounding, a few ulps of O(1) values.
TIGHT = 1e-12


def random_tree(rng):
    """A dict holding a matrix and a tuple of a vector and a 0-d leaf (NumPy draws:
    jax.random would compile a program per shape)."""
    return {
        "W": jnp.asarray(rng.normal(size=(3, 2))),
        "pair": (jnp.asarray(rng.normal(size=4)), jnp.asarray(rng.normal())),
    }


def positive_like(rng, tree, low=0.2, high=0.8):
    """A pytree like ``tree`` with entries uniform in [low, high] (generic weights)."""
    return jax.tree.map(lambda u: jnp.asarray(rng.uniform(low, high, size=u.shape)), tree)


def _jaxopt_prox():
    return pytest.importorskip("jaxopt.prox")


# -------------------------------------------------------------------------- closed forms


def test_soft_threshold_values():
    x = jnp.array([-3.0, -1.0, 0.0, 0.5, 3.0])
    expected = np.array([-2.0, 0.0, 0.0, 0.0, 2.0])
    # Exact: |x| - 1 is exact in binary for these values.
    np.testing.assert_array_equal(P.prox_lasso(x, 1.0), expected)
    # The threshold is scaling * l1reg = 0.5 * 2 = 1 again.
    np.testing.assert_array_equal(P.prox_lasso(x, 2.0, scaling=0.5), expected)
    np.testing.assert_array_equal(P.prox_lasso(x), expected)  # None means 1.0
    np.testing.assert_array_equal(P.prox_non_negative_lasso(x, 1.0), [0.0, 0.0, 0.0, 0.0, 2.0])
    # Coordinate-wise weights: thresholds 0, 1, 2, 3, 4 on the same value 1.5.
    np.testing.assert_array_equal(
        P.prox_lasso(jnp.full(5, 1.5), jnp.arange(5.0)), [1.5, 0.5, 0.0, 0.0, 0.0]
    )


def test_group_lasso_inside_and_outside_the_ball():
    x = jnp.array([3.0, 0.0, 4.0, 0.0, 0.0])  # norm 5
    # Outside the ball of radius 2: shrink the norm by 2, direction kept.
    np.testing.assert_allclose(P.prox_group_lasso(x, 2.0), (1 - 2 / 5) * x, rtol=TIGHT)
    np.testing.assert_allclose(P.prox_group_lasso(x, 1.0, scaling=2.0), (1 - 2 / 5) * x, rtol=TIGHT)
    # Inside the ball and on its boundary: zero.
    np.testing.assert_array_equal(P.prox_group_lasso(x, 6.0), np.zeros(5))
    np.testing.assert_array_equal(P.prox_group_lasso(x, 5.0), np.zeros(5))
    # The group is the whole pytree: two leaves of norm 3 and 4, joint norm 5.
    tree = {"a": x.at[2].set(0.0), "b": x.at[0].set(0.0)}
    out = P.prox_group_lasso(tree, 2.0)
    np.testing.assert_allclose(out["a"][0], 1.8, rtol=TIGHT)
    np.testing.assert_allclose(out["b"][2], 2.4, rtol=TIGHT)
    # Per-leaf groups would zero the leaf of norm 3 < 3.5; the joint norm 5 keeps it.
    out = P.prox_group_lasso(tree, 3.5)
    np.testing.assert_allclose(out["a"][0], 3.0 * 1.5 / 5, rtol=TIGHT)


@pytest.mark.parametrize("scaling", [1.0, 0.3])
def test_elastic_net_matches_the_scalar_formula(scaling):
    xs = np.array([-3.0, -0.5, 0.0, 0.9, 2.5])
    for l1, l2 in [(1.0, 1.0), (0.7, 0.0), (0.4, 2.5), (0.0, 3.0)]:
        out = np.asarray(P.prox_elastic_net(jnp.asarray(xs), (l1, l2), scaling))
        # jaxopt's penalty l1 * (|y| + l2 / 2 y^2): stationarity of the scalar problem.
        t = scaling * l1
        expected = [np.sign(v) * max(abs(v) - t, 0.0) / (1 + t * l2) for v in xs]
        np.testing.assert_allclose(out, expected, rtol=TIGHT, atol=TIGHT)


def test_ridge_box_and_identity_closed_forms():
    x = jnp.array([-2.0, 0.5, 3.0, 0.0, -0.25])
    # 0.5 * l2reg * y^2 penalty: y = x / (1 + scaling * l2reg) = x / 1.5.
    np.testing.assert_allclose(P.prox_ridge(x, 1.0, 0.5), x / 1.5, rtol=TIGHT)
    np.testing.assert_allclose(
        P.prox_non_negative_ridge(x, 1.0, 0.5), [0, 0.5 / 1.5, 2.0, 0, 0], rtol=TIGHT
    )
    np.testing.assert_array_equal(P.prox_box(x, (-1.0, 1.0)), [-1.0, 0.5, 1.0, 0.0, -0.25])
    # Scaling has no effect on the box (an indicator is invariant to scaling).
    np.testing.assert_array_equal(P.prox_box(x, (-1.0, 1.0), 7.0), P.prox_box(x, (-1.0, 1.0)))
    assert P.prox_none(x, 3.0, 2.0) is x


# ------------------------------------------------------------------------ jaxopt parity


def _ours_and_jaxopt(rng):
    """(name, ours, theirs, x, hyperparams) for every operator jaxopt also has."""
    jp = _jaxopt_prox()
    from jaxopt.projection import projection_box

    x = random_tree(rng)
    l1 = positive_like(rng, x)
    l2 = positive_like(rng, x)
    upper = positive_like(rng, x, 0.1, 1.0)
    lower = jax.tree.map(lambda v: -v, upper)
    return x, [
        ("lasso scalar", P.prox_lasso, jp.prox_lasso, 0.6),
        ("lasso tree", P.prox_lasso, jp.prox_lasso, l1),
        ("non-negative lasso", P.prox_non_negative_lasso, jp.prox_non_negative_lasso, 0.3),
        ("elastic net floats", P.prox_elastic_net, jp.prox_elastic_net, (0.6, 0.9)),
        ("elastic net trees", P.prox_elastic_net, jp.prox_elastic_net, (l1, l2)),
        ("group lasso", P.prox_group_lasso, jp.prox_group_lasso, 1.3),
        ("ridge", P.prox_ridge, jp.prox_ridge, 0.7),
        ("non-negative ridge", P.prox_non_negative_ridge, jp.prox_non_negative_ridge, 0.7),
        ("none", P.prox_none, jp.prox_none, None),
        ("box", P.prox_box, jp.make_prox_from_projection(projection_box), (lower, upper)),
    ]


def test_values_match_jaxopt_on_random_pytrees():
    x, cases = _ours_and_jaxopt(np.random.default_rng(0))

    # One jitted program for all cases (eagerly, each side is dozens of dispatches);
    # hyperparameters closed over, since jaxopt's elastic net tests type(l1reg) == float.
    @jax.jit
    def both(x, scaling):
        return [(ours(x, h, scaling), theirs(x, h, scaling)) for _, ours, theirs, h in cases]

    for scaling in (1.0, 0.37):
        for (name, *_), (got, want) in zip(cases, both(x, scaling), strict=True):
            assert tree_allclose(got, want, rtol=TIGHT, atol=TIGHT), name


def test_hypergradients_match_jaxopt():
    jp = _jaxopt_prox()
    rng = np.random.default_rng(1)
    x = random_tree(rng)
    w = random_tree(rng)  # weights of a linear read-out, so the loss uses every leaf

    def loss(prox):
        def f(*hyper):
            pairs = zip(jax.tree.leaves(w), jax.tree.leaves(prox(x, *hyper)), strict=True)
            return sum(jnp.vdot(a, b) for a, b in pairs)

        return f

    cases = [
        # (ours, theirs, (hyperparameters, scaling)): gradients w.r.t. both.
        (P.prox_lasso, jp.prox_lasso, (positive_like(rng, x), 0.8)),
        (P.prox_lasso, jp.prox_lasso, (0.5, 0.8)),
        (P.prox_non_negative_lasso, jp.prox_non_negative_lasso, (0.3, 0.8)),
        (
            P.prox_elastic_net,
            jp.prox_elastic_net,
            ((positive_like(rng, x), positive_like(rng, x)), 0.8),
        ),
        (P.prox_group_lasso, jp.prox_group_lasso, (0.9, 0.8)),
        (P.prox_ridge, jp.prox_ridge, (0.7, 0.8)),
        (P.prox_non_negative_ridge, jp.prox_non_negative_ridge, (0.7, 0.8)),
    ]
    args = [jax.tree.map(jnp.asarray, a) for _, _, a in cases]

    # One jitted program for every gradient of both libraries.
    @jax.jit
    def grads(args):
        return [
            (jax.grad(loss(ours), (0, 1))(*a), jax.grad(loss(theirs), (0, 1))(*a))
            for (ours, theirs, _), a in zip(cases, args, strict=True)
        ]

    for (ours, *_), (got, want) in zip(cases, grads(args), strict=True):
        assert tree_allclose(got, want, rtol=TIGHT, atol=TIGHT), ours.__name__


# ------------------------------------------------------------------------- derivatives

# A generic point: every coordinate at least 0.2 from a kink of the operators below at
# the chosen hyperparameters, far more than check_grads' finite-difference step, so the
# differences see one smooth piece. One shape for all checks: eager primitives compile
# once and are shared (eager beats jit here: check_grads builds new programs per call).
X = jnp.array([-2.1, -0.3, 0.4, 1.7, 0.05])
FWD_REV = ["fwd", "rev"]
# Central differences of smooth rational functions of O(1) values in float64.
GRAD_TOL = dict(atol=1e-6, rtol=1e-6)


def curved_operators(x, l1, l2, s):
    """Operators with curvature in (x, hyperparameters), all at once so that check_grads
    compiles one set of programs (each compile, not the arithmetic, is the cost)."""
    return (
        P.prox_elastic_net(x, (l1, l2), s),
        P.prox_ridge(x, l2, s),
        P.prox_non_negative_ridge(x, l2, s),
        # ||X|| ~ 2.75 > t = 0.54: the curved piece of block soft thresholding.
        P.prox_group_lasso(x, l2, s),
    )


def piecewise_linear_operators(x, l1, s, lo, hi):
    """Operators that are piecewise linear in (x, hyperparameters): second derivatives
    vanish off kinks, so first order carries the information (second order at kinks is
    tested below with jax.hessian)."""
    return (
        P.prox_lasso(x, l1, s),
        P.prox_non_negative_lasso(x, 0.7 * l1, s),
        # t = 4.9 > ||X||: inside the ball, the zero piece.
        P.prox_group_lasso(x, 9 * l1, s),
        P.prox_box(x, (lo, hi)),
    )


def test_check_grads_wrt_x_and_hyperparameters():
    # Thresholds 0.72 (elastic net), 0.9 (lasso), 0.63 (non-negative lasso); box [-1, 1]:
    # every coordinate of X is at least 0.23 from a kink.
    l1, l2, s, lo, hi = (jnp.array(h) for h in (0.8, 0.6, 0.9, -1.0, 1.0))
    # Jitted: eagerly, the many small ops of jvp-of-vjp each compile separately.
    check_grads(jax.jit(curved_operators), (X, l1, l2, s), order=2, modes=FWD_REV, **GRAD_TOL)
    lin = jax.jit(piecewise_linear_operators)
    check_grads(lin, (X, l1 / 0.8, s, lo, hi), order=1, modes=FWD_REV, **GRAD_TOL)


def _jacobians(f, x):
    """Forward- and reverse-mode Jacobians, which must agree at kinks too."""
    jf, jr = jax.jit(lambda x: (jax.jacfwd(f)(x), jax.jacrev(f)(x)))(x)  # one program
    # Same pieces, summed in a different order: agreement to rounding.
    np.testing.assert_allclose(jf, jr, rtol=TIGHT, atol=TIGHT)
    assert np.all(np.isfinite(jf))
    return np.asarray(jf)


def test_soft_threshold_jacobian_at_kinks():
    x = jnp.array([-1.0, 1.0, 0.0, 2.0, 0.5])
    # Documented: d/dx = 1[|x| > t]; at |x| = t the flat piece (0).
    J = _jacobians(lambda v: P.prox_lasso(v, 1.0), x)
    np.testing.assert_array_equal(J, np.diag([0.0, 0.0, 0.0, 1.0, 0.0]))
    # d/dl1reg = -sign(x) 1[|x| > t], scaled by scaling = 2.
    dl = jax.jit(jax.jacfwd(lambda lam: P.prox_lasso(x, lam, 2.0)))(0.5)
    np.testing.assert_array_equal(dl, [0.0, 0.0, 0.0, -2.0, 0.0])
    # Second order is finite (and zero: the operator is piecewise linear).
    H = jax.jit(jax.hessian(lambda v: jnp.sum(P.prox_lasso(v, 1.0) ** 2)))(x)
    np.testing.assert_array_equal(H, np.diag([0.0, 0.0, 0.0, 2.0, 0.0]))
    # t = 0 is the identity: no kink at 0, derivative 1 there.
    np.testing.assert_array_equal(_jacobians(lambda v: P.prox_lasso(v, 0.0), x), np.eye(5))
    # Elastic net: same flat choice, divided by 1 + t * l2reg = 3.
    J = _jacobians(lambda v: P.prox_elastic_net(v, (1.0, 2.0)), x)
    np.testing.assert_allclose(J, np.diag([0.0, 0.0, 0.0, 1 / 3, 0.0]), rtol=TIGHT)


def test_non_negative_jacobians_at_kinks():
    x = jnp.array([0.5, 0.0, 1.0, -1.0])
    # Non-negative lasso with t = 0.5: flat piece at x = t.
    J = _jacobians(lambda v: P.prox_non_negative_lasso(v, 0.5), x)
    np.testing.assert_array_equal(J, np.diag([0.0, 0.0, 1.0, 0.0]))
    # Non-negative ridge: flat piece at x = 0; 1 / (1 + 1) on the moving piece.
    J = _jacobians(lambda v: P.prox_non_negative_ridge(v, 1.0), x)
    np.testing.assert_array_equal(J, np.diag([0.5, 0.0, 0.5, 0.0]))


def test_group_lasso_jacobian_at_zero_and_on_the_sphere():
    zero = jnp.zeros(3)
    # At x = 0 a plain norm gives NaN; documented: Jacobian 0 (inside the ball).
    np.testing.assert_array_equal(_jacobians(lambda v: P.prox_group_lasso(v, 1.0), zero), 0.0)
    H = jax.jit(jax.hessian(lambda v: jnp.sum(jnp.sin(P.prox_group_lasso(v, 1.0)))))(zero)
    np.testing.assert_array_equal(H, 0.0)
    dl = jax.jit(jax.grad(lambda lam: jnp.sum(P.prox_group_lasso(zero, lam))))(1.0)
    assert dl == 0.0
    # With l2reg = 0 the operator is the identity, also at x = 0, to second order.
    np.testing.assert_array_equal(_jacobians(lambda v: P.prox_group_lasso(v, 0.0), zero), np.eye(3))
    H = jax.jit(jax.hessian(lambda v: jnp.sum(P.prox_group_lasso(v, 0.0) ** 2)))(zero)
    np.testing.assert_array_equal(H, 2 * np.eye(3))
    # On the sphere ||x|| = t: the flat piece (0), in x and in l2reg.
    x = jnp.array([3.0, 4.0])
    np.testing.assert_array_equal(_jacobians(lambda v: P.prox_group_lasso(v, 5.0), x), 0.0)
    dl = jax.jit(jax.jacfwd(lambda lam: P.prox_group_lasso(x, lam)))(5.0)
    np.testing.assert_array_equal(dl, [0.0, 0.0])
    # Just outside: the curved piece (1 - t/n) I + t x x^T / n^3.
    t, n = 2.0, 5.0
    expected = (1 - t / n) * np.eye(2) + t * np.outer(x, x) / n**3
    np.testing.assert_allclose(_jacobians(lambda v: P.prox_group_lasso(v, t), x), expected, TIGHT)


def test_box_jacobian_at_the_bounds():
    x = jnp.array([-1.0, 0.0, 1.0, 2.0])
    J = _jacobians(lambda v: P.prox_box(v, (-1.0, 1.0)), x)
    # Documented: d/dx = 1[lower < x < upper]; a touched bound is active.
    np.testing.assert_array_equal(J, np.diag([0.0, 1.0, 0.0, 0.0]))
    d_lo, d_hi = jax.jit(jax.jacfwd(lambda lo, hi: P.prox_box(x, (lo, hi)), (0, 1)))(-1.0, 1.0)
    np.testing.assert_array_equal(d_lo, [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(d_hi, [0.0, 0.0, 1.0, 1.0])
    # lower = upper = x: the output follows lower only.
    box_at = lambda lo, hi: P.prox_box(jnp.array(0.5), (lo, hi))
    d_lo, d_hi = jax.jit(jax.grad(box_at, (0, 1)))(0.5, 0.5)
    assert (float(d_lo), float(d_hi)) == (1.0, 0.0)


def test_lasso_hypergradient_through_an_implicit_fixed_point():
    # The main use: d(lasso solution)/d(l1reg) by implicit differentiation of ISTA.
    rng = np.random.default_rng(2)
    A, b = jnp.asarray(rng.normal(size=(10, 5))), jnp.asarray(rng.normal(size=10))
    eta = 1.0 / float(jnp.linalg.norm(A, 2) ** 2)
    lam = 0.5 * float(jnp.max(jnp.abs(A.T @ b)))  # half of lambda_max: a sparse solution

    def step(w, lam):
        return P.prox_lasso(w - eta * A.T @ (A @ w - b), lam, eta)

    @jaxsecond.custom_fixed_point(step)
    def solve(w0, lam):
        return jax.lax.fori_loop(0, 5000, lambda _, w: step(w, lam), w0)

    # One program: the solution and its reverse-mode Jacobian w.r.t. l1reg.
    w, got = jax.jit(lambda t: (solve(jnp.zeros(5), t), jax.jacrev(solve, 1)(jnp.zeros(5), t)))(lam)
    support = np.abs(np.asarray(w)) > 1e-8
    assert 0 < support.sum() < 5, "the test needs a partly sparse solution"
    # Closed form on the support S: w_S = (A_S^T A_S)^{-1} (A_S^T b - lam sign(w_S)).
    A_S = np.asarray(A)[:, support]
    expected = np.zeros(5)
    expected[support] = -np.linalg.solve(A_S.T @ A_S, np.sign(np.asarray(w)[support]))
    # The ISTA solution is converged to ~1e-14 (linear rate, 5000 steps); the implicit
    # linear solve adds its own tolerance.
    np.testing.assert_allclose(got, expected, atol=1e-8)


# -------------------------------------------------------------------- transforms, dtypes


def test_vmap_equals_a_python_loop():
    xs = jnp.asarray(np.random.default_rng(3).normal(size=(4, 5)))
    lams = jnp.array([0.1, 0.5, 1.0, 2.0])

    # Jitted, so the loop's calls share one compiled program.
    @jax.jit
    def row(x, lam):
        return (
            P.prox_lasso(x, lam),
            P.prox_non_negative_lasso(x, lam),
            P.prox_ridge(x, lam),
            P.prox_group_lasso(x, lam),  # under vmap: one group per row
            P.prox_elastic_net(x, (lam, 2 * lam)),
            P.prox_box(x, (-lam, lam)),
        )

    batched = jax.jit(jax.vmap(row))(xs, lams)
    looped = jax.tree.map(lambda *r: jnp.stack(r), *[row(xs[i], lams[i]) for i in range(4)])
    # Same operations row by row; XLA may fuse them differently: equal to rounding.
    assert tree_allclose(batched, looped, rtol=TIGHT, atol=TIGHT)


def test_jit_matches_eager():
    x = {"a": X, "b": (-0.5 * X[::-1],)}
    l1 = {"a": jnp.full(5, 0.2), "b": (jnp.linspace(0.05, 0.15, 5),)}
    for fun, hyper in [(P.prox_lasso, l1), (P.prox_group_lasso, 0.9), (P.prox_box, (-0.5, l1))]:
        jitted = jax.jit(fun)(x, hyper, 0.7)
        assert tree_allclose(jitted, fun(x, hyper, 0.7), rtol=TIGHT, atol=TIGHT), fun.__name__


ALL = [
    (P.prox_none, None),
    (P.prox_lasso, 0.5),
    (P.prox_non_negative_lasso, 0.5),
    (P.prox_elastic_net, (0.5, 0.5)),
    (P.prox_group_lasso, 0.5),
    (P.prox_ridge, 0.5),
    (P.prox_non_negative_ridge, 0.5),
    (P.prox_box, (-0.5, 0.5)),
]


def test_float32_stays_float32_with_float64_hyperparameters():
    # x64 is on: float64 hyperparameters must not promote float32 leaves.
    x = {"a": X.astype(jnp.float32), "b": X}
    hypers = [jax.tree.map(lambda h: jnp.asarray(h, jnp.float64), h) for _, h in ALL]

    @jax.jit  # one program for all operators and their gradients
    def outputs_and_grads(x, hypers):
        outs = [fun(x, h) for (fun, _), h in zip(ALL, hypers, strict=True)]
        grads = [
            jax.grad(lambda v, h: jnp.sum(fun(v, h)["a"]), (0, 1))(x, h)
            for (fun, _), h in zip(ALL, hypers, strict=True)
        ]
        return outs, grads

    outs, grads = outputs_and_grads(x, hypers)
    for (fun, _), out, (gx, gh) in zip(ALL, outs, grads, strict=True):
        assert (out["a"].dtype, out["b"].dtype) == (jnp.float32, jnp.float64), fun.__name__
        assert gx["a"].dtype == jnp.float32, fun.__name__
        # Hypergradients keep the hyperparameters' own dtype.
        assert all(g.dtype == jnp.float64 for g in jax.tree.leaves(gh)), fun.__name__


def test_float32_mode(float32):
    x = jnp.array([-1.0, 0.25, 2.0])
    assert x.dtype == jnp.float32
    outs = jax.jit(lambda x: [fun(x, h) for fun, h in ALL])(x)
    assert all(out.dtype == jnp.float32 for out in outs)
    g = jax.jit(jax.grad(lambda lam: jnp.sum(P.prox_lasso(x, lam))))(np.float32(1.5))
    assert g.dtype == jnp.float32 and float(g) == -1.0  # only x = 2 moves: d/dt = -1


# ---------------------------------------------------------------------------- bad input


def test_bad_input_messages():
    x = jnp.array([1.0, -2.0])
    with pytest.raises(ValueError, match="l1reg must be >= 0"):
        P.prox_lasso(x, -1.0)
    with pytest.raises(ValueError, match="l1reg must be >= 0"):
        P.prox_lasso({"a": x}, {"a": jnp.array([1.0, -1.0])})
    with pytest.raises(ValueError, match="scaling must be >= 0"):
        P.prox_ridge(x, 1.0, scaling=-0.5)
    with pytest.raises(TypeError, match="l1reg must hold real numbers"):
        P.prox_lasso(x, True)
    with pytest.raises(TypeError, match=r"hyperparams must be a pair \(l1reg, l2reg\)"):
        P.prox_elastic_net(x, (1.0,))
    with pytest.raises(TypeError, match=r"hyperparams must be a pair \(lower, upper\)"):
        P.prox_box(x, 1.0)
    with pytest.raises(ValueError, match="lower must be <= upper"):
        P.prox_box(x, (1.0, -1.0))
    with pytest.raises(TypeError, match="x must be a pytree of real floating-point arrays"):
        P.prox_lasso(jnp.array([1, 2]), 1.0)
    with pytest.raises(TypeError, match=r"leaf \['n'\] is int"):
        P.prox_ridge({"n": 3}, 1.0)
    with pytest.raises(ValueError, match="l1reg must be a scalar or a pytree with the structure"):
        P.prox_lasso({"a": x}, {"b": x})
    with pytest.raises(ValueError, match=r"l2reg: l2reg\['a'\] has shape \(3,\)"):
        P.prox_ridge({"a": x}, {"a": jnp.ones(3)})
    with pytest.raises(TypeError, match="l2reg must be a real scalar"):
        P.prox_group_lasso(x, jnp.ones(2))
    with pytest.raises(TypeError, match="projection must be callable"):
        P.make_prox_from_projection(3)
    # The pair may also come as a length-2 array, as some jaxopt code passes it.
    np.testing.assert_array_equal(P.prox_elastic_net(x, jnp.array([0.5, 0.0])), [0.5, -1.5])


def test_make_prox_from_projection_ignores_scaling():
    seen = []

    def projection(x, hyperparams):
        seen.append(hyperparams)
        return jnp.clip(x, 0.0, hyperparams)

    prox = P.make_prox_from_projection(projection)
    out = prox(jnp.array([-1.0, 0.5, 4.0]), 2.0, scaling=100.0)
    np.testing.assert_array_equal(out, [0.0, 0.5, 2.0])
    assert seen == [2.0]
