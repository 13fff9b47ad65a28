"""Smoke tests of the benchmark scripts: their core comparisons at tiny sizes.

The scripts live in ``benchmarks/`` (not a package), so they are loaded by path. Timing is
not tested here, only that each comparison computes gradients that agree with the
script's own float64 reference.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import load_benchmark

# Benchmark scripts' own comparisons: they check themselves against references when
# run, and the library has its own tests, so they run with `pytest -m slow` (and
# before a benchmark run), outside CI's time budget.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def unrolled_bench():
    return load_benchmark("bench_implicit_vs_unrolled")


@pytest.fixture(scope="module")
def jaxopt_bench():
    pytest.importorskip("jaxopt")
    return load_benchmark("bench_implicit_vs_jaxopt")


@pytest.mark.parametrize("kind", ["ridge", "lasso"])
def test_implicit_and_unrolled_match_reference(unrolled_bench, kind):
    # 3000 steps on a 60 x 12 problem drive the inner solve to round-off in float64, so
    # both hypergradients must equal the exact one up to the linear solve's tolerance
    # (1e-12 in float64) and accumulated round-off: 1e-7 relative leaves a wide margin yet
    # catches any real error (an unconverged or wrongly differentiated solve is off by
    # >= 1e-3 here).
    out = unrolled_bench.hypergradients(
        kind, 3000, n_train=60, n_features=12, n_val=40, seed=1, dtype=jnp.float64
    )
    for method in ("implicit", "unrolled"):
        np.testing.assert_allclose(out[method], out["reference"], rtol=1e-7, err_msg=method)


def test_lasso_reference_step_is_consistent(unrolled_bench):
    # The finite difference and the active-set closed form are independent; inside one
    # support interval the loss is exactly quadratic in lam, so they agree to round-off.
    problem = unrolled_bench.make_problem("lasso", 60, 12, 40, seed=1)
    fd, closed = unrolled_bench.lasso_reference(problem)
    np.testing.assert_allclose(fd, closed, rtol=1e-8)


def test_few_iterations_are_visibly_unconverged(unrolled_bench):
    # The benchmark's premise: with 100 steps the quick-size ridge problem is not solved,
    # so its error column measures the inner solver, not the differentiation.
    out = unrolled_bench.hypergradients("ridge", 100, dtype=jnp.float64)
    assert abs(out["unrolled"] - out["reference"]) > 1e-3 * abs(out["reference"])


@pytest.mark.parametrize("problem", ["ridge", "logistic"])
def test_jaxsecond_and_jaxopt_gradients_match_reference(jaxopt_bench, problem):
    # float64 with CG tolerance 1e-10 on a problem with condition number < 1e3: each
    # gradient is within ~1e-7 of the exact one relative to its largest entry, so 1e-6
    # catches a missing term or a wrong sign while tolerating the CG stopping rules.
    out = jaxopt_bench.gradients(problem, 200, 8, seed=1, dtype=jnp.float64, tol=1e-10)
    scale = np.max(np.abs(out["reference"]))
    for library in ("jaxsecond", "jaxopt"):
        err = np.max(np.abs(out[library] - out["reference"])) / scale
        assert err < 1e-6, (library, err)


def test_capability_table_runs_and_jaxsecond_passes_every_row(jaxopt_bench):
    caps = jaxopt_bench.capabilities(n=30, d=4)
    assert len(caps) == 5
    for name, by_library in caps.items():
        assert by_library["jaxsecond"]["status"] == "ok", (name, by_library["jaxsecond"])
        assert by_library["jaxopt"]["status"] in {"ok", "wrong", "error"}
        assert by_library["jaxopt"]["text"]
