"""How gradients of a solve are computed: the adjoints.

* :class:`StoreAll`: exact discrete gradients; reverse mode keeps every step.
* :class:`Checkpointed`: exact; keeps a few states and recomputes between them.
* :class:`ReversibleAdjoint`: exact up to round-off; keeps nothing (or a few
  checkpoints) and reconstructs states backwards with the solver's inverse step.
* :class:`BacksolveAdjoint`: approximate (continuous adjoint); keeps nothing.

Each adjoint is only a way of differentiating the one solve loop; it sees the steps
as a grid (``_grid.py``) and implements ``backward``: the cotangents of the inputs
from the cotangents of the outputs. Fixed-step :class:`StoreAll` and
:class:`Checkpointed` differentiate the loop directly instead.

Every other solve is a ``custom_jvp`` whose tangent is a primitive, linear in the
input tangents, computed by forward-mode propagation along the recorded steps (O(1)
memory); reverse mode transposes that primitive, and its transpose rule is the
adjoint's ``backward``. Both rules are ordinary JAX code, so forward mode never meets a
``custom_vjp`` and second order (Hessian-vector products) works through every
adjoint, on fixed and adaptive steps.
"""

from __future__ import annotations

import abc
import functools
import itertools
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.interpreters import ad

from jaxsecond._checks import check_count
from jaxsecond.diffeq._grid import (
    FixedGrid,
    max_stride,
    record_checkpoints,
    relative_distance,
    walk_backward,
    walk_backward_range,
    walk_forward,
)
from jaxsecond.diffeq._integrate import integrate, step_times
from jaxsecond.diffeq._solvers import (
    AbstractReversibleSolver,
    AbstractSolver,
    Heun,
    Midpoint,
    Reversible,
    ReversibleHeun,
)
from jaxsecond.diffeq._terms import SDETerm, negate, scale_by
from jaxsecond.diffeq._vprim import filter_bind, filter_vprim


def run_steps(stepping, solver, term, y0, args, ts, record=True):
    """The forward solve: ``(ys, (y_end, state_end), grid, stats)``. ``stepping`` is an
    int (equal steps per output interval) or an ``AdaptiveSteps``; without ``record``
    an adaptive solve keeps no grid (``None``)."""
    if isinstance(stepping, int):
        grid = FixedGrid(ts, stepping)
        ys, final = grid.solve(solver, term, y0, args)
        stats = {
            "num_steps": grid.num_steps,
            "vector_field_evaluations": solver.init_evaluations
            + grid.num_steps * solver.evaluations_per_step,
        }
        return ys, final, grid, stats
    return stepping.run(solver, term, y0, args, ts, record)


class AbstractAdjoint(eqx.Module):
    """A way of differentiating a solve.

    Subclasses implement ``backward(solver, grid, final, term, y0, args, ct_ys,
    ct_final) -> (ct_term, ct_y0, ct_args)``: cotangents of the inputs (``None`` at
    non-differentiable leaves) from those of the outputs ``ys`` and of the final
    ``(y, solver_state)``. ``term`` is closure-converted, so its closed-over arrays are
    leaves. ``grid`` is walked with ``_grid.walk_backward``. ``check`` may refuse a
    solver or term at trace time. An adjoint whose reverse pass cannot take outputs
    interpolated inside steps sets ``interpolates_outputs = False``; adaptive solves
    then end a step at every output time.
    """

    interpolates_outputs: ClassVar[bool] = True

    def check(self, solver: AbstractSolver, term, adaptive: bool) -> None:
        """Raise ``ValueError`` if this adjoint cannot differentiate this solve."""

    def solve(self, solver, term, y0, args, ts, stepping):
        """``(ys, (final, grid, stats))``; see :func:`run_steps`."""
        return differentiated_solve(self, solver, term, y0, args, ts, stepping)

    @abc.abstractmethod
    def backward(self, solver, grid, final, term, y0, args, ct_ys, ct_final):
        """Reverse pass: cotangents of ``(term, y0, args)``."""


class StoreAll(AbstractAdjoint):
    """Differentiate through every step: exact discrete gradients, memory linear in the
    number of steps for reverse mode (forward mode needs none). With adaptive steps
    the states of every accepted step are stored (``max_steps`` slots)."""

    def solve(self, solver, term, y0, args, ts, stepping):
        if isinstance(stepping, int):
            return _direct_solve(solver, term, y0, args, ts, stepping)
        return super().solve(solver, term, y0, args, ts, stepping)

    def backward(self, solver, grid, final, term, y0, args, ct_ys, ct_final):
        slots = _recorded_steps(grid) + 2
        return _stored_backward(solver, grid, term, y0, args, ct_ys, ct_final, slots + slots % 2)


