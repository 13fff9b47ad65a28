"""The forward integration loop shared by every adjoint.

The solve runs on a two-level grid: ``len(ts) - 1`` output intervals, each cut into
``steps_per_interval`` steps. Both levels are loops of static length, so the plain loop
can be differentiated in every mode, and an adjoint can change how its reverse pass
stores or recovers states.

The grid comes in two forms. ``ts`` of shape ``[n]`` (output times) means equal steps
within each interval. ``ts`` of shape ``[n - 1, steps_per_interval + 1]`` is a recorded
grid: row ``i`` holds the step boundaries of interval ``i`` (as chosen by an adaptive
solve), padded with the interval's end; the padding steps have zero length and are
skipped.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxsecond.diffeq._solvers import AbstractSolver


def num_intervals(ts) -> int:
    """Number of output intervals of a grid (see the module docstring)."""
    return ts.shape[0] if ts.ndim == 2 else ts.shape[0] - 1


def start_time(ts):
    return ts[0, 0] if ts.ndim == 2 else ts[0]


def skip_dead_steps(ts, t0, t1, step, carry):
    """``step(carry)``, except on a recorded grid's zero-length padding steps, where
    the carry passes through (a reversible step of length zero is not the identity)."""
    if ts.ndim == 1:
        return step(carry)
    return jax.lax.cond(t1 > t0, step, lambda c: c, carry)


def step_times(ts, i, j, steps_per_interval: int):
    """Start and end of step ``j`` of output interval ``i`` (end exactly ``ts[i + 1]``)."""
    if ts.ndim == 2:
        return ts[i, j], ts[i, j + 1]
    t0, t1 = ts[i], ts[i + 1]
    h = (t1 - t0) / steps_per_interval
    start = t0 + j * h
    end = jnp.where(j == steps_per_interval - 1, t1, t0 + (j + 1) * h)
    return start, end


def integrate(
    solver: AbstractSolver,
    term,
    y0,
    args,
    ts,
    steps_per_interval: int,
    *,
    interval_fn: Callable | None = None,
):
    """Solve over the grid; returns ``(ys, final_state)`` with ``ys`` stacked over
    ``ts`` and ``final_state = (y_N, solver_state_N)``.

    ``interval_fn(run_interval) -> run_interval`` lets an adjoint wrap the per-interval
    loop (e.g. in ``jax.checkpoint``).
    """
    ts = jnp.asarray(ts)  # transformation rules may hand back a NumPy constant
    state0 = solver.init(term, start_time(ts), y0, args)

    def run_interval(carry, i):
        def one_step(j, carry):
            t0, t1 = step_times(ts, i, j, steps_per_interval)
            control = term.control(t0, t1, i * steps_per_interval + j)
            step = lambda c: solver.step(term, t0, t1, *c, args, control)
            return skip_dead_steps(ts, t0, t1, step, carry)

        # fori_loop keeps the step index in the carry: no per-step array, so memory
        # does not grow with the number of steps.
        return jax.lax.fori_loop(0, steps_per_interval, one_step, carry)

    if interval_fn is not None:
        run_interval = interval_fn(run_interval)

    def outer(carry, i):
        carry = run_interval(carry, i)
        return carry, carry[0]

    final, ys = jax.lax.scan(outer, (y0, state0), jnp.arange(num_intervals(ts)))
    ys = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), y0, ys)
    return ys, final


def statistics(solver, term, y0, args, ts, steps_per_interval: int) -> dict:
    """Counts for a solve, and for reversible solvers the round-trip error: the largest
    distance between ``y0`` and the state reconstructed from the end by inverting every
    step (what ``ReversibleAdjoint``'s gradient accuracy rests on)."""
    from jaxsecond.diffeq._solvers import AbstractReversibleSolver

    if ts.ndim == 2:
        num_steps = jnp.sum(ts[:, 1:] > ts[:, :-1])
    else:
        num_steps = num_intervals(ts) * steps_per_interval
    stats = {
        "num_steps": num_steps,
        "vector_field_evaluations": solver.init_evaluations
        + num_steps * solver.evaluations_per_step,
    }
    if isinstance(solver, AbstractReversibleSolver):
        y0, args = jax.lax.stop_gradient((y0, args))
        _, (y, state) = integrate(solver, term, y0, args, ts, steps_per_interval)

        def interval_back(carry, i):
            def one(r, carry):
                j = steps_per_interval - 1 - r
                t0, t1 = step_times(ts, i, j, steps_per_interval)
                control = term.control(t0, t1, i * steps_per_interval + j)
                back = lambda c: solver.backward_step(term, t0, t1, *c, args, control)
                return skip_dead_steps(ts, t0, t1, back, carry)

            return jax.lax.fori_loop(0, steps_per_interval, one, carry), None

        (y_back, _), _ = jax.lax.scan(
            interval_back, (y, state), jnp.arange(num_intervals(ts) - 1, -1, -1)
        )
        errors = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), y_back, y0)
        stats["reconstruction_error"] = jnp.max(jnp.stack(jax.tree.leaves(errors)))
    return stats


