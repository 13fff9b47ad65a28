"""Hash-grid encoding: tiny-cuda-nn conventions, exact derivatives, Pallas kernels.

Hand-computed cases pin the conventions (Mueller et al. 2022, as in tiny-cuda-nn); the
references are checked against JAX's own derivatives and transposes; the Pallas kernels
run in interpret mode against the references and are lowered for CUDA (Triton).
"""

import doctest
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxsecond.kernels import hashgrid as hg

from .helpers import assert_tree_allclose

P1, P2 = 2654435761, 805459861


def _hash(c, size):
    """tiny-cuda-nn's XOR hash of an integer vertex, in Python integers."""
    h = c[0] * 1 ^ c[1] * P1 ^ (c[2] * P2 if len(c) > 2 else 0)
    return h % 2**32 % size


def _tables(key, config, dtype=jnp.float64):
    shape = (config.num_levels, config.table_size, config.features_per_level)
    return jax.random.normal(key, shape, dtype)


def _cotangents(key, n, config, order, dtype=jnp.float64):
    keys = jax.random.split(key, order + 1)
    lf = (n, config.num_levels, config.features_per_level)
    return tuple(
        jax.random.normal(keys[k], lf + (config.dim,) * k, dtype) for k in range(order + 1)
    )


# ---------------------------------------------------------------------------------------
# 1. tiny-cuda-nn conventions, by hand
# ---------------------------------------------------------------------------------------


def test_config_matches_tcnn_rules():
    cfg = hg.make_grid_config(2, 4, 2, 6, 4, 1.5)
    # scale = 4 * 1.5**l - 1 = 3, 5, 8, 12.5; resolution = ceil(scale) + 1.
    np.testing.assert_allclose(cfg.scales, (3.0, 5.0, 8.0, 12.5), rtol=1e-6)
    assert cfg.resolutions == (4, 6, 9, 14)
    # res**2 = 16, 36, 81, 196, rounded up to 8 (16, 40, 88, 200), capped at T = 64.
    assert cfg.level_sizes == (16, 40, 64, 64)
    assert cfg.hashed == (False, False, True, True)
    assert cfg.num_levels == 4 and cfg.table_size == 64
    # 3-D, base 16, b = 2: 16**3 = 4096 fits a 2**12 table exactly (dense), 32**3 does not.
    cfg3 = hg.make_grid_config(3, 2, 2, 12, 16, 2.0)
    assert cfg3.scales == (15.0, 31.0) and cfg3.resolutions == (16, 32)
    assert cfg3.level_sizes == (4096, 4096) and cfg3.hashed == (False, True)
    hash(cfg3)  # a static argument


def _row_weights(x, config, level):
    """{row: weight} of every corner at ``level``, read off the scatter of G_0 = 1."""
    n, nl, nf = x.shape[0], config.num_levels, config.features_per_level
    g0 = jnp.zeros((n, nl, nf)).at[:, level].set(1.0)
    out = np.asarray(hg.scatter_reference(x, (g0,), config))[level, :, 0]
    return {int(r): float(out[r]) for r in np.flatnonzero(out)}


def test_dense_level_index_and_weights():
    cfg = hg.make_grid_config(2, 1, 1, 8, 4, 2.0)  # scale 3, resolution 4, 16 rows
    # x = (0.25, 0.5): p = (0.75 + 0.5, 1.5 + 0.5) = (1.25, 2.0), cell (1, 2), t = (0.25, 0).
    # Rows v0 + 4 v1: (1, 2) -> 9 with 0.75, (2, 2) -> 10 with 0.25; the v1 = 3 corners weigh 0.
    x = jnp.array([[0.25, 0.5]])
    assert _row_weights(x, cfg, 0) == {9: 0.75, 10: 0.25}
    t = _tables(jax.random.key(0), cfg)[0, :, 0]
    f0, f1, f2 = hg.interpolate_reference(x, t.reshape(1, -1, 1), cfg, 2)
    np.testing.assert_allclose(f0[0, 0, 0], 0.75 * t[9] + 0.25 * t[10], rtol=1e-14)
    # p lies on the cell's lower v1 face: derivatives are one-sided, from cell (1, 2).
    expected_f1 = [3 * (t[10] - t[9]), 3 * (0.75 * (t[13] - t[9]) + 0.25 * (t[14] - t[10]))]
    np.testing.assert_allclose(f1[0, 0, 0], expected_f1, rtol=1e-13)
    mixed = 9 * (t[14] - t[13] - t[10] + t[9])
    np.testing.assert_allclose(f2[0, 0, 0], [[0, mixed], [mixed, 0]], rtol=1e-13, atol=1e-13)