class Checkpointed(AbstractAdjoint):
    """Store ``num_checkpoints`` states and recompute between them in the backward pass.

    Fixed steps: ``num_checkpoints`` per output interval (``jax.checkpoint``); reverse-mode
    memory ``(len(ts) - 1) * num_checkpoints`` saved states plus the intermediates of
    ``ceil(steps_per_interval / num_checkpoints)`` recomputed steps, minimal near
    ``num_checkpoints = sqrt(steps_per_interval)``.

    Adaptive steps: at most ``k = num_checkpoints`` (rounded up to even) states over the
    whole solve, spread evenly whatever the number of steps taken. With ``levels = 1``
    each segment between them (at most about ``2 max_steps / k`` steps) is recomputed
    into a buffer and walked back. Each further level checkpoints the segments again
    (recursive checkpointing): ``k`` more states and one more forward pass per level,
    segments about ``k / 2`` times shorter, so the states held are at most ``levels * k``
    plus one segment of about ``2^levels max_steps / k^levels``. With ``levels`` near
    ``log(max_steps) / log(k / 2)`` memory is bounded by the checkpoints alone, for
    ``levels`` extra forward passes. Exact discrete gradients, as :class:`StoreAll`.

    Example:
        >>> import jax, jax.numpy as jnp, jaxsecond
        >>> solve = lambda a, adjoint: jaxsecond.odeint(
        ...     lambda t, y, a: -a * y, jnp.array([1.0]), jnp.array([0.0, 1.0]), a,
        ...     solver=jaxsecond.Dopri5(), rtol=1e-8, atol=1e-8, adjoint=adjoint)[-1, 0]
        >>> g = jax.grad(solve)(2.0, jaxsecond.Checkpointed(4, levels=3))
        >>> bool(jnp.allclose(g, jax.grad(solve)(2.0, jaxsecond.StoreAll()), rtol=1e-12))
        True
    """

    num_checkpoints: int = 4
    levels: int = 1

    def __check_init__(self):
        check_count(self.num_checkpoints, "num_checkpoints")
        check_count(self.levels, "levels")

    def solve(self, solver, term, y0, args, ts, stepping):
        if isinstance(stepping, int):
            return _checkpointed_fixed(self, solver, term, y0, args, ts, stepping)
        return super().solve(solver, term, y0, args, ts, stepping)

    def backward(self, solver, grid, final, term, y0, args, ct_ys, ct_final):
        slots = max(2, self.num_checkpoints + self.num_checkpoints % 2)
        return _stored_backward(solver, grid, term, y0, args, ct_ys, ct_final, slots, self.levels)


class ReversibleAdjoint(AbstractAdjoint):
    """Exact gradients in memory flat in the number of steps, for reversible solvers
    (:class:`ReversibleHeun`, :class:`Reversible`).

    Reverse mode reconstructs each state from the next with the solver's inverse step
    and back-propagates through that one step, so the trajectory is never stored;
    compute is about one extra forward pass. Forward mode propagates tangents alongside
    the solve. No derivatives with respect to ``ts``.

    Reconstruction is exact in exact arithmetic only: round-off grows backwards at the
    rate of the scheme's parasitic mode, which on stiff, dissipative or chaotic problems
    (and in float32) can swamp the gradient. So the reverse pass measures it: the
    *reconstruction error* is the largest relative distance, ``max |y_rec - y| /
    max |y|``, between a state rebuilt backwards and the same state known exactly (the
    initial state, and each checkpoint). Above ``max_reconstruction_error`` the
    gradient is refused at run time (``equinox.error_if``; with ``EQX_ON_ERROR=nan``
    the gradient becomes NaN instead).

    Attributes:
        checkpoints: ``None`` (default) stores nothing. An even integer ``k >= 2``
            stores at most ``k`` states, spread evenly over the solve, and reconstructs
            only between them, so round-off cannot grow over more than ``2 /
            k`` of the solve; memory O(k), still flat in the number of steps, at the
            cost of one more forward pass in the backward pass.
        max_reconstruction_error: the relative drift above which the gradient is
            refused. Default ``None``: ``1e-5`` in float32, ``1e-6`` in float64. The
            drift is a measure, not a bound: on float32 Lotka-Volterra the gradient's
            relative error against float32 :class:`StoreAll` was 19% at drift 2.4e-4,
            0.35% at 1.3e-5, and 0.5-1.1% at 1.8e-6, where float32 round-off in the
            two gradients dominates (StoreAll itself is 6% from float64 there); on
            Lorenz in float64 it was below the drift (drift ~1e-7: 6e-10).

    Example:
        >>> import jax, jax.numpy as jnp, jaxsecond
        >>> vf = lambda t, y, k: -k * y
        >>> loss = lambda k: jaxsecond.odeint(
        ...     vf, jnp.array(1.0), jnp.array([0.0, 1.0]), k, dt0=0.01,
        ...     solver=jaxsecond.Reversible(jaxsecond.RK4()),
        ...     adjoint=jaxsecond.ReversibleAdjoint(checkpoints=8))[-1]
        >>> print(f"{float(jax.grad(loss)(0.5)):.6f}")
        -0.606531
    """

    checkpoints: int | None = None
    max_reconstruction_error: float | None = None

    def __check_init__(self):
        if self.checkpoints is not None:
            check_count(self.checkpoints, "checkpoints", minimum=2)
            if self.checkpoints % 2:
                raise ValueError(f"checkpoints must be even, got {self.checkpoints}")
        if self.max_reconstruction_error is not None and not self.max_reconstruction_error > 0:
            raise ValueError(
                f"max_reconstruction_error must be > 0, got {self.max_reconstruction_error!r}"
            )

    def check(self, solver, term, adaptive):
        if not isinstance(solver, AbstractReversibleSolver):
            raise ValueError(
                "adjoint=ReversibleAdjoint() needs a reversible solver (ReversibleHeun() or "
                f"Reversible(base_solver)), got {type(solver).__name__}"
            )

    def tolerance(self, dtype) -> float:
        if self.max_reconstruction_error is not None:
            return self.max_reconstruction_error
        return 1e-5 if jnp.finfo(dtype).bits <= 32 else 1e-6

    def backward(self, solver, grid, final, term, y0, args, ct_ys, ct_final):
        return _reversible_backward(self, solver, grid, final, term, y0, args, ct_ys, ct_final)


