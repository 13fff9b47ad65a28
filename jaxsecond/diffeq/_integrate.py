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