def test_half_offset_at_zero_and_wraparound_at_one():
    cfg = hg.make_grid_config(2, 1, 1, 8, 4, 2.0)  # scale 3, resolution 4, 16 rows
    # x = 0: p = 0.5, the +0.5 offset puts it mid-cell: rows 0, 1, 4, 5 at 1/4 each.
    assert _row_weights(jnp.zeros((1, 2)), cfg, 0) == {0: 0.25, 1: 0.25, 4: 0.25, 5: 0.25}
    # x = 1: p = 3.5, cell (3, 3); vertices 4 are past the last one (3) and the dense
    # index wraps modulo 16: (3,3) -> 15, (4,3) -> 16 % 16 = 0, (3,4) -> 19 % 16 = 3,
    # (4,4) -> 20 % 16 = 4.
    assert _row_weights(jnp.ones((1, 2)), cfg, 0) == {15: 0.25, 0: 0.25, 3: 0.25, 4: 0.25}


def test_cell_boundary_takes_the_upper_cell():
    cfg = hg.make_grid_config(2, 1, 1, 8, 4, 2.0)
    # x = (0.5, 0.5): p = (2, 2) exactly, floor gives cell (2, 2) with t = 0: all on row 10.
    assert _row_weights(jnp.array([[0.5, 0.5]]), cfg, 0) == {10: 1.0}


def test_hashed_level_index():
    cfg = hg.make_grid_config(3, 2, 2, 6, 4, 4.0)
    assert cfg.hashed == (False, True) and cfg.level_sizes == (64, 64)
    # Level 1: scale 15; x = (0.5, 0.25, 0.75) -> p = (8, 4.25, 11.75), cell (8, 4, 11),
    # t = (0, 0.25, 0.75): only v0 = 8 corners weigh.
    x = jnp.array([[0.5, 0.25, 0.75]])
    expected = {}
    for c, w in [
        ((8, 4, 11), 0.75 * 0.25),
        ((8, 5, 11), 0.25 * 0.25),
        ((8, 4, 12), 0.75 * 0.75),
        ((8, 5, 12), 0.25 * 0.75),
    ]:
        row = _hash(c, 64)
        expected[row] = expected.get(row, 0.0) + w
    got = _row_weights(x, cfg, 1)
    assert got.keys() == expected.keys()
    np.testing.assert_allclose([got[r] for r in expected], list(expected.values()), rtol=1e-14)
    # And the dense level 0: scale 3, p = (2, 1.25, 2.75), cell (2, 1, 2), t = (0, .25, .75).
    rows = {(2 + 4 * 1 + 16 * 2): 0.1875, (2 + 4 * 2 + 16 * 2): 0.0625}
    rows |= {(2 + 4 * 1 + 16 * 3): 0.5625, (2 + 4 * 2 + 16 * 3): 0.1875}
    assert _row_weights(x, cfg, 0) == rows


# ---------------------------------------------------------------------------------------
# 2-3. References against JAX's derivatives and transposes
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [2, 3])
def test_reference_derivatives_match_jacfwd(dim, getkey):
    cfg = hg.make_grid_config(dim, 3, 2, 8, 3, 1.7)
    tables = _tables(getkey(), cfg)
    x = jax.random.uniform(getkey(), (5, dim))
    outs = hg.interpolate_reference(x, tables, cfg, 3)
    for k in (1, 2, 3):

        def lower(point, k=k):
            return hg.interpolate_reference(point[None], tables, cfg, k - 1)[k - 1][0]

        jac = jax.vmap(jax.jacfwd(lower))(x)
        assert_tree_allclose(outs[k], jac, rtol=1e-12, atol=1e-12)
    diagonal = jnp.diagonal(outs[2], axis1=-2, axis2=-1)
    assert float(jnp.abs(diagonal).max()) == 0.0 and float(jnp.abs(outs[2]).max()) > 0
    if dim == 2:
        assert outs[3].shape == (5, 3, 2, 2, 2, 2) and float(jnp.abs(outs[3]).max()) == 0.0