class BacksolveAdjoint(AbstractAdjoint):
    """The continuous adjoint (Chen et al. 2018): reverse mode solves the adjoint ODE
    ``da/dt = -a df/dy``, ``dg/dt = -a df/dtheta`` backwards in time, alongside the
    state itself re-solved backwards, with the same solver and steps.

    SDEs (Li et al. 2020, as torchsde): for a Stratonovich SDE ``dy = f dt + s o dW``
    the adjoint is the Stratonovich SDE ``da = -a df/dy dt - a d(s dW)/dy``, ``dg =
    -a df/dtheta dt - a d(s dW)/dtheta``, solved backwards on the same Brownian
    increments (regenerated, not stored) with :class:`Heun`. The forward solver must
    converge to the Stratonovich solution (:class:`Heun`, :class:`Midpoint`,
    :class:`ReversibleHeun`, ``Reversible`` around Heun or Midpoint).

    Memory is flat in the number of steps and any (ODE) solver works, but the
    gradients are only approximate: they are those of the continuous problem,
    discretised on the way back, and the backward re-solve of the state drifts on
    dissipative or chaotic problems. Forward mode (``jax.jvp``) propagates tangents
    alongside the forward solve and is exact for the discretisation.
    """

    interpolates_outputs: ClassVar[bool] = False

    def check(self, solver, term, adaptive):
        if isinstance(term, SDETerm) and not _is_stratonovich(solver):
            raise ValueError(
                "adjoint=BacksolveAdjoint() on an SDE needs a solver that converges to "
                "the Stratonovich solution (Heun(), Midpoint(), ReversibleHeun(), "
                f"Reversible(Heun())), got {solver!r}; for Ito SDEs (EulerMaruyama) use "
                "StoreAll() or Checkpointed()"
            )

    def backward(self, solver, grid, final, term, y0, args, ct_ys, ct_final):
        if isinstance(term, SDETerm):
            # The adjoint SDE is solved with Heun's method whatever the forward solver
            # (its increments need the Brownian increment, which Heun's stages take).
            solver = Heun()
        return _backsolve(solver, grid, final, term, args, ct_ys, ct_final)


def _is_stratonovich(solver) -> bool:
    if isinstance(solver, Reversible):
        solver = solver.base_solver
    return isinstance(solver, Heun | Midpoint | ReversibleHeun)


# --------------------------------------------------------------------------------------
# Fixed steps, differentiated directly.
# --------------------------------------------------------------------------------------


def _fixed_info(solver, ts, steps, final):
    grid = FixedGrid(ts, steps)
    stats = {
        "num_steps": grid.num_steps,
        "vector_field_evaluations": solver.init_evaluations
        + grid.num_steps * solver.evaluations_per_step,
    }
    return final, grid, stats


def _direct_solve(solver, term, y0, args, ts, steps, interval_fn=None):
    ys, final = integrate(solver, term, y0, args, ts, steps, interval_fn=interval_fn)
    return ys, _fixed_info(solver, ts, steps, final)


def _checkpointed_fixed(adjoint, solver, f, y0, args, ts, steps_per_interval):
    segments = min(adjoint.num_checkpoints, steps_per_interval)
    per_segment = -(-steps_per_interval // segments)

    def interval_fn(_):
        def run_interval(carry, i):
            @jax.checkpoint
            def segment(carry, s):
                def one_step(carry, r):
                    j = s * per_segment + r
                    y, state = carry
                    t0, t1 = step_times(ts, i, j, steps_per_interval)
                    control = f.control(t0, t1, i * steps_per_interval + j)
                    new = solver.step(f, t0, t1, y, state, args, control)
                    # Steps past the end of the interval (uneven split) do nothing.
                    keep = j < steps_per_interval
                    return jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, carry), None

                return jax.lax.scan(one_step, carry, jnp.arange(per_segment, dtype=jnp.int32))[
                    0
                ], None

            return jax.lax.scan(segment, carry, jnp.arange(segments, dtype=jnp.int32))[0]

        return run_interval

    return _direct_solve(solver, f, y0, args, ts, steps_per_interval, interval_fn)


