"""Curvature: products against explicit Hessians, estimators against exact values and
statistical bounds, Lanczos against eigh."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import jaxsecond
from tests.helpers import assert_tree_allclose

# ------------------------------------------------------------------------------ problems


def mixed_problem(key):
    """A non-quadratic loss of a dict holding a matrix, a vector and a tuple."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    params = {
        "W": jax.random.normal(k1, (3, 4)),
        "b": jax.random.normal(k2, (3,)),
        "pair": (jax.random.normal(k3, (2,)), jax.random.normal(k4, ())),
    }
    x = jnp.linspace(-1.0, 1.0, 4)

    def loss(p):
        h = jnp.tanh(p["W"] @ x + p["b"])
        a, c = p["pair"]
        return jnp.sum(h**2) * jnp.sum(a**2) + jnp.sin(c) * jnp.sum(h) + c**4

    return loss, params


def explicit_hessian(loss, params):
    flat, unravel = ravel_pytree(params)
    # Jitted: eagerly, the vmapped forward-over-reverse pass is many small dispatches.
    H = jax.jit(jax.hessian(lambda v: loss(unravel(v))))(flat)
    return H, flat, unravel


class MLP(eqx.Module):
    layers: list
    activation: callable = eqx.field(static=True)

    def __init__(self, sizes, key, activation=jnp.tanh):
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = [
            eqx.nn.Linear(a, b, key=k) for a, b, k in zip(sizes[:-1], sizes[1:], keys, strict=True)
        ]
        self.activation = activation

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)


def mlp_loss(key, sizes=(4, 8, 8, 3), n=32):
    kx, ky, km = jax.random.split(key, 3)
    X = jax.random.normal(kx, (n, sizes[0]))
    y = jax.random.randint(ky, (n,), 0, sizes[-1])
    model = MLP(sizes, km)

    def loss(m):
        logits = jax.vmap(m)(X)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[jnp.arange(n), y])

    return loss, model


# ------------------------------------------------------------------------------ products


