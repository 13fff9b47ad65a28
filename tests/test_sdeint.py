"""SDE solvers: strong order on one Brownian path per sample, exact reversible
gradients with regenerated increments, general noise, bad input."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsecond as js
from tests.helpers import assert_tree_allclose

MU, SIGMA, T = 0.5, 0.8, 1.0

# Geometric Brownian motion dy = mu y dt + sigma y dW has a closed form on every path:
# exp((mu - sigma^2/2) t + sigma W_t) for Ito, exp(mu t + sigma W_t) for Stratonovich.
# With scalar (so commutative) noise, Heun-type methods reach strong order 1.
STRONG = {
    "EulerMaruyama": (js.EulerMaruyama(), True, 0.5),
    "Heun": (js.Heun(), False, 1.0),
    "ReversibleHeun": (js.ReversibleHeun(), False, 1.0),
    "Reversible(Heun)": (js.Reversible(js.Heun()), False, 1.0),
}


def _strong_error(solver, ito, steps, keys):
    def one(key):
        # A virtual Brownian tree gives the same path whatever the step size.
        path = diffrax.VirtualBrownianTree(0.0, T, tol=2**-12, shape=(), key=key)
        ys = js.sdeint(
            lambda t, y, _: MU * y,
            lambda t, y, _: SIGMA * y,
            jnp.array(1.0),
            jnp.array([0.0, T]),
            key=key,
            solver=solver,
            steps_per_interval=steps,
            brownian=path,
        )
        w = path.evaluate(0.0, T)
        exact = jnp.exp((MU - 0.5 * SIGMA**2 * ito) * T + SIGMA * w)
        return jnp.abs(ys[-1] - exact)

    return float(jnp.mean(jax.vmap(one)(keys)))


@pytest.mark.integration  # heavy: in the second tier
@pytest.mark.parametrize(
    "name",
    # Euler-Maruyama (order 1/2) in CI; the order-1 Stratonovich schemes (Heun,
    # reversible Heun, the reversible wrapper) with the slow tests.
    [pytest.param(n, marks=pytest.mark.slow) if "Heun" in n else n for n in STRONG],
)
def test_strong_order(name):
    solver, ito, order = STRONG[name]
    keys = jax.random.split(jax.random.key(0), 200)
    steps = np.array([16, 32, 64, 128])
    errors = [_strong_error(solver, ito, int(n), keys) for n in steps]
    slope = np.polyfit(np.log(T / steps), np.log(errors), 1)[0]
    # Mean over 200 paths; fit over a factor 8 in step size: within 0.3 of the order.
    assert abs(slope - order) <= 0.3, (name, slope, errors)


@pytest.mark.integration  # heavy: in the second tier
def test_reversible_adjoint_equals_store_all_for_a_neural_sde(getkey):
    k1, k2 = jax.random.split(getkey())
    params = {"W": 0.5 * jax.random.normal(k1, (3, 3)), "s": 0.2 * jax.random.normal(k2, (3,))}
    drift = lambda t, y, p: jnp.tanh(p["W"] @ y) - 0.2 * y
    diffusion = lambda t, y, p: p["s"] * jnp.cos(y)
    ts = jnp.linspace(0.0, 1.0, 4)
    key = getkey()

    def loss(p, adjoint):
        ys = js.sdeint(
            drift,
            diffusion,
            jnp.ones(3),
            ts,
            p,
            key=key,
            solver=js.ReversibleHeun(),
            adjoint=adjoint,
            dt0=0.01,
        )
        return jnp.sum(ys**2)

    # The backward pass regenerates each increment from fold_in(key, step): the same
    # discretisation and path as StoreAll, so gradients agree to round-off.
    assert_tree_allclose(
        jax.grad(loss)(params, js.ReversibleAdjoint()),
        jax.grad(loss)(params, js.StoreAll()),
        rtol=1e-10,
        atol=1e-13,
    )


def test_general_noise_is_exact_for_additive_noise(getkey):
    # dy = B dW with 3 Brownian motions driving 2 components: any consistent scheme
    # gives y_T = y0 + B W_T exactly.
    B = jax.random.normal(getkey(), (2, 3))
    key = getkey()
    path = diffrax.VirtualBrownianTree(0.0, 1.0, tol=2**-10, shape=(3,), key=key)
    ys = js.sdeint(
        lambda t, y, _: jnp.zeros_like(y),
        lambda t, y, _: B,
        jnp.array([1.0, -1.0]),
        jnp.array([0.0, 1.0]),
        key=key,
        dt0=0.05,
        brownian=path,
    )
    expected = jnp.array([1.0, -1.0]) + B @ path.evaluate(0.0, 1.0)
    np.testing.assert_allclose(ys[-1], expected, rtol=1e-12, atol=1e-12)


def test_default_increments_have_the_right_law(getkey):
    # Pure Brownian motion dy = dW with the built-in fold_in increments: y_1 ~ N(0, 1)
    # per component. 4000 samples: mean within 4 / sqrt(4000), variance within 10%.
    ys = js.sdeint(
        lambda t, y, _: jnp.zeros_like(y),
        lambda t, y, _: jnp.ones_like(y),
        jnp.zeros(4000),
        jnp.array([0.0, 1.0]),
        key=getkey(),
        dt0=0.1,
    )[-1]
    assert abs(float(ys.mean())) < 4 / np.sqrt(4000)
    assert float(ys.var()) == pytest.approx(1.0, rel=0.1)


def test_sde_bad_input(getkey):
    drift = lambda t, y, _: -y
    with pytest.raises(ValueError, match=r"diffusion .* must return"):
        js.sdeint(
            drift,
            lambda t, y, _: jnp.ones(5),
            jnp.ones(3),
            jnp.array([0.0, 1.0]),
            key=getkey(),
            dt0=0.1,
        )
    with pytest.raises(TypeError, match="single floating-point array"):
        js.sdeint(drift, drift, {"a": jnp.ones(2)}, jnp.array([0.0, 1.0]), key=getkey(), dt0=0.1)
    with pytest.raises(TypeError, match="key"):
        js.sdeint(drift, drift, jnp.ones(2), jnp.array([0.0, 1.0]), key=0, dt0=0.1)
    with pytest.raises(ValueError, match="reversible solver"):
        js.sdeint(
            drift,
            drift,
            jnp.ones(2),
            jnp.array([0.0, 1.0]),
            key=getkey(),
            dt0=0.1,
            adjoint=js.ReversibleAdjoint(),
        )


def _adaptive_problem():
    drift = lambda t, y, p: -p[0] * y + jnp.sin(t)
    diffusion = lambda t, y, p: p[1] * jnp.cos(y)
    y0, ts, p = jnp.array([1.0, 0.2, -0.3]), jnp.array([0.0, 0.5, 1.0]), jnp.array([1.5, 0.4])
    key = jax.random.key(1)
    path = diffrax.VirtualBrownianTree(
        0.0, 1.0, tol=1e-6, shape=jax.ShapeDtypeStruct((3,), jnp.float64), key=key
    )
    return drift, diffusion, y0, ts, p, key, path


@pytest.mark.integration  # heavy: in the second tier
def test_adaptive_heun_converges_on_one_brownian_path():
    drift, diffusion, y0, ts, p, key, path = _adaptive_problem()
    fine = js.sdeint(
        drift, diffusion, y0, ts, p, key=key, solver=js.Heun(), dt0=1e-4, brownian=path
    )
    errors, steps = [], []
    for tol in (1e-2, 1e-4):
        ys, stats = js.sdeint(
            drift,
            diffusion,
            y0,
            ts,
            p,
            key=key,
            rtol=tol,
            atol=tol,
            brownian=path,
            return_stats=True,
        )
        errors.append(float(jnp.max(jnp.abs(ys - fine))))
        steps.append(int(stats["num_steps"]))
    print(f"adaptive Heun strong error {errors} with {steps} accepted steps")
    # Error control per step: a 100x tighter tolerance takes many more steps and
    # leaves several times less error against the fine solve (measured 12x).
    assert errors[1] < errors[0] / 5
    assert steps[1] > 5 * steps[0]
    # Without a path object one is built from the key: reproducible.
    once = js.sdeint(drift, diffusion, y0, ts, p, key=key, rtol=1e-3, atol=1e-3)
    again = js.sdeint(drift, diffusion, y0, ts, p, key=key, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(once, again)


@pytest.mark.integration  # heavy: in the second tier
def test_adaptive_reversible_adjoint_equals_store_all_for_an_sde():
    drift, diffusion, y0, ts, p, key, path = _adaptive_problem()
    solver = js.Reversible(js.Heun())

    def loss(p, adjoint):
        ys = js.sdeint(
            drift,
            diffusion,
            y0,
            ts,
            p,
            key=key,
            solver=solver,
            adjoint=adjoint,
            rtol=1e-3,
            atol=1e-3,
            brownian=path,
        )
        return jnp.sum(ys**2)

    ref = jax.grad(loss)(p, js.StoreAll())
    ours = jax.grad(loss)(p, js.ReversibleAdjoint())
    assert_tree_allclose(ours, ref, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="error estimate"):
        js.sdeint(drift, diffusion, y0, ts, p, key=key, rtol=1e-3, solver=js.EulerMaruyama())


def _gbm_gradients(dt, adjoint, solver=None):
    # Stratonovich GBM, gradient of a loss at two output times w.r.t. (mu, sigma).
    drift = lambda t, y, p: p[0] * y
    diffusion = lambda t, y, p: p[1] * y
    key = jax.random.key(3)

    def loss(p):
        ys = js.sdeint(
            drift,
            diffusion,
            jnp.ones(3),
            np.array([0.0, 0.5, 1.0]),
            p,
            key=key,
            dt0=dt,
            solver=js.Heun() if solver is None else solver,
            adjoint=adjoint,
        )
        return jnp.sum(ys[1] + ys[-1] ** 2)

    p = jnp.array([MU, SIGMA])
    tangent = jnp.array([1.0, -1.0])
    return jax.jit(jax.grad(loss))(p), jax.jit(lambda p: jax.jvp(loss, (p,), (tangent,))[1])(p)


@pytest.mark.parametrize(
    "solver", [js.Heun(), pytest.param(js.ReversibleHeun(), marks=pytest.mark.slow)], ids=str
)
@pytest.mark.integration  # heavy: in the second tier
def test_backsolve_adjoint_for_sdes_converges_to_the_discrete_gradient(solver):
    # The continuous (Stratonovich) adjoint solved backwards on the same Brownian
    # increments differs from the exact discrete gradient by the discretisation
    # error: first order in dt for commutative noise. Forward mode is exact.
    errors = []
    for dt in (4e-3, 1e-3):
        exact, exact_jvp = _gbm_gradients(dt, js.StoreAll(), solver)
        approx, approx_jvp = _gbm_gradients(dt, js.BacksolveAdjoint(), solver)
        errors.append(float(jnp.max(jnp.abs(approx - exact)) / jnp.max(jnp.abs(exact))))
        np.testing.assert_allclose(approx_jvp, exact_jvp, rtol=1e-12)
    assert errors[1] < 1e-3, errors
    # Four times smaller steps: about four times smaller error (at least 2.5x).
    assert errors[1] < errors[0] / 2.5, errors


def test_backsolve_adjoint_refuses_ito_solvers():
    with pytest.raises(ValueError, match="Stratonovich solution"):
        _gbm_gradients(0.1, js.BacksolveAdjoint(), js.EulerMaruyama())


@pytest.mark.parametrize(
    "kw", [dict(dt0=0.1), dict(rtol=1e-3, atol=1e-3)], ids=["fixed", "adaptive"]
)
def test_saveat_steps_holds_the_outputs_of_the_plain_solve(kw):
    drift = lambda t, y, p: p[0] * y
    diffusion = lambda t, y, p: p[1] * y
    key, y0, ts, p = (
        jax.random.key(0),
        jnp.ones(2),
        np.array([0.0, 0.5, 1.0]),
        jnp.array([MU, SIGMA]),
    )
    plain = js.sdeint(drift, diffusion, y0, ts, p, key=key, **kw)
    sol = js.sdeint(drift, diffusion, y0, ts, p, key=key, saveat=js.SaveAt(steps=True), **kw)
    n = int(sol.num_saved)
    # Every output time ends a step, on the same Brownian path: the same states.
    rows = np.searchsorted(np.asarray(sol.ts[:n]), ts)
    np.testing.assert_allclose(sol.ts[rows], ts, rtol=1e-14)
    np.testing.assert_allclose(sol.ys[rows], plain, rtol=1e-13)
    assert np.all(np.isinf(np.asarray(sol.ys[n:])))
    with pytest.raises(ValueError, match=r"dense=True\) is for odeint"):
        js.sdeint(drift, diffusion, y0, ts, p, key=key, saveat=js.SaveAt(dense=True), **kw)