# --------------------------------------------------------------------------------------
# Every other solve: custom_jvp over the solve, a primitive for its tangent.
# --------------------------------------------------------------------------------------


def differentiated_solve(adjoint, solver, term, y0, args, ts, stepping):
    """The solve with ``adjoint.backward`` as its reverse pass; see the module docstring."""
    dynamic, static = eqx.partition((term, y0, args, ts, stepping), eqx.is_array)
    ys, final, grid, stats = _solve(static, (adjoint, solver), dynamic)
    return ys, (final, grid, stats)


# The undifferentiated solve keeps no grid (an adaptive one would fill a buffer of
# max_steps step times); the JVP rule records it for the tangent and reverse passes.
@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _solve(static, adjoint_solver, dynamic):
    _, solver = adjoint_solver
    term, y0, args, ts, stepping = eqx.combine(jax.tree.map(jnp.asarray, dynamic), static)
    ys, final, _, stats = run_steps(stepping, solver, term, y0, args, ts, record=False)
    return ys, final, None, stats


@_solve.defjvp
def _solve_jvp(static, adjoint_solver, primals, tangents):
    adjoint, solver = adjoint_solver
    (dynamic,) = primals
    (t_dynamic,) = tangents
    dynamic = jax.tree.map(jnp.asarray, dynamic)
    term, y0, args, ts, stepping = eqx.combine(dynamic, static)
    if isinstance(stepping, int):
        # Fixed steps: the grid is known without solving.
        ys, final, _, stats = _solve(static, adjoint_solver, dynamic)
        grid = FixedGrid(ts, stepping)
    else:
        ys, final, grid, stats = run_steps(stepping, solver, term, y0, args, ts)
    # Tangents of (term, y0, args): arrays at floating-point leaves, None elsewhere. No
    # derivative with respect to ts or the step-size choices.
    t_term, t_y0, t_args, _, _ = _floating_tangents(dynamic, t_dynamic)
    t_ys, t_final = filter_bind(
        _tangent_p,
        adjoint,
        solver,
        _lift((grid, final)),
        _lift((term, y0, args)),
        _lift((t_term, t_y0, t_args)),
    )
    return (ys, final, None, stats), (t_ys, t_final, None, _zero_tangent(stats))


def _zero_tangent(tree):
    def one(x):
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.inexact):
            return jnp.zeros_like(x)
        return np.zeros(x.shape, jax.dtypes.float0)

    return jax.tree.map(one, tree)


def _recorded_steps(grid) -> int:
    """Static bound on the number of steps of a grid."""
    if isinstance(grid, FixedGrid):
        return grid.num_steps
    return grid.times.shape[0] - 1


def _theta_zeros(theta):
    return jax.tree.map(lambda x: jnp.zeros_like(x) if eqx.is_inexact_array(x) else None, theta)


def _accumulate(total, new):
    return jax.tree.map(
        lambda a, b: a if b is None else a + b, total, new, is_leaf=lambda x: x is None
    )


def _step_vjp(solver, term, args, k, t0, t1, y, state, ct_y1, ct_state1):
    """Cotangents of ``(y, state, (term, args))`` through one forward step at ``(y,
    state)``; the Brownian increment is regenerated, not stored."""
    control = term.control(t0, t1, k)

    def forward_step(y, state, theta):
        term_, args_ = theta
        return solver.step(term_, t0, t1, y, state, args_, control)

    _, vjp = eqx.filter_vjp(forward_step, y, state, (term, args))
    return vjp((ct_y1, ct_state1))


def _dense_vjp(solver, term, args, k, t0, t1, y, state, t, ct):
    """Cotangents of ``(y, state, (term, args))`` through an output interpolated at
    ``t`` inside step ``k`` (the step's stages are recomputed)."""
    control = term.control(t0, t1, k)
    theta = (t - t0) / (t1 - t0)

    def output(y, state, th):
        info = solver.dense_step(th[0], t0, t1, y, state, th[1], control)[3]
        return solver.interpolate(info, theta)

    _, vjp = eqx.filter_vjp(output, y, state, (term, args))
    return vjp(ct)


def _init_vjp(solver, grid, term, y0, args, ct_state):
    """Cotangents of ``(y0, (term, args))`` through the solver's initial state (e.g. a
    cached ``f(t0, y0)``)."""
    _, vjp = eqx.filter_vjp(
        lambda y, theta: solver.init(theta[0], grid.t_start, y, theta[1]), y0, (term, args)
    )
    return vjp(ct_state)


def _add_to_ct_y(index):
    def add(carry, ct, hit, t):
        carry = list(carry)
        carry[index] = jax.tree.map(jnp.add, carry[index], ct)
        return tuple(carry)

    return add


