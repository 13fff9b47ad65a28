"""The forward integration loop shared by every adjoint.

The solve runs on a two-level grid: ``len(ts) - 1`` output intervals, each cut into
``steps_per_interval`` equal steps. Both levels are ``lax.scan`` loops of static length,
so the plain loop can be differentiated in every mode, and an adjoint can change how
its reverse pass stores or recovers states.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxsecond.diffeq._solvers import AbstractSolver


def step_times(ts, i, j, steps_per_interval: int):
    """Start and end of step ``j`` of output interval ``i`` (end exactly ``ts[i + 1]``)."""
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
    state0 = solver.init(term, ts[0], y0, args)

    def run_interval(carry, i):
        def one_step(j, carry):
            y, state = carry
            t0, t1 = step_times(ts, i, j, steps_per_interval)
            control = term.control(t0, t1, i * steps_per_interval + j)
            return solver.step(term, t0, t1, y, state, args, control)

        # fori_loop keeps the step index in the carry: no per-step array, so memory
        # does not grow with the number of steps.
        return jax.lax.fori_loop(0, steps_per_interval, one_step, carry)

    if interval_fn is not None:
        run_interval = interval_fn(run_interval)

    def outer(carry, i):
        carry = run_interval(carry, i)
        return carry, carry[0]

    final, ys = jax.lax.scan(outer, (y0, state0), jnp.arange(ts.shape[0] - 1))
    ys = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), y0, ys)
    return ys, final


def statistics(solver, term, y0, args, ts, steps_per_interval: int) -> dict:
    """Counts for a solve, and for reversible solvers the round-trip error: the largest
    distance between ``y0`` and the state reconstructed from the end by inverting every
    step (what ``ReversibleAdjoint``'s gradient accuracy rests on)."""
    from jaxsecond.diffeq._solvers import AbstractReversibleSolver

    num_steps = (ts.shape[0] - 1) * steps_per_interval
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
                return solver.backward_step(term, t0, t1, *carry, args, control)

            return jax.lax.fori_loop(0, steps_per_interval, one, carry), None

        (y_back, _), _ = jax.lax.scan(
            interval_back, (y, state), jnp.arange(ts.shape[0] - 2, -1, -1)
        )
        errors = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), y_back, y0)
        stats["reconstruction_error"] = jnp.max(jnp.stack(jax.tree.leaves(errors)))
    return stats


def integrate_adaptive(solver, term, y0, args, ts, dt0, rtol, atol, max_steps: int):
    """Adaptive steps with an embedded error estimate and a PID controller.

    Each output interval runs a loop of ``max_steps`` attempts (a fixed-length loop, so
    every autodiff mode works; attempts after the interval is done change nothing).
    The step-size decisions are not differentiated: gradients are those of the
    discretisation that was accepted. Returns ``(ys, stats)``; running out of
    ``max_steps`` raises at run time.
    """
    import equinox as eqx

    k = solver.order  # the error estimate is of order k - 1, so exponents use k
    b1 = (solver.icoeff + solver.pcoeff + solver.dcoeff) / k
    b2 = -(solver.pcoeff + 2 * solver.dcoeff) / k
    b3 = solver.dcoeff / k
    dtype = ts.dtype

    def rms(tree):
        leaves = jax.tree.leaves(tree)
        return jnp.sqrt(sum(jnp.sum(x**2) for x in leaves) / sum(x.size for x in leaves))

    def run_interval(carry, i):
        y, h, e1, e2, accepted, rejected = carry
        t_end = ts[i + 1]

        def attempt(_, c):
            y, t, h, e1, e2, accepted, rejected = c
            done = t >= t_end
            h_try = jax.lax.stop_gradient(jnp.minimum(h, t_end - t))
            h_try = jnp.where(done, jnp.ones_like(h_try), h_try)  # keep the dead step finite
            inc, err = solver.increment_and_error(term, t, t + h_try, y, args, h_try)
            y_new = jax.tree.map(jnp.add, y, inc)
            scale = jax.tree.map(
                lambda a, b: atol + rtol * jnp.maximum(jnp.abs(a), jnp.abs(b)), y, y_new
            )
            e = jax.lax.stop_gradient(rms(jax.tree.map(jnp.divide, err, scale)))
            e = jnp.where(jnp.isfinite(e), e, jnp.inf)
            accept = (e <= 1) & ~done
            safe = jnp.maximum(e, 1e-10)
            factor = solver.safety * safe ** (-b1) * e1 ** (-b2) * e2 ** (-b3)
            factor = jnp.clip(
                jnp.where(jnp.isfinite(factor), factor, solver.factor_min),
                solver.factor_min,
                solver.factor_max,
            )
            last = h_try >= t_end - t
            y = jax.tree.map(lambda a, b: jnp.where(accept, a, b), y_new, y)
            t = jnp.where(accept, jnp.where(last, t_end, t + h_try), t)
            h = jnp.where(done, h, h_try * factor)
            e1, e2 = jnp.where(accept, safe, e1), jnp.where(accept, e1, e2)
            accepted = accepted + accept
            rejected = rejected + (~accept & ~done)
            return y, t, h, e1, e2, accepted, rejected

        init = (y, ts[i], h, e1, e2, accepted, rejected)
        y, t, h, e1, e2, accepted, rejected = jax.lax.fori_loop(0, max_steps, attempt, init)
        y = eqx.error_if(
            y,
            t < t_end,
            f"odeint: max_steps={max_steps} steps were not enough to reach the next output "
            "time; raise max_steps or loosen rtol/atol",
        )
        return (y, h, e1, e2, accepted, rejected), y

    one = jnp.ones((), dtype)
    zero = jnp.zeros((), jnp.int32)
    init = (y0, jnp.asarray(dt0, dtype), one, one, zero, zero)
    (_, _, _, _, accepted, rejected), ys = jax.lax.scan(
        run_interval, init, jnp.arange(ts.shape[0] - 1)
    )
    ys = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), y0, ys)
    stats = {
        "num_steps": accepted,
        "rejected_steps": rejected,
        "vector_field_evaluations": (accepted + rejected) * solver.evaluations_per_step,
    }
    return ys, stats
