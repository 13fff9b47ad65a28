"""Smoke test of ``benchmarks/bench_hashgrid.py``: its on-device check compares what it
claims (the pallas path, interpreted here, against the XLA path) and its workloads
compute the gradients they are named after."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jaxsecond.kernels import hashgrid

from tests.helpers import load_benchmark

# Benchmark scripts' own comparisons: they check themselves against references when
# run, and the library has its own tests, so they run with `pytest -m slow` (and
# before a benchmark run), outside CI's time budget.
pytestmark = pytest.mark.slow


def test_check_and_workloads():
    bench = load_benchmark("bench_hashgrid")
    config = hashgrid.make_grid_config(3, 3, 2, 8, 4, 2.0)
    rows = bench.check(config, interpret=True, n=32)
    assert [r[0] for r in rows] == [*bench.BYTES_PER_POINT_LEVEL, "spatial gradient"]
    # float32 on both paths: agreement to round-off.
    assert all(err < 1e-5 for _, err in rows)
    # The Eikonal workload is the table gradient of sum |d/dx (features . w)|^2: check it
    # against a direct computation with jax.jacfwd in x.
    tables, x, c, w = bench._inputs(config, 5)
    encode = lambda p, t: hashgrid.interpolate_reference(p, t, config)[0]
    ours = bench._workloads(encode)["+double backward"](tables, x, c, w)

    def direct(t):
        jac = jax.vmap(jax.jacfwd(lambda p: encode(p[None], t).reshape(-1) @ w))(x)
        return jnp.sum(jac**2)

    ref = jax.grad(direct)(tables)
    assert jnp.allclose(ours, ref, rtol=1e-4, atol=1e-6 * float(jnp.max(jnp.abs(ref))))