@pytest.mark.parametrize(("dim", "order"), [(2, 0), (2, 1), (3, 2)])
def test_scatter_reference_is_the_vjp(dim, order, getkey):
    cfg = hg.make_grid_config(dim, 3, 2, 5, 2, 2.0)  # 32 rows: hashed levels collide
    tables = _tables(getkey(), cfg)
    x = jax.random.uniform(getkey(), (40, dim))
    cot = _cotangents(getkey(), 40, cfg, order)
    _, vjp = jax.vjp(lambda t: hg.interpolate_reference(x, t, cfg, order), tables)
    assert_tree_allclose(hg.scatter_reference(x, cot, cfg), vjp(cot)[0], rtol=1e-12, atol=1e-12)
    if order > 0:  # None entries are zeros
        partial = (None, *cot[1:])
        zeros = (jnp.zeros_like(cot[0]), *cot[1:])
        assert_tree_allclose(
            hg.scatter_reference(x, partial, cfg), hg.scatter_reference(x, zeros, cfg)
        )


# ---------------------------------------------------------------------------------------
# 4-5. Pallas kernels (interpret mode) against the references
# ---------------------------------------------------------------------------------------

CASES = [
    # dim, F, order, dtype
    (2, 1, 2, "float64"),
    (3, 8, 1, "float64"),
    (3, 2, 2, "float32"),
    (2, 4, 0, "float32"),
]


def _tolerance(dtype):
    return dict(rtol=1e-12, atol=1e-12) if dtype == "float64" else dict(rtol=2e-5, atol=2e-4)


@pytest.mark.integration  # heavy: in the second tier
@pytest.mark.parametrize(("dim", "nf", "order", "dtype"), CASES)
def test_interpolate_pallas_matches_reference(dim, nf, order, dtype, getkey):
    with jax.enable_x64(dtype == "float64"):
        # 3 levels, 2**6 rows: the finer levels are hashed and collide.
        cfg = hg.make_grid_config(dim, 3, nf, 6, 3, 2.0)
        assert any(cfg.hashed)
        tables = _tables(getkey(), cfg, dtype)
        x = jax.random.uniform(getkey(), (77, dim), dtype)  # not a multiple of 32
        got = hg.interpolate_pallas(x, tables, cfg, order, block_size=32, interpret=True)
        want = hg.interpolate_reference(x, tables, cfg, order)
        assert [g.dtype for g in got] == [jnp.dtype(dtype)] * (order + 1)
        assert_tree_allclose(got, want, **_tolerance(dtype))


@pytest.mark.integration  # heavy: in the second tier
def test_interpolate_pallas_orders_above_dim_and_jit(getkey):
    cfg = hg.make_grid_config(2, 2, 2, 6, 3, 2.0)
    tables = _tables(getkey(), cfg)
    x = jax.random.uniform(getkey(), (10, 2))
    fun = jax.jit(hg.interpolate_pallas, static_argnums=(2, 3), static_argnames="interpret")
    got = fun(x, tables, cfg, 3, interpret=True)
    assert_tree_allclose(got, hg.interpolate_reference(x, tables, cfg, 3), rtol=1e-12, atol=1e-12)
    assert got[3].shape == (10, 2, 2, 2, 2, 2) and float(jnp.abs(got[3]).max()) == 0.0


@pytest.mark.integration  # heavy: in the second tier
@pytest.mark.parametrize(("dim", "nf", "order", "dtype"), CASES)
def test_scatter_pallas_matches_reference(dim, nf, order, dtype, getkey):
    with jax.enable_x64(dtype == "float64"):
        cfg = hg.make_grid_config(dim, 3, nf, 6, 3, 2.0)
        # 8 distinct points repeated: many updates land on the same rows.
        base = jax.random.uniform(getkey(), (8, dim), dtype)
        x = base[jax.random.randint(getkey(), (37,), 0, 8)]
        cot = _cotangents(getkey(), 37, cfg, order, dtype)
        got = hg.scatter_pallas(x, cot, cfg, interpret=True)
        assert got.dtype == jnp.dtype(dtype)
        assert_tree_allclose(got, hg.scatter_reference(x, cot, cfg), **_tolerance(dtype))


