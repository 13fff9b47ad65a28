"""The flagship example: a neural ODE whose vector field reads a hash grid and a
fixed-point layer, differentiated twice through ReversibleAdjoint.

The derivative tests run in float64 (conftest turns x64 on) on a small model: short
trajectories, a two-level hash grid whose tables are randomised (so the encoding is
not negligible next to the equilibrium layer), and a 4-unit equilibrium layer.
"""

from __future__ import annotations

import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import jaxsecond
from tests.helpers import headline_numbers, load_example, rel_err

# One worker runs the whole module: its module-scoped fixtures and cached references are
# computed once (pytest -n 2 --dist loadgroup).
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("example_neural_ode_hashgrid")]

SMALL = {"hidden": 4, "width": 8, "num_levels": 2, "log2_hashmap_size": 6, "max_resolution": 8}
NUM_TIMES = 6  # 5 observation intervals of 0.8 up to t = 4


def small_problem(ex, dtype=jnp.float64, num_trajectories: int = 3):
    ts, ys = ex.make_data(jax.random.key(0), num_trajectories, num_times=NUM_TIMES, dtype=dtype)
    model = ex.make_model(jax.random.key(1), dtype=dtype, **SMALL)
    # Features of order one, so that second derivatives through the grid matter.
    tables = 0.5 * jax.random.normal(jax.random.key(2), model.encoding.tables.shape, dtype)
    model = eqx.tree_at(lambda m: m.encoding.tables, model, tables)
    return ts, ys, model


@pytest.fixture(scope="module")
def problem():
    """The small float64 problem, its flat parameters and the jitted flat gradient of
    its loss through ReversibleAdjoint (compiled once for the tests that share it)."""
    ex = load_example("neural_ode_hashgrid")
    ts, ys, model = small_problem(ex)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    fun = ex.loss_of_params(static, ts, ys)  # ReversibleAdjoint
    flat, unravel = ravel_pytree(params)
    grad_flat = jax.jit(lambda x: ravel_pytree(jax.grad(fun)(unravel(x)))[0])
    return ex, (ts, ys, model), fun, flat, unravel, grad_flat


def test_hvp_forward_over_reverse_matches_reverse_over_reverse_and_differences(problem):
    _, _, fun, flat, unravel, grad_flat = problem
    v = jax.random.normal(jax.random.key(3), flat.shape, flat.dtype)

    fwd_rev = jax.jit(lambda x: ravel_pytree(jaxsecond.hvp(fun, unravel(x), unravel(v)))[0])(flat)
    rev_rev = jax.jit(jax.grad(lambda x: grad_flat(x) @ v))(flat)
    eps = 1e-6
    fd = (grad_flat(flat + eps * v) - grad_flat(flat - eps * v)) / (2 * eps)

    assert bool(jnp.all(jnp.isfinite(fwd_rev))) and float(jnp.linalg.norm(fwd_rev)) > 0
    # Two exact computations of the same product, so round-off apart (~3e-16 observed).
    assert rel_err(fwd_rev, rev_rev) <= 1e-10, rel_err(fwd_rev, rev_rev)
    # Central differences: truncation O(eps^2), round-off ~1e-16 / eps, plus the
    # fixed point's forward tolerance (1e-13) / eps ~ 1e-7; observed ~3e-11. A missing
    # second-order term (the reconstruction's, the implicit layer's or the grid's
    # d^2/dx dtable) is of order one.
    assert rel_err(fwd_rev, fd) <= 1e-6, rel_err(fwd_rev, fd)
    # Every part of the model carries curvature: the check is not vacuous for any.
    hv = unravel(fwd_rev)
    for name, leaf in (
        ("hash-grid tables", hv.encoding.tables),
        ("equilibrium W", hv.W_raw),
        ("equilibrium U", hv.U),
        ("head", hv.head.layers[0].weight),
    ):
        assert float(jnp.linalg.norm(leaf)) > 1e-6 * float(jnp.linalg.norm(fwd_rev)), name


def test_reversible_gradient_matches_store_all(problem):
    ex, (ts, ys, model), _, flat, _, grad_flat = problem
    g_rev = grad_flat(flat)
    g_all = ex.gradient(model, ts, ys, jaxsecond.StoreAll())
    assert bool(jnp.all(jnp.isfinite(g_all))) and float(jnp.linalg.norm(g_all)) > 0
    # Gradients of the same discrete solve; reconstructing the 5 states backwards costs
    # round-off only (~1e-16 observed). A wrong step time, a missed cotangent or a
    # reconstruction that drifts shows up at order one (the discretisation itself:
    # two steps per interval instead of one moves the gradient by ~3e-3).
    assert rel_err(g_rev, g_all) <= 1e-8, rel_err(g_rev, g_all)


@pytest.mark.slow  # its HVP (the part only this example exercises) is tested above
def test_short_adahessian_run_lowers_the_loss(float32):
    ex = load_example("neural_ode_hashgrid")
    ts, ys, model = small_problem(ex, dtype=jnp.float32, num_trajectories=8)
    model, losses = ex.train("adahessian", model, ts, ys, num_steps=10, key=jax.random.key(4))
    assert np.all(np.isfinite(losses)), losses
    final = float(eqx.filter_jit(ex.loss_fn)(model, ts, ys))
    # From ~2 (untrained). A sign error or a broken Hessian diagonal (zero, NaN or huge)
    # leaves the loss where it was or blows it up.
    assert final < 0.3 * losses[0], (losses[0], final)


@pytest.mark.slow
def test_neural_ode_hashgrid_run(tmp_path):
    ex = load_example("neural_ode_hashgrid")
    result = ex.run(tmp_path)
    for fig in result.figures:
        assert pathlib.Path(fig).is_file() and pathlib.Path(fig).stat().st_size > 10_000
    assert (tmp_path / "neural_ode_hashgrid.png").is_file()
    key = result.key_figure
    (mse0,) = headline_numbers(key, r"untrained test ([0-9.e+-]+)")
    ada = headline_numbers(key, r"AdaHessian train ([0-9.e+-]+), test ([0-9.e+-]+)")
    adam = headline_numbers(key, r"Adam train ([0-9.e+-]+), test ([0-9.e+-]+)")
    # Quick run: ~1.5 untrained, ~1e-3 trained on held-out trajectories (observed).
    assert ada[1] < 0.01 * mse0 and adam[1] < 0.01 * mse0, (mse0, ada, adam)
    (rel_grad,) = headline_numbers(key, r"max rel\. diff ([0-9.e+-]+)")
    assert rel_grad <= 1e-10