def _reconstruction(adjoint, solver, grid, final, term, y0, args):
    """What reconstruction starts from, and a function that swaps a stored checkpoint
    in for the reconstructed state where one exists, measuring the drift there.

    Returns ``(y_end, state_end, pointer, swap)`` where ``swap(k, y1, state1, error, c)
    -> (y1, state1, error, c)`` runs before step ``k`` is inverted.
    """
    checkpoints = getattr(adjoint, "checkpoints", None)
    if checkpoints is None:
        y_end, state_end = final
        return y_end, state_end, None, lambda k, y1, state1, error, c: (y1, state1, error, c)
    book, (y_end, state_end) = record_checkpoints(grid, solver, term, y0, args, checkpoints)

    def swap(k, y1, state1, error, c):
        # A stored state replaces the reconstructed one: round-off restarts from zero.
        hit = (k + 1) == book.positions[c]
        stored = jax.tree.map(lambda b: b[c], (book.ys, book.states))
        drift = relative_distance((y1, state1), stored).astype(error.dtype)
        error = jnp.where(hit, jnp.maximum(error, drift), error)
        y1, state1 = jax.tree.map(lambda x, y: jnp.where(hit, x, y), stored, (y1, state1))
        return y1, state1, error, c - hit.astype(c.dtype)

    return y_end, state_end, book.count - 1, swap


def _start_drift(solver, grid, term, y0, args, y_start, state_start, error):
    exact = (y0, solver.init(term, grid.t_start, y0, args))
    drift = relative_distance((y_start, state_start), exact).astype(error.dtype)
    return jnp.maximum(error, drift)


def _reversible_backward(adjoint, solver, grid, final, term, y0, args, ct_ys, ct_final):
    """Reverse pass by reconstruction, with the drift check described in
    :class:`ReversibleAdjoint`."""
    theta = (term, args)
    y_end, state_end, pointer, swap = _reconstruction(adjoint, solver, grid, final, term, y0, args)
    ct_y_end, ct_state_end = ct_final
    error_dtype = jnp.real(jax.tree.leaves(y0)[0]).dtype

    def step_back(k, t0, t1, carry):
        y1, state1, ct_y1, ct_state1, ct_theta, error, c = carry
        y1, state1, error, c = swap(k, y1, state1, error, c)
        control = term.control(t0, t1, k)
        y0_, state0, ct_y0, ct_state0, ct_th = solver.backward_step_vjp(
            term, t0, t1, y1, state1, args, control, ct_y1, ct_state1
        )
        return y0_, state0, ct_y0, _fill(ct_state0, state0), _accumulate(ct_theta, ct_th), error, c

    init = (
        y_end,
        state_end,
        ct_y_end,
        _fill(ct_state_end, state_end),
        _theta_zeros(theta),
        jnp.zeros((), error_dtype),
        pointer,
    )

    def add_dense(carry, k, t0, t1, t, ct_out):
        y, state, ct_y, ct_state, ct_theta, error, c = carry
        d_y, d_state, d_th = _dense_vjp(solver, term, args, k, t0, t1, y, state, t, ct_out)
        ct_y = jax.tree.map(jnp.add, ct_y, d_y)
        return y, state, ct_y, _accumulate(ct_state, d_state), _accumulate(ct_theta, d_th), error, c

    y_start, state_start, ct_y, ct_state, ct_theta, error, _ = walk_backward(
        grid, step_back, init, ct_ys, _add_to_ct_y(2), add_dense
    )
    error = _start_drift(solver, grid, term, y0, args, y_start, state_start, error)
    # The initial solver state depends on y0 and theta too; at the exact y0.
    ct_y_init, ct_th = _init_vjp(solver, grid, term, y0, args, ct_state)
    ct_y0 = jax.tree.map(jnp.add, ct_y, ct_y_init)
    ct_theta = _accumulate(ct_theta, ct_th)
    return _check_reconstruction(adjoint, error, (ct_theta[0], ct_y0, ct_theta[1]), error_dtype)


_BANDS = (1e-8, 1e-6, 1e-4, 1e-2, 1.0)


def _check_reconstruction(adjoint, error, cotangents, dtype):
    tol = adjoint.tolerance(dtype)
    hint = (
        "so the gradient would be wrong. Remedies: ReversibleAdjoint(checkpoints=k) (k "
        "stored states, reconstruction restarts at each; try 8-64), float64, a smaller "
        "step, coupling < 1 in Reversible(...), or StoreAll()/Checkpointed(). "
        "Set EQX_ON_ERROR=nan to get NaN instead of this error, or raise "
        "ReversibleAdjoint(max_reconstruction_error=...)."
    )
    messages = []
    edges = [tol] + [b for b in _BANDS if b > tol] + [np.inf]
    for lo, hi in itertools.pairwise(edges):
        band = f"between {lo:.0e} and {hi:.0e}" if np.isfinite(hi) else f"above {lo:.0e}"
        messages.append(
            f"ReversibleAdjoint: reconstructing the solve backwards drifted from the "
            f"forward states by a relative {band} (tolerance {tol:.0e}), {hint}"
        )
    messages.append("ReversibleAdjoint: the backward reconstruction produced NaN or inf, " + hint)
    bad = ~(error <= tol)
    index = jnp.sum(jnp.asarray(edges[1:-1], dtype) <= error).astype(jnp.int32)
    index = jnp.where(jnp.isfinite(error), index, len(messages) - 1)
    return eqx.branched_error_if(cotangents, bad, index, messages)


