"""Careless input across the library: a right answer or an error that names the
argument, never a silent wrong result or an error from deep inside another library."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsecond as js


def _quadratic(p):
    return jnp.sum(jnp.array([1.0, 5.0]) * p**2)


# --------------------------------------------------------------------------- counts


def test_numpy_integer_counts_are_accepted():
    # A count read from a NumPy array or a config file is an np.int64, not an int.
    p, key = jnp.array([1.0, 2.0]), jax.random.key(0)
    f = lambda x: jnp.sum(x**2)
    # Trace of diag(2, 2) is 4 exactly (the Hessian is a multiple of the identity).
    assert float(js.hutchinson_trace(f, p, key, np.int64(3))) == pytest.approx(4.0)
    enc = js.HashGridEncoding(
        dim=np.int64(2),
        num_levels=np.int64(2),
        log2_hashmap_size=np.int32(8),
        base_resolution=np.int64(4),
        max_resolution=16,
        key=key,
    )
    assert enc.num_levels == 2 and type(enc.config.num_levels) is int


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_hash_grid_resolution_must_be_a_positive_integer(bad):
    # base_resolution = 0 used to divide by zero computing the level scale.
    with pytest.raises(ValueError, match="base_resolution must be an integer >= 1"):
        js.HashGridEncoding(dim=3, base_resolution=bad, key=jax.random.key(0))


# --------------------------------------------------------------------------- implicit


def test_iterative_solve_of_zero_steps_is_refused():
    # max_steps=0 returned the zero initial guess: derivatives silently all zeros.
    with pytest.raises(ValueError, match="max_steps must be an integer >= 1, got 0"):
        js.custom_root(lambda x, a: x - a, solve="gmres", max_steps=0)
    with pytest.raises(ValueError, match="rtol must be a real number >= 0"):
        js.custom_root(lambda x, a: x - a, solve="gmres", rtol=-1e-6)


def test_root_jvp_and_vjp_take_tuples_of_arguments():
    F = lambda x, a: x**2 - a  # root sqrt(a): d sqrt(a) / da = 1 / (2 sqrt(a))
    sol, a = jnp.array(2.0), jnp.array(4.0)
    with pytest.raises(TypeError, match="root_jvp: args must be a tuple"):
        js.root_jvp(F, sol, a, (jnp.array(1.0),))
    with pytest.raises(TypeError, match="root_jvp: tangents must be a tuple"):
        js.root_jvp(F, sol, (a,), jnp.array(1.0))
    with pytest.raises(TypeError, match="root_vjp: args must be a tuple"):
        js.root_vjp(F, sol, a, jnp.array(1.0))
    # Lists are fine.
    assert float(js.root_jvp(F, sol, [a], [jnp.array(1.0)])) == pytest.approx(0.25)


# --------------------------------------------------------------------------- AdaHessian


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"seed": -1}, ValueError, "seed must be an integer >= 0, got -1"),
        ({"eps": -1e-8}, ValueError, "eps must be >= 0"),
        ({"key": 0}, TypeError, "key must be a single jax.random key"),
    ],
)
def test_adahessian_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        js.adahessian(learning_rate=0.1, **kwargs)


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_keys_of_any_implementation(impl):
    key = jax.random.key(0, impl=impl)
    # AdaHessian: on a diagonal quadratic one probe is exact whatever the key, so the
    # first update is the same for both implementations (Adam-like step of size lr).
    p = jnp.array([1.0, 1.0])
    opt = js.adahessian(learning_rate=0.1, key=key)
    updates, _ = opt.update(jax.grad(_quadratic)(p), opt.init(p), p, obj_fn=_quadratic)
    np.testing.assert_allclose(updates, -0.1 * np.ones(2), rtol=1e-3)
    # sdeint: the same key gives the same path, run twice; another key another path.
    solve = lambda k: js.sdeint(
        lambda t, y, a: -y,
        lambda t, y, a: 0.5 * jnp.ones_like(y),
        jnp.ones(2),
        jnp.linspace(0.0, 1.0, 3),
        None,
        key=k,
        steps_per_interval=4,
    )
    np.testing.assert_array_equal(solve(key), solve(key))
    assert not np.allclose(solve(key), solve(jax.random.key(1, impl=impl)))


# --------------------------------------------------------------------------- parallel


def test_data_parallel_step_refuses_empty_batches_and_first_order_optimizers():
    import optax

    from jaxsecond import parallel

    mesh = jax.make_mesh((1,), ("data",))
    loss = lambda w, batch: jnp.mean((batch[0] @ w - batch[1]) ** 2)
    w, x = jnp.zeros(3), jnp.ones((4, 3))
    step = parallel.data_parallel_adahessian_step(loss, js.adahessian(0.1), mesh)
    # An empty batch used to give NaN loss and parameters.
    with pytest.raises(ValueError, match="batch is empty"):
        step(w, js.adahessian(0.1).init(w), (x[:0], x[:0, 0]), jax.random.key(0))
    # optax.adam would silently drop the Hessian diagonal the step estimates.
    adam_step = parallel.data_parallel_adahessian_step(loss, optax.adam(0.1), mesh)
    with pytest.raises(TypeError, match="opt_state holds no AdaHessian state"):
        adam_step(w, optax.adam(0.1).init(w), (x, x[:, 0]), jax.random.key(0))


# --------------------------------------------------------------------------- hash grid


@pytest.mark.parametrize("backend", ["xla", "pallas"])
def test_hash_grid_takes_an_empty_batch(backend):
    # No points: no features and a zero table gradient (the Pallas path used to fail
    # slicing an empty block).
    enc = js.HashGridEncoding(
        dim=3,
        num_levels=2,
        log2_hashmap_size=8,
        max_resolution=32,
        backend=backend,
        key=jax.random.key(0),
    )
    x = jnp.zeros((0, 3))
    assert enc(x).shape == (0, enc.out_size)
    grad = jax.grad(lambda e: jnp.sum(e(x) ** 2))(enc)
    assert grad.tables.shape == enc.tables.shape and not np.any(np.asarray(grad.tables))


# --------------------------------------------------------------------------- Lanczos


@pytest.mark.parametrize("scale", [0.5e-14, 0.5e-12, 0.5e19])
def test_hessian_eigenvalues_are_scale_invariant_in_float32(float32, scale):
    # Hessian diag(2 scale d): the Lanczos iteration is run on H / |H v0| and scaled back,
    # so neither the invariance test (relative to eps) nor the norms (squares overflow
    # float32 past ~1e19) see the scale. Tolerance: float32 round-off of a 3 x 3 problem.
    d = jnp.array([1.0, 5.0, 3.0])
    f = lambda x: scale * jnp.sum(d * x**2)
    values, _ = js.hessian_eigenvalues(f, jnp.zeros(3), jax.random.key(0), k=2)
    assert values.dtype == jnp.float32
    np.testing.assert_allclose(values / (2 * scale), [5.0, 3.0], rtol=1e-5)


def test_lanczos_refuses_complex_and_empty_params():
    f = lambda x: sum(jnp.sum(jnp.abs(leaf) ** 2) for leaf in jax.tree.leaves(x))
    for estimator in (js.hessian_eigenvalues, js.hessian_spectral_density):
        with pytest.raises(TypeError, match="complex parameters are not supported"):
            estimator(f, jnp.ones(3, jnp.complex64), jax.random.key(0))
        with pytest.raises(ValueError, match="params hold no floating-point arrays"):
            estimator(f, {"w": jnp.zeros(0)}, jax.random.key(0))


def test_adahessian_state_for_other_params_is_named():
    opt = js.adahessian(0.1)
    p = jnp.ones(3)
    with pytest.raises(ValueError, match="state does not match the gradients"):
        opt.update(jax.grad(_quadratic3)(p), opt.init(jnp.ones(4)), p, obj_fn=_quadratic3)


def test_adahessian_without_damping_on_a_flat_direction():
    # eps=0 gave NaN (0/0) where there is no gradient and -inf where there is one.
    opt = js.scale_by_adahessian(b1=0.0, b2=0.0, eps=0.0)
    step = jax.jit(
        lambda loss, p: opt.update(jax.grad(loss)(p), opt.init(p), p, obj_fn=loss),
        static_argnums=0,
    )
    p = jnp.array([1.0, 1.0])
    flat_no_gradient = lambda p: jnp.sum(jnp.array([2.0, 0.0]) * p**2)
    updates, _ = step(flat_no_gradient, p)
    np.testing.assert_array_equal(updates, [1.0, 0.0])  # Newton step; no step along 0/0
    flat_with_gradient = lambda p: flat_no_gradient(p) - 3.0 * p[1]
    with pytest.raises(Exception, match="zero curvature estimate, so its step is infinite"):
        jax.block_until_ready(step(flat_with_gradient, p))


def _quadratic3(p):
    return jnp.sum(p**2)


# --------------------------------------------------------------------------- half precision


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("solve", [None, "lu", "gmres", "bicgstab"])
def test_implicit_derivatives_in_half_precision(dtype, solve):
    # The linear solve accumulates in float32 around the half-precision products (LAPACK
    # has no float16 kernels; lineax's BiCGStab also broke down on a unit right-hand
    # side). d sqrt(a) / da = 1 / (2 sqrt(a)); tolerance: a few ulps of the dtype.
    F = lambda x, a: x**2 - a
    sqrt = js.custom_root(F, solve=solve)(lambda x0, a: jnp.sqrt(a))
    a = jnp.array([4.0, 9.0], dtype)
    jac = jax.jacobian(lambda a: sqrt(jnp.ones(2, dtype), a))(a)
    assert jac.dtype == dtype
    eps = float(jnp.finfo(dtype).eps)
    np.testing.assert_allclose(np.diag(np.asarray(jac, np.float32)), [0.25, 1 / 6], rtol=4 * eps)


@pytest.mark.integration  # heavy: in the second tier
@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_curvature_estimators_in_half_precision(dtype):
    # Hessian diag(1..6): trace 21, top eigenvalues 6 and 5, all exactly representable;
    # QR, Lanczos and eigh run in float32, results come back in the params' dtype.
    f = lambda x: 0.5 * jnp.sum(jnp.arange(1.0, 7.0).astype(dtype) * x**2)
    x, key = jnp.zeros(6, dtype), jax.random.key(0)
    trace = js.hutchpp_trace(f, x, key, num_matvecs=18)  # 6 sketch columns: exact
    values, vectors = js.hessian_eigenvalues(f, x, key, k=2)
    grid, density = js.hessian_spectral_density(f, x, key, num_iters=6)
    for out in (trace, values, vectors, grid, density):
        assert out.dtype == dtype
    eps = float(jnp.finfo(dtype).eps)
    assert float(trace) == pytest.approx(21.0, rel=8 * eps)
    np.testing.assert_allclose(np.asarray(values, np.float32), [6.0, 5.0], rtol=4 * eps)
    integral = np.trapezoid(np.asarray(density, np.float32), np.asarray(grid, np.float32))
    assert integral == pytest.approx(1.0, abs=0.02)  # grid and weights in half precision


def test_half_precision_hash_grid_tables_are_refused_at_construction():
    # Not yet supported by either backend: refused where the dtype is chosen, not at
    # the first call deep inside the kernels module.
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        js.HashGridEncoding(dim=3, dtype=jnp.float16, key=jax.random.key(0))


def test_gnvp_passes_non_array_outputs_to_the_loss():
    # A model output with a non-array leaf used to fail inside jax.jvp.
    # Model A w, loss 0.5 |y|^2: Gauss-Newton matrix A^T A, so G e0 = [1, 2].
    A = jnp.array([[1.0, 2.0], [0.0, 1.0]])
    model = lambda w: {"y": A @ w, "kind": "logits"}
    loss = lambda out: 0.5 * jnp.sum(out["y"] ** 2) if out["kind"] == "logits" else None
    np.testing.assert_allclose(js.gnvp(model, loss, jnp.zeros(2), jnp.array([1.0, 0.0])), [1, 2])
    with pytest.raises(TypeError, match=r"gnvp: model output \[1\] has dtype int"):
        js.gnvp(lambda w: (A @ w, jnp.argmax(w)), lambda o: jnp.sum(o[0]), jnp.zeros(2), A[0])
