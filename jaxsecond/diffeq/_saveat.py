"""What a solve returns: :class:`SaveAt` chooses, :class:`Solution` holds it."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp


class SaveAt(eqx.Module):
    """What :func:`odeint` saves. Given (or with an ``event``), ``odeint`` returns a
    :class:`Solution` instead of the bare outputs.

    Attributes:
        t1: save only the final state (``ys`` has one row). Adaptive solves then
            ignore the intermediate times in ``ts``; fixed-step solves still cut
            their steps at them.
        steps: save the state after every step (rows ``0 .. num_steps``, the
            initial state first; ``max_steps + 1`` rows for adaptive solves, rows
            past the last step are ``inf``, as their times). Every time in ``ts``
            ends a step, so the outputs at ``ts`` are among the rows.
        fn: save ``fn(t, y, args)`` instead of ``y`` (any pytree). Applied to the
            saved states after the solve, so memory is that of the states.
        dense: keep every step so that :meth:`Solution.evaluate` gives the solution
            at any time: the solver's own interpolant where it has one
            (:class:`Dopri5`, order 4), else cubic Hermite interpolation from the
            states and vector field at both ends of the step (order 3). Costs memory
            of ``max_steps + 1`` states on adaptive solves.

    Example:
        >>> import jax.numpy as jnp, jaxsecond
        >>> sol = jaxsecond.odeint(lambda t, y, a: -y, jnp.array(1.0),
        ...                        jnp.array([0.0, 1.0]), rtol=1e-6, atol=1e-8,
        ...                        saveat=jaxsecond.SaveAt(steps=True, dense=True))
        >>> n = int(sol.num_saved)  # the initial state and one row per step
        >>> print(f"{float(sol.ts[n - 1]):.1f} {float(sol.evaluate(0.5)):.6f}")
        1.0 0.606531
    """

    t1: bool = eqx.field(static=True, default=False)
    steps: bool = eqx.field(static=True, default=False)
    fn: Callable | None = eqx.field(static=True, default=None)
    dense: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        for name in ("t1", "steps", "dense"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(
                    f"SaveAt: {name} must be True or False, got {getattr(self, name)!r}"
                )
        if self.fn is not None and not callable(self.fn):
            raise TypeError(f"SaveAt: fn must be callable, got {self.fn!r}")
        if self.t1 and self.steps:
            raise ValueError("SaveAt: give t1=True or steps=True, not both")


class DenseInterpolation(eqx.Module):
    """The solution between step ends: states at every step (solve time ``times``,
    increasing) and what is needed to rebuild each step's interpolant. The solver and
    term are split into arrays and a static rest, so a :class:`Solution` can leave
    ``jax.jit``."""

    arrays: object  # the array leaves of (solver, term)
    rest: object = eqx.field(static=True)
    args: object
    times: jax.Array  # solve time, rows past num_steps repeat the last time
    ys: object  # states after 0 .. num_steps steps
    num_steps: jax.Array
    sign: object  # user time = sign * solve time

    def __init__(self, solver, term, args, times, ys, num_steps, sign):
        self.arrays, self.rest = eqx.partition((solver, term), eqx.is_array)
        self.args, self.times, self.ys = args, times, ys
        self.num_steps, self.sign = num_steps, sign

    def evaluate(self, t):
        s = jnp.asarray(self.sign * jnp.asarray(t, self.times.dtype), self.times.dtype)
        if s.ndim:
            return jax.vmap(self._at)(s.reshape(-1))
        return self._at(s)

    def _at(self, s):
        n = jnp.maximum(self.num_steps, 1)
        first, last = self.times[0], self.times[self.num_steps]
        s = eqx.error_if(
            s,
            (s < first) | (s > last) | jnp.isnan(s),
            "Solution.evaluate: t lies outside the solved interval",
        )
        k = jnp.clip(jnp.searchsorted(self.times, s, side="right") - 1, 0, n - 1)
        t0, t1 = self.times[k], self.times[k + 1]
        y0, y1 = jax.tree.map(lambda b: b[k], self.ys), jax.tree.map(lambda b: b[k + 1], self.ys)
        h = t1 - t0
        theta = jnp.where(h > 0, (s - t0) / jnp.where(h > 0, h, 1), 0)
        (solver, term), args = eqx.combine(self.arrays, self.rest), self.args
        if solver.has_dense_output:
            # The step is recomputed from its start, with the same stages as the solve.
            state0 = solver.init(term, t0, y0, args)
            info = solver.dense_step(term, t0, t1, y0, state0, args, term.control(t0, t1, k))[3]
            return solver.interpolate(info, theta)
        f0, f1 = term.vf(t0, y0, args), term.vf(t1, y1, args)

        def hermite(a, b, fa, fb):
            th = theta.astype(jnp.real(a).dtype)
            h_ = h.astype(th.dtype)
            return (
                (1 + th * th * (2 * th - 3)) * a
                + th * (1 - th) ** 2 * h_ * fa
                + th * th * (3 - 2 * th) * b
                + th * th * (th - 1) * h_ * fb
            )

        return jax.tree.map(hermite, y0, y1, f0, f1)


class Solution(eqx.Module):
    """The result of :func:`odeint` with ``saveat`` or ``event``.

    Attributes:
        ts: the times of the rows of ``ys``: ``ts`` as given, the final time
            (``SaveAt(t1=True)``) or the end of every step (``SaveAt(steps=True)``);
            ``inf`` past the end of the solve.
        ys: the saved states (or ``SaveAt.fn`` of them), one row per time in
            ``ts``; ``inf`` for times the solve did not reach (past an event, or
            past the last step).
        num_saved: how many rows of ``ys`` hold values.
        t_final: where the solve ended: the event time, else the last time in ``ts``.
            Differentiable (the event time implicitly).
        y_final: the state at ``t_final``.
        event_happened: whether an event stopped the solve.
    """

    ts: jax.Array
    ys: object
    num_saved: jax.Array
    t_final: jax.Array
    y_final: object
    event_happened: jax.Array
    interpolation: DenseInterpolation | None = None

    def evaluate(self, t):
        """The solution at time ``t`` (a scalar, or an array of times: one row each);
        ``t`` must lie in the solved interval. Needs ``SaveAt(dense=True)``.
        Differentiable with respect to ``t`` and to whatever the solve depends on."""
        if self.interpolation is None:
            raise ValueError("Solution.evaluate needs odeint(..., saveat=SaveAt(dense=True))")
        return self.interpolation.evaluate(t)