def _stored_backward(solver, grid, term, y0, args, ct_ys, ct_final, slots, levels=1):
    """Reverse pass from stored states: at most ``slots`` checkpoints over the solve;
    each segment between them is, with ``levels = 1``, recomputed once into a buffer and
    walked back step by step, and with more levels checkpointed again the same way
    (recursive checkpointing: ``slots`` more states per level, one more forward pass
    per level, segments shorter by about ``slots / 2`` per level)."""
    n = grid.num_steps
    theta = (term, args)
    ct_y_end, ct_state_end = ct_final
    state0 = solver.init(term, grid.t_start, y0, args)
    # Static bounds on the segment length at each level (the top one is the solve).
    lengths = [_recorded_steps(grid)]
    for _ in range(levels):
        lengths.append(max_stride(lengths[-1], slots))

    def leaf_back(start, stop, first, carry):
        # Recompute the states at the start of each step of the segment, then walk back.
        buffer = jax.tree.map(
            lambda x: jnp.zeros((lengths[-1], *x.shape), x.dtype).at[0].set(x), first
        )

        def fill(k, t0, t1, c_):
            (y, state), buffer = c_
            y, state = solver.step(term, t0, t1, y, state, args, term.control(t0, t1, k))
            buffer = jax.tree.map(lambda b, x: b.at[k + 1 - start].set(x), buffer, (y, state))
            return (y, state), buffer

        _, buffer = walk_forward(grid, fill, (first, buffer), start, stop - 1)

        def step_back(k, t0, t1, ct_):
            ct_y1, ct_state1, ct_theta = ct_
            y, state = jax.tree.map(lambda b: b[k - start], buffer)
            ct_y0, ct_state0, ct_th = _step_vjp(
                solver, term, args, k, t0, t1, y, state, ct_y1, ct_state1
            )
            return ct_y0, _fill(ct_state0, state), _accumulate(ct_theta, ct_th)

        def add_dense(ct_, k, t0, t1, t, ct_out):
            ct_y, ct_state, ct_theta = ct_
            y, state = jax.tree.map(lambda b: b[k - start], buffer)
            d_y, d_state, d_th = _dense_vjp(solver, term, args, k, t0, t1, y, state, t, ct_out)
            return (
                jax.tree.map(jnp.add, ct_y, d_y),
                _accumulate(ct_state, d_state),
                _accumulate(ct_theta, d_th),
            )

        ct, o = carry
        return walk_backward_range(
            grid, step_back, ct, ct_ys, _add_to_ct_y(0), start, stop, o, add_dense
        )

    def segment_back(level, start, stop, first, carry):
        if level == 0:
            return leaf_back(start, stop, first, carry)
        book, _ = record_checkpoints(
            grid, solver, term, first[0], args, slots, start, stop, first[1]
        )

        def back(r, carry):
            c = book.count - 1 - r
            sub_start = book.positions[c]
            sub_stop = jnp.minimum(sub_start + book.stride, stop)
            sub_first = jax.tree.map(lambda b: b[c], (book.ys, book.states))
            return segment_back(level - 1, sub_start, sub_stop, sub_first, carry)

        return jax.lax.fori_loop(0, book.count, back, carry)

    ct0 = (ct_y_end, _fill(ct_state_end, state0), _theta_zeros(theta))
    ct, _ = segment_back(levels, jnp.int32(0), n, (y0, state0), (ct0, grid.last_output))
    ct_y, ct_state, ct_theta = _add_to_ct_y(0)(ct, jax.tree.map(lambda c: c[0], ct_ys), True, 0)
    ct_y_init, ct_th = _init_vjp(solver, grid, term, y0, args, ct_state)
    ct_theta = _accumulate(ct_theta, ct_th)
    return ct_theta[0], jax.tree.map(jnp.add, ct_y, ct_y_init), ct_theta[1]


