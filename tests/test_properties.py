"""Property-based checks of the public API on random inputs (hypothesis).

Random pytrees of mixed shapes and dtypes, sizes including 0 and 1, keys of both
implementations: each call either returns results with the structure, shapes and dtype
the inputs promise, or raises one of our documented errors (``ValueError``/``TypeError``
with a message naming an argument), never an error from inside another library.
Examples are derandomised, so a failure reproduces.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxsecond as js

pytestmark = pytest.mark.integration  # whole programs: second tier

SETTINGS = settings(
    max_examples=4,  # each example compiles new programs; CI time is the limit
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

DTYPES = st.sampled_from([jnp.float32, jnp.float64])
SHAPES = st.lists(st.integers(0, 3), min_size=0, max_size=2).map(tuple)
KEYS = st.tuples(st.integers(0, 2**31 - 1), st.sampled_from(["threefry2x32", "rbg"]))


def _pytree(draw, dtype):
    shapes = draw(st.lists(SHAPES, min_size=1, max_size=3))
    return {
        f"w{i}": jnp.linspace(0.5, 1.5, int(np.prod(s)), dtype=dtype).reshape(s)
        for i, s in enumerate(shapes)
    }


@st.composite
def params_and_dtype(draw):
    dtype = draw(DTYPES)
    return _pytree(draw, dtype), dtype


def _quartic(tree):
    # Hessian diagonal 12 w^2 per entry: known in closed form for any pytree.
    return sum(jnp.sum(leaf**4) for leaf in jax.tree.leaves(tree))


def _documented(error: Exception) -> bool:
    return isinstance(error, ValueError | TypeError) and any(
        word in str(error) for word in ("must", "params", "need", "got")
    )


@SETTINGS
@given(params_and_dtype(), KEYS, st.integers(1, 3))
def test_hutchinson_diagonal_keeps_structure_and_dtype(case, key_spec, num_samples):
    params, dtype = case
    key = jax.random.key(key_spec[0], impl=key_spec[1])
    with jax.enable_x64(dtype == jnp.float64):
        params = jax.tree.map(lambda x: x.astype(dtype), params)
        try:
            diag = js.hutchinson_diagonal(_quartic, params, key, num_samples)
        except (ValueError, TypeError) as error:
            assert _documented(error), error
            return
        assert jax.tree.structure(diag) == jax.tree.structure(params)
        for d, p in zip(jax.tree.leaves(diag), jax.tree.leaves(params), strict=True):
            assert d.shape == p.shape and d.dtype == p.dtype
            # Rademacher probes are exact on a diagonal Hessian: z * (H z) = H_ii.
            np.testing.assert_allclose(d, 12 * p**2, rtol=1e-5)


@SETTINGS
@given(params_and_dtype(), KEYS)
def test_top_eigenvalue_on_any_pytree(case, key_spec):
    params, dtype = case
    key = jax.random.key(key_spec[0], impl=key_spec[1])
    with jax.enable_x64(dtype == jnp.float64):
        params = jax.tree.map(lambda x: x.astype(dtype), params)
        try:
            values, vectors = js.hessian_eigenvalues(_quartic, params, key, k=1)
        except (ValueError, TypeError) as error:
            assert _documented(error), error
            return
        leaves = jax.tree.leaves(params)
        expected = max(float(jnp.max(12 * leaf**2)) for leaf in leaves if leaf.size)
        assert values.dtype == dtype and values.shape == (1,)
        np.testing.assert_allclose(float(values[0]), expected, rtol=1e-4)
        assert jax.tree.structure(vectors) == jax.tree.structure(params)


@SETTINGS
@given(st.integers(0, 3), st.integers(1, 3), st.sampled_from(["xla", "pallas"]), DTYPES)
def test_hash_grid_batch_shapes(batch, extra, backend, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        enc = js.HashGridEncoding(
            dim=2,
            num_levels=2,
            log2_hashmap_size=6,
            base_resolution=2,
            max_resolution=8,
            backend=backend,
            dtype=dtype,
            key=jax.random.key(0),
        )
        x = jnp.full((batch, extra, 2), 0.3, dtype)
        out = enc(x)
        assert out.shape == (batch, extra, enc.out_size) and out.dtype == dtype


@SETTINGS
@given(st.integers(1, 4), DTYPES, st.sampled_from([None, "lu", "gmres", "bicgstab"]))
def test_custom_root_on_random_sizes(n, dtype, solve):
    # Root of x^3 - a elementwise: d x / d a = 1 / (3 x^2), for any size.
    with jax.enable_x64(dtype == jnp.float64):
        F = lambda x, a: x**3 - a
        cube_root = js.custom_root(F, solve=solve)(lambda x0, a: jnp.cbrt(a))
        a = jnp.linspace(1.0, 8.0, n, dtype=dtype)
        jac = jax.jacobian(lambda a: cube_root(jnp.ones(n, dtype), a))(a)
        assert jac.shape == (n, n) and jac.dtype == dtype
        rtol = 1e-4 if dtype == jnp.float32 else 1e-9
        np.testing.assert_allclose(jnp.diag(jac), 1 / (3 * jnp.cbrt(a) ** 2), rtol=rtol)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3", None, np.float64(2.0)])
def test_counts_reject_what_is_not_a_positive_integer(bad):
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        js.hutchinson_trace(_quartic, jnp.ones(2), jax.random.key(0), bad)


# --------------------------------------------------------------------------- differential equations

# y' = -y leaf by leaf has y(t) = y0 exp(-t) for any pytree. Tolerances: each method's
# global error at 8 steps per unit interval (Euler ~h/2 = 6%, Heun ~h^2/6, RK4 ~h^4/120),
# or the adaptive tolerance, plus float32 round-off.
ODE_METHODS = {
    "Euler": 0.1,
    "Heun": 5e-3,
    "RK4": 2e-5,
    "Dopri5 adaptive": 2e-5,
}
ADJOINTS = {
    "default": lambda: None,
    "backsolve": lambda: js.BacksolveAdjoint(),
    "checkpointed": lambda: js.Checkpointed(2),
}


@SETTINGS
@given(params_and_dtype(), st.sampled_from(sorted(ODE_METHODS)), st.sampled_from(sorted(ADJOINTS)))
def test_odeint_on_any_pytree(case, method, adjoint):
    y0, dtype = case
    with jax.enable_x64(dtype == jnp.float64):
        y0 = jax.tree.map(lambda x: x.astype(dtype), y0)
        ts = jnp.linspace(0.0, 1.0, 3, dtype=dtype)
        if method == "Dopri5 adaptive":
            kwargs = {"solver": js.Dopri5(), "rtol": 1e-7, "atol": 1e-9}
        else:
            kwargs = {"solver": getattr(js, method)(), "steps_per_interval": 4}

        def final_sum(y0):
            ys = js.odeint(
                lambda t, y, args: jax.tree.map(jnp.negative, y),
                y0,
                ts,
                adjoint=ADJOINTS[adjoint](),
                **kwargs,
            )
            return sum(jnp.sum(leaf[-1]) for leaf in jax.tree.leaves(ys)), ys

        (_, ys), grads = jax.jit(jax.value_and_grad(final_sum, has_aux=True))(y0)
        rtol = ODE_METHODS[method]
        for y, g, leaf in zip(
            jax.tree.leaves(ys), jax.tree.leaves(grads), jax.tree.leaves(y0), strict=True
        ):
            assert y.shape == (3, *leaf.shape) and y.dtype == dtype
            assert g.shape == leaf.shape and g.dtype == dtype
            exact = leaf[None] * jnp.exp(-ts).reshape((3,) + (1,) * leaf.ndim)
            np.testing.assert_allclose(y, exact, rtol=rtol)
            np.testing.assert_allclose(g, jnp.full_like(leaf, np.exp(-1.0)), rtol=rtol)


@SETTINGS
@given(SHAPES, DTYPES, KEYS, st.integers(1, 4))
def test_sdeint_shapes_keys_and_the_scheme_derivative(shape, dtype, key_spec, steps):
    # dy = -y dt + dW by Euler-Maruyama: y_N = (1 - h)^N y0 + noise, so d y_N / d y0 is
    # (1 - h)^N whatever the noise; the same key gives the same path.
    key = jax.random.key(key_spec[0], impl=key_spec[1])
    with jax.enable_x64(dtype == jnp.float64):
        y0 = jnp.linspace(0.5, 1.5, int(np.prod(shape)), dtype=dtype).reshape(shape)
        ts = jnp.array([0.0, 0.5, 1.0], dtype)

        def solve(y0, key):
            return js.sdeint(
                lambda t, y, args: -y,
                lambda t, y, args: jnp.ones_like(y),
                y0,
                ts,
                key=key,
                solver=js.EulerMaruyama(),
                steps_per_interval=steps,
            )

        ys = jax.jit(solve)(y0, key)
        assert ys.shape == (3, *shape) and ys.dtype == dtype
        np.testing.assert_array_equal(ys, jax.jit(solve)(y0, key))
        grad = jax.jit(jax.grad(lambda y0: jnp.sum(solve(y0, key)[-1])))(y0)
        h = 0.5 / steps
        assert grad.shape == shape and grad.dtype == dtype
        np.testing.assert_allclose(grad, (1 - h) ** (2 * steps), rtol=1e-5)


# --------------------------------------------------------------------------- AdaHessian


@SETTINGS
@given(params_and_dtype(), KEYS, st.sampled_from([1, np.int64(2)]))
def test_adahessian_newton_step_on_any_pytree(case, key_spec, num_samples):
    # Without momentum or damping, a step on a separable quartic is g / |H_ii| = w / 3
    # (Rademacher probes are exact on a diagonal Hessian).
    params, dtype = case
    key = jax.random.key(key_spec[0], impl=key_spec[1])
    with jax.enable_x64(dtype == jnp.float64):
        params = jax.tree.map(lambda x: x.astype(dtype), params)
        opt = js.scale_by_adahessian(b1=0.0, b2=0.0, eps=0.0, num_samples=num_samples, key=key)
        step = jax.jit(lambda p: opt.update(jax.grad(_quartic)(p), opt.init(p), p, obj_fn=_quartic))
        try:
            updates, state = step(params)
        except (ValueError, TypeError) as error:
            assert _documented(error), error
            return
        assert jax.tree.structure(updates) == jax.tree.structure(params)
        for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
            assert u.shape == p.shape and u.dtype == p.dtype
            np.testing.assert_allclose(u, p / 3, rtol=1e-5)
        assert int(state.count) == 1


# --------------------------------------------------------------------------- architecture search


@settings(SETTINGS, max_examples=3)  # each size is a new network to compile
@given(
    st.tuples(*[st.integers(1, 3)] * 4).map(lambda t: (t[0], t[1], t[2], np.int64(t[3]))),
    st.integers(1, 2),
    DTYPES,
)
def test_search_network_sizes_and_softmax_invariance(sizes, num_cells, dtype):
    # Each edge mixes its ops by a softmax of its row of alpha, so shifting a row by a
    # constant changes nothing; every size (NumPy integers included) gives these shapes.
    in_channels, channels, num_classes, num_nodes = sizes
    with jax.enable_x64(dtype == jnp.float64):
        net = js.nas.Network(
            js.nas.VECTOR_OPS,
            in_channels=in_channels,
            channels=channels,
            num_classes=num_classes,
            num_cells=num_cells,
            num_nodes=num_nodes,
            key=jax.random.key(0),
            dtype=dtype,
        )
        alpha = net.init_arch(jax.random.key(1), scale=1.0)
        assert alpha.shape == net.arch_shape == (js.nas.num_edges(int(num_nodes)), len(net.ops))
        x = jnp.linspace(-1.0, 1.0, 2 * in_channels, dtype=dtype).reshape(2, in_channels)
        forward = jax.jit(jax.vmap(lambda x, a: net(x, a), (0, None)))
        logits = forward(x, alpha)
        assert logits.shape == (2, num_classes) and logits.dtype == dtype
        shift = jnp.arange(alpha.shape[0], dtype=dtype)[:, None]
        rtol = 1e-5 if dtype == jnp.float32 else 1e-12
        np.testing.assert_allclose(forward(x, alpha + shift), logits, rtol=rtol, atol=rtol)
        grad = jax.jit(jax.grad(lambda a: jnp.sum(forward(x, a) ** 2)))(alpha)
        assert grad.shape == alpha.shape and grad.dtype == dtype
        np.testing.assert_allclose(jnp.sum(grad, axis=1), 0, atol=100 * rtol)  # shift-free
        genotype = js.nas.discretise(alpha, js.nas.VECTOR_OPS, edges_per_node=1)
        assert len(genotype.nodes) == num_nodes and all(len(n) == 1 for n in genotype.nodes)