def integrate_adaptive(solver, term, y0, args, ts, dt0, rtol, atol, max_steps: int):
    """Adaptive steps with an embedded error estimate and a PID controller.

    Each output interval runs a loop of ``max_steps`` attempts (a fixed-length loop, so
    every autodiff mode works; attempts after the interval is done change nothing).
    The step-size decisions are not differentiated: gradients are those of the
    discretisation that was accepted. Returns ``(ys, stats, grid)``, where ``grid`` is
    the recorded grid of accepted steps (``[len(ts) - 1, max_steps + 1]``, see the
    module docstring); running out of ``max_steps`` raises at run time.

    ``solver`` is a method with ``increment_and_error`` (:class:`Dopri5`) or
    ``Reversible`` around one, whose steps are then controlled by the base method's
    error estimate on the increment it takes from ``z``.
    """
    import equinox as eqx

    from jaxsecond.diffeq._solvers import Reversible
    from jaxsecond.diffeq._terms import negate

    reversible = isinstance(solver, Reversible)
    method = solver.base_solver if reversible else solver
    k = method.order  # the error estimate is of order k - 1, so exponents use k
    b1 = (method.icoeff + method.pcoeff + method.dcoeff) / k
    b2 = -(method.pcoeff + 2 * method.dcoeff) / k
    b3 = method.dcoeff / k
    dtype = ts.dtype

    def rms(tree):
        leaves = jax.tree.leaves(tree)
        return jnp.sqrt(sum(jnp.sum(x**2) for x in leaves) / sum(x.size for x in leaves))

    def propose(t0, t1, y, state):
        """``(y1, state1, error estimate)`` of one step."""
        control = term.control(t0, t1, 0)  # adaptive SDEs carry a Brownian path object
        if not reversible:
            inc, err = method.increment_and_error(term, t0, t1, y, args, control)
            return jax.tree.map(jnp.add, y, inc), state, err
        lam = solver.coupling
        inc, err = method.increment_and_error(term, t0, t1, state, args, control)
        y1 = jax.tree.map(lambda a, z, d: lam * a + (1 - lam) * z + d, y, state, inc)
        back = method.increment(term, t1, t0, y1, args, negate(control))
        return y1, jax.tree.map(jnp.subtract, state, back), err

    def run_interval(carry, i):
        y, state, h, e1, e2, accepted, rejected = carry
        t_end = ts[i + 1]
        row = jnp.full((max_steps + 1,), t_end, dtype).at[0].set(ts[i])

        def attempt(_, c):
            y, state, t, h, e1, e2, accepted, rejected, row, n = c
            done = t >= t_end
            h_try = jax.lax.stop_gradient(jnp.minimum(h, t_end - t))
            h_try = jnp.where(done, jnp.ones_like(h_try), h_try)  # keep the dead step finite
            last = h_try >= t_end - t
            t_new = jnp.where(last, t_end, t + h_try)
            y_new, state_new, err = propose(t, t_new, y, state)
            scale = jax.tree.map(
                lambda a, b: atol + rtol * jnp.maximum(jnp.abs(a), jnp.abs(b)), y, y_new
            )
            e = jax.lax.stop_gradient(rms(jax.tree.map(jnp.divide, err, scale)))
            e = jnp.where(jnp.isfinite(e), e, jnp.inf)
            accept = (e <= 1) & ~done
            safe = jnp.maximum(e, 1e-10)
            factor = method.safety * safe ** (-b1) * e1 ** (-b2) * e2 ** (-b3)
            factor = jnp.clip(
                jnp.where(jnp.isfinite(factor), factor, method.factor_min),
                method.factor_min,
                method.factor_max,
            )
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(accept, a, b), new, old)
            y, state = keep(y_new, y), keep(state_new, state)
            row = jnp.where(accept, row.at[n + 1].set(t_new), row)
            t = jnp.where(accept, t_new, t)
            h = jnp.where(done, h, h_try * factor)
            e1, e2 = jnp.where(accept, safe, e1), jnp.where(accept, e1, e2)
            accepted = accepted + accept
            rejected = rejected + (~accept & ~done)
            return y, state, t, h, e1, e2, accepted, rejected, row, n + accept

        init = (y, state, ts[i], h, e1, e2, accepted, rejected, row, 0)
        y, state, t, h, e1, e2, accepted, rejected, row, _ = jax.lax.fori_loop(
            0, max_steps, attempt, init
        )
        y = eqx.error_if(
            y,
            t < t_end,
            f"odeint: max_steps={max_steps} steps were not enough to reach the next output "
            "time; raise max_steps or loosen rtol/atol",
        )
        return (y, state, h, e1, e2, accepted, rejected), (y, row)

    one = jnp.ones((), dtype)
    zero = jnp.zeros((), jnp.int32)
    state0 = y0 if reversible else None
    init = (y0, state0, jnp.asarray(dt0, dtype), one, one, zero, zero)
    (_, _, _, _, _, accepted, rejected), (ys, grid) = jax.lax.scan(
        run_interval, init, jnp.arange(ts.shape[0] - 1)
    )
    ys = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), y0, ys)
    evaluations = (accepted + rejected) * method.evaluations_per_step
    if reversible:  # plus the backward increment of every attempt
        evaluations = evaluations * 2
    stats = {
        "num_steps": accepted,
        "rejected_steps": rejected,
        "vector_field_evaluations": evaluations,
    }
    return ys, stats, grid