class _AdjointTerm(eqx.Module):
    """The adjoint system of a term, solved backwards: state ``(y, a, g)``, increments
    ``(dy, da, dg)`` with ``da = -a d(dy)/dy`` and ``dg = -a d(dy)/dtheta``.

    ODE: the value is ``(f, -a df/dy, -a df/dtheta)``, scaled by ``dt`` (a pytree, so
    solvers may carry it as a first-same-as-last stage). SDE: the noise part of the
    increment depends on ``dW`` inside the VJP, so the value keeps the VJP and ``prod``
    applies it (the SDE adjoint is solved with :class:`Heun`, which carries no stage).
    """

    term: object
    args: object

    def vf(self, t, state, _):
        y, a, _g = state
        value, vjp = eqx.filter_vjp(
            lambda y_, th: th[0].vf(t, y_, th[1]), y, (self.term, self.args)
        )
        if isinstance(self.term, SDETerm):
            return value, vjp, a
        ct_y, ct_theta = vjp(a)
        neg = lambda tree: jax.tree.map(jnp.negative, tree)
        return value, neg(ct_y), neg(ct_theta)

    def prod(self, value, control):
        if not isinstance(self.term, SDETerm):
            return jax.tree.map(lambda x: scale_by(control, x), value)
        value, vjp, a = value
        dt, dw = control
        dw = jnp.asarray(dw).astype(jnp.result_type(a))
        noise = a * dw if self.term.diagonal else a[..., None] * dw
        ct_y, ct_theta = vjp((scale_by(dt, a), noise))
        neg = lambda tree: jax.tree.map(jnp.negative, tree)
        return self.term.prod(value, control), neg(ct_y), neg(ct_theta)


def _backsolve(solver, grid, final, term, args, ct_ys, ct_final):
    """Continuous-adjoint reverse pass: cotangents of ``(term, y0, args)``."""
    y_end = final[0]
    theta = (term, args)
    aug = _AdjointTerm(term, args)
    g0 = _theta_zeros(theta)
    a0 = ct_final[0]
    state0 = (y_end, a0, g0)
    solver_state0 = solver.init(aug, grid.step_times(grid.num_steps - 1)[1], state0, None)

    def step_back(k, t0, t1, carry):
        state, solver_state = carry
        # The forward step's control reversed: -dt and, for an SDE, the same Brownian
        # increment negated (regenerated from the key or the path).
        control = negate(term.control(t0, t1, k))
        return solver.step(aug, t1, t0, state, solver_state, None, control)

    def add_ct(carry, ct, hit, t):
        (y, a, g), solver_state = carry
        state = (y, jax.tree.map(jnp.add, a, ct), g)
        # The adjoint jumps at output times: restart a solver that carries stages.
        solver_state = jax.lax.cond(
            hit, lambda: solver.init(aug, t, state, None), lambda: solver_state
        )
        return state, solver_state

    (_, ct_y0, g), _ = walk_backward(grid, step_back, (state0, solver_state0), ct_ys, add_ct)
    return g[0], ct_y0, g[1]


def _fill(ct, like):
    """Zeros for None cotangents so the loop carry keeps its structure."""
    return jax.tree.map(
        lambda c, x: None if x is None else (jnp.zeros_like(x) if c is None else c),
        ct,
        like,
        is_leaf=lambda x: x is None,
    )


def reconstruction_error(solver, grid, final, term, y0, args, adjoint=None):
    """The drift :class:`ReversibleAdjoint` measures: the largest relative distance
    between a state (with the solver's own state) rebuilt backwards and the same state
    known exactly, at the start and, with ``adjoint.checkpoints``, at each checkpoint."""
    y0, args, final = jax.lax.stop_gradient((y0, args, final))
    y_end, state_end, pointer, swap = _reconstruction(adjoint, solver, grid, final, term, y0, args)
    error0 = jnp.zeros((), jnp.real(jax.tree.leaves(y0)[0]).dtype)

    def back(k, t0, t1, carry):
        y1, state1, error, c = swap(k, *carry)
        y, state = solver.backward_step(term, t0, t1, y1, state1, args, term.control(t0, t1, k))
        return y, state, error, c

    no_ct = jax.tree.map(lambda x: jnp.zeros((grid.num_outputs, *x.shape), x.dtype), y0)
    y_start, state_start, error, _ = walk_backward(
        grid,
        back,
        (y_end, state_end, error0, pointer),
        no_ct,
        lambda c, ct, hit, t: c,
        lambda c, k, t0, t1, t, ct: c,
    )
    return _start_drift(solver, grid, term, y0, args, y_start, state_start, error)


# --------------------------------------------------------------------------------------
# The tangent primitive.
# --------------------------------------------------------------------------------------


def _floating_tangents(primals, tangents):
    """Tangents as arrays for floating-point leaves (zeros where symbolic), else None."""

    def one(p, t):
        if not jnp.issubdtype(p.dtype, jnp.inexact):
            return None
        if t is None or isinstance(t, ad.Zero) or getattr(t, "dtype", None) == jax.dtypes.float0:
            return jnp.zeros_like(p)
        return jnp.asarray(t, p.dtype)

    return jax.tree.map(one, primals, tangents)


def _arrays(tree):
    # Inside transformation rules JAX may hand back Python-float stand-ins where arrays
    # went in; the closure-converted functions insist on arrays there.
    return jax.tree.map(lambda x: jnp.asarray(x) if isinstance(x, float | complex) else x, tree)


