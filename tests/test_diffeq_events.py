"""Events: the solve stops where a condition crosses zero; the event time is located by
root finding and differentiated implicitly, through every adjoint, fixed and adaptive
steps, to second order, under jit and vmap.

Runs under strict dtype promotion, like the other adaptive-solve tests.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxsecond as js

ADJOINTS = {
    "StoreAll": (None, js.StoreAll()),
    "Checkpointed": (None, js.Checkpointed(num_checkpoints=2)),
    "Backsolve": (None, js.BacksolveAdjoint()),
    "Reversible": ("reversible", js.ReversibleAdjoint()),
}
STEPS = {"fixed": dict(dt0=0.01), "adaptive": dict(rtol=1e-9, atol=1e-9)}


@pytest.fixture(autouse=True)
def _strict_promotion():
    with jax.numpy_dtype_promotion("strict"):
        yield


def _fall(t, y, g):
    return jnp.stack([y[1], -g])


GROUND = js.Event(lambda t, y, g: y[0])
TS = np.array([0.0, 0.25, 2.0])


def _solver(kind, steps):
    if kind is None:
        return None
    return js.Reversible(js.RK4() if steps == "fixed" else js.Dopri5())


CASES = [("adaptive", name) for name in ADJOINTS] + [
    ("fixed", "StoreAll"),
    ("fixed", "Reversible"),
    pytest.param("fixed", "Checkpointed", marks=pytest.mark.slow),
    pytest.param("fixed", "Backsolve", marks=pytest.mark.slow),
]


@pytest.mark.integration  # heavy: in the second tier
@pytest.mark.parametrize(("steps", "adjoint_name"), CASES)
def test_landing_time_and_its_derivatives_match_the_closed_form(steps, adjoint_name):
    # A ball dropped from height 1 lands at t = sqrt(2 / g): dt/dg = -t / (2 g),
    # d2t/dg2 = 3 t / (4 g^2). The trajectory is quadratic, so every solver is exact
    # and the only error is round-off.
    kind, adjoint = ADJOINTS[adjoint_name]

    def landing(g):
        sol = js.odeint(
            _fall,
            jnp.array([1.0, 0.0]),
            TS,
            g,
            solver=_solver(kind, steps),
            adjoint=adjoint,
            event=GROUND,
            **STEPS[steps],
        )
        return sol.t_final

    g = jnp.asarray(9.81)
    t = np.sqrt(2 / 9.81)
    value, grad = jax.jit(jax.value_and_grad(landing))(g)
    np.testing.assert_allclose(value, t, rtol=1e-12)
    np.testing.assert_allclose(grad, -t / (2 * 9.81), rtol=1e-9)
    if adjoint_name in ("StoreAll", "Reversible"):  # the others: the same event code
        # Forward over reverse.
        hessian = jax.jit(jax.hessian(landing))(g)
        np.testing.assert_allclose(hessian, 3 * t / (4 * 9.81**2), rtol=1e-7)


@pytest.mark.parametrize("steps", list(STEPS))
def test_event_state_outputs_and_flags(steps):
    sol = js.odeint(_fall, jnp.array([1.0, 0.0]), TS, 9.81, event=GROUND, **STEPS[steps])
    t = np.sqrt(2 / 9.81)
    assert bool(sol.event_happened)
    # At the event the height is zero and the velocity -g t.
    np.testing.assert_allclose(sol.y_final, [0.0, -9.81 * t], atol=1e-12)
    plain = js.odeint(_fall, jnp.array([1.0, 0.0]), TS[:2], 9.81, **STEPS[steps])
    # Outputs before the event are those of the plain solve; after it, inf.
    np.testing.assert_allclose(sol.ys[:2], plain, rtol=1e-12)
    assert np.all(np.isinf(np.asarray(sol.ys[2])))
    assert int(sol.num_saved) == 2


def _oscillator(t, y, w):
    return jnp.stack([y[1], -(w**2) * y[0]])


# The closed-form test above checks the event time's first and second derivatives for
# every adjoint; this finite-difference check of both orders runs with the slow tests.
@pytest.mark.slow
@pytest.mark.parametrize("steps", ["adaptive", "fixed"])
def test_event_time_finite_differences_orders_1_and_2(steps):
    # y = cos(w t) first reaches the level c at t = arccos(c) / w. Derivatives w.r.t.
    # the vector field's parameter, the initial state and a parameter closed over by
    # the condition, checked against finite differences of the discrete solve.
    def event_time(w, y0, c):
        event = js.Event(lambda t, y, args: y[0] - c)
        sol = js.odeint(
            _oscillator,
            y0,
            np.array([0.0, 3.0]),
            w,
            event=event,
            solver=js.Dopri5(),
            **STEPS[steps],
        )
        return sol.t_final

    event_time = jax.jit(event_time)
    w, y0, c = jnp.asarray(1.3), jnp.array([1.0, 0.0]), jnp.asarray(0.3)
    np.testing.assert_allclose(event_time(w, y0, c), np.arccos(c) / w, rtol=1e-8)
    # Forward and reverse to first order, forward-over-forward and forward-over-reverse
    # to second; finite-difference step 1e-4 with float64 round-off of the solve
    # (~1e-13) keeps the second-order check at ~1e-5.
    args = (w, y0, c)
    check_grads(event_time, args, order=1, modes=("fwd", "rev"), eps=1e-4, atol=1e-5, rtol=1e-5)
    check_grads(event_time, args, order=2, modes=("fwd",), eps=1e-4, atol=1e-4, rtol=1e-4)
    check_grads(
        jax.jit(jax.grad(event_time, argnums=(0, 1, 2))),
        args,
        order=1,
        modes=("fwd",),
        eps=1e-4,
        atol=1e-4,
        rtol=1e-4,
    )


def test_direction_selects_the_crossing():
    # sin(t) crosses zero downwards at pi and upwards at 2 pi.
    wave = lambda t, y, a: jnp.stack([y[1], -y[0]])
    y0 = jnp.array([0.0, 1.0])
    ts = np.array([0.0, 7.0])
    kw = dict(rtol=1e-10, atol=1e-10)
    down = js.odeint(wave, y0, ts, event=js.Event(lambda t, y, a: y[0], direction=-1), **kw)
    up = js.odeint(wave, y0, ts, event=js.Event(lambda t, y, a: y[0], direction=1), **kw)
    both = js.odeint(wave, y0, ts, event=js.Event(lambda t, y, a: y[0]), **kw)
    np.testing.assert_allclose(
        [down.t_final, up.t_final, both.t_final], [np.pi, 2 * np.pi, np.pi], rtol=1e-8
    )


@pytest.mark.integration  # heavy: in the second tier
def test_no_event_ends_at_the_last_time_and_vmap_mixes_both():
    def landing(g):
        sol = js.odeint(
            _fall, jnp.array([1.0, 0.0]), np.array([0.0, 1.0]), g, dt0=0.01, event=GROUND
        )
        return sol.t_final, sol.y_final, sol.event_happened

    # g = 9.81 lands at 0.4515; g = 1 would land at 1.414, after the end of the solve.
    t, y, hit = jax.jit(jax.vmap(landing))(jnp.array([9.81, 1.0]))
    np.testing.assert_allclose(t, [np.sqrt(2 / 9.81), 1.0], rtol=1e-12)
    assert list(np.asarray(hit)) == [True, False]
    np.testing.assert_allclose(y[1], [0.5, -1.0], rtol=1e-12)
    # Without an event the final time does not move with g; the final state does.
    dt = jax.vmap(jax.grad(lambda g: landing(g)[0]))(jnp.array([9.81, 1.0]))
    dv = jax.vmap(jax.grad(lambda g: landing(g)[1][1]))(jnp.array([9.81, 1.0]))
    t_hit = np.sqrt(2 / 9.81)
    np.testing.assert_allclose(dt, [-t_hit / (2 * 9.81), 0.0], atol=1e-12)
    # v(t_e) = -g t_e = -sqrt(2 g): dv/dg = -1 / sqrt(2 g); without event v = -g.
    np.testing.assert_allclose(dv, [-1 / np.sqrt(2 * 9.81), -1.0], rtol=1e-9)


def test_event_backwards_in_time():
    # Integrating y' = 1 backwards from y(2) = 2: y(t) = t reaches 0.5 at t = 0.5.
    sol = js.odeint(
        lambda t, y, a: jnp.ones_like(y),
        jnp.array(2.0),
        np.array([2.0, 0.0]),
        dt0=0.1,
        event=js.Event(lambda t, y, a: y - 0.5),
    )
    np.testing.assert_allclose(sol.t_final, 0.5, rtol=1e-12)
    np.testing.assert_allclose(sol.y_final, 0.5, rtol=1e-12)


@pytest.mark.integration  # heavy: in the second tier
def test_event_keeps_float32(float32):
    def landing(g):
        y0 = jnp.array([1.0, 0.0], jnp.float32)
        return js.odeint(_fall, y0, np.array([0.0, 1.0]), g, rtol=1e-5, atol=1e-5, event=GROUND)

    sol = landing(jnp.float32(9.81))
    assert sol.t_final.dtype == jnp.float32 and sol.y_final.dtype == jnp.float32
    grad = jax.grad(lambda g: landing(g).t_final)(jnp.float32(9.81))
    assert grad.dtype == jnp.float32
    # float32 round-off on a quantity of size 0.02: relative 1e-5.
    np.testing.assert_allclose(grad, -np.sqrt(2 / 9.81) / (2 * 9.81), rtol=1e-4)


def test_bad_events_are_refused_at_trace_time():
    y0 = jnp.array([1.0, 0.0])
    with pytest.raises(ValueError, match=r"Event.condition .* must return a scalar"):
        js.odeint(_fall, y0, TS, 9.81, dt0=0.1, event=js.Event(lambda t, y, g: y))
    with pytest.raises(ValueError, match="direction must be None, 1 or -1"):
        js.Event(lambda t, y, g: y[0], direction=2)
    with pytest.raises(TypeError, match="condition must be callable"):
        js.Event(1.0)
    with pytest.raises(TypeError, match=r"event must be a jaxsecond\.Event"):
        js.odeint(_fall, y0, TS, 9.81, dt0=0.1, event=lambda t, y, g: y[0])
