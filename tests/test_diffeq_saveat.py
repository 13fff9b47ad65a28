"""What a solve saves (SaveAt) and the Solution it returns: the final state, every
step, a function of the state, dense output evaluable at any time; against closed
forms, the plain solve, finite differences and every adjoint.

Runs under strict dtype promotion, like the other adaptive-solve tests.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxsecond as js


@pytest.fixture(autouse=True)
def _strict_promotion():
    with jax.numpy_dtype_promotion("strict"):
        yield


def _decay(t, y, k):
    return -k * y


def _rotation(t, y, w):
    return jnp.stack([-w * y[1], w * y[0]])


TS = np.array([0.0, 0.4, 1.0])
Y0 = jnp.array([1.0, 0.5])
ADAPTIVE = dict(rtol=1e-8, atol=1e-10)


def test_steps_fixed_are_the_fixed_grid():
    sol = js.odeint(_decay, Y0, TS, 2.0, dt0=0.1, saveat=js.SaveAt(steps=True))
    # Every interval gets the same number of equal steps, no longer than dt0: six
    # each, 13 rows with the initial state first.
    grid = np.concatenate([np.linspace(0, 0.4, 7), np.linspace(0.4, 1, 7)[1:]])
    np.testing.assert_allclose(sol.ts, grid, rtol=1e-14, atol=1e-15)
    assert int(sol.num_saved) == 13
    # RK4 with h <= 0.1 on y' = -2y: relative error (2h)^5 / 120 <= 2.7e-6 per step,
    # 12 steps.
    np.testing.assert_allclose(sol.ys, np.exp(-2 * grid)[:, None] * np.asarray(Y0), rtol=4e-5)
    plain = js.odeint(_decay, Y0, TS, 2.0, dt0=0.1)
    np.testing.assert_allclose(sol.ys[np.array([0, 6, 12])], plain, rtol=1e-14)


def test_steps_adaptive_match_the_statistics_and_the_outputs():
    sol, stats = js.odeint(
        _decay, Y0, TS, 2.0, saveat=js.SaveAt(steps=True), return_stats=True, **ADAPTIVE
    )
    n = int(stats["num_steps"])
    assert int(sol.num_saved) == n + 1
    ts = np.asarray(sol.ts)
    assert np.all(np.diff(ts[: n + 1]) > 0) and np.all(np.isinf(ts[n + 1 :]))
    assert np.all(np.isinf(np.asarray(sol.ys[n + 1 :])))
    # Every output time ends a step, so the outputs are among the rows.
    for t in TS:
        assert np.any(ts == t)
    np.testing.assert_allclose(
        sol.ys[: n + 1], np.exp(-2 * ts[: n + 1])[:, None] * np.asarray(Y0), rtol=1e-7
    )


ADJOINTS = [
    (None, js.StoreAll()),
    (None, js.Checkpointed(num_checkpoints=4)),
    (None, js.BacksolveAdjoint()),
    (js.Reversible(js.Dopri5(), coupling=1.0), js.ReversibleAdjoint()),
]


@pytest.mark.parametrize(("solver", "adjoint"), ADJOINTS, ids=lambda x: type(x).__name__)
def test_steps_gradients_through_every_adjoint(solver, adjoint):
    # A loss over every saved step: each row y_k = y0 exp(-k t_k) (to the tolerance),
    # so d/dk sum_k y_k = -sum_k t_k y_k on the accepted steps.
    def loss(k):
        sol = js.odeint(
            _decay,
            Y0,
            TS,
            k,
            solver=solver,
            adjoint=adjoint,
            saveat=js.SaveAt(steps=True),
            **ADAPTIVE,
        )
        ys = jnp.where(jnp.isfinite(sol.ys), sol.ys, 0.0)
        ts = jnp.where(jnp.isfinite(sol.ts), sol.ts, 0.0)
        return jnp.sum(ys), jnp.sum(-ts[:, None] * ys)

    grad = jax.jit(jax.grad(lambda k: loss(k)[0]))(2.0)
    # The tolerance bounds each row's error (1e-8 relative, summed over ~40 rows).
    np.testing.assert_allclose(grad, loss(2.0)[1], rtol=1e-6)


def test_fn_is_applied_to_the_saved_states():
    fn = lambda t, y, k: {"energy": jnp.sum(y**2), "scaled": t * y}
    sol = js.odeint(_rotation, Y0, TS, 1.5, saveat=js.SaveAt(fn=fn), **ADAPTIVE)
    plain = js.odeint(_rotation, Y0, TS, 1.5, **ADAPTIVE)
    np.testing.assert_allclose(sol.ys["energy"], jnp.sum(plain**2, axis=1), rtol=1e-14)
    np.testing.assert_allclose(sol.ys["scaled"], TS[:, None] * plain, rtol=1e-14)
    # The rotation keeps |y|^2 = 1.25 (to the tolerance).
    np.testing.assert_allclose(sol.ys["energy"], 1.25, rtol=1e-7)


@pytest.mark.parametrize("kw", [dict(dt0=0.05), ADAPTIVE], ids=["fixed", "adaptive"])
def test_t1_is_the_final_state(kw):
    sol = js.odeint(_rotation, Y0, TS, 1.5, saveat=js.SaveAt(t1=True), **kw)
    plain = js.odeint(_rotation, Y0, TS, 1.5, **kw)
    assert sol.ys.shape == (1, 2)
    np.testing.assert_allclose(sol.ts, [1.0])
    np.testing.assert_allclose(sol.y_final, sol.ys[0])
    # Adaptive: the same solve without the intermediate output time, so its own steps.
    np.testing.assert_allclose(sol.ys[0], plain[-1], rtol=1e-13 if "dt0" in kw else 1e-7)


def _exact_rotation(t, w=1.5):
    c, s = np.cos(w * t), np.sin(w * t)
    return np.stack([c * 1.0 - s * 0.5, s * 1.0 + c * 0.5], axis=-1)


def test_dense_dopri5_is_within_the_tolerance_everywhere():
    sol = js.odeint(_rotation, Y0, TS, 1.5, saveat=js.SaveAt(dense=True), rtol=1e-7, atol=1e-9)
    t = np.linspace(0.0, 1.0, 101)
    # The interpolant is fourth order; the global error is of the order of the
    # tolerance times the length of the solve.
    np.testing.assert_allclose(sol.evaluate(t), _exact_rotation(t), atol=2e-6)
    np.testing.assert_allclose(sol.evaluate(0.4), sol.ys[1], rtol=1e-13)


def test_dense_hermite_is_third_order():
    # RK4 (no interpolant of its own): cubic Hermite between step ends, local error
    # O(h^4), so the error at step midpoints falls like h^4 (RK4's own error too).
    hs = np.array([0.2, 0.1, 0.05])
    errors = []
    for h in hs:
        sol = js.odeint(_rotation, Y0, TS, 1.5, dt0=h, saveat=js.SaveAt(dense=True))
        t = np.arange(0.5 * h, 1.0, h)
        errors.append(np.max(np.abs(sol.evaluate(t) - _exact_rotation(t))))
    slope = np.polyfit(np.log(hs), np.log(errors), 1)[0]
    assert 3.6 < slope < 4.6, slope


@pytest.mark.integration  # heavy: in the second tier
def test_dense_derivatives_in_time_and_parameters():
    def at(t, w):
        sol = js.odeint(_rotation, Y0, TS, w, saveat=js.SaveAt(dense=True), rtol=1e-10, atol=1e-12)
        return sol.evaluate(t)

    at = jax.jit(at)
    t, w = jnp.asarray(0.7), jnp.asarray(1.5)
    # d/dt y(t) = f(t, y(t)): the interpolant's derivative matches the vector field to
    # the interpolation order (tolerance 1e-10 on y: ~1e-7 on its derivative).
    np.testing.assert_allclose(jax.jacfwd(at)(t, w), _rotation(t, at(t, w), w), atol=1e-7)
    # Against finite differences, orders 1 and 2 (forward over reverse).
    check_grads(at, (t, w), order=1, modes=("fwd", "rev"), eps=1e-5, atol=1e-6, rtol=1e-6)
    check_grads(
        jax.jit(jax.grad(lambda t, w: at(t, w)[0], argnums=(0, 1))),
        (t, w),
        order=1,
        modes=("fwd",),
        eps=1e-5,
        atol=1e-5,
        rtol=1e-5,
    )


def test_solution_leaves_jit_and_evaluates_under_vmap():
    solve = jax.jit(
        lambda k: js.odeint(_decay, jnp.array(1.0), TS, k, saveat=js.SaveAt(dense=True), **ADAPTIVE)
    )
    sol = solve(2.0)
    t = jnp.linspace(0.0, 1.0, 5)
    np.testing.assert_allclose(jax.vmap(sol.evaluate)(t), np.exp(-2 * t), rtol=1e-7)
    with pytest.raises(Exception, match="outside the solved interval"):
        jax.block_until_ready(sol.evaluate(1.5))


def test_dense_backwards_in_time():
    sol = js.odeint(
        _decay, jnp.array(1.0), np.array([1.0, 0.0]), 2.0, saveat=js.SaveAt(dense=True), **ADAPTIVE
    )
    # y(1) = 1, y' = -2y: y(t) = exp(2 (1 - t)).
    np.testing.assert_allclose(
        sol.evaluate(jnp.array([0.9, 0.25])), np.exp(2 * np.array([0.1, 0.75])), rtol=1e-7
    )


def test_saveat_keeps_float32(float32):
    y0 = jnp.array([1.0, 0.5], jnp.float32)
    sol = js.odeint(
        _rotation,
        y0,
        np.array([0.0, 1.0]),
        1.5,
        saveat=js.SaveAt(steps=True, dense=True),
        rtol=1e-5,
        atol=1e-6,
    )
    assert sol.ys.dtype == jnp.float32 and sol.ts.dtype == jnp.float32
    assert sol.evaluate(0.5).dtype == jnp.float32


def test_bad_saveat_is_refused():
    with pytest.raises(ValueError, match="t1=True or steps=True, not both"):
        js.SaveAt(t1=True, steps=True)
    with pytest.raises(TypeError, match="fn must be callable"):
        js.SaveAt(fn=3)
    with pytest.raises(TypeError, match=r"saveat must be a jaxsecond\.SaveAt"):
        js.odeint(_decay, Y0, TS, 2.0, dt0=0.1, saveat="steps")
    sol = js.odeint(_decay, Y0, TS, 2.0, dt0=0.1, saveat=js.SaveAt())
    with pytest.raises(ValueError, match=r"needs odeint.*SaveAt\(dense=True\)"):
        sol.evaluate(0.5)