class _Scalar(eqx.Module):
    """A 0-d input carried as shape (1,): JAX passes known 0-d constants to transpose
    rules as Python-scalar literals, which the primitive machinery would then take for
    static values and miscount."""

    value: object


def _is_scalar(x) -> bool:
    return isinstance(x, _Scalar)


def _lift(tree):
    return jax.tree.map(
        lambda x: _Scalar(jnp.reshape(x, (1,))) if eqx.is_array(x) and x.ndim == 0 else x, tree
    )


def _unlift(tree):
    def one(x):
        if not isinstance(x, _Scalar):
            return x
        v = x.value
        if isinstance(v, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct((), v.dtype)
        if v is None or isinstance(v, ad.UndefinedPrimal):
            return v
        return jnp.reshape(jnp.asarray(v), ())

    return _arrays(jax.tree.map(one, tree, is_leaf=_is_scalar))


def _tangent_impl(adjoint, solver, grid_final, primals, tangents):
    grid, _ = _unlift(grid_final)
    primals, tangents = _unlift((primals, tangents))

    def forward(tree):
        term, y0, args = tree
        return grid.solve(solver, term, y0, args)

    # Forward mode: tangents ride along with the solve on the same steps; nothing stored.
    _, out = eqx.filter_jvp(forward, (primals,), (tangents,))
    return out


def _to_struct(x):
    if isinstance(x, jax.core.ShapedArray):
        return jax.ShapeDtypeStruct(x.shape, x.dtype)
    return x


def _tangent_abstract_eval(adjoint, solver, grid_final, primals, tangents):
    grid_final, primals, tangents = jax.tree.map(_to_struct, (grid_final, primals, tangents))
    out = eqx.filter_eval_shape(_tangent_impl, adjoint, solver, grid_final, primals, tangents)
    return jax.tree.map(lambda s: jax.core.ShapedArray(s.shape, s.dtype), out)


def _tangent_jvp(primals_in, tangents_in):
    adjoint, solver, grid_final, primals, tangents = primals_in
    _, _, _, d_primals, d_tangents = tangents_in
    out = filter_bind(_tangent_p, adjoint, solver, grid_final, primals, tangents)
    is_none = lambda x: x is None
    terms = []
    if any(t is not None for t in jax.tree.leaves(d_tangents, is_leaf=is_none)):
        d_tangents = jax.tree.map(
            lambda t, d: None if t is None else (jnp.zeros_like(t) if d is None else d),
            tangents,
            d_tangents,
            is_leaf=is_none,
        )
        terms.append(
            filter_bind(_tangent_p, adjoint, solver, grid_final, primals, d_tangents)
        )
    if any(d is not None for d in jax.tree.leaves(d_primals)):
        # Second order: how the tangent moves with the primal inputs. Plain JAX (a JVP
        # of the forward-mode solve), so further transformations just work.
        d_primals = jax.tree.map(
            lambda p, d: jnp.zeros_like(p) if d is None and eqx.is_inexact_array(p) else d,
            primals,
            d_primals,
            is_leaf=is_none,
        )
        p_u, t_u, d_u = _unlift((primals, tangents, d_primals))
        _, term = eqx.filter_jvp(
            lambda p: _tangent_impl(adjoint, solver, grid_final, p, t_u), (p_u,), (d_u,)
        )
        terms.append(term)
    if not terms:
        return out, None
    total = terms[0]
    for term in terms[1:]:
        total = jax.tree.map(jnp.add, total, term)
    return out, total


def _tangent_transpose(inputs, cts_out):
    adjoint, solver, grid_final, primals, tangents = inputs
    ct_ys, ct_final = cts_out
    # Transposed inside a linear solve (custom_root), residuals can arrive as NumPy
    # constants, which traced indices cannot index.
    as_jax = lambda tree: jax.tree.map(
        lambda x: jnp.asarray(x) if isinstance(x, np.ndarray) else x, tree
    )
    grid, final = as_jax(_unlift(grid_final))
    term, y0, args = as_jax(_unlift(primals))
    ct_final = _fill(ct_final, final)
    ct_f, ct_y0, ct_args = _lift(
        adjoint.backward(solver, grid, final, term, y0, args, ct_ys, ct_final)
    )
    is_leaf = lambda x: x is None or isinstance(x, ad.UndefinedPrimal)
    # Both trees have None exactly at the non-floating leaves, so they align leafwise.
    cts = jax.tree.map(
        lambda t, ct: ct if isinstance(t, ad.UndefinedPrimal) else None,
        tangents,
        (ct_f, ct_y0, ct_args),
        is_leaf=is_leaf,
    )
    no_ct = lambda tree: jax.tree.map(lambda _: None, tree)
    return no_ct(adjoint), no_ct(solver), no_ct(grid_final), no_ct(primals), cts


_tangent_p = filter_vprim(
    "jaxsecond_reversible_tangent",
    _tangent_impl,
    _tangent_abstract_eval,
    _tangent_jvp,
    _tangent_transpose,
)
