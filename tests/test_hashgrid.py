"""HashGridEncoding: the pallas path (interpreted on CPU) against the XLA path in every
autodiff mode, finite differences, coarse-to-fine levels, CUDA lowering, bad input.

The XLA path is independent of the kernels' derivative wiring (JAX differentiates its
gathers directly), so agreement checks the primitives' JVP, transpose and batching
rules. Grids are small and fine levels hashed into small tables so that hash
collisions (duplicate indices in the scatter) occur.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest
from jax.test_util import check_grads
from jaxsecond.kernels import hashgrid

import jaxsecond as js
from jaxsecond.encoding._primitives import encode_pallas
from tests.helpers import assert_tree_allclose

# Both paths sum the same products in a different order: float64 round-off.
RTOL, ATOL = 1e-10, 1e-12


def _encodings(dim=3, features=2):
    enc = js.HashGridEncoding(
        dim=dim,
        num_levels=3,
        features_per_level=features,
        log2_hashmap_size=6,
        base_resolution=2,
        max_resolution=16,
        backend="xla",
        dtype=jnp.float64,
        key=jax.random.key(0),
    )
    # Tables of order one (not the tiny initialisation) so every term is visible.
    enc = eqx.tree_at(
        lambda e: e.tables, enc, jax.random.normal(jax.random.key(1), enc.tables.shape)
    )
    return enc, enc.with_backend("pallas")


def _points(n=6, dim=3, key=2):
    # Away from the unit cube's faces; generic, so not on cell boundaries.
    return jax.random.uniform(jax.random.key(key), (n, dim), jnp.float64, 0.05, 0.95)


def _sdf(enc, tables, w, x):
    """A one-layer field on the encoding: what an SDF network looks like."""
    enc = eqx.tree_at(lambda e: e.tables, enc, tables)
    return jnp.tanh(enc(x)) @ w


def _eikonal(enc, tables, w, xs):
    grads = jax.vmap(jax.grad(lambda x: _sdf(enc, tables, w, x)))(xs)
    return jnp.mean((jnp.linalg.norm(grads, axis=-1) - 1.0) ** 2)


@pytest.mark.parametrize(
    "dim,features",
    [
        (2, 1),
        # Dimension 3 and more than one feature per level are both covered by (3, 4);
        # (3, 2), the default width, runs with the slow tests (as does the composition
        # matrix's Pallas row, which checks it against a map_coordinates reference).
        pytest.param(3, 2, marks=pytest.mark.slow),
        (3, 4),
    ],
)
@pytest.mark.integration  # heavy: in the second tier
def test_pallas_path_equals_xla_path_to_second_order(dim, features):
    xla, pallas = _encodings(dim, features)
    xs = _points(dim=dim)
    w = jax.random.normal(jax.random.key(3), (xla.out_size,))
    tables = xla.tables
    v = jax.random.normal(jax.random.key(4), tables.shape)
    x0 = xs[0]

    def derivatives(enc, tables, w):
        # Everything compared, for one backend, in one compiled program (eagerly, the
        # Pallas interpreter runs op by op).
        fit = lambda t, w: jnp.sum(jax.vmap(lambda x: _sdf(enc, t, w, x))(xs) ** 2)
        eik = lambda t, w: _eikonal(enc, t, w, xs)
        out = {"value": enc(xs)}
        for name, f in (("fit", fit), ("eikonal", eik)):
            # First order: tables and MLP weights (the Eikonal one runs the double
            # backward); Hessian-vector products w.r.t. the tables, forward-over-reverse
            # and reverse-over-reverse.
            out[f"{name} grad"] = jax.grad(f, argnums=(0, 1))(tables, w)
            out[f"{name} hvp"] = js.hvp(lambda t: f(t, w), tables, v)
            out[f"{name} rr"] = jax.grad(lambda t: jnp.vdot(jax.grad(f)(t, w), v))(tables)
        # Spatial derivatives: gradient, forward mode and the Hessian in x.
        field = lambda x: _sdf(enc, tables, w, x)
        out["dx"] = jax.grad(field)(x0)
        out["jvp_x"] = jax.jvp(field, (x0,), (jnp.ones(dim),))[1]
        out["hessian_x"] = jax.hessian(field)(x0)
        return out

    ours = eqx.filter_jit(derivatives)(pallas, tables, w)
    ref = eqx.filter_jit(derivatives)(xla, tables, w)
    for key, value in ours.items():
        second = key.endswith((" hvp", " rr")) or key == "hessian_x"
        # The reverse-over-reverse product is compared with forward-over-reverse's.
        expected = ref[key.replace(" rr", " hvp")]
        rtol, atol = (1e-9, 1e-10) if second else (RTOL, ATOL)
        assert_tree_allclose(value, expected, rtol=rtol, atol=atol)


def test_batching_and_jit():
    xla, pallas = _encodings()
    xs = _points(8)
    # vmap over points (folded into the kernel's point axis) under jit.
    assert_tree_allclose(eqx.filter_jit(jax.vmap(pallas))(xs), xla(xs), rtol=RTOL, atol=ATOL)
    # Per-example table gradients: vmap of grad, one scatter per example.
    per_example = lambda enc: jax.vmap(
        jax.grad(lambda t, x: jnp.sum(eqx.tree_at(lambda e: e.tables, enc, t)(x) ** 2)),
        in_axes=(None, 0),
    )(enc.tables, xs)
    assert_tree_allclose(per_example(pallas), per_example(xla), rtol=RTOL, atol=ATOL)
    # An ensemble of tables (batched tables) on shared points.
    stack = jnp.stack([xla.tables, 2 * xla.tables])
    ens = lambda enc: jax.vmap(lambda t: eqx.tree_at(lambda e: e.tables, enc, t)(xs))(stack)
    assert_tree_allclose(ens(pallas), ens(xla), rtol=RTOL, atol=ATOL)


@pytest.mark.integration  # heavy: in the second tier
def test_check_grads_orders_one_and_two():
    _, pallas = _encodings(dim=2, features=2)
    xs = _points(3, dim=2)
    w = jax.random.normal(jax.random.key(5), (pallas.out_size,))
    f_tables = lambda t: jnp.sum(jnp.tanh(eqx.tree_at(lambda e: e.tables, pallas, t)(xs)) @ w)
    # Small steps stay inside the points' cells: the encoding is smooth there.
    check_grads(f_tables, (pallas.tables,), order=2, modes=("fwd", "rev"), eps=1e-4)
    f_x = lambda x: jnp.sum(jnp.tanh(pallas(x)) @ w)
    # In x the field has slopes ~ resolution x tables (~30 here): the nested central
    # differences of order 2 carry ~1e-5 relative truncation error, hence 1e-4.
    check_grads(f_x, (xs,), order=2, modes=("fwd", "rev"), eps=1e-5, rtol=1e-4, atol=1e-4)


def test_float32_keeps_dtype(float32):
    enc = js.HashGridEncoding(
        dim=3,
        num_levels=2,
        log2_hashmap_size=6,
        base_resolution=2,
        max_resolution=8,
        backend="pallas",
        key=jax.random.key(0),
    )
    x = _points(4).astype(jnp.float32)
    assert enc(x).dtype == jnp.float32
    g = jax.grad(lambda e: jnp.sum(e(x) ** 2))(enc)
    assert g.tables.dtype == jnp.float32


def test_active_levels_zero_the_output_and_the_gradient():
    xla, pallas = _encodings()
    xs = _points(5)
    f = xla.config.features_per_level
    for enc in (xla, pallas):
        out = enc(xs, active_levels=2)
        assert jnp.all(out[:, 2 * f :] == 0)
        assert_tree_allclose(out[:, : 2 * f], enc(xs)[:, : 2 * f], rtol=RTOL)
        g = jax.grad(lambda e: jnp.sum(e(xs, active_levels=2) ** 2))(enc)
        assert jnp.all(g.tables[2] == 0) and jnp.any(g.tables[1] != 0)
    levels = [
        int(js.coarse_to_fine_levels(s, num_levels=5, initial_levels=2, steps_per_level=10))
        for s in (0, 9, 10, 29, 1000)
    ]
    assert levels == [2, 2, 3, 4, 5]


@pytest.mark.integration  # heavy: in the second tier
def test_non_finite_points_give_nan_features_and_no_gradient():
    # Such a point has no cell. Before, its arbitrary hashed rows got NaN gradients.
    xla, pallas = _encodings()
    w = jax.random.normal(jax.random.key(3), (xla.out_size,))
    good = _points(4)
    bad = jnp.array([[jnp.nan, 0.5, 0.5], [0.5, jnp.inf, 0.5], [-jnp.inf, 0.2, jnp.nan]])
    xs = jnp.concatenate([good[:2], bad, good[2:]])
    is_bad = jnp.array([False, False, True, True, True, False, False])

    def loss(enc, tables, xs, skip):  # value and Eikonal terms, the skipped points masked
        sdf = lambda x: _sdf(enc, tables, w, x)
        terms = jax.vmap(sdf)(xs) ** 2
        if enc.backend == "xla":  # the masking is the backends' shared wrapper: one suffices
            terms += (jnp.linalg.norm(jax.vmap(jax.grad(sdf))(xs), axis=-1) - 1.0) ** 2
        return jnp.sum(jnp.where(skip, 0.0, terms))

    grads = jax.jit(jax.grad(loss, (1, 2)))  # one compile beats many eager dispatches
    for enc in (xla, pallas):
        out = jax.jit(lambda xs, enc=enc: enc(xs))(xs)
        assert jnp.all(jnp.isnan(out[is_bad])) and jnp.all(jnp.isfinite(out[~is_bad]))
        g_tables, g_xs = grads(enc, enc.tables, xs, is_bad)
        # The tables' gradient is that of the finite points alone.
        ref, _ = grads(enc, enc.tables, good, jnp.zeros(4, bool))
        assert_tree_allclose(g_tables, ref, rtol=RTOL, atol=ATOL)
        assert jnp.all(g_xs[is_bad] == 0) and jnp.all(jnp.isfinite(g_xs))


@pytest.mark.parametrize("mode", ["forward", "backward", "double_backward"])
def test_pallas_path_lowers_for_cuda(mode):
    cfg = hashgrid.make_grid_config(3, 4, 2, 12, 16, 2.0)
    x = jnp.zeros((256, 3), jnp.float32)
    tables = jnp.zeros((4, 1 << 12, 2), jnp.float32)
    w = jnp.zeros((8,), jnp.float32)
    encode = functools.partial(encode_pallas, config=cfg, interpret=False)
    sdf = lambda t, p: jnp.tanh(encode(p[None], t).reshape(-1)) @ w
    fns = {
        "forward": lambda t: encode(x, t),
        "backward": jax.grad(lambda t: jnp.sum(encode(x, t) ** 2)),
        "double_backward": jax.grad(
            lambda t: jnp.sum(jax.vmap(jax.grad(sdf, argnums=1), in_axes=(None, 0))(t, x) ** 2)
        ),
    }
    lowered = jax.jit(fns[mode]).trace(tables).lower(lowering_platforms=("cuda",))
    text = lowered.as_text()
    assert "triton" in text
    if mode != "forward":  # the table gradient is an atomic scatter kernel
        assert "atomic" in text or text.count("triton") >= 2


def test_bad_input():
    with pytest.raises(ValueError, match="backend"):
        js.HashGridEncoding(backend="cuda", key=jax.random.key(0))
    with pytest.raises(ValueError, match="max_resolution"):
        js.HashGridEncoding(base_resolution=16, max_resolution=8, key=jax.random.key(0))
    with pytest.raises(ValueError, match="features_per_level"):
        js.HashGridEncoding(features_per_level=3, key=jax.random.key(0))
    enc, _ = _encodings()
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 3\]"):
        enc(jnp.zeros((4, 2)))
    with pytest.raises(TypeError, match="floating point"):
        enc(jnp.zeros((4, 3), jnp.int32))
    with pytest.raises(ValueError, match="steps_per_level"):
        js.coarse_to_fine_levels(0, num_levels=4, steps_per_level=0)
