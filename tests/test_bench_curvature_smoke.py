"""Smoke tests of ``benchmarks/bench_curvature.py``: its comparisons at tiny sizes.

Timing is not tested, only that every contender computes what the benchmark claims it
computes: the products match the explicit Hessian, the PyHessian-style power iteration
and jaxsecond's Lanczos find ``eigh``'s top eigenvalue, and the Hutchinson estimators
(jaxsecond, matfree, the Python loop) scatter around the exact diagonal with the variance
Rademacher probes must have.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from tests.helpers import load_benchmark

# One worker runs the whole module: its module-scoped fixtures and cached references are
# computed once (pytest -n 2 --dist loadgroup).
# Benchmark scripts' own comparisons: they check themselves against references when
# run, and the library has its own tests, so they run with `pytest -m slow` (and
# before a benchmark run), outside CI's time budget.
pytestmark = [pytest.mark.xdist_group("bench_curvature"), pytest.mark.slow]

NAME = "bench_curvature"


@pytest.fixture(scope="module")
def bench():
    return load_benchmark(NAME)


@pytest.fixture(scope="module")
def tiny(bench):
    # 139 parameters: the explicit float64 Hessian takes a fraction of a second.
    return bench.mlp_problem(4, 8, 2, 3, 16, seed=2, dtype=jnp.float64)


@pytest.fixture(scope="module")
def tiny_hessian(bench, tiny):
    return bench.exact_hessian(tiny)


def _flat(tree) -> np.ndarray:
    return np.asarray(ravel_pytree(tree)[0], np.float64)


@pytest.mark.parametrize("kind", ["mlp", pytest.param("cnn", marks=pytest.mark.slow)])
def test_products_match_explicit_hessian(bench, kind):
    # float64: hvp, grad_and_hvp and the plain jvp(grad) recipe must agree with the
    # explicit Hessian times v to round-off (1e-10 relative is ~1e5 ulps of slack).
    if kind == "mlp":
        problem = bench.mlp_problem(4, 8, 2, 3, 16, seed=0, dtype=jnp.float64)
    else:
        problem = bench.cnn_problem(side=6, channels=2, out_size=3, batch=4, dtype=jnp.float64)
    v = bench.random_like(jax.random.key(0), problem.params)
    fns = bench.product_functions(problem)
    args = (problem.params, problem.batch, v)
    expected = bench.exact_hessian(problem) @ _flat(v)
    scale = np.max(np.abs(expected))
    for name in ("hvp", "plain_hvp"):
        err = np.max(np.abs(_flat(fns[name](*args)) - expected)) / scale
        assert err < 1e-10, (name, err)
    value, grad, hv = fns["fused"](*args)
    assert np.max(np.abs(_flat(hv) - expected)) / scale < 1e-10
    np.testing.assert_allclose(_flat(grad), _flat(fns["grad"](*args)), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(float(value), float(problem.loss(problem.params, problem.batch)))
    errors = bench.product_errors(problem, v, fns)
    assert max(errors.values()) < 1e-10, errors


def test_power_iteration_agrees_with_eigh(bench, tiny, tiny_hessian):
    eigenvalues = bench.exact_eigenvalues(tiny, tiny_hessian)
    top, second = eigenvalues[0], eigenvalues[1]
    assert top > abs(eigenvalues[-1])  # power iteration targets the largest |lambda|
    fun = tiny.fun()
    eig, steps = jax.jit(lambda p, k: bench.power_iteration(fun, p, k, tol=1e-13, max_iters=3000))(
        tiny.params, jax.random.key(0)
    )
    # After `steps` products the Rayleigh quotient's error is ~ (lambda2/lambda1)^(2 steps)
    # of the start's; with the stopping rule at 1e-13 it is far below 1e-8 unless the loop
    # hit max_iters, which the gap rules out here.
    assert int(steps) < 3000, (int(steps), second / top)
    assert abs(float(eig) - top) / top < 1e-8, (float(eig), top)


def test_power_iteration_stops_like_pyhessian(bench):
    # A diagonal quadratic with lambda2 / lambda1 = 0.5: from e = (1, 1, ...) normalised,
    # the Rayleigh quotient after step i is known in closed form, so the step at which the
    # relative change first drops below tol can be counted independently.
    d = jnp.array([4.0, 2.0, 1.0, 0.5], jnp.float64)
    fun = lambda x: 0.5 * jnp.sum(d * x**2)
    tol = 1e-3

    def quotient(i):  # Rayleigh quotient of H^(i-1) v0 / |.|, v0 = ones
        w = np.asarray(d) ** (2 * (i - 1))
        return float(np.sum(w * np.asarray(d)) / np.sum(w))

    i = 2
    while abs(quotient(i) - quotient(i - 1)) / (abs(quotient(i - 1)) + 1e-6) >= tol:
        i += 1

    eig, steps = bench.power_iteration(
        fun, jnp.zeros(4, jnp.float64), jax.random.key(0), tol=tol, v0=jnp.ones(4, jnp.float64)
    )
    assert int(steps) == i
    np.testing.assert_allclose(float(eig), quotient(i), rtol=1e-12)


def test_lanczos_count_search_is_minimal(bench, tiny, tiny_hessian):
    exact = float(bench.exact_eigenvalues(tiny, tiny_hessian)[0])
    key = jax.random.key(1)
    cache: dict = {}
    target = 1e-5
    m = bench.lanczos_iters_to_reach(tiny, key, exact, target, cache, max_iters=100, guess=16)
    assert m is not None and m <= 100
    rel = lambda count: abs(cache[count] - exact) / exact
    assert rel(m) <= target
    if m > 1:
        if m - 1 not in cache:
            cache[m - 1] = float(bench.lanczos_top(tiny, m - 1)(tiny.params, tiny.batch, key))
        assert rel(m - 1) > target
    # An unreachable target reports None instead of looping (m is cached: no compilation).
    assert bench.lanczos_iters_to_reach(tiny, key, exact, 0.0, cache, max_iters=m, guess=m) is None


def test_estimators_scatter_like_rademacher_hutchinson(bench, tiny, tiny_hessian):
    # Statistical bound: with Rademacher probes the squared error of a 16-probe estimate
    # has expectation theory^2 |diag|^2 exactly; over the 139 entries and 30 seeds its
    # mean fluctuates by a few percent (per-seed spread ~10%, /sqrt(30)), so the RMS must
    # be within [0.8, 1.25] x theory: > 5 standard deviations of slack, while a wrong
    # scaling or a correlated probe (e.g. a key shared between leaves) leaves that band.
    # The mean over seeds is unbiased: its error is noise of size theory / sqrt(30) (the
    # norm over 139 entries, dominated by the few largest-variance ones, was 0.86x and
    # 1.06x of that); 2x bounds it, and a bias large enough to matter also pushes the RMS
    # out of its band.
    pytest.importorskip("matfree")
    seeds, probes = 30, 16
    stats = bench.estimator_error_stats(tiny, num_seeds=seeds, num_probes=probes, H=tiny_hessian)
    theory = stats["theory_rel"]
    assert 0.05 < theory < 5  # the test problem is neither diagonal nor hopeless
    for name in ("jaxsecond", "matfree"):
        rms = np.sqrt(np.mean(stats[name]["rel"] ** 2))
        assert 0.8 < rms / theory < 1.25, (name, rms, theory)
        assert stats[name]["bias_rel"] < 2 * theory / np.sqrt(seeds), (name, stats[name])


def test_loop_and_chunked_estimators(bench, tiny, tiny_hessian):
    # The Python loop is the same estimator: its RMS error over 10 seeds is within the
    # same band. Our chunked and all-at-once runs draw the same probes (documented: the
    # estimate does not depend on batch_size), so they agree to round-off.
    diag = np.diag(tiny_hessian)
    theory = np.sqrt((np.sum(tiny_hessian**2) - np.sum(diag**2)) / 16) / np.linalg.norm(diag)
    loop = bench.loop_diagonal(tiny, 16)
    errors = [
        np.linalg.norm(_flat(loop(tiny.params, tiny.batch, jax.random.key(s))) - diag)
        / np.linalg.norm(diag)
        for s in range(10)
    ]
    assert 0.7 < np.sqrt(np.mean(np.square(errors))) / theory < 1.4, (errors, theory)
    key = jax.random.key(7)
    all_at_once = bench.ours_diagonal(tiny, 16, None)(tiny.params, tiny.batch, key)
    chunked = bench.ours_diagonal(tiny, 16, 4)(tiny.params, tiny.batch, key)
    np.testing.assert_allclose(_flat(chunked), _flat(all_at_once), rtol=1e-10, atol=1e-12)


def test_matfree_chunked_matches_exact_in_mean(bench, tiny, tiny_hessian):
    # matfree's chunked variant (lax.map over 4 estimators of 4 probes) is a 16-probe
    # estimate too: averaged over 20 seeds it is within 2 noise units of the diagonal.
    pytest.importorskip("matfree")
    diag = np.diag(tiny_hessian)
    fn = bench.matfree_diagonal(tiny, 16, chunks=4)
    est = np.mean(
        [_flat(fn(tiny.params, tiny.batch, jax.random.key(s))) for s in range(20)], axis=0
    )
    theory = np.sqrt((np.sum(tiny_hessian**2) - np.sum(diag**2)) / 16) / np.linalg.norm(diag)
    assert np.linalg.norm(est - diag) / np.linalg.norm(diag) < 2 * theory / np.sqrt(20)


def test_stderr_is_calibrated(bench, tiny, tiny_hessian):
    # The reported standard error's RMS over 139 entries vs the actual error's: each entry's
    # sample variance from 64 probes is within ~20% of the true one, and averaging over
    # entries tightens that; 0.7-1.4 leaves room for the spread of the actual errors.
    ratio = bench.stderr_calibration(tiny, np.diag(tiny_hessian), jax.random.key(3), 64)
    assert 0.7 < ratio < 1.4, ratio
