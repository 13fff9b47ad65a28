"""The adaptive solve: a while loop that stops when the last output time is reached.

Its cost follows the steps taken; ``max_steps`` only bounds them (and, when the solve
is differentiated, sizes the buffer of accepted step times that the adjoints walk
back). Step-size decisions are made
without derivatives, so every adjoint differentiates the discretisation that was
accepted (see ``_adjoint.py``).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxsecond.diffeq._controllers import initial_step
from jaxsecond.diffeq._events import EventState
from jaxsecond.diffeq._grid import RecordedGrid, _output_buffer, _write
from jaxsecond.diffeq._progress import report
from jaxsecond.diffeq._terms import ODETerm


class AdaptiveState(eqx.Module):
    """What the adaptive loop carries from one attempted step to the next."""

    y: object
    solver_state: object
    t: jax.Array
    h: jax.Array  # the next step to try
    controller_state: object
    next_output: jax.Array  # index into ts of the next output time
    ys: object  # outputs so far (plus a bin row, see _grid._output_buffer)
    times: jax.Array | None  # accepted step boundaries (plus a bin entry), if recorded
    out_step: jax.Array  # the step that reached (or contains) each output, plus a bin
    num_accepted: jax.Array
    num_rejected: jax.Array
    event: EventState | None


class AdaptiveSteps(eqx.Module):
    """How an adaptive solve steps: the controller, first step and step budget.

    With ``dense`` (and a solver with dense output), steps run over output times and
    outputs are interpolated inside the step that contains them; otherwise every
    output time ends a step. With ``save_steps`` the outputs are the states at every
    step (``max_steps + 1`` rows), and the statistics say where the output times are
    among them. With an ``event`` the solve stops before the step in which the event's
    condition crosses zero (see ``_events.py``).
    """

    controller: object
    dt0: jax.Array | None
    max_steps: int = eqx.field(static=True)
    dense: bool = eqx.field(static=True, default=True)
    save_steps: bool = eqx.field(static=True, default=False)
    event: object = None

    def interpolates(self, solver) -> bool:
        return self.dense and solver.has_dense_output and not self.save_steps

    def run(self, solver, term, y0, args, ts, record: bool = True):
        """Solve; returns ``(ys, (y_end, state_end), grid, stats)``. Without ``record``
        the accepted step times are not kept and ``grid`` is ``None``."""
        controller, max_steps, event = self.controller, self.max_steps, self.event
        dense = self.interpolates(solver)
        save_steps = self.save_steps
        record = record or save_steps  # the step times are outputs then
        if dense and event is not None:
            raise ValueError("events need outputs at step ends (dense=False)")
        n_out = ts.shape[0]
        rows = max_steps + 1 if save_steps else n_out
        tdtype = ts.dtype
        order = solver.order
        t_end = ts[-1]
        extra_evaluations = 0
        if self.dt0 is None:
            if isinstance(term, ODETerm):
                h0 = initial_step(
                    term, ts[0], y0, args, order, controller.rtol, controller.atol, t_end - ts[0]
                )
                extra_evaluations = 2
            else:
                h0 = 0.01 * (ts[1] - ts[0])
        else:
            h0 = jnp.asarray(self.dt0, tdtype)
        state0 = solver.init(term, ts[0], y0, args)
        init = AdaptiveState(
            y=y0,
            solver_state=state0,
            t=ts[0],
            h=jnp.asarray(h0, tdtype),
            controller_state=controller.init(tdtype),
            next_output=jnp.int32(1),
            ys=_output_buffer(y0, rows),
            times=jnp.zeros((max_steps + 2,), tdtype).at[0].set(ts[0]) if record else None,
            out_step=jnp.zeros((n_out + 1,), jnp.int32),
            num_accepted=jnp.int32(0),
            num_rejected=jnp.int32(0),
            event=None if event is None else event.init(ts[0], y0, args),
        )

        def cond(s):
            going = (s.next_output < n_out) & (s.num_accepted + s.num_rejected < max_steps)
            return going if event is None else going & ~s.event.hit

        def body(s):
            # Dense: only the end time stops a step; else every output time does. A step
            # within 1% of the stop is stretched to it rather than leaving a sliver.
            target = t_end if dense else ts[s.next_output]
            last = s.h >= 0.99 * (target - s.t)
            t1 = jnp.where(last, target, s.t + s.h)
            control = term.control(s.t, t1, s.num_accepted)
            if dense:
                y1, state1, error, info = solver.dense_step(
                    term, s.t, t1, s.y, s.solver_state, args, control
                )
            else:
                y1, state1, error = solver.step_with_error(
                    term, s.t, t1, s.y, s.solver_state, args, control
                )
            ratio = controller.error_ratio(s.y, y1, error)
            accept, h_next, cstate = controller.adapt(t1 - s.t, ratio, s.controller_state, order)
            event_state = s.event
            if event is not None:
                # A step in which the condition crosses zero is not taken: the solve
                # stops at its start, and the crossing is located inside it afterwards.
                event_state = event.check(s.event, accept, s.t, t1, y1, args)
                accept = accept & ~event_state.hit
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(accept, a, b), new, old)
            n1 = s.num_accepted + accept.astype(jnp.int32)
            if dense:
                # Every output time inside the accepted step, interpolated.
                def more(c):
                    o = c[0]
                    return accept & (o < n_out) & (ts[jnp.minimum(o, n_out - 1)] <= t1)

                def write(c):
                    o, ys, out_step = c
                    value = solver.interpolate(info, (ts[o] - s.t) / (t1 - s.t))
                    return o + 1, _write(ys, o, value), out_step.at[o].set(n1 - 1)

                next_output, ys, out_step = jax.lax.while_loop(
                    more, write, (s.next_output, s.ys, s.out_step)
                )
            else:
                reached = accept & last
                next_output = s.next_output + reached.astype(jnp.int32)
                if save_steps:
                    ys = _write(s.ys, jnp.where(accept, n1, rows), y1)
                else:
                    ys = _write(s.ys, jnp.where(reached, s.next_output, n_out), y1)
                out_step = s.out_step.at[jnp.where(reached, s.next_output, n_out)].set(n1)
                # After an output time, do not let the stretched last step shrink the next.
                h_next = jnp.where(reached, jnp.maximum(h_next, s.h), h_next)
            report(
                getattr(term, "progress", None),
                (jnp.where(accept, t1, s.t) - ts[0]) / (t_end - ts[0]),
                accept & (s.num_accepted == 0),
            )
            times = s.times
            if record:
                times = times.at[jnp.where(accept, n1, max_steps + 1)].set(t1)
            return AdaptiveState(
                y=keep(y1, s.y),
                solver_state=keep(state1, s.solver_state),
                t=jnp.where(accept, t1, s.t),
                h=h_next,
                controller_state=cstate,
                next_output=next_output,
                ys=ys,
                times=times,
                out_step=out_step,
                num_accepted=n1,
                num_rejected=s.num_rejected + (~accept).astype(jnp.int32),
                event=event_state,
            )

        final = jax.lax.while_loop(cond, body, init)
        n = final.num_accepted
        times = None
        if record:
            # Entries past the last accepted step repeat the end time (never walked).
            times = jnp.where(
                jnp.arange(max_steps + 1, dtype=jnp.int32) <= n,
                final.times[: max_steps + 1],
                final.t,
            )
        stopped = final.next_output < n_out
        if event is not None:
            stopped = stopped & ~final.event.hit
        # On everything returned (outputs, final state, step times), so that jit cannot
        # drop the check whichever of them is used, e.g. only the step times by a
        # reverse pass.
        ys, y, state, times = eqx.error_if(
            (jax.tree.map(lambda b: b[:rows], final.ys), final.y, final.solver_state, times),
            stopped,
            f"max_steps={max_steps} steps were not enough to reach the last output time "
            "(a stiff problem, a blow-up, NaN in the vector field, or a tolerance too "
            "tight): raise max_steps, loosen rtol/atol, or check the vector field",
        )
        out_step = final.out_step[:n_out]
        reached = final.next_output  # outputs at ts reached (all, unless an event)
        grid = None
        if record:
            if save_steps:
                index = jnp.arange(rows, dtype=jnp.int32)
                grid = RecordedGrid(
                    times=times,
                    out_step=jnp.where(index <= n, index, -1),
                    num_steps=n,
                    num_out=n + 1,
                )
            else:
                index = jnp.arange(n_out, dtype=jnp.int32)
                grid = RecordedGrid(
                    times=times,
                    out_step=jnp.where(index < reached, out_step, -1),
                    num_steps=n,
                    out_times=ts if dense else None,
                    num_out=None if event is None else reached,
                )
        stats = {
            "num_steps": n,
            "rejected_steps": final.num_rejected,
            "vector_field_evaluations": solver.init_evaluations
            + extra_evaluations
            + (n + final.num_rejected) * solver.evaluations_per_step,
        }
        # What odeint needs to assemble its Solution (removed before users see stats).
        stats["_saved_rows"] = n + 1 if save_steps else reached
        if save_steps:
            stats["_step_times"] = times
            stats["_output_rows"] = jnp.where(
                jnp.arange(n_out, dtype=jnp.int32) < reached, out_step, jnp.int32(-1)
            )
        if event is not None:
            stats["_event"] = final.event
            stats["_t_stop"] = final.t
        return ys, (y, state), grid, stats
