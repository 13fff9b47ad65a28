"""The fixed-step loop: ``len(ts) - 1`` output intervals, each cut into
``steps_per_interval`` equal steps. Both levels are loops of static length, so the
plain loop can be differentiated in every mode (how :class:`StoreAll` and
:class:`Checkpointed` differentiate fixed steps), and it is the forward pass of every
other adjoint on a :class:`~jaxsecond.diffeq._grid.FixedGrid`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxsecond.diffeq._progress import report
from jaxsecond.diffeq._solvers import AbstractSolver


def step_times(ts, i, j, steps_per_interval: int):
    """Start and end of step ``j`` of output interval ``i`` (end exactly ``ts[i + 1]``)."""
    t0, t1 = ts[i], ts[i + 1]
    h = (t1 - t0) / steps_per_interval
    jf = jnp.asarray(j).astype(h.dtype)
    start = t0 + jf * h
    end = jnp.where(j == steps_per_interval - 1, t1, t0 + (jf + 1) * h)
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
    total = (ts.shape[0] - 1) * steps_per_interval
    state0 = solver.init(term, ts[0], y0, args)

    def run_interval(carry, i):
        def one_step(j, carry):
            j = jnp.asarray(j, jnp.int32)
            t0, t1 = step_times(ts, i, j, steps_per_interval)
            k = i * steps_per_interval + j
            control = term.control(t0, t1, k)
            out = solver.step(term, t0, t1, *carry, args, control)
            report(getattr(term, "progress", None), (k + 1) / total, k == 0)
            return out

        # fori_loop keeps the step index in the carry: no per-step array, so memory
        # does not grow with the number of steps.
        return jax.lax.fori_loop(0, steps_per_interval, one_step, carry)

    if interval_fn is not None:
        run_interval = interval_fn(run_interval)

    def outer(carry, i):
        carry = run_interval(carry, i)
        return carry, carry[0]

    final, ys = jax.lax.scan(outer, (y0, state0), jnp.arange(ts.shape[0] - 1, dtype=jnp.int32))
    ys = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), y0, ys)
    return ys, final
