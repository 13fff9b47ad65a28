"""Adaptive solves, dense output, every adjoint on adaptive grids, dtypes, solving
backwards in time, and the reversible adjoint's run-time reconstruction check.

The whole module runs under strict dtype promotion (as diffrax's tests do): any
implicit promotion inside the solvers raises.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsecond as js
from jaxsecond.diffeq import ODETerm
from tests.helpers import assert_tree_allclose

# One worker runs the whole module: its module-scoped fixtures and cached references are
# computed once (pytest -n 2 --dist loadgroup).
pytestmark = pytest.mark.xdist_group("diffeq_adaptive")


@pytest.fixture(autouse=True)
def _strict_promotion():
    with jax.numpy_dtype_promotion("strict"):
        yield


def _decay(t, y, k):
    return -k * y


def _rotation(t, y, w):
    # y' = w J y: the exact flow rotates by angle w t.
    return jnp.stack([-w * y[1], w * y[0]])


def _rotation_exact(ts, w, y0):
    c, s = jnp.cos(w * ts), jnp.sin(w * ts)
    return jnp.stack([c * y0[0] - s * y0[1], s * y0[0] + c * y0[1]], axis=-1)


# ------------------------------------------------------------------- dense output


def test_dopri5_dense_output_is_fourth_order():
    # Interpolating inside one step of length h: error O(h^5) (fourth-order
    # interpolant), checked by the slope of log error against log h.
    solver, term = js.Dopri5(), ODETerm(_rotation)
    y0 = jnp.array([1.0, 0.0])
    hs = np.array([0.4, 0.2, 0.1, 0.05])
    errors = []
    for h in hs:
        state = solver.init(term, 0.0, y0, 1.0)
        y1, _, _, info = solver.dense_step(term, 0.0, h, y0, state, 1.0, h)
        # theta = 1 reproduces the step's end point.
        assert_tree_allclose(solver.interpolate(info, 1.0), y1, rtol=1e-14, atol=1e-15)
        value = solver.interpolate(info, 0.3)
        errors.append(float(jnp.max(jnp.abs(value - _rotation_exact(0.3 * h, 1.0, y0)))))
    slope = np.polyfit(np.log(hs), np.log(errors), 1)[0]
    assert 4.6 < slope < 5.4, slope


def test_adaptive_outputs_are_interpolated_to_the_tolerance():
    # Many output times inside few steps: outputs come from the interpolant, not from
    # extra steps, and stay within the tolerance of the exact solution.
    ts = jnp.linspace(0.0, 10.0, 201)
    y0 = jnp.array([1.0, 0.0])
    ys, stats = js.odeint(_rotation, y0, ts, 1.0, rtol=1e-8, atol=1e-8, return_stats=True)
    assert int(stats["num_steps"]) < 100  # fewer steps than output times
    # Global error of a 1e-8 local tolerance over 10 time units: ~1e-7.
    assert_tree_allclose(ys, _rotation_exact(ts, 1.0, y0), rtol=0, atol=1e-6)


# ------------------------------------------------------------------- cost


def test_adaptive_cost_follows_steps_taken_not_max_steps():
    # Count vector-field evaluations as they happen (a host callback in the loop); the
    # count must match the reported statistics and not depend on max_steps.
    calls = []

    def vf(t, y, k):
        jax.debug.callback(lambda: calls.append(1))
        return -k * y

    counts, stats = [], []
    for max_steps in (64, 16384):
        calls.clear()
        ys, st = js.odeint(
            vf,
            jnp.ones(3),
            jnp.linspace(0.0, 5.0, 6),
            0.7,
            rtol=1e-6,
            atol=1e-9,
            max_steps=max_steps,
            return_stats=True,
        )
        jax.block_until_ready(ys)
        jax.effects_barrier()
        counts.append(len(calls))
        stats.append({k: int(v) for k, v in st.items()})
    assert counts[0] == counts[1]
    assert stats[0] == stats[1]
    assert counts[0] == stats[0]["vector_field_evaluations"]
    assert counts[0] < 64 * 6


# ------------------------------------------------------------------- adjoints on adaptive grids

ADAPTIVE_ADJOINTS = {
    "StoreAll": (js.StoreAll(), js.Dopri5()),
    "Checkpointed": (js.Checkpointed(4), js.Dopri5()),
    "ReversibleAdjoint": (js.ReversibleAdjoint(), js.Reversible(js.Dopri5())),
    "ReversibleAdjoint(checkpoints=4)": (
        js.ReversibleAdjoint(checkpoints=4),
        js.Reversible(js.Dopri5()),
    ),
    "BacksolveAdjoint": (js.BacksolveAdjoint(), js.Dopri5()),
}


def _rotation_loss(adjoint, solver, ts):
    y0 = jnp.array([1.0, 0.5])

    def loss(w, y0=y0):
        ys = js.odeint(_rotation, y0, ts, w, solver=solver, adjoint=adjoint, rtol=1e-9, atol=1e-9)
        return jnp.sum(jnp.sin(ys))

    def exact(w, y0=y0):
        return jnp.sum(jnp.sin(_rotation_exact(ts, w, y0)))

    return loss, exact


@pytest.mark.integration  # heavy: in the second tier
@pytest.mark.parametrize(
    "name",
    # The checkpointed variants reproduce their base adjoint's gradient to round-off
    # (test_exact_adjoints_agree_to_round_off_on_the_same_adaptive_grid); against the
    # closed form they run with the slow tests.
    [
        pytest.param(n, marks=pytest.mark.slow) if "heckpoint" in n else n
        for n in ADAPTIVE_ADJOINTS
    ],
)
def test_adaptive_adjoints_match_the_closed_form(name):
    # Forward and reverse mode, and a Hessian-vector product (forward over reverse),
    # against the derivatives of the exact solution. Tolerance: the solve is accurate
    # to ~1e-8 (rtol 1e-9 over several periods), derivatives likewise.
    adjoint, solver = ADAPTIVE_ADJOINTS[name]
    ts = jnp.linspace(0.0, 6.0, 7)
    loss, exact = _rotation_loss(adjoint, solver, ts)
    w, y0 = jnp.asarray(1.3), jnp.array([1.0, 0.5])

    def derivatives(w, y0):
        # All four in one compiled program (eager, each would compile its own loops).
        grad = jax.grad(loss)(w, y0)
        tangent = jax.jvp(lambda w: loss(w, y0), (w,), (jnp.asarray(1.0),))[1]
        hvp = jax.jvp(jax.grad(lambda w: loss(w, y0)), (w,), (jnp.asarray(1.0),))[1]
        # With respect to the initial state as well.
        g_y0 = jax.grad(lambda y0: loss(w, y0))(y0)
        return grad, tangent, hvp, g_y0

    grad, tangent, hvp, g_y0 = jax.jit(derivatives)(w, y0)
    assert_tree_allclose(grad, jax.grad(exact)(w), rtol=1e-6, atol=1e-7)
    assert_tree_allclose(tangent, jax.grad(exact)(w), rtol=1e-6, atol=1e-7)
    assert_tree_allclose(hvp, jax.hessian(exact)(w), rtol=1e-5, atol=1e-6)
    assert_tree_allclose(
        g_y0, jax.grad(lambda y0: exact(w, y0))(jnp.array([1.0, 0.5])), rtol=1e-6, atol=1e-7
    )


@pytest.mark.integration  # heavy: in the second tier
def test_exact_adjoints_agree_to_round_off_on_the_same_adaptive_grid():
    # StoreAll, Checkpointed and forward mode differentiate the same accepted steps (and
    # the same interpolated outputs), so they agree to round-off, far closer than to the
    # closed form.
    ts = jnp.linspace(0.0, 6.0, 13)
    w = jnp.asarray(1.3)
    grads = {}
    for name in ("StoreAll", "Checkpointed"):
        adjoint, solver = ADAPTIVE_ADJOINTS[name]
        grads[name] = jax.grad(_rotation_loss(adjoint, solver, ts)[0])(w)
    loss = _rotation_loss(js.StoreAll(), js.Dopri5(), ts)[0]
    grads["jvp"] = jax.jvp(loss, (w,), (jnp.asarray(1.0),))[1]
    for name in ("Checkpointed", "jvp"):
        assert_tree_allclose(grads[name], grads["StoreAll"], rtol=1e-12, atol=1e-13)


@pytest.mark.integration  # heavy: in the second tier
def test_recursive_checkpointing_is_exact_and_holds_fewer_states():
    # Checkpointed(k, levels) recomputes the same accepted steps as StoreAll, so the
    # gradient and a Hessian-vector product agree to round-off (1e-12, against a
    # closed-form error of ~1e-8). k = 2 with three levels leaves segments of a step or
    # two: every sub-segment boundary is exercised.
    ts = jnp.linspace(0.0, 6.0, 7)
    w = jnp.asarray(1.3)

    def derivatives(adjoint):
        loss = _rotation_loss(adjoint, js.Dopri5(), ts)[0]
        one = jnp.asarray(1.0)
        return jax.jit(lambda w: (jax.grad(loss)(w), jax.jvp(jax.grad(loss), (w,), (one,))[1]))(w)

    ours = derivatives(js.Checkpointed(2, levels=3))
    assert_tree_allclose(ours, derivatives(js.StoreAll()), rtol=1e-12, atol=1e-13)

    # Memory: a state of 32 x 32 and 1,024 step slots. One level buffers a segment of up
    # to ~2 max_steps / k states; each further level divides it by about k / 2 for k
    # more checkpoints (measured with k = 8: 4.7 MB at one level, 1.0 MB at three).
    W = 0.3 * jax.random.normal(jax.random.key(0), (32, 32)) / 8
    vf = lambda t, y, W: jnp.tanh(y @ W)

    def temp_bytes(adjoint):
        loss = lambda W: jnp.sum(
            js.odeint(
                vf,
                jnp.ones((32, 32)),
                jnp.array([0.0, 1.0]),
                W,
                solver=js.Dopri5(),
                adjoint=adjoint,
                rtol=1e-6,
                atol=1e-6,
                max_steps=1024,
            )[-1]
        )
        analysis = jax.jit(jax.grad(loss)).lower(W).compile().memory_analysis()
        if analysis is None:
            pytest.skip("no compiled memory analysis on this backend")
        return analysis.temp_size_in_bytes

    one_level, three = temp_bytes(js.Checkpointed(8)), temp_bytes(js.Checkpointed(8, levels=3))
    print(f"Checkpointed(8) temp bytes: levels 1 {one_level}, levels 3 {three}")
    # One level: ~256 segment states of 8 KiB (Dopri5 carries y and its last stage);
    # three: 3 x 8 checkpoints and a segment of ~8 (~0.5 MB) plus what both hold.
    assert three < 0.5 * one_level


@pytest.mark.integration  # heavy: in the second tier
def test_adaptive_reversible_adjoint_equals_store_all_of_the_same_solver():
    ts = jnp.linspace(0.0, 3.0, 4)
    ref = jax.grad(_rotation_loss(js.StoreAll(), js.Reversible(js.Dopri5()), ts)[0])(1.3)
    ours = jax.grad(_rotation_loss(js.ReversibleAdjoint(), js.Reversible(js.Dopri5()), ts)[0])(1.3)
    # Same discretisation, states reconstructed to round-off: 1e-9 relative.
    assert_tree_allclose(ours, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", list(ADAPTIVE_ADJOINTS))
def test_python_scalar_args_under_grad(name):
    adjoint, solver = ADAPTIVE_ADJOINTS[name]

    def loss(k):
        return js.odeint(
            _decay,
            jnp.array([1.0]),
            jnp.array([0.0, 1.0]),
            k,
            solver=solver,
            adjoint=adjoint,
            rtol=1e-9,
            atol=1e-9,
        )[-1, 0]

    # d/dk exp(-k) = -exp(-k), with k a Python float.
    assert_tree_allclose(jax.grad(loss)(0.5), -np.exp(-0.5), rtol=1e-6)


# ------------------------------------------------------------------- backwards in time


@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed", "adaptive"])
@pytest.mark.parametrize("name", list(ADAPTIVE_ADJOINTS))
def test_backwards_in_time(name, adaptive):
    # y' = -k y from t = 2 down to 0: y(t) = y(2) exp(k (2 - t)).
    adjoint, solver = ADAPTIVE_ADJOINTS[name]
    ts = jnp.array([2.0, 1.5, 0.0])
    steps = {"rtol": 1e-10, "atol": 1e-10} if adaptive else {"dt0": 0.01}

    def loss(k, y2):
        ys = js.odeint(_decay, y2, ts, k, solver=solver, adjoint=adjoint, **steps)
        return jnp.sum(ys[1:] ** 2)

    def exact(k, y2):
        return jnp.sum((y2 * jnp.exp(k * (2.0 - ts[1:]))) ** 2)

    k, y2 = jnp.asarray(0.4), jnp.asarray(0.7)
    # Fixed steps: h = 0.01 with 4th/5th-order methods, error ~1e-9.
    assert_tree_allclose(loss(k, y2), exact(k, y2), rtol=1e-7)
    assert_tree_allclose(
        jax.grad(loss, argnums=(0, 1))(k, y2),
        jax.grad(exact, argnums=(0, 1))(k, y2),
        rtol=1e-6,
    )


def test_traced_ts_must_be_monotonic():
    solve = jax.jit(lambda ts: js.odeint(_decay, jnp.ones(1), ts, 1.0, rtol=1e-6, atol=1e-6))
    assert_tree_allclose(
        solve(jnp.array([1.0, 0.5]))[-1, 0], np.exp(0.5), rtol=1e-5
    )  # decreasing: backwards
    with pytest.raises(Exception, match="strictly increasing or strictly decreasing"):
        jax.block_until_ready(solve(jnp.array([0.0, 1.0, 0.5])))


# ------------------------------------------------------------------- dtypes


def test_complex_state_adaptive():
    # y' = -i w y: y = exp(-i w t); and its derivative in w through the solve.
    ts = jnp.linspace(0.0, 10.0, 5)

    def solve(w):
        return js.odeint(
            lambda t, y, w: jax.lax.complex(jnp.zeros_like(w), -w) * y,
            jnp.array([1.0 + 0j]),
            ts,
            w,
            rtol=1e-9,
            atol=1e-9,
        )[:, 0]

    exact = jax.lax.complex(jnp.cos(ts), -jnp.sin(ts))
    assert_tree_allclose(solve(1.0), exact, rtol=0, atol=1e-7)
    # d/dw Re exp(-i w 10) = -10 sin(10 w).
    g = jax.grad(lambda w: jnp.real(solve(w)[-1]))(1.0)
    assert_tree_allclose(g, -10.0 * np.sin(10.0), rtol=1e-6)


@pytest.mark.parametrize(
    "solver,adjoint,steps",
    [
        (js.RK4(), js.StoreAll(), {"dt0": 0.1}),
        (js.Dopri5(), js.StoreAll(), {"rtol": 1e-4, "atol": 1e-4}),
        (js.Dopri5(), js.Checkpointed(2), {"rtol": 1e-4, "atol": 1e-4}),
        (js.ReversibleHeun(), js.ReversibleAdjoint(), {"dt0": 0.1}),
        (js.Reversible(js.Dopri5()), js.ReversibleAdjoint(), {"rtol": 1e-4, "atol": 1e-4}),
        (js.Dopri5(), js.BacksolveAdjoint(), {"rtol": 1e-4, "atol": 1e-4}),
    ],
    ids=str,
)
@pytest.mark.parametrize("ts_dtype", [jnp.float64, jnp.int32])
def test_float32_state_keeps_its_dtype_whatever_the_times(solver, adjoint, steps, ts_dtype):
    y0 = jnp.array([1.0, 2.0], jnp.float32)
    ts = jnp.array([0, 1, 2], ts_dtype)
    k = jnp.asarray(0.5, jnp.float32)

    def loss(k):
        ys = js.odeint(_decay, y0, ts, k, solver=solver, adjoint=adjoint, **steps)
        assert ys.dtype == jnp.float32
        return jnp.sum(ys)

    g = jax.grad(loss)(k)
    assert g.dtype == jnp.float32
    # d/dk sum_i y0 (1 + e^-k + e^-2k) = -sum(y0) (e^-k + 2 e^-2k); float32 and the
    # solver tolerance 1e-4: 1e-3.
    expected = -3.0 * (np.exp(-0.5) + 2 * np.exp(-1.0))
    assert_tree_allclose(g, expected, rtol=1e-3)


def test_half_precision_state_is_refused_clearly():
    with pytest.raises(TypeError, match="half precision"):
        js.odeint(_decay, jnp.ones(2, jnp.float16), jnp.array([0.0, 1.0]), 1.0, dt0=0.1)


def test_traced_dt0():
    # Adaptive: a traced dt0 is the first step. Fixed: the error names dt0.
    adaptive = jax.jit(
        lambda dt0: js.odeint(
            _decay, jnp.ones(1), jnp.array([0.0, 1.0]), 1.0, dt0=dt0, rtol=1e-8, atol=1e-8
        )
    )
    assert_tree_allclose(adaptive(0.01)[-1, 0], np.exp(-1.0), rtol=1e-7)
    fixed = jax.jit(lambda dt0: js.odeint(_decay, jnp.ones(1), jnp.array([0.0, 1.0]), 1.0, dt0=dt0))
    with pytest.raises(ValueError, match="dt0 is traced"):
        fixed(0.01)


def test_pid_controller_validation():
    with pytest.raises(ValueError, match="rtol"):
        js.PIDController(rtol=-1.0, atol=1e-6)
    with pytest.raises(ValueError, match="rtol"):
        js.PIDController(rtol=0.0, atol=0.0)
    with pytest.raises(ValueError, match="rtol/atol or stepsize_controller"):
        js.odeint(
            _decay,
            jnp.ones(1),
            jnp.array([0.0, 1.0]),
            1.0,
            rtol=1e-6,
            stepsize_controller=js.PIDController(1e-6, 1e-6),
        )
    # A controller with the usual gains gives the same steps as rtol/atol.
    _, a = js.odeint(
        _decay, jnp.ones(1), jnp.array([0.0, 3.0]), 1.0, rtol=1e-6, atol=1e-8, return_stats=True
    )
    _, b = js.odeint(
        _decay,
        jnp.ones(1),
        jnp.array([0.0, 3.0]),
        1.0,
        stepsize_controller=js.PIDController(rtol=1e-6, atol=1e-8),
        return_stats=True,
    )
    assert int(a["num_steps"]) == int(b["num_steps"])


# ------------------------------------------------------------------- reversible: right or raise


def _lotka_volterra(t, y, p):
    return jnp.stack([p[0] * y[0] - p[1] * y[0] * y[1], p[1] * y[0] * y[1] - p[2] * y[1]])


def _lv_gradient(solver, adjoint):
    y0 = jnp.ones(2)
    ts = jnp.linspace(0.0, 10.0, 11)

    def loss(p):
        ys = js.odeint(
            _lotka_volterra, y0.astype(p.dtype), ts, p, solver=solver, adjoint=adjoint, dt0=0.01
        )
        return jnp.sum(ys[-1])

    return jax.jit(jax.grad(loss))  # one compilation (eager: one per loop run)


@pytest.mark.integration  # heavy: in the second tier
def test_float32_reversible_gradient_is_right_or_raises(float32):
    # The case of the issue: float32 Lotka-Volterra, where plain reconstruction drifts
    # by ~0.1 and the gradient would be off by a factor ~100.
    p = jnp.array([1.5, 1.0, 3.0])
    solver = js.Reversible(js.RK4())
    ref = _lv_gradient(solver, js.StoreAll())(p)
    with pytest.raises(Exception, match="drifted from the forward states"):
        jax.block_until_ready(_lv_gradient(solver, js.ReversibleAdjoint())(p))
    # 32 checkpoints measured 0.5-1.1% from StoreAll across runs, 128 about 0.1%.
    ours = _lv_gradient(solver, js.ReversibleAdjoint(checkpoints=128))(p)
    assert ours.dtype == jnp.float32
    # Float32 StoreAll itself is 6% off the float64 gradient here (benchmarks, table
    # f); the requirement is 1e-2 relative to it.
    rel = float(jnp.max(jnp.abs(ours - ref)) / jnp.max(jnp.abs(ref)))
    assert rel < 1e-2, rel


def _lorenz(t, y, p):
    return jnp.stack([p[0] * (y[1] - y[0]), y[0] * (p[1] - y[2]) - y[1], y[0] * y[1] - p[2] * y[2]])


_LORENZ_P = jnp.array([10.0, 28.0, 8.0 / 3.0])
_LORENZ_TS = jnp.linspace(0.0, 1.0, 5)


def _lorenz_loss(adjoint):
    def loss(p):
        ys = js.odeint(
            _lorenz,
            jnp.ones(3),
            _LORENZ_TS,
            p,
            solver=js.ReversibleHeun(),
            adjoint=adjoint,
            dt0=1e-3,
        )
        return jnp.sum(ys[-1] ** 2)

    return loss


@functools.cache
def _lorenz_store_all_gradient():
    # The same reference for every checkpoint count: computed once.
    return jax.jit(jax.grad(_lorenz_loss(js.StoreAll())))(_LORENZ_P)


@pytest.mark.parametrize("checkpoints", [None, 8, 16, 64])
def test_reconstruction_error_bounds_the_gradient_error(checkpoints):
    # float64 Lorenz with reversible Heun: the reported reconstruction error (drift of
    # the reconstructed states) bounds the gradient's error against StoreAll of the
    # same solver, here within a factor 10 (measured ratio <= 7) plus the round-off
    # floor of the chaotic gradient itself (~1e-10).
    p, ts, solver = _LORENZ_P, _LORENZ_TS, js.ReversibleHeun()
    adjoint = js.ReversibleAdjoint(checkpoints=checkpoints, max_reconstruction_error=1.0)

    ref = _lorenz_store_all_gradient()
    ours = jax.jit(jax.grad(_lorenz_loss(adjoint)))(p)
    _, stats = jax.jit(
        lambda p: js.odeint(
            _lorenz, jnp.ones(3), ts, p, solver=solver, adjoint=adjoint, dt0=1e-3, return_stats=True
        )
    )(p)
    drift = float(stats["reconstruction_error"])
    rel = float(jnp.max(jnp.abs(ours - ref)) / jnp.max(jnp.abs(ref)))
    assert rel <= 10 * drift + 1e-9, (rel, drift)


def test_reversible_dopri5_on_a_dissipative_problem_is_reported():
    # y' = -y over [0, 20]: the coupled scheme's parasitic mode grows at the steps
    # Dopri5 alone would take (it used to return 0.62 instead of 2e-9, silently). The
    # step control now sees it (the drift between the two sequences counts in the
    # error estimate), shortens the steps, and the step budget runs out with an error.
    vf = lambda t, y, _: -y
    span = jnp.array([0.0, 20.0])
    solver = js.Reversible(js.Dopri5())
    with pytest.raises(Exception, match="max_steps=4096"):
        jax.block_until_ready(js.odeint(vf, jnp.ones(1), span, solver=solver, rtol=1e-6, atol=1e-9))
    # Over a shorter span the same solve is right.
    ys = js.odeint(vf, jnp.ones(1), jnp.array([0.0, 2.0]), solver=solver, rtol=1e-6, atol=1e-9)
    assert abs(float(ys[-1, 0]) - np.exp(-2.0)) < 1e-5


# ------------------------------------------------------------------- progress meter


@pytest.mark.integration  # heavy: in the second tier
@pytest.mark.parametrize("steps", [{"dt0": 0.01}, {"rtol": 1e-6, "atol": 1e-6}], ids=str)
def test_progress_meter_reaches_the_end_and_changes_nothing(steps):
    from jaxsecond.diffeq import _progress

    before = set(_progress._bars)
    ts = np.linspace(0.0, 5.0, 6)

    def solve(k, progress_meter):
        return js.odeint(_decay, jnp.ones(2), ts, k, progress_meter=progress_meter, **steps)

    with_meter = jax.jit(lambda k: solve(k, True))
    ys = with_meter(1.0)
    with_meter(2.0)  # a second call opens a second bar
    g = jax.grad(lambda k: solve(k, True)[-1, 0])(1.0)
    jax.effects_barrier()
    assert_tree_allclose(ys, solve(1.0, False), rtol=0, atol=0)
    assert_tree_allclose(g, jax.grad(lambda k: solve(k, False)[-1, 0])(1.0), rtol=0, atol=0)
    new = [bar for number, bar in _progress._bars.items() if number not in before]
    # One bar per call site (the jitted one: the second call replaces the first, closed).
    assert len(new) == 2
    for bar in new:
        assert bar.n == bar.total and bar.disable  # full, and closed
    with pytest.raises(TypeError, match="progress_meter"):
        solve(1.0, "yes")


@pytest.mark.integration  # heavy: in the second tier
@pytest.mark.parametrize(
    "name",
    # The check sits on the loop's outputs whatever the adjoint: one stored and one
    # reconstructing adjoint in CI, the checkpointed variants with the slow tests.
    [
        pytest.param(n, marks=pytest.mark.slow) if "heckpoint" in n else n
        for n in ADAPTIVE_ADJOINTS
    ],
)
def test_running_out_of_steps_raises_under_jit_and_grad(name):
    # The check sits on every output of the loop, so jit keeps it whether the outputs,
    # or only the step times a reverse pass walks, are used.
    adjoint, solver = ADAPTIVE_ADJOINTS[name]
    p, y0, ts = jnp.array([1.5, 1.0, 3.0]), jnp.ones(2), jnp.linspace(0.0, 10.0, 11)

    def solve(p):
        return js.odeint(
            _lotka_volterra,
            y0,
            ts,
            p,
            solver=solver,
            adjoint=adjoint,
            rtol=1e-6,
            atol=1e-6,
            max_steps=20,
        )

    with pytest.raises(Exception, match="max_steps=20"):
        jax.block_until_ready(jax.jit(solve)(p))
    with pytest.raises(Exception, match="max_steps=20"):
        jax.block_until_ready(jax.jit(jax.grad(lambda p: jnp.sum(solve(p))))(p))
