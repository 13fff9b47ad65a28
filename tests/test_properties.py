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

SETTINGS = settings(
    max_examples=6,
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