def test_hvp_and_grad_and_hvp_match_explicit_hessian(getkey):
    loss, params = mixed_problem(getkey())
    H, flat, unravel = explicit_hessian(loss, params)
    v = unravel(jax.random.normal(getkey(), flat.shape))
    expected = unravel(H @ ravel_pytree(v)[0])
    # Exact arithmetic on both sides; 1e-10 leaves room for float64 round-off only.
    assert_tree_allclose(jaxsecond.hvp(loss, params, v), expected, rtol=1e-10, atol=1e-10)
    value, grad, hv = jaxsecond.grad_and_hvp(loss, params, v)
    np.testing.assert_allclose(value, loss(params), rtol=1e-12)
    assert_tree_allclose(grad, jax.grad(loss)(params), rtol=1e-10, atol=1e-12)
    assert_tree_allclose(hv, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.integration  # heavy: in the second tier
def test_products_on_equinox_module(getkey):
    loss, model = mlp_loss(getkey())
    dyn, static = eqx.partition(model, eqx.is_array)
    H, flat, unravel = explicit_hessian(lambda d: loss(eqx.combine(d, static)), dyn)
    v_dyn = unravel(jax.random.normal(getkey(), flat.shape))
    v = eqx.combine(v_dyn, static)
    hv = jaxsecond.hvp(loss, model, v)
    assert hv.activation is jnp.tanh  # a static field: kept
    assert_tree_allclose(
        eqx.filter(hv, eqx.is_array), unravel(H @ flat_of(v_dyn)), rtol=1e-9, atol=1e-12
    )


def flat_of(tree):
    return ravel_pytree(tree)[0]


def test_gnvp_matches_explicit_gauss_newton(getkey):
    kA, kw, kv = jax.random.split(getkey(), 3)
    A = jax.random.normal(kA, (5, 3))
    model = lambda w: jnp.tanh(A @ w)
    loss = lambda out: jnp.sum(jnp.log1p(out**2))
    w = jax.random.normal(kw, (3,))
    v = jax.random.normal(kv, (3,))
    J = jax.jacfwd(model)(w)
    H_loss = jax.hessian(loss)(model(w))
    np.testing.assert_allclose(
        jaxsecond.gnvp(model, loss, w, v), J.T @ H_loss @ J @ v, rtol=1e-10, atol=1e-12
    )


def test_products_under_jit_vmap_and_float32(float32):
    loss = lambda x: jnp.sum(jnp.sin(x) * x**2)
    x = jnp.linspace(0.1, 1.0, 5)
    vs = jnp.eye(5)
    H = jax.vmap(jax.jit(lambda v: jaxsecond.hvp(loss, x, v)))(vs)
    assert H.dtype == jnp.float32
    # float32 round-off on O(1) entries.
    np.testing.assert_allclose(H, jax.hessian(loss)(x), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ Hutchinson


def test_hutchinson_diagonal_exact_for_diagonal_hessian(getkey):
    # A separable function: its Hessian is diagonal, and z_i^2 = 1 for Rademacher z.
    params = {"a": jax.random.normal(getkey(), (4, 3)), "b": jax.random.normal(getkey(), (7,))}
    loss = lambda p: jnp.sum(jnp.cosh(p["a"])) + jnp.sum(p["b"] ** 4)
    est = jaxsecond.hutchinson_diagonal(loss, params, getkey())
    exact = {"a": jnp.cosh(params["a"]), "b": 12 * params["b"] ** 2}
    assert_tree_allclose(est, exact, rtol=1e-12)


def shared_key_diagonal(loss, params, key, num_samples):
    """The biased estimator peers ship: one key reused for every leaf."""

    def one(i):
        k = jax.random.fold_in(key, i)
        z = jax.tree.map(lambda x: jax.random.rademacher(k, x.shape, x.dtype), params)
        hz = jaxsecond.hvp(loss, params, z)
        return jax.tree.map(jnp.multiply, z, hz)

    return jax.tree.map(lambda s: jnp.mean(s, 0), jax.vmap(one)(jnp.arange(num_samples)))


@pytest.mark.integration  # heavy: in the second tier
def test_hutchinson_diagonal_unbiased_within_statistical_bound(getkey):
    # Two leaves of the same shape with a non-zero cross-Hessian at equal indices: a key
    # shared across leaves makes their probes identical and adds those cross entries
    # to the diagonal estimate, a bias that no number of samples removes.
    k1, k2, kx = jax.random.split(getkey(), 3)
    params = {"U": jax.random.normal(k1, (5, 5)) / 2, "V": jax.random.normal(k2, (5, 5)) / 2}
    X = jax.random.normal(kx, (16, 5))

    def loss(p):
        return jnp.mean(jnp.sum(jnp.tanh(X @ p["U"]) * jnp.tanh(X @ p["V"].T) ** 2, -1))

    H, _, _ = explicit_hessian(loss, params)
    exact = jnp.diag(H)
    # A Rademacher probe gives z_i (Hz)_i = H_ii + sum_{j != i} H_ij z_i z_j: unbiased,
    # variance sum_{j != i} H_ij^2. The mean of N probes is within 5 standard errors
    # of H_ii for every entry unless something has a probability below 1e-5 (CLT,
    # 50 entries at ~6e-7 each).
    N = 4000
    sigma = jnp.sqrt((jnp.sum(H**2, 1) - jnp.diag(H) ** 2) / N)
    ours = flat_of(jaxsecond.hutchinson_diagonal(loss, params, getkey(), N, batch_size=500))
    assert bool(jnp.all(jnp.abs(ours - exact) <= 5 * sigma + 1e-12))
    shared = flat_of(shared_key_diagonal(loss, params, getkey(), N))
    assert not bool(jnp.all(jnp.abs(shared - exact) <= 5 * sigma + 1e-12))


@pytest.mark.integration  # heavy: in the second tier
def test_batch_size_does_not_change_the_estimate_and_stderr_is_right(getkey):
    loss, params = mixed_problem(getkey())
    key = getkey()
    full, err_full = jaxsecond.hutchinson_diagonal(loss, params, key, 10, return_stderr=True)
    chunked, err_chunked = jaxsecond.hutchinson_diagonal(
        loss, params, key, 10, batch_size=3, return_stderr=True
    )
    assert_tree_allclose(full, chunked, rtol=1e-12, atol=1e-12)
    assert_tree_allclose(err_full, err_chunked, rtol=1e-10, atol=1e-12)
    # The standard error is the sample standard deviation over sqrt(N) of the per-probe
    # estimates; recompute it from single-probe calls with the same probes.
    dynamic = params
    samples = []
    for i in range(10):
        z = jaxsecond.curvature._hutchinson.probe(key, i, dynamic)
        samples.append(flat_of(jax.tree.map(jnp.multiply, z, jaxsecond.hvp(loss, params, z))))
    samples = np.stack(samples)
    np.testing.assert_allclose(flat_of(full), samples.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        flat_of(err_full), samples.std(0, ddof=1) / np.sqrt(10), rtol=1e-8, atol=1e-12
    )


@pytest.mark.integration  # heavy: in the second tier
def test_trace_per_leaf_sums_to_total_and_matches_exact_in_expectation(getkey):
    loss, model = mlp_loss(getkey())
    dyn, static = eqx.partition(model, eqx.is_array)
    H, _, _ = explicit_hessian(lambda d: loss(eqx.combine(d, static)), dyn)
    key = getkey()
    total, err = jaxsecond.hutchinson_trace(loss, model, key, 400, return_stderr=True)
    per_leaf = jaxsecond.hutchinson_trace(loss, model, key, 400, per_leaf=True)
    leaves = jax.tree.leaves(eqx.filter(per_leaf, eqx.is_array))
    assert all(leaf.shape == () for leaf in leaves)
    np.testing.assert_allclose(sum(leaves), total, rtol=1e-10)
    # Unbiased: within 5 standard errors of the exact trace.
    assert abs(float(total) - float(jnp.trace(H))) <= 5 * float(err)


@pytest.mark.integration  # heavy: in the second tier
def test_hutchpp_has_lower_variance_than_hutchinson(getkey):
    # A quadratic whose Hessian has eigenvalues 1/i^2: a few dominate the trace.
    n = 60
    Q, _ = jnp.linalg.qr(jax.random.normal(getkey(), (n, n)))
    H = (Q * (1.0 / jnp.arange(1, n + 1) ** 2)) @ Q.T
    loss = lambda x: 0.5 * x @ H @ x
    x = jnp.zeros(n)
    keys = jax.random.split(getkey(), 200)
    matvecs = 15
    hutch = jax.vmap(lambda k: jaxsecond.hutchinson_trace(loss, x, k, matvecs))(keys)
    hpp = jax.vmap(lambda k: jaxsecond.hutchpp_trace(loss, x, k, matvecs))(keys)
    exact = jnp.trace(H)
    # Both unbiased (means within 5 standard errors over 200 seeds) ...
    for est in (hutch, hpp):
        assert abs(float(est.mean() - exact)) <= 5 * float(est.std() / np.sqrt(200))
    # ... and Hutch++'s spread is several times smaller (measured ~10x here).
    assert float(jnp.std(hpp)) < 0.3 * float(jnp.std(hutch))


def test_hutchinson_jit_vmap_and_float32(float32, getkey):
    loss = lambda x: jnp.sum(jnp.exp(0.3 * x)) + 0.5 * jnp.sum(x) ** 2
    x = jnp.linspace(-1.0, 1.0, 6)
    estimator = jax.jit(functools.partial(jaxsecond.hutchinson_trace, loss, num_samples=8))
    traces = jax.vmap(lambda k: estimator(x, k))(jax.random.split(getkey(), 4))
    assert traces.dtype == jnp.float32 and traces.shape == (4,)
    diag = jaxsecond.hutchinson_diagonal(loss, x, getkey(), 3)
    assert diag.dtype == jnp.float32


# ------------------------------------------------------------------------------ Lanczos


def lanczos_problem(key):
    # An MLP of 3 -> 12 -> 10 -> 2 on a random batch: 200 parameters, a non-convex loss.
    kx, ky, km = jax.random.split(key, 3)
    X = jax.random.normal(kx, (40, 3))
    y = jax.random.normal(ky, (40, 2))
    model = MLP((3, 12, 10, 2), km)

    def loss(m):
        return 0.5 * jnp.mean(jnp.sum((jax.vmap(m)(X) - y) ** 2, -1))

    return loss, model


@pytest.mark.integration  # heavy: in the second tier
def test_lanczos_matches_eigh_and_eigenvectors_satisfy_hvp(getkey):
    loss, model = lanczos_problem(getkey())
    dyn, static = eqx.partition(model, eqx.is_array)
    H, flat, _ = explicit_hessian(lambda d: loss(eqx.combine(d, static)), dyn)
    assert flat.size == 200
    exact = jnp.linalg.eigvalsh(H)[::-1]
    k = 3
    values, vectors = jaxsecond.hessian_eigenvalues(loss, model, getkey(), k=k, num_iters=120)
    # Full re-orthogonalisation keeps the Ritz values at round-off distance once the
    # Krylov space captures the top eigenvectors: 1e-8 relative to the spectral radius.
    np.testing.assert_allclose(values, exact[:k], rtol=0, atol=1e-8 * float(exact[0]))
    for i in range(k):
        v = jax.tree.map(lambda x: x[i], vectors)
        hv = jaxsecond.hvp(loss, model, v)
        residual = flat_of(eqx.filter(hv, eqx.is_array)) - values[i] * flat_of(
            eqx.filter(v, eqx.is_array)
        )
        assert float(jnp.linalg.norm(flat_of(eqx.filter(v, eqx.is_array)))) == pytest.approx(1.0)
        assert float(jnp.linalg.norm(residual)) <= 1e-6 * float(exact[0])
    smallest, _ = jaxsecond.hessian_eigenvalues(
        loss, model, getkey(), k=2, num_iters=200, which="smallest"
    )
    np.testing.assert_allclose(smallest, jnp.sort(exact)[:2], atol=1e-8 * float(exact[0]))


def test_lanczos_exact_after_n_steps_even_with_invariant_subspaces(getkey):
    # Repeated eigenvalues make the Krylov space invariant early; the restart keeps
    # the tridiagonal matrix exact, so n steps recover the whole spectrum.
    eig = jnp.array([3.0, 3.0, 3.0, 1.0, 1.0, -2.0])
    Q, _ = jnp.linalg.qr(jax.random.normal(getkey(), (6, 6)))
    H = (Q * eig) @ Q.T
    values, _ = jaxsecond.hessian_eigenvalues(
        lambda x: 0.5 * x @ H @ x, jnp.zeros(6), getkey(), k=6, num_iters=6
    )
    np.testing.assert_allclose(values, jnp.sort(eig)[::-1], atol=1e-10)


def test_spectral_density_integrates_to_one_and_matches_histogram(getkey):
    # 70 eigenvalues near 1 and 30 near 10: the density's mass around each cluster must
    # match the fraction of eigenvalues there. SLQ with P probes of dimension n has
    # weight noise of order 1/sqrt(n P) ~ 0.03; we allow 0.08.
    n = 100
    eig = jnp.concatenate([jnp.linspace(0.5, 1.5, 70), jnp.linspace(9.0, 11.0, 30)])
    Q, _ = jnp.linalg.qr(jax.random.normal(getkey(), (n, n)))
    H = (Q * eig) @ Q.T
    grid, density = jaxsecond.hessian_spectral_density(
        lambda x: 0.5 * x @ H @ x, jnp.zeros(n), getkey(), num_probes=16, num_iters=30
    )
    assert grid.shape == density.shape == (256,)
    assert float(jnp.trapezoid(density, grid)) == pytest.approx(1.0, abs=1e-6)
    low = jnp.trapezoid(jnp.where(grid < 5.0, density, 0.0), grid)
    assert float(low) == pytest.approx(0.7, abs=0.08)


# ------------------------------------------------------------------------------ bad input


def test_bad_input_is_reported_at_trace_time(getkey):
    loss, params = mixed_problem(getkey())
    with pytest.raises(ValueError, match="must return a scalar"):
        jaxsecond.hvp(lambda p: p["b"], params, params)
    with pytest.raises(ValueError, match="vector must be a pytree shaped like params"):
        jaxsecond.hvp(loss, params, {"W": params["W"]})
    with pytest.raises(ValueError, match=r"vector .*shape"):
        jaxsecond.grad_and_hvp(loss, params, {**params, "b": jnp.zeros(4)})
    with pytest.raises(TypeError, match="floating-point"):
        jaxsecond.hvp(lambda x: jnp.sum(x), jnp.arange(3), jnp.arange(3))
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        jaxsecond.hutchinson_diagonal(loss, params, getkey(), num_samples=0)
    with pytest.raises(ValueError, match="distribution"):
        jaxsecond.hutchinson_trace(loss, params, getkey(), distribution="uniform")
    with pytest.raises(TypeError, match="key"):
        jaxsecond.hutchinson_trace(loss, params, 0)
    with pytest.raises(ValueError, match="multiple of 3"):
        jaxsecond.hutchpp_trace(loss, params, getkey(), num_matvecs=10)
    with pytest.raises(ValueError, match="exceeds the number of parameters"):
        jaxsecond.hessian_eigenvalues(loss, params, getkey(), k=100)
    with pytest.raises(ValueError, match="which"):
        jaxsecond.hessian_eigenvalues(loss, params, getkey(), which="top")


def test_lanczos_float32_many_parameters(float32):
    # The invariant-subspace test must be relative to H's scale, not grow with n: with
    # a threshold ~ n eps, float32 Lanczos on 4e5 parameters restarted at every step
    # and returned Rayleigh quotients of random vectors.
    n = 400_000
    d = jnp.concatenate([jnp.linspace(0.0, 1.0, n - 2), jnp.array([5.0, 10.0])])
    loss = lambda x: 0.5 * jnp.sum(d * x**2)
    values, _ = jaxsecond.hessian_eigenvalues(loss, jnp.zeros(n), jax.random.key(0), k=2)
    assert values.dtype == jnp.float32
    # Gaps of 4 and 5 above a [0, 1] bulk: 30 steps converge far below float32 noise.
    np.testing.assert_allclose(values, [10.0, 5.0], rtol=1e-4)
