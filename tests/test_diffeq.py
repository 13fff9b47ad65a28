"""ODE solvers and adjoints: convergence orders, exactness of the reversible adjoint,
every adjoint in every autodiff mode against finite differences, memory, bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsecond as js
from jaxsecond.diffeq import ODETerm
from tests.helpers import assert_tree_allclose, finite_difference_jvp

# One worker runs the whole module: its module-scoped fixtures and cached references are
# computed once (pytest -n 2 --dist loadgroup).
pytestmark = pytest.mark.xdist_group("diffeq")

# ------------------------------------------------------------------- convergence order

SOLVERS = {
    "Euler": js.Euler(),
    "Midpoint": js.Midpoint(),
    "Heun": js.Heun(),
    "RK4": js.RK4(),
    "Dopri5 (fixed steps)": js.Dopri5(),
    "ReversibleHeun": js.ReversibleHeun(),
    "Reversible(Midpoint)": js.Reversible(js.Midpoint(), coupling=0.999),
    "Reversible(RK4)": js.Reversible(js.RK4(), coupling=0.999),
}


def _exact(t):
    # y' = cos(t) y, y(0) = 1.
    return jnp.exp(jnp.sin(t))


@pytest.mark.parametrize("name", list(SOLVERS))
def test_convergence_order(name):
    solver = SOLVERS[name]
    ts = jnp.array([0.0, 2.0])
    steps = np.array([16, 32, 64, 128])
    errors = []
    for n in steps:
        ys = js.odeint(
            lambda t, y, _: jnp.cos(t) * y,
            jnp.array(1.0),
            ts,
            solver=solver,
            steps_per_interval=int(n),
        )
        errors.append(abs(float(ys[-1] - _exact(2.0))))
    slope = np.polyfit(np.log(2.0 / steps), np.log(errors), 1)[0]
    # A log-log fit over a factor 8 in step size: within 0.3 of the nominal order.
    assert abs(slope - solver.order) <= 0.3, (name, slope, errors)


def _oscillator(a, rtol, **kw):
    vf = lambda t, y, a: jnp.stack([y[1], -a * y[0]])
    ts = jnp.linspace(0.0, 10.0, 11)
    return ts, js.odeint(vf, jnp.array([1.0, 0.0]), ts, a, rtol=rtol, atol=rtol, **kw)


@pytest.mark.slow  # tolerance tracking and adaptive derivatives: test_diffeq_adaptive's
def test_dopri5_adaptive_tracks_tolerance_and_differentiates():
    exact = lambda ts, a: jnp.cos(jnp.sqrt(a) * ts)
    steps = []
    for tol in (1e-6, 1e-9):
        ts, (ys, stats) = _oscillator(4.0, tol, return_stats=True)
        # Local error control: the global error over 10 periods stays within ~20x tol.
        assert float(jnp.max(jnp.abs(ys[:, 0] - exact(ts, 4.0)))) < 20 * tol
        steps.append(int(stats["num_steps"]))
    # Step count grows like tol^(-1/5) for a fifth-order method: 1000^(1/5) ~ 4.
    assert 2.5 < steps[1] / steps[0] < 6
    f = lambda a: _oscillator(a, 1e-10)[1][-1, 0]
    # Reverse, forward and second order in one compiled program.
    g, tangent, h = jax.jit(
        lambda a: (jax.grad(f)(a), jax.jvp(f, (a,), (1.0,))[1], jax.hessian(f)(a))
    )(4.0)
    g_exact = jax.grad(lambda a: exact(10.0, a))(4.0)
    assert float(g) == pytest.approx(float(g_exact), rel=1e-6)
    assert float(tangent) == pytest.approx(float(g_exact), rel=1e-6)
    h_exact = jax.hessian(lambda a: exact(10.0, a))(4.0)
    assert float(h) == pytest.approx(float(h_exact), rel=1e-5)


def test_dopri5_running_out_of_steps_is_reported():
    with pytest.raises(Exception, match="max_steps=5"):
        jax.block_until_ready(_oscillator(4.0, 1e-12, max_steps=5)[1])
    with pytest.raises(ValueError, match="error estimate"):
        js.odeint(
            lambda t, y, _: -y, jnp.ones(2), jnp.array([0.0, 1.0]), rtol=1e-6, solver=js.RK4()
        )
    with pytest.raises(TypeError, match="floating point"):
        js.odeint(lambda t, y, _: -y, jnp.array([1, 2]), jnp.array([0.0, 1.0]), rtol=1e-6)
    with pytest.raises(ValueError, match="reversible solver"):
        js.odeint(
            lambda t, y, _: -y,
            jnp.ones(2),
            jnp.array([0.0, 1.0]),
            rtol=1e-6,
            adjoint=js.ReversibleAdjoint(),
        )


def _adaptive_loss(vf, y0, ts, solver, adjoint, max_steps=64):
    def loss(p):
        ys = js.odeint(
            vf,
            y0,
            ts,
            p,
            solver=solver,
            adjoint=adjoint,
            rtol=1e-6,
            atol=1e-8,
            max_steps=max_steps,
        )
        return jnp.sum(ys**2)

    return loss


@pytest.mark.slow  # the default run checks the same on test_diffeq_adaptive's rotation
def test_adaptive_reversible_adjoint_equals_store_all(getkey):
    vf, params = mlp_ode(getkey())
    y0, ts = jnp.array([1.0, -0.5]), jnp.array([0.0, 0.7, 2.0, 3.0])
    solver = js.Reversible(js.Dopri5(), coupling=0.999)
    v = jax.tree.map(jnp.ones_like, params)

    def derivatives(adjoint):
        # One compiled program per adjoint: the gradient (the primal half of the
        # forward-over-reverse pass), the Hessian-vector product and forward mode.
        loss = _adaptive_loss(vf, y0, ts, solver, adjoint)

        def run(p):
            _, grad, hv = js.grad_and_hvp(loss, p, v)
            return grad, hv, jax.jvp(loss, (p,), (v,))[1]

        return jax.jit(run)(params)

    grad, hv, tangent = derivatives(js.ReversibleAdjoint())
    grad_ref, hv_ref, tangent_ref = derivatives(js.StoreAll())
    # The reversible adjoint re-solves on the recorded steps: the same discretisation as
    # StoreAll's adaptive loop, so gradients agree to reconstruction round-off.
    assert_tree_allclose(grad, grad_ref, rtol=1e-10, atol=1e-12)
    assert float(tangent) == pytest.approx(float(tangent_ref), rel=1e-10)
    assert_tree_allclose(hv, hv_ref, rtol=1e-9, atol=1e-12)
    _, stats = jax.jit(
        lambda p: js.odeint(
            vf,
            y0,
            ts,
            p,
            solver=solver,
            adjoint=js.ReversibleAdjoint(),
            rtol=1e-6,
            atol=1e-8,
            max_steps=64,
            return_stats=True,
        )
    )(params)
    assert int(stats["num_steps"]) > len(ts) - 1  # it did adapt
    assert float(stats["reconstruction_error"]) < 1e-12
    # The adaptive backsolve adjoint on the same tolerance: close, not exact.
    dopri5_grad = lambda adjoint: jax.jit(
        jax.grad(_adaptive_loss(vf, y0, ts, js.Dopri5(), adjoint))
    )(params)
    error = _max_rel_error(dopri5_grad(js.BacksolveAdjoint()), dopri5_grad(js.StoreAll()))
    print(f"adaptive backsolve gradient error vs StoreAll: {error:.1e}")
    assert 1e-12 < error < 1e-4


@pytest.mark.integration  # heavy: in the second tier
def test_adaptive_reversible_adjoint_memory_holds_no_states():
    # A large state (4096) and up to 10x more step slots: StoreAll's reverse pass grows
    # with the slots, the reversible one only by the recorded step times (8 bytes each).
    W = 0.3 * jax.random.normal(jax.random.key(0), (64, 64)) / 8
    vf = lambda t, y, W: jnp.tanh(y @ W)
    y0, ts = jnp.ones((64, 64)), jnp.array([0.0, 1.0])
    solver = js.Reversible(js.Dopri5())

    def memory(adjoint, max_steps):
        loss = lambda W: jnp.sum(
            js.odeint(
                vf,
                y0,
                ts,
                W,
                solver=solver,
                adjoint=adjoint,
                rtol=1e-6,
                atol=1e-6,
                max_steps=max_steps,
            )[-1]
            ** 2
        )
        analysis = jax.jit(jax.grad(loss)).lower(W).compile().memory_analysis()
        if analysis is None:
            pytest.skip("no compiled memory analysis on this backend")
        return analysis.temp_size_in_bytes

    small, large = memory(js.ReversibleAdjoint(), 100), memory(js.ReversibleAdjoint(), 1000)
    store_small, store_large = memory(js.StoreAll(), 100), memory(js.StoreAll(), 1000)
    print(
        f"adaptive reversible temp bytes {small} -> {large}; "
        f"StoreAll {store_small} -> {store_large}"
    )
    assert large <= 1.2 * small
    assert store_large >= 5 * store_small


# ------------------------------------------------------------------- problems


def mlp_ode(key):
    k1, k2, k3 = jax.random.split(key, 3)
    params = {
        "W1": 0.5 * jax.random.normal(k1, (8, 2)),
        "b1": 0.1 * jax.random.normal(k2, (8,)),
        "W2": 0.5 * jax.random.normal(k3, (2, 8)),
    }

    def vector_field(t, y, p):
        return p["W2"] @ jnp.tanh(p["W1"] @ y + p["b1"]) - 0.1 * y

    return vector_field, params


def lorenz(t, y, p):
    sigma, rho, beta = p
    return jnp.stack([sigma * (y[1] - y[0]), y[0] * (rho - y[2]) - y[1], y[0] * y[1] - beta * y[2]])


# ------------------------------------------------------------------- exactness


@pytest.mark.integration  # heavy: in the second tier
@pytest.mark.parametrize("solver", [js.ReversibleHeun(), js.Reversible(js.RK4())], ids=str)
def test_reversible_adjoint_equals_store_all(getkey, solver):
    vf, params = mlp_ode(getkey())
    y0 = jnp.array([1.0, -0.5])
    ts = jnp.linspace(0.0, 3.0, 7)

    def loss(p, adjoint):
        ys = js.odeint(vf, y0, ts, p, solver=solver, adjoint=adjoint, dt0=0.01)
        return jnp.sum(ys**2)

    ref = jax.grad(loss)(params, js.StoreAll())
    ours = jax.grad(loss)(params, js.ReversibleAdjoint())
    # Same discretisation, states reconstructed exactly up to round-off: 1e-10.
    assert_tree_allclose(ours, ref, rtol=1e-10, atol=1e-12)


def _lorenz_gradient(solver, t_end, adjoint):
    p = jnp.array([10.0, 28.0, 8.0 / 3.0])
    y0 = jnp.array([1.0, 1.0, 1.0])
    ts = jnp.linspace(0.0, t_end, 5)  # concrete, closed over: dt0 sets the step count

    def loss(p, y0):
        ys = js.odeint(lorenz, y0, ts, p, solver=solver, adjoint=adjoint, dt0=1e-3)
        return jnp.sum(ys[-1] ** 2)

    # Compiled whole: one compilation instead of one per eagerly run loop.
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(p, y0)


_LORENZ_STORE_ALL = {}  # the reference, per solver and span, shared by the tests


def _lorenz_gradients(solver, t_end, adjoint=None):
    adjoint = js.ReversibleAdjoint() if adjoint is None else adjoint
    ours = _lorenz_gradient(solver, t_end, adjoint)
    key = (str(solver), t_end)
    if key not in _LORENZ_STORE_ALL:
        _LORENZ_STORE_ALL[key] = _lorenz_gradient(solver, t_end, js.StoreAll())
    return ours, _LORENZ_STORE_ALL[key]


def _max_rel_error(ours, ref):
    return max(
        float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True)
    )


# test_reversible_adjoint_equals_store_all covers the claim in CI; Lorenz (chaotic) is slow.
@pytest.mark.slow
def test_reversible_adjoint_equals_store_all_on_lorenz():
    ours, ref = _lorenz_gradients(js.Reversible(js.RK4(), coupling=0.999), t_end=0.5)
    # Chaotic, so reconstruction round-off grows like exp(0.9 t); over t = 0.5 it stays
    # at ~1e-11 relative.
    reversible = _max_rel_error(ours, ref)
    assert reversible < 1e-10
    # The continuous adjoint on the same problem and steps (RK4) is visibly off: it
    # re-solves the chaotic state backwards and discretises the adjoint equation.
    backsolve = _max_rel_error(
        *_lorenz_gradients(js.RK4(), t_end=0.5, adjoint=js.BacksolveAdjoint())
    )
    print(
        f"Lorenz gradient error vs StoreAll: reversible {reversible:.1e}, backsolve {backsolve:.1e}"
    )
    assert backsolve > 100 * reversible


# ------------------------------------------------------------------- the adjoint x mode matrix

ADJOINTS = {
    "StoreAll": (js.StoreAll(), js.Heun()),
    "Checkpointed": (js.Checkpointed(3), js.Heun()),
    "ReversibleAdjoint": (js.ReversibleAdjoint(), js.ReversibleHeun()),
    "BacksolveAdjoint": (js.BacksolveAdjoint(), js.RK4()),
}
# Reverse-mode tolerance relative to finite differences of the discrete solve. Exact
# adjoints: 1e-6 (finite-difference error). BacksolveAdjoint differentiates the
# continuous problem and re-solves the state backwards: its gradient differs from the
# discrete one by the RK4 discretisation error, O(h^4) with h = 1/60, measured ~1e-8.
REVERSE_RTOL = {"BacksolveAdjoint": 1e-5}
MODES = ["grad", "jvp", "jacfwd", "hvp", "reverse_over_reverse", "vmap", "jit"]


@functools.cache
def _matrix_problem():
    vf, params = mlp_ode(jax.random.key(3))
    y0 = jnp.array([0.3, -0.7])
    ts = jnp.linspace(0.0, 1.0, 4)
    v = jax.tree.map(lambda x: jnp.cos(jnp.arange(x.size).reshape(x.shape)), params)
    return vf, params, y0, ts, v


def _matrix_loss(solver, adjoint):
    vf, _, y0, ts, _ = _matrix_problem()

    def loss(p):
        ys = js.odeint(vf, y0, ts, p, solver=solver, adjoint=adjoint, steps_per_interval=20)
        return jnp.sum(jnp.sin(ys))

    return loss


# The references differentiate the StoreAll solve of each solver. They depend on the
# solver only, so adjoints sharing a solver share them (keyed on its repr), and each is
# one compiled function evaluated at several points.
_MATRIX_SOLVERS = {str(solver): solver for _, solver in ADJOINTS.values()}


@functools.cache
def _store_all_loss(solver_key):
    return jax.jit(_matrix_loss(_MATRIX_SOLVERS[solver_key], js.StoreAll()))


@functools.cache
def _store_all_grad(solver_key):
    return jax.jit(jax.grad(_matrix_loss(_MATRIX_SOLVERS[solver_key], js.StoreAll())))


@functools.cache
def _fd_directional_derivative(solver_key):
    _, params, _, _, v = _matrix_problem()
    return float(finite_difference_jvp(_store_all_loss(solver_key), (params,), (v,), eps=1e-5))


@functools.cache
def _fd_hvp(solver_key):
    _, params, _, _, v = _matrix_problem()
    return finite_difference_jvp(_store_all_grad(solver_key), (params,), (v,), eps=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("adjoint_name", list(ADJOINTS))
def test_every_adjoint_in_every_mode(adjoint_name, mode):
    adjoint, solver = ADJOINTS[adjoint_name]
    _, params, _, _, v = _matrix_problem()
    loss = _matrix_loss(solver, adjoint)
    # References: central differences of the same discrete solve (eps 1e-5 in float64:
    # truncation ~1e-10, round-off ~1e-11), and for second order differences of the
    # StoreAll gradient. Tolerance 1e-6 relative covers both. Each is computed only in
    # the modes that use it.
    fd = lambda: _fd_directional_derivative(str(solver))
    fd_hvp = lambda: _fd_hvp(str(solver))

    def dot(a, b):
        return sum(
            jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
        )

    rtol = REVERSE_RTOL.get(adjoint_name, 1e-6)
    if mode == "grad":
        assert float(dot(jax.grad(loss)(params), v)) == pytest.approx(fd(), rel=rtol)
    elif mode == "jvp":
        assert float(jax.jvp(loss, (params,), (v,))[1]) == pytest.approx(fd(), rel=1e-6)
    elif mode == "jacfwd":
        jac = jax.jacfwd(loss)(params)
        assert float(dot(jac, v)) == pytest.approx(fd(), rel=1e-6)
    elif mode == "hvp":
        hv = jax.jvp(jax.grad(loss), (params,), (v,))[1]
        assert_tree_allclose(hv, fd_hvp(), rtol=10 * rtol, atol=1e-7)
    elif mode == "reverse_over_reverse":
        hv = jax.grad(lambda p: dot(jax.grad(loss)(p), v))(params)
        assert_tree_allclose(hv, fd_hvp(), rtol=10 * rtol, atol=1e-7)
    elif mode == "vmap":
        # Against the unbatched (compiled) StoreAll gradient at each scale.
        scales = jnp.array([1.0, 0.5])
        scaled = lambda s: jax.tree.map(lambda x: s * x, params)
        ours = jax.vmap(lambda s: jax.grad(loss)(scaled(s)))(scales)
        grad_store = _store_all_grad(str(solver))
        ref = jax.tree.map(lambda *xs: jnp.stack(xs), *(grad_store(scaled(s)) for s in scales))
        assert_tree_allclose(ours, ref, rtol=max(1e-9, rtol), atol=1e-12)
    else:
        ours = jax.jit(jax.grad(loss))(params)
        assert float(dot(ours, v)) == pytest.approx(fd(), rel=rtol)


def test_derivatives_reach_closed_over_parameters(getkey):
    vf, params = mlp_ode(getkey())
    y0 = jnp.array([1.0, 0.0])
    ts = jnp.array([0.0, 1.0])

    def loss(p, adjoint):
        closed = lambda t, y, _: vf(t, y, p)  # parameters only through the closure
        ys = js.odeint(closed, y0, ts, solver=js.ReversibleHeun(), adjoint=adjoint, dt0=0.05)
        return jnp.sum(ys[-1] ** 2)

    ref = jax.grad(loss)(params, js.StoreAll())
    assert_tree_allclose(jax.grad(loss)(params, js.ReversibleAdjoint()), ref, rtol=1e-10)
    assert any(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(ref))


# ------------------------------------------------------------------- memory


def _gradient_memory(adjoint, steps):
    W = 0.3 * jax.random.normal(jax.random.key(0), (16, 16))
    vf = lambda t, y, W: jnp.tanh(W @ y)
    y0, ts = jnp.ones(16), jnp.array([0.0, 1.0])

    def loss(W):
        ys = js.odeint(
            vf, y0, ts, W, solver=js.ReversibleHeun(), adjoint=adjoint, steps_per_interval=steps
        )
        return jnp.sum(ys[-1] ** 2)

    compiled = jax.jit(jax.grad(loss)).lower(W).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
        pytest.skip("no compiled memory analysis on this backend")
    return analysis.temp_size_in_bytes


@pytest.mark.parametrize("adjoint", [js.ReversibleAdjoint(), js.BacksolveAdjoint()], ids=str)
def test_reconstructing_adjoints_memory_is_flat_in_steps(adjoint):
    small, large = (_gradient_memory(adjoint, n) for n in (1000, 10000))
    store_small, store_large = (_gradient_memory(js.StoreAll(), n) for n in (1000, 10000))
    print(
        f"ReversibleAdjoint temp bytes {small} -> {large}; StoreAll {store_small} -> {store_large}"
    )
    assert large <= 1.2 * small
    assert store_large >= 5 * store_small


@pytest.mark.parametrize("checkpoints", [1, 4, 16, 32])
def test_checkpointed_memory_follows_its_formula(checkpoints):
    # Documented: about num_checkpoints saved states plus ceil(steps / num_checkpoints)
    # steps' worth of intermediates, per output interval. One "step's worth" is what
    # StoreAll keeps per step (its memory / steps). Checkpoints hold only the carry,
    # which is smaller, hence the generous upper factor and a lower bound from the
    # recomputed segment alone.
    steps = 1024
    W = 0.1 * jax.random.normal(jax.random.key(0), (64, 64))
    vf = lambda t, y, W: jnp.tanh(W @ y)

    def temp_bytes(adjoint):
        def loss(W):
            ys = js.odeint(
                vf,
                jnp.ones(64),
                jnp.array([0.0, 1.0]),
                W,
                solver=js.Heun(),
                adjoint=adjoint,
                steps_per_interval=steps,
            )
            return jnp.sum(ys[-1] ** 2)

        analysis = jax.jit(jax.grad(loss)).lower(W).compile().memory_analysis()
        if analysis is None:
            pytest.skip("no compiled memory analysis on this backend")
        return analysis.temp_size_in_bytes

    per_step = temp_bytes(js.StoreAll()) / steps
    measured = temp_bytes(js.Checkpointed(checkpoints)) / per_step
    predicted = checkpoints + steps / checkpoints
    print(f"Checkpointed({checkpoints}): {measured:.0f} steps' worth, formula {predicted:.0f}")
    assert 0.8 * steps / checkpoints <= measured <= 1.2 * predicted


# ------------------------------------------------------------------- reversibility


def _round_trip_error(solver, vf, y0, t_end, steps, args=None):
    """Step forward ``steps`` times, then invert every step; distance to ``y0``."""
    term = ODETerm(vf)
    h = t_end / steps
    state = solver.init(term, 0.0, y0, args)

    def fwd(i, carry):
        y, s = carry
        return solver.step(term, i * h, (i + 1) * h, y, s, args, h)

    def bwd(i, carry):
        y, s = carry
        k = steps - 1 - i
        return solver.backward_step(term, k * h, (k + 1) * h, y, s, args, h)

    y, s = jax.lax.fori_loop(0, steps, fwd, (y0, state))
    y_back, _ = jax.lax.fori_loop(0, steps, bwd, (y, s))
    return float(jnp.max(jnp.abs(y_back - y0)))


def test_round_trip_small_on_contractive_problem():
    vf = lambda t, y, _: -y + jnp.sin(t)
    y0 = jnp.array([1.0, 2.0])
    _, stats = js.odeint(
        vf,
        y0,
        jnp.array([0.0, 1.0, 2.0]),
        solver=js.ReversibleHeun(),
        steps_per_interval=100,
        return_stats=True,
    )
    # The statistic agrees with inverting the steps by hand, and is at round-off.
    manual = _round_trip_error(js.ReversibleHeun(), vf, y0, 2.0, 200)
    assert float(stats["reconstruction_error"]) == pytest.approx(manual, rel=0.5, abs=1e-15)
    assert float(stats["reconstruction_error"]) < 1e-12
    assert stats["num_steps"] == 200
    assert stats["vector_field_evaluations"] == 201  # one per step plus the initial one


def test_statistics_count_evaluations():
    vf = lambda t, y, _: -y
    ts = jnp.array([0.0, 1.0])
    for solver, per_step in [(js.RK4(), 4), (js.Midpoint(), 2), (js.Reversible(js.RK4()), 8)]:
        _, stats = js.odeint(vf, jnp.ones(2), ts, solver=solver, dt0=0.1, return_stats=True)
        assert stats["vector_field_evaluations"] == 10 * per_step
        assert ("reconstruction_error" in stats) == isinstance(solver, js.AbstractReversibleSolver)


@pytest.mark.integration  # heavy: in the second tier
def test_coupling_keeps_reconstruction_bounded_where_reversible_heun_drifts():
    # Lorenz over t = 1: reversible Heun's reconstruction drifts (its two sequences
    # decouple on dissipative dynamics) to ~6e-3, so its "exact" gradient would be off;
    # the adjoint refuses it at run time instead of returning it.
    with pytest.raises(Exception, match="drifted from the forward states"):
        _lorenz_gradients(js.ReversibleHeun(), t_end=1.0)
    # Opting out of the check shows what the check protected against.
    lenient = js.ReversibleAdjoint(max_reconstruction_error=1.0)
    plain = _max_rel_error(*_lorenz_gradients(js.ReversibleHeun(), 1.0, lenient))
    # Checkpoints restart the reconstruction every 1/16 of the solve.
    restarted = _max_rel_error(
        *_lorenz_gradients(js.ReversibleHeun(), 1.0, js.ReversibleAdjoint(checkpoints=16))
    )
    coupled = _max_rel_error(*_lorenz_gradients(js.Reversible(js.Heun(), 0.999), t_end=1.0))
    print(
        f"Lorenz gradient error vs StoreAll: ReversibleHeun {plain:.1e}, "
        f"with 16 checkpoints {restarted:.1e}, coupled {coupled:.1e}"
    )
    assert plain > 1e-4
    assert restarted < 1e-6
    assert coupled < 1e-8
    # And the forward solve: on y' = -3 y with h = 0.05, reversible Heun's parasitic
    # root exceeds 1 and the solution explodes; coupling 0.5 damps it.
    vf = lambda t, y, _: -3.0 * y
    span = jnp.array([0.0, 20.0])
    drift = js.odeint(
        vf, jnp.array([1.0]), span, solver=js.ReversibleHeun(), steps_per_interval=400
    )
    damped = js.odeint(
        vf, jnp.array([1.0]), span, solver=js.Reversible(js.Heun(), 0.5), steps_per_interval=400
    )
    assert abs(float(drift[-1, 0])) > 1e10
    assert abs(float(damped[-1, 0])) < 1e-10


# ------------------------------------------------------------------- bad input


def test_bad_input():
    vf = lambda t, y, _: -y
    y0 = jnp.array([1.0, 2.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        js.odeint(vf, y0, jnp.array([0.0, 1.0, 1.0]), dt0=0.1)
    with pytest.raises(ValueError, match="shaped like y0"):
        js.odeint(lambda t, y, _: y[:1], y0, jnp.array([0.0, 1.0]), dt0=0.1)
    with pytest.raises(ValueError, match="dt0 must be positive"):
        js.odeint(vf, y0, jnp.array([0.0, 1.0]), dt0=0.0)
    with pytest.raises(ValueError, match="dt0"):
        js.odeint(vf, y0, jnp.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="reversible solver"):
        js.odeint(vf, y0, jnp.array([0.0, 1.0]), dt0=0.1, adjoint=js.ReversibleAdjoint())
    with pytest.raises(TypeError, match="floating point"):
        js.odeint(vf, jnp.array([1, 2]), jnp.array([0.0, 1.0]), dt0=0.1)
    with pytest.raises(ValueError, match="steps_per_interval"):
        jax.jit(lambda ts: js.odeint(vf, y0, ts, dt0=0.1))(jnp.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="coupling"):
        js.Reversible(js.RK4(), coupling=1.5)
    with pytest.raises(TypeError, match="explicit Runge-Kutta"):
        js.Reversible(js.ReversibleHeun())
    with pytest.raises(ValueError, match="num_checkpoints"):
        js.Checkpointed(0)
    with pytest.raises(ValueError, match="Stratonovich"):
        js.sdeint(
            vf,
            vf,
            y0,
            jnp.array([0.0, 1.0]),
            key=jax.random.key(0),
            dt0=0.1,
            adjoint=js.BacksolveAdjoint(),
        )


def test_traced_ts_with_steps_per_interval_and_float32(float32):
    vf = lambda t, y, k: -k * y
    ys = jax.jit(lambda ts: js.odeint(vf, jnp.array(1.0), ts, 2.0, steps_per_interval=50))(
        jnp.array([0.0, 0.5, 1.0])
    )
    assert ys.dtype == jnp.float32
    # RK4 with h = 0.01: error ~1e-10, below float32 resolution.
    np.testing.assert_allclose(ys, jnp.exp(-2.0 * jnp.array([0.0, 0.5, 1.0])), rtol=1e-6)
