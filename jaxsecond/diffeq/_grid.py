"""The steps of a solve, and one iterator over them, forwards and backwards.

Every solve, fixed-step or adaptive, ends up as a grid: a sequence of steps numbered
``0 .. num_steps - 1`` and, for each output time ``ts[o]``, the number of steps taken
when it is reached (``out_step[o]``, ``out_step[0] = 0``). Adjoints and statistics
only ever see a grid, through :func:`walk_forward` and :func:`walk_backward`, so a new
adjoint is written once for fixed and adaptive steps.

* :class:`FixedGrid`: ``steps_per_interval`` equal steps per output interval, known
  before the solve (loops of static length: every autodiff mode).
* :class:`RecordedGrid`: the accepted steps of an adaptive solve (``times`` holds the
  step boundaries, padded to ``max_steps + 1`` entries; loops run ``num_steps`` times,
  not ``max_steps``). With a solver's dense output, outputs lie inside steps and are
  interpolated; the reverse pass adds their cotangents through the interpolant.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxsecond.diffeq._integrate import integrate, step_times


class FixedGrid(eqx.Module):
    """Equal steps: ``steps_per_interval`` of them between consecutive ``ts``."""

    ts: jax.Array
    steps_per_interval: int = eqx.field(static=True)

    @property
    def num_steps(self) -> int:
        return (self.ts.shape[0] - 1) * self.steps_per_interval

    @property
    def num_outputs(self) -> int:
        return self.ts.shape[0]

    @property
    def last_output(self):
        return jnp.int32(self.ts.shape[0] - 1)

    @property
    def out_step(self):
        return jnp.arange(self.ts.shape[0], dtype=jnp.int32) * self.steps_per_interval

    @property
    def t_start(self):
        return self.ts[0]

    def step_times(self, k):
        i = k // self.steps_per_interval
        return step_times(self.ts, i, k - i * self.steps_per_interval, self.steps_per_interval)

    def solve(self, solver, term, y0, args):
        """``(ys, (y_end, solver_state_end))``."""
        return integrate(solver, term, y0, args, self.ts, self.steps_per_interval)


class RecordedGrid(eqx.Module):
    """The accepted steps of an adaptive solve.

    Without ``out_times`` every output time ends a step (``out_step[o]`` steps reach
    it). With ``out_times`` (solvers with dense output) outputs are interpolated:
    output ``o`` lies inside step ``out_step[o]``, at ``out_times[o]``. With
    ``num_out``, only outputs ``0 .. num_out - 1`` are reached (a solve that saves
    every step, or one stopped by an event); the rest have ``out_step`` -1.
    """

    times: jax.Array  # [max_steps + 1]; entries past num_steps repeat the end time
    out_step: jax.Array  # int32 [len(ts)]
    num_steps: jax.Array  # int32 scalar
    out_times: jax.Array | None = None
    num_out: jax.Array | None = None

    @property
    def dense(self) -> bool:
        return self.out_times is not None

    @property
    def num_outputs(self) -> int:
        return self.out_step.shape[0]

    @property
    def last_output(self):
        """The index of the last output reached."""
        if self.num_out is None:
            return jnp.int32(self.num_outputs - 1)
        return self.num_out - 1

    @property
    def t_start(self):
        return self.times[0]

    def step_times(self, k):
        return self.times[k], self.times[k + 1]

    def solve(self, solver, term, y0, args):
        """``(ys, (y_end, solver_state_end))``: the solve again, on the recorded steps."""
        n_out = self.num_outputs
        ys = _output_buffer(y0, n_out)

        def step(k, t0, t1, carry):
            y, state, ys, o = carry
            control = term.control(t0, t1, k)
            if not self.dense:
                y, state = solver.step(term, t0, t1, y, state, args, control)
                hit = (k + 1) == self.out_step[o]
                ys = _write(ys, jnp.where(hit, o, n_out), y)
                return y, state, ys, o + hit.astype(o.dtype)
            y1, state1, _, info = solver.dense_step(term, t0, t1, y, state, args, control)

            def more(c):
                return (c[0] < n_out) & (self.out_step[jnp.minimum(c[0], n_out - 1)] == k)

            def write(c):
                o, ys = c
                value = solver.interpolate(info, (self.out_times[o] - t0) / (t1 - t0))
                return o + 1, _write(ys, o, value)

            o, ys = jax.lax.while_loop(more, write, (o, ys))
            return y1, state1, ys, o

        state0 = solver.init(term, self.t_start, y0, args)
        y, state, ys, _ = walk_forward(self, step, (y0, state0, ys, jnp.int32(1)))
        return jax.tree.map(lambda b: b[:n_out], ys), (y, state)


def _output_buffer(y0, n_out):
    """Rows ``0 .. n_out - 1`` for the outputs (row 0 is ``y0``), row ``n_out`` a bin for
    the writes of steps that reach no output (an unconditional write, done in place)."""
    return jax.tree.map(lambda y: jnp.zeros((n_out + 1, *y.shape), y.dtype).at[0].set(y), y0)


def _write(buffer, index, value):
    return jax.tree.map(lambda b, v: b.at[index].set(v), buffer, value)


def walk_forward(grid, step_fn, carry, start=0, stop=None):
    """``carry = step_fn(k, t0, t1, carry)`` for steps ``start .. stop - 1``."""
    stop = grid.num_steps if stop is None else stop

    def body(k, c):
        k = jnp.asarray(k, jnp.int32)
        t0, t1 = grid.step_times(k)
        return step_fn(k, t0, t1, c)

    return jax.lax.fori_loop(start, stop, body, carry)


def walk_backward(grid, step_fn, carry, ct_ys, add_ct, add_dense=None):
    """Visit the steps last to first: ``carry = step_fn(k, t0, t1, carry)``.

    Before step ``k`` (holding the state at its end, time ``t1``), the cotangent of the
    output reached there is added with ``carry = add_ct(carry, ct, hit, t1)``, where
    ``ct`` is zero unless ``hit``; ``ct_ys[0]`` is added (``hit`` true) after the last
    step. On a dense grid, outputs inside step ``k`` are added after it instead (the
    carry then holds the state at its start), each with ``carry = add_dense(carry, k,
    t0, t1, t, ct)``.
    """
    carry, _ = walk_backward_range(
        grid,
        step_fn,
        carry,
        ct_ys,
        add_ct,
        0,
        grid.num_steps,
        grid.last_output,
        add_dense,
    )
    return add_ct(carry, jax.tree.map(lambda c: c[0], ct_ys), jnp.bool_(True), grid.t_start)


def walk_backward_range(grid, step_fn, carry, ct_ys, add_ct, start, stop, output, add_dense=None):
    """:func:`walk_backward` over steps ``stop - 1`` down to ``start`` only; ``output``
    is the index of the next output (going backwards) whose cotangent is pending.
    Returns ``(carry, output)``."""
    out_step = grid.out_step
    dense = getattr(grid, "dense", False)
    if dense and add_dense is None:
        raise ValueError("this reverse pass does not support interpolated outputs")

    def body(r, c):
        carry, o = c
        k = stop - 1 - jnp.asarray(r, jnp.int32)
        t0, t1 = grid.step_times(k)
        if not dense:
            hit = (k + 1) == out_step[o]
            carry = add_ct(carry, _mask(jax.tree.map(lambda c: c[o], ct_ys), hit), hit, t1)
            o = o - hit.astype(o.dtype)
            return step_fn(k, t0, t1, carry), o
        carry = step_fn(k, t0, t1, carry)

        def more(c):
            return (c[1] >= 1) & (out_step[c[1]] == k)

        def add(c):
            carry, o = c
            ct = jax.tree.map(lambda x: x[o], ct_ys)
            return add_dense(carry, k, t0, t1, grid.out_times[o], ct), o - 1

        return jax.lax.while_loop(more, add, (carry, o))

    return jax.lax.fori_loop(0, stop - start, body, (carry, output))


def _mask(tree, keep):
    return jax.tree.map(lambda x: jnp.where(keep, x, jnp.zeros_like(x)), tree)


# --------------------------------------------------------------------------------------
# Checkpoints: a bounded number of states, spread evenly over a solve of unknown length.
# --------------------------------------------------------------------------------------


class Checkpoints(eqx.Module):
    """States at step counts ``positions[0 .. count - 1]`` (``positions[0] = 0``), evenly
    spaced ``stride`` steps apart."""

    positions: jax.Array
    ys: object
    states: object
    count: jax.Array
    stride: jax.Array


def record_checkpoints(grid, solver, term, y0, args, slots: int, start=0, stop=None, state0=None):
    """Solve on ``grid`` keeping at most ``slots`` states: every step while they fit,
    then every 2nd, 4th, ... (when the slots fill up, every other one is dropped and the
    stride doubles). Works without knowing the number of steps in advance; segments
    between checkpoints are at most :func:`max_stride` steps long.

    With ``start``/``stop`` only steps ``start .. stop - 1`` are taken, from ``(y0,
    state0)`` at step ``start`` (positions stay absolute step counts).

    Returns ``(checkpoints, (y_end, state_end))``.
    """
    if slots < 2 or slots % 2:
        raise ValueError(f"checkpoint slots must be an even number >= 2, got {slots}")
    if state0 is None:
        state0 = solver.init(term, grid.t_start, y0, args)
    buffer = lambda tree: jax.tree.map(
        lambda x: jnp.zeros((slots + 1, *x.shape), x.dtype).at[0].set(x), tree
    )
    keep = jnp.concatenate(
        [
            jnp.arange(0, slots, 2, dtype=jnp.int32),
            jnp.full((slots - slots // 2 + 1,), slots, jnp.int32),
        ]
    )

    def compact(c):
        positions, ys, states, _count, stride = c
        take = lambda tree: jax.tree.map(lambda b: b[keep], tree)
        return positions[keep], take(ys), take(states), jnp.int32(slots // 2), stride * 2

    def step(k, t0, t1, carry):
        y, state, (positions, ys, states, count, stride) = carry
        y, state = solver.step(term, t0, t1, y, state, args, term.control(t0, t1, k))
        store = (k + 1 - start) % stride == 0
        slot = jnp.where(store, count, slots)
        positions = positions.at[slot].set(k + 1)
        ys, states = _write(ys, slot, y), _write(states, slot, state)
        count = count + store.astype(count.dtype)
        book = jax.lax.cond(
            count == slots, compact, lambda c: c, (positions, ys, states, count, stride)
        )
        return y, state, book

    positions = jnp.full((slots + 1,), -1, jnp.int32).at[0].set(start)
    book = (positions, buffer(y0), buffer(state0), jnp.int32(1), jnp.int32(1))
    y, state, book = walk_forward(grid, step, (y0, state0, book), start, stop)
    positions, ys, states, count, stride = book
    return Checkpoints(positions, ys, states, count, stride), (y, state)


def max_stride(num_steps: int, slots: int) -> int:
    """The longest segment :func:`record_checkpoints` leaves for ``num_steps`` steps."""
    stride, count = 1, 1
    for m in range(1, num_steps + 1):
        if m % stride == 0:
            count += 1
            if count == slots:
                count, stride = slots // 2, stride * 2
    return stride


def relative_distance(a, b):
    """``max |a - b| / max |b|`` over every component of two pytrees (0 if ``b`` is 0)."""
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    num = jnp.max(jnp.stack([jnp.max(jnp.abs(x - y)) for x, y in pairs]))
    den = jnp.max(jnp.stack([jnp.max(jnp.abs(y)) for y in jax.tree.leaves(b)]))
    tiny = np.finfo(np.dtype(jnp.real(num).dtype)).tiny
    return num / jnp.maximum(den, tiny)
