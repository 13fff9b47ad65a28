"""Smoke tests of ``benchmarks/bench_optim.py``: its contenders at tiny sizes.

Timing is not tested, only that every timed step does what the benchmark says it does:
on a separable quadratic, where one Hutchinson probe gives the exact Hessian diagonal
whatever its signs, AdaHessian's one-pass and ``obj_fn`` steps must agree to rounding, and
so must the three ways of skipping the estimate between refreshes; the Adam contender is
plain optax; the accuracy table and the torch section come out in the promised shape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsecond
from tests.helpers import assert_tree_allclose, load_benchmark

# One worker runs the whole module: its module-scoped fixtures and cached references are
# computed once (pytest -n 2 --dist loadgroup).
# Benchmark scripts' own comparisons: they check themselves against references when
# run, and the library has its own tests, so they run with `pytest -m slow` (and
# before a benchmark run), outside CI's time budget.
pytestmark = [pytest.mark.xdist_group("bench_optim"), pytest.mark.slow]

NAME = "bench_optim"


@pytest.fixture(scope="module")
def bench():
    return load_benchmark(NAME)


@pytest.fixture(scope="module")
def quadratic():
    """A separable quadratic ``0.5 sum(c * p^2)`` over a dict with a 4-D (conv-like) leaf.

    Its Hessian is diagonal, so ``z * (H z) = diag(H)`` for every Rademacher ``z``: the
    estimate is exact and independent of the probes. The 4-D curvature is constant over
    the kernel's spatial axes, so AdaHessian's spatial average leaves it unchanged too.
    """
    params = {
        "kernel": jnp.ones((3, 2, 3, 3)),
        "bias": jnp.array([1.0, -2.0, 0.5]),
    }
    c_kernel = jnp.broadcast_to(jnp.array([1.0, 4.0, 9.0])[:, None, None, None], (3, 2, 3, 3))
    batch = {"kernel": c_kernel, "bias": jnp.array([2.0, 0.5, 3.0])}

    def loss(p, b):
        return 0.5 * sum(jnp.sum(b[k] * p[k] ** 2) for k in p)

    return loss, params, batch


def _run(bench, loss, params, batch, optimizer, **kwargs):
    step = bench.training_step(loss, optimizer, **kwargs)
    return bench.run_steps(step, params, optimizer.init(params), batch, jax.random.key(0))


def test_adahessian_paths_agree_when_the_estimate_is_exact(bench, quadratic):
    loss, params, batch = quadratic
    one_pass = _run(bench, loss, params, batch, jaxsecond.adahessian(0.1), hessian="one_pass")
    obj_fn = _run(bench, loss, params, batch, jaxsecond.adahessian(0.1), hessian="obj_fn")
    assert_tree_allclose(one_pass[0], obj_fn[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(one_pass[2], obj_fn[2], rtol=1e-12)
    losses = np.asarray(one_pass[2])
    assert losses.shape == (bench.STEPS_PER_CALL,) and losses[-1] < 0.5 * losses[0]


def test_lazy_variants_agree(bench, quadratic):
    # Host dispatch, lax.cond and obj_fn with update_interval=10 must all refresh the
    # estimate at step 0 only and keep it in between: the same ten steps to rounding. A
    # step that folded the zeros passed between refreshes into the second moment would
    # differ from obj_fn, which passes nothing.
    loss, params, batch = quadratic
    runs = {
        name: _run(
            bench,
            loss,
            params,
            batch,
            jaxsecond.adahessian(0.1, update_interval=10),
            hessian=hessian,
            interval=10,
            dispatch=dispatch,
        )
        for name, hessian, dispatch in (
            ("host", "one_pass", "python"),
            ("cond", "one_pass", "cond"),
            ("obj_fn", "obj_fn", "python"),
        )
    }
    for name in ("cond", "obj_fn"):
        assert_tree_allclose(runs[name][0], runs["host"][0], rtol=1e-12, atol=1e-14)
    # Not vacuous: an optimizer that does fold those zeros in (update_interval=1 fed the
    # host-dispatched zeros) shrinks its second moment and takes other steps. (Estimating
    # every step would not do: here the diagonal is constant, and the bias-corrected
    # average of a constant is that constant.)
    folding = _run(
        bench,
        loss,
        params,
        batch,
        jaxsecond.adahessian(0.1),
        hessian="one_pass",
        interval=10,
    )
    assert not np.allclose(folding[0]["bias"], runs["host"][0]["bias"], rtol=1e-6)


def test_adam_contender_is_plain_optax(bench, quadratic):
    loss, params, batch = quadratic
    params_out, _, losses = _run(bench, loss, params, batch, optax.adam(1e-2))
    opt = optax.adam(1e-2)
    p, state = params, opt.init(params)
    for _ in range(bench.STEPS_PER_CALL):
        updates, state = opt.update(jax.grad(loss)(p, batch), state, p)
        p = optax.apply_updates(p, updates)
    assert_tree_allclose(params_out, p, rtol=1e-12, atol=1e-14)
    assert float(losses[0]) == pytest.approx(float(loss(params, batch)))


def test_training_step_rejects_unknown_modes(bench, quadratic):
    loss = quadratic[0]
    with pytest.raises(ValueError, match="hessian mode"):
        bench.training_step(loss, optax.adam(1e-2), hessian="sophia")
    with pytest.raises(ValueError, match="dispatch"):
        bench.training_step(loss, optax.adam(1e-2), dispatch="scan")


def test_interleaved_timings_shape(bench, quadratic):
    loss, params, batch = quadratic
    contenders = {
        name: (bench.training_step(loss, opt), opt.init(params))
        for name, opt in (("adam", optax.adam(1e-2)), ("sgd", optax.sgd(1e-2)))
    }
    t = bench.interleaved_timings(contenders, params, batch, jax.random.key(0), rounds=2, repeats=1)
    assert set(t) == {"adam", "sgd"}
    for compile_s, times in t.values():
        assert compile_s > 0 and times.shape == (2,) and np.all(times > 0)
    assert bench.ratio_cell([2.0, 4.0, 3.0], [1.0, 1.0, 1.0]) == "3.00 (2.00-4.00)"


def test_cnn_step_problem(bench):
    loss, params, (X, y) = bench.cnn_step_problem(8)
    assert X.shape == (8, 1, 8, 8) and y.shape == (8,)
    value = float(loss(params, (X, y)))
    assert abs(value - np.log(10)) < 0.2  # an untrained 10-class network


def test_accuracy_section(bench):
    text = bench._accuracy_section((0,), 1, names=("adahessian", "adam"))
    assert "### b. Accuracy at equal epochs" in text
    assert "| AdaHessian" in text and "| Adam" in text
    assert "1 seeds x 1 epochs (22 steps" in text
    assert "points above" in text or "points below" in text


def test_torch_section_skips_cleanly(bench, monkeypatch):
    monkeypatch.setattr(bench, "torch_available", lambda: False)
    text = bench._torch_section((0,), 1)
    assert text.startswith("### c.") and "Skipped" in text
