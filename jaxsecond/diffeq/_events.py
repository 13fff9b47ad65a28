"""Events: stop a solve where a condition of the state crosses zero.

The solve loop (fixed or adaptive) evaluates the condition after every step. The step
in which it changes sign is not taken: the loop stops at its start ``(t_k, y_k)``.
The crossing is then located inside that step by root finding on

    g(t) = condition(t, Step(t_k, y_k -> t))

where ``Step`` is one step of the solver itself from ``t_k`` to ``t`` (exact at
``t_k``, with the method's order inside the step, so ``g`` has the derivatives of
the discrete solution). The event time is differentiated implicitly (implicit function
theorem, through :func:`jaxsecond.custom_root`): ``dt_e = -(dg/dtheta) / (dg/dt)``,
in every mode and to second order, with ``y_k`` differentiated by the solve's adjoint.
The state at the event is ``Step(t_k, y_k -> t_e)``, so it moves with ``t_e`` too.

Reference: R. T. Q. Chen, B. Amos, M. Nickel, "Learning neural event functions for
ordinary differential equations", ICLR 2021 (differentiable event times).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxsecond.diffeq._grid import FixedGrid, RecordedGrid, _output_buffer, _write
from jaxsecond.diffeq._progress import report

_DIRECTIONS = (None, 1, -1)


class Event(eqx.Module):
    """Stop the solve where ``condition(t, y, args)`` crosses zero.

    Pass to :func:`odeint` as ``event=Event(condition)``; it then returns a
    :class:`Solution` whose ``t_final``/``y_final`` are the event time and state (or
    the last time in ``ts`` and the state there, with ``event_happened`` false, if the
    condition never crosses zero). Outputs at times in ``ts`` after the event are
    ``inf``. The event time is found by root finding inside the step where the sign
    changes and is differentiable (implicitly, by the implicit function theorem) with
    respect to ``y0``, ``args`` and closed-over parameters of the vector field and of
    the condition, in every autodiff mode.

    Attributes:
        condition: ``(t, y, args) -> scalar``; the event happens where it changes
            sign (a zero at the initial time does not count).
        direction: ``None`` (either way), ``1`` (only from negative to positive as the
            solve proceeds) or ``-1`` (only from positive to negative).

    Example:
        >>> import jax, jax.numpy as jnp, jaxsecond
        >>> def fall(t, y, g):  # height and velocity of a dropped ball
        ...     return jnp.array([y[1], -g])
        >>> ground = jaxsecond.Event(lambda t, y, g: y[0])
        >>> def landing(g):
        ...     sol = jaxsecond.odeint(fall, jnp.array([1.0, 0.0]), jnp.array([0.0, 2.0]),
        ...                            g, dt0=0.1, event=ground)
        ...     return sol.t_final
        >>> print(f"{float(landing(9.81)):.5f} {(2 / 9.81) ** 0.5:.5f}")
        0.45152 0.45152
        >>> print(f"{float(jax.grad(landing)(9.81)):.5f}")  # d/dg sqrt(2/g)
        -0.02301
    """

    condition: Callable
    direction: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if not callable(self.condition):
            raise TypeError(f"Event: condition must be callable, got {self.condition!r}")
        if self.direction not in _DIRECTIONS:
            raise ValueError(f"Event: direction must be None, 1 or -1, got {self.direction!r}")


class EventState(eqx.Module):
    """The condition at the current state, and whether the last step crossed zero."""

    value: jax.Array
    hit: jax.Array
    t_cross: jax.Array  # end of the step in which the crossing happened


class EventCheck(eqx.Module):
    """An event as the solve loop uses it: the (closure-converted, solve-time)
    condition, evaluated without derivatives."""

    condition: Callable  # (t, y, args) -> scalar, in solve time
    direction: int | None = eqx.field(static=True)

    def value(self, t, y, args):
        c = jax.lax.stop_gradient(self.condition(t, jax.lax.stop_gradient(y), args))
        c = jnp.asarray(c)
        return jnp.real(c) if jnp.iscomplexobj(c) else c

    def init(self, t0, y0, args) -> EventState:
        c = self.value(t0, y0, args)
        return EventState(value=c, hit=jnp.bool_(False), t_cross=jnp.asarray(t0))

    def crossed(self, c0, c1):
        up = (c0 < 0) & (c1 >= 0)
        down = (c0 > 0) & (c1 <= 0)
        if self.direction == 1:
            return up
        if self.direction == -1:
            return down
        return up | down

    def check(self, state: EventState, accept, t0, t1, y1, args) -> EventState:
        """After a step ``t0 -> t1`` ending at ``y1`` (kept if ``accept``)."""
        c1 = self.value(t1, y1, args)
        hit = accept & self.crossed(state.value, c1)
        # Zero is no sign: keep the last nonzero value to compare against.
        moved = accept & ~hit & (c1 != 0)
        return EventState(
            value=jnp.where(moved, c1, state.value),
            hit=hit,
            t_cross=jnp.where(hit, t1, state.t_cross),
        )


class FixedEventSteps(eqx.Module):
    """Fixed steps (``steps_per_interval`` per output interval) in a while loop that
    stops at an event. The same steps as the plain fixed-step solve."""

    steps_per_interval: int = eqx.field(static=True)
    event: EventCheck

    def run(self, solver, term, y0, args, ts, record: bool = True):
        fixed = FixedGrid(ts, self.steps_per_interval)
        spi, total, n_out = self.steps_per_interval, fixed.num_steps, ts.shape[0]
        event = self.event
        ys = _output_buffer(y0, n_out)
        state0 = solver.init(term, ts[0], y0, args)

        def cond(c):
            k, *_, ev = c
            return (k < total) & ~ev.hit

        def body(c):
            k, y, state, ys, ev = c
            t0, t1 = fixed.step_times(k)
            y1, state1 = solver.step(term, t0, t1, y, state, args, term.control(t0, t1, k))
            ev = event.check(ev, jnp.bool_(True), t0, t1, y1, args)
            take = ~ev.hit
            reached = take & ((k + 1) % spi == 0)
            ys = _write(ys, jnp.where(reached, (k + 1) // spi, n_out), y1)
            report(getattr(term, "progress", None), (k + 1) / total, k == 0)
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(take, a, b), new, old)
            return k + take.astype(k.dtype), keep(y1, y), keep(state1, state), ys, ev

        init = (jnp.int32(0), y0, state0, ys, event.init(ts[0], y0, args))
        k, y, state, ys, ev = jax.lax.while_loop(cond, body, init)
        ys = jax.tree.map(lambda b: b[:n_out], ys)
        reached = k // spi + 1
        grid = None
        if record:
            index = jnp.arange(total + 1, dtype=jnp.int32)
            times = jax.vmap(lambda j: fixed.step_times(j)[0])(index[:-1])
            times = jnp.concatenate([times, ts[-1:]])
            outputs = jnp.arange(n_out, dtype=jnp.int32)
            grid = RecordedGrid(
                times=times,
                out_step=jnp.where(outputs < reached, outputs * spi, -1),
                num_steps=k,
                num_out=reached,
            )
        stats = {
            "num_steps": k,
            "vector_field_evaluations": solver.init_evaluations
            + (k + ev.hit.astype(k.dtype)) * solver.evaluations_per_step,
            "_saved_rows": reached,
            "_event": ev,
            "_t_stop": jnp.where(k < total, fixed.step_times(jnp.minimum(k, total - 1))[0], ts[-1]),
        }
        return ys, (y, state), grid, stats


def _step_to(solver, term, t_k, y_k, state_k, args, t, index):
    return solver.step(term, t_k, t, y_k, state_k, args, term.control(t_k, t, index))[0]


def _fresh_state(solver, term, t_k, y_k, args):
    """The solver state at ``y_k`` rebuilt from ``y_k`` alone (an FSAL stage is
    recomputed; a reversible solver restarts with ``z = y``, i.e. takes its base
    method's step), so the event step depends on ``y_k`` only: every adjoint
    differentiates ``y_k``, not all differentiate the solver's state."""
    return solver.init(term, t_k, y_k, args)


def locate(solver, term, condition, t_k, y_k, state_k, args, t_b, index, c_k, max_iter=100):
    """The zero of ``g(t) = condition(t, Step(t_k -> t))`` in ``[t_k, t_b]``, where
    ``g(t_k)`` has the sign of ``c_k`` and ``g(t_b)`` the other (Illinois method:
    regula falsi that halves the stale end's value, so the bracket shrinks from both
    sides)."""
    t_k, t_b, c_k, y_k, state_k, args = jax.lax.stop_gradient((t_k, t_b, c_k, y_k, state_k, args))

    def g(t):
        c = condition(t, _step_to(solver, term, t_k, y_k, state_k, args, t, index), args)
        return jnp.real(jnp.asarray(c)).astype(t_k.dtype)

    eps = jnp.finfo(t_k.dtype).eps
    ga = c_k.astype(t_k.dtype)
    gb = g(t_b)

    def cond(c):
        a, _ga, b, _gb, _side, i, _t, gt = c
        return (
            (jnp.abs(b - a) > 4 * eps * jnp.maximum(jnp.abs(a), jnp.abs(b)))
            & (i < max_iter)
            & (gt != 0)
        )

    def body(c):
        a, ga, b, gb, side, i, _, _ = c
        t = (a * gb - b * ga) / (gb - ga)
        inside = (t > jnp.minimum(a, b)) & (t < jnp.maximum(a, b)) & jnp.isfinite(t)
        t = jnp.where(inside, t, 0.5 * (a + b))
        gt = g(t)
        same_as_b = jnp.sign(gt) == jnp.sign(gb)
        # Replace the end whose sign gt shares; halve the other if it was kept twice.
        new_b, new_gb = jnp.where(same_as_b, t, b), jnp.where(same_as_b, gt, gb)
        new_a, new_ga = jnp.where(same_as_b, a, t), jnp.where(same_as_b, ga, gt)
        new_ga = jnp.where(same_as_b & (side == -1), 0.5 * new_ga, new_ga)
        new_gb = jnp.where(~same_as_b & (side == 1), 0.5 * new_gb, new_gb)
        side = jnp.where(same_as_b, -1, 1).astype(jnp.int32)
        return new_a, new_ga, new_b, new_gb, side, i + 1, t, gt

    init = (t_k, ga, t_b, gb, jnp.int32(0), jnp.int32(0), t_b, gb)
    _, _, b, _, _, _, t, gt = jax.lax.while_loop(cond, body, init)
    # An exact zero if one was hit, else the end past the crossing.
    return jnp.where(gt == 0, t, b)


def event_time_and_state(solver, term, condition, final, args, event_state, t_stop, index):
    """``(t_e, y_e, happened)``: the differentiable event time and state (``t_end``
    and the final state if no event happened)."""
    from jaxsecond.implicit import custom_root

    y_k = final[0]
    happened = event_state.hit
    t_k = jax.lax.stop_gradient(t_stop)
    t_b = jnp.where(happened, event_state.t_cross, t_k)

    def residual(t, y_k, term, condition, args):
        state_k = _fresh_state(solver, term, t_k, y_k, args)
        y = _step_to(solver, term, t_k, y_k, state_k, args, t, index)
        c = jnp.real(jnp.asarray(condition(t, y, args))).astype(t.dtype)
        # Without an event the "root" is the end time, so every derivative is defined.
        return jnp.where(happened, c, t - t_k)

    def find(t_guess, y_k, term, condition, args):
        state_k = _fresh_state(solver, term, t_k, y_k, args)
        t = locate(solver, term, condition, t_k, y_k, state_k, args, t_b, index, event_state.value)
        return jnp.where(happened, t, t_k)

    solve = custom_root(residual, solve="lu")(find)
    t_e = solve(t_k, y_k, term, condition, args)
    state_k = _fresh_state(solver, term, t_k, y_k, args)
    y_e = _step_to(solver, term, t_k, y_k, state_k, args, t_e, index)
    return t_e, y_e, happened