@pytest.mark.integration  # heavy: in the second tier
def test_scatter_pallas_skips_none_cotangents(getkey):
    cfg = hg.make_grid_config(2, 2, 2, 5, 2, 2.0)
    x = jax.random.uniform(getkey(), (13, 2))
    cot = _cotangents(getkey(), 13, cfg, 2)
    partial = (None, cot[1], None)
    got = hg.scatter_pallas(x, partial, cfg, interpret=True)
    assert_tree_allclose(got, hg.scatter_reference(x, partial, cfg), rtol=1e-12, atol=1e-12)
    # Orders above d have zero weight: nothing is scattered.
    above = (None, None, None, jnp.ones((13, 2, 2, 2, 2, 2)))
    assert float(jnp.abs(hg.scatter_pallas(x, above, cfg, interpret=True)).max()) == 0.0
    assert float(jnp.abs(hg.scatter_reference(x, above, cfg)).max()) == 0.0


# ---------------------------------------------------------------------------------------
# 6. Triton lowering for CUDA (no GPU needed)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dim", "order"), list(itertools.product((2, 3), (0, 1, 2))))
def test_kernels_lower_for_cuda(dim, order):
    for nf in (1, 2, 4, 8):
        cfg = hg.make_grid_config(dim, 3, nf, 10, 4, 2.0)
        x = jax.ShapeDtypeStruct((300, dim), jnp.float32)
        tables = jax.ShapeDtypeStruct((3, 1024, nf), jnp.float32)
        cot = tuple(
            jax.ShapeDtypeStruct((300, 3, nf) + (dim,) * k, jnp.float32) for k in range(order + 1)
        )
        interp = jax.jit(lambda x, t, cfg=cfg: hg.interpolate_pallas(x, t, cfg, order))
        scatter = jax.jit(lambda x, g, cfg=cfg: hg.scatter_pallas(x, g, cfg))
        for fun, args in ((interp, (x, tables)), (scatter, (x, cot))):
            text = fun.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
            assert "triton" in text.lower()


# ---------------------------------------------------------------------------------------
# 7. Argument errors
# ---------------------------------------------------------------------------------------


def test_argument_errors():
    cfg = hg.make_grid_config(3, 2, 2, 6, 4, 2.0)
    tables = jnp.zeros((2, 64, 2))
    x = jnp.zeros((4, 3))
    cot = (jnp.zeros((4, 2, 2)),)
    with pytest.raises(ValueError, match="x must have shape"):
        hg.interpolate_reference(jnp.zeros((4, 2)), tables, cfg)
    with pytest.raises(ValueError, match="x must have shape"):
        hg.interpolate_pallas(jnp.zeros(4), tables, cfg, interpret=True)
    with pytest.raises(TypeError, match="x must be floating"):
        hg.interpolate_pallas(jnp.zeros((4, 3), jnp.int32), tables, cfg, interpret=True)
    with pytest.raises(ValueError, match="tables must have shape"):
        hg.interpolate_pallas(x, jnp.zeros((2, 32, 2)), cfg, interpret=True)
    with pytest.raises(TypeError, match="tables must be float32 or float64"):
        hg.interpolate_reference(x, jnp.zeros((2, 64, 2), jnp.int32), cfg)
    with pytest.raises(ValueError, match="block_size must be a power of 2"):
        hg.interpolate_pallas(x, tables, cfg, block_size=48, interpret=True)
    with pytest.raises(ValueError, match="block_size must be a power of 2"):
        hg.scatter_pallas(x, cot, cfg, block_size=0, interpret=True)
    with pytest.raises(ValueError, match="order must be"):
        hg.interpolate_pallas(x, tables, cfg, -1, interpret=True)
    with pytest.raises(ValueError, match="features_per_level"):
        hg.make_grid_config(3, 2, 3, 6, 4, 2.0)
    with pytest.raises(ValueError, match="features_per_level"):
        hg.interpolate_pallas(x, jnp.zeros((2, 64, 3)), cfg._replace(features_per_level=3))
    with pytest.raises(ValueError, match="dim must be 2 or 3"):
        hg.make_grid_config(4, 2, 2, 6, 4, 2.0)
    with pytest.raises(TypeError, match="config must be a GridConfig"):
        hg.interpolate_reference(x, tables, (3, 2, 6))
    with pytest.raises(ValueError, match=r"cotangents\[1\] must have shape"):
        hg.scatter_pallas(x, (cot[0], jnp.zeros((4, 2, 2, 2))), cfg, interpret=True)
    with pytest.raises(TypeError, match="cotangents must be a tuple"):
        hg.scatter_reference(x, cot[0], cfg)
    with pytest.raises(ValueError, match="at least one array"):
        hg.scatter_pallas(x, (None,), cfg, interpret=True)


def test_docstring_examples():
    result = doctest.testmod(hg, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
