"""Smoke tests of ``benchmarks/bench_diffeq.py``: its comparisons at tiny sizes.

Timing is not tested, only that the contenders compute what the benchmark claims:
our reversible adjoint gives the ``StoreAll`` gradient, diffrax's Reversible Heun is the
same scheme as ours (so the like-for-like rows solve the same discretisation), and the
convergence table sees second order for both second-order solvers.

diffrax's ``ReversibleHeun.step`` is ``yhat1 = 2 y0 - yhat0 + h f(t0, yhat0)``,
``y1 = y0 + h/2 (f(t0, yhat0) + f(t1, yhat1))`` from ``yhat0 = y0``, which is ours with
``z = yhat``. On the same fixed grid the two differ only by round-off: diffrax
accumulates ``t + dt`` and interpolates ``SaveAt(ts=...)`` linearly inside a step, so a
saved time off a step end by a few ulps moves the output by about ``|y'|`` times that.
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsecond
from tests.helpers import load_benchmark

# Benchmark scripts' own comparisons: they check themselves against references when
# run, and the library has its own tests, so they run with `pytest -m slow` (and
# before a benchmark run), outside CI's time budget.
pytestmark = pytest.mark.slow

NAME = "bench_diffeq"


@pytest.fixture(scope="module")
def bench():
    return load_benchmark(NAME)


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _grad(bench, solve, params, y0, ts):
    return bench.grad_fn(solve)(params, y0, ts)


def test_reversible_adjoint_equals_store_all(bench):
    steps = 40
    with jax.enable_x64(True):
        params, y0, ts = bench.make_problem(jnp.float64, seed=3, batch=4)
        for solver in (jaxsecond.ReversibleHeun(), jaxsecond.Reversible(jaxsecond.RK4())):
            g_rev = _grad(
                bench, bench.ours_ode(solver, jaxsecond.ReversibleAdjoint(), steps), params, y0, ts
            )
            g_all = _grad(
                bench, bench.ours_ode(solver, jaxsecond.StoreAll(), steps), params, y0, ts
            )
            # Reconstruction round-off only: a few hundred ulps of float64 at most.
            np.testing.assert_allclose(_flat(g_rev), _flat(g_all), rtol=1e-9, atol=1e-12)


def test_ours_and_diffrax_reversible_heun_agree(bench):
    steps = 50
    with jax.enable_x64(True):
        params, y0, ts = bench.make_problem(jnp.float64, seed=1, batch=4)
        ours = jax.jit(bench.ours_ode(jaxsecond.ReversibleHeun(), jaxsecond.StoreAll(), steps))(
            params, y0, ts
        )
        theirs = jax.jit(
            bench.diffrax_ode(diffrax.ReversibleHeun(), diffrax.RecursiveCheckpointAdjoint(), steps)
        )(params, y0, ts)
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-10, atol=1e-12)
        # Not trivially equal: a different scheme on the same grid is far away.
        midpoint = jax.jit(bench.ours_ode(jaxsecond.Midpoint(), jaxsecond.StoreAll(), steps))(
            params, y0, ts
        )
        assert bench._harness.max_rel_error(midpoint, theirs) > 1e-6


def test_diffrax_gradient_matches_ours(bench):
    """diffrax's discrete gradient (recursive checkpointing) is our StoreAll gradient."""
    steps = 30
    with jax.enable_x64(True):
        params, y0, ts = bench.make_problem(jnp.float64, seed=2, batch=4)
        ours = _grad(
            bench,
            bench.ours_ode(jaxsecond.ReversibleHeun(), jaxsecond.ReversibleAdjoint(), steps),
            params,
            y0,
            ts,
        )
        theirs = _grad(
            bench,
            bench.diffrax_ode(
                diffrax.ReversibleHeun(), diffrax.RecursiveCheckpointAdjoint(), steps
            ),
            params,
            y0,
            ts,
        )
        assert bench._harness.max_rel_error(theirs, ours) < 1e-9


@pytest.mark.slow  # compiles diffrax's SDE adjoints (about a minute); the benchmark runs them
def test_sde_contenders_run_and_agree_in_shape(bench):
    params, y0, ts = bench.make_problem(jnp.float32, seed=0, batch=2)
    grads = {
        name: _grad(bench, solve, params, y0, ts)
        for name, solve in bench.sde_contenders(20, jax.random.key(0)).items()
    }
    shapes = {name: [x.shape for x in jax.tree.leaves(g)] for name, g in grads.items()}
    assert len({str(s) for s in shapes.values()}) == 1
    for g in grads.values():
        assert np.all(np.isfinite(_flat(g)))


def test_convergence_is_second_order(bench):
    grid = [20, 40, 80]
    errors = bench.convergence(grid, ref_steps=800)
    for name in ("ReversibleHeun", "Midpoint"):
        ratios = errors[name][:-1] / errors[name][1:]
        # Halving the step divides a second-order error by about 4.
        assert np.all(ratios > 3.0), (name, errors[name])
    assert bench.steps_for(errors["Midpoint"], grid, errors["Midpoint"][1]) == 40
    assert bench.steps_for(errors["Midpoint"], grid, 0.0) is None
