"""``odeint``: solve an ODE and return the solution at the requested times, and the
validation it shares with ``sdeint``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxsecond._checks import check_count
from jaxsecond._tree import as_array_leaves, callable_name, describe_mismatch
from jaxsecond.diffeq._adaptive import AdaptiveSteps
from jaxsecond.diffeq._adjoint import (
    AbstractAdjoint,
    StoreAll,
    reconstruction_error,
    run_steps,
)
from jaxsecond.diffeq._controllers import (
    AbstractStepSizeController,
    ConstantStepSize,
    PIDController,
)
from jaxsecond.diffeq._events import Event, EventCheck, FixedEventSteps, event_time_and_state
from jaxsecond.diffeq._grid import FixedGrid
from jaxsecond.diffeq._progress import new_meter
from jaxsecond.diffeq._saveat import DenseInterpolation, SaveAt, Solution
from jaxsecond.diffeq._solvers import RK4, AbstractReversibleSolver, AbstractSolver, Dopri5
from jaxsecond.diffeq._terms import ODETerm, Reflected


class Times(NamedTuple):
    """Checked output times, as solved: increasing (``sign * ts``) in the state's real
    precision. ``sign`` is ``1.0``, ``-1.0`` (integration backwards in time) or, for
    traced ``ts``, a traced sign; ``concrete`` holds the NumPy times when known."""

    ts: jax.Array
    sign: object
    concrete: np.ndarray | None

    @property
    def reflected(self) -> bool:
        return not (isinstance(self.sign, float) and self.sign == 1.0)


def check_times(ts, y0, *, traced_direction: bool = True) -> Times:
    """Validate ``ts`` (1-D, at least two, strictly monotonic) and convert it to the
    real dtype of ``y0``: the state keeps its precision whatever the dtype of ``ts``.
    Traced ``ts`` may decrease only with ``traced_direction`` (else they must
    increase, checked at run time)."""
    # Read concrete values before converting: inside jit, jnp.asarray stages even a
    # NumPy constant into the trace.
    concrete = None
    try:
        concrete = np.asarray(ts)
    except jax.errors.TracerArrayConversionError:
        pass
    ts = jnp.asarray(ts)
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"ts must be a 1-D array of at least two times, got shape {ts.shape}")
    if not (jnp.issubdtype(ts.dtype, jnp.floating) or jnp.issubdtype(ts.dtype, jnp.integer)):
        raise TypeError(f"ts must be real times, got dtype {ts.dtype}")
    dtype = jnp.finfo(jnp.result_type(*jax.tree.leaves(y0))).dtype
    ts = ts.astype(dtype)
    if concrete is not None:
        steps = np.diff(concrete.astype(np.float64))
        if np.all(steps > 0):
            sign = 1.0
        elif np.all(steps < 0):
            sign = -1.0
        else:
            raise ValueError(
                f"ts must be strictly increasing or strictly decreasing, got {concrete}"
            )
        concrete = sign * concrete.astype(np.float64)
    elif traced_direction:
        sign = jnp.sign(ts[1] - ts[0])
        ts = eqx.error_if(
            ts,
            ~jnp.all(sign * jnp.diff(ts) > 0),
            "ts must be strictly increasing or strictly decreasing",
        )
    else:
        sign = 1.0
        ts = eqx.error_if(ts, ~jnp.all(jnp.diff(ts) > 0), "ts must be strictly increasing")
    solved = ts if isinstance(sign, float) and sign == 1.0 else sign * ts
    return Times(solved, sign, concrete)


def check_state(y0):
    """``y0`` as arrays of a floating-point or complex dtype (float32 or wider)."""
    y0 = jax.tree.map(jnp.asarray, y0)
    leaves = jax.tree_util.tree_flatten_with_path(y0)[0]
    if not leaves:
        raise ValueError("y0 must contain at least one array")
    for path, leaf in leaves:
        where = jax.tree_util.keystr(path) or "y0"
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            raise TypeError(
                f"y0: leaf {where} has dtype {leaf.dtype}; the state must be floating point"
            )
        if jnp.finfo(leaf.dtype).bits < 32:
            raise TypeError(
                f"y0: leaf {where} has dtype {leaf.dtype}; half precision is not supported "
                "(step control and reconstruction need float32 or float64): cast y0 to "
                "float32 and back"
            )
    return y0


def check_args(args):
    """Python and NumPy numbers become arrays; weak types become strong, so the
    closure-converted functions see the same types in every transformation."""
    args = as_array_leaves(args)
    return jax.tree.map(
        lambda x: (
            jax.lax.convert_element_type(x, x.dtype)
            if eqx.is_array(x) and getattr(x, "weak_type", False)
            else x
        ),
        args,
    )


def _steps_per_interval(times: Times, dt0, steps_per_interval):
    if steps_per_interval is not None:
        steps_per_interval = check_count(steps_per_interval, "steps_per_interval")
        if dt0 is not None:
            raise ValueError("give dt0 or steps_per_interval, not both")
        return steps_per_interval
    if dt0 is None:
        raise ValueError("fixed-step solvers need dt0 (a step size) or steps_per_interval")
    try:
        dt0 = float(dt0)
    except (TypeError, jax.errors.ConcretizationTypeError) as e:
        raise ValueError(
            "dt0 is traced (e.g. a jit argument), so the number of fixed steps cannot be "
            "derived from it; pass dt0 as a Python float, or steps_per_interval, or use "
            "adaptive steps (rtol/atol), where a traced dt0 is the first step"
        ) from e
    if not dt0 > 0:
        raise ValueError(f"dt0 must be positive, got {dt0!r}")
    if times.concrete is None:
        raise ValueError(
            "ts is traced (e.g. a jit argument), so the number of steps cannot be derived "
            "from dt0; pass steps_per_interval (steps between consecutive times in ts) or "
            "close over ts as a constant"
        )
    # Equal steps within each output interval, none longer than dt0.
    return max(1, math.ceil(float(np.max(np.diff(times.concrete))) / dt0 - 1e-9))


def stepping_for(
    solver, controller, times, dt0, steps_per_interval, rtol, atol, max_steps, *, default_solver
):
    """Resolve the solver and how it steps: ``(solver, stepping)`` where ``stepping`` is
    an int (equal steps per output interval) or an :class:`AdaptiveSteps`."""
    if rtol is not None or atol is not None:
        if controller is not None:
            raise ValueError("give rtol/atol or stepsize_controller, not both")
        controller = PIDController(
            rtol=0.0 if rtol is None else rtol, atol=0.0 if atol is None else atol
        )
    if controller is None:
        controller = ConstantStepSize()
    if not isinstance(controller, AbstractStepSizeController):
        raise TypeError(
            "stepsize_controller must be a jaxsecond controller (ConstantStepSize() or "
            f"PIDController(rtol, atol)), got {controller!r}"
        )
    if controller.adaptive:
        solver = Dopri5() if solver is None else solver
    else:
        solver = default_solver if solver is None else solver
    if not isinstance(solver, AbstractSolver):
        raise TypeError(f"solver must be a jaxsecond solver (e.g. RK4()), got {solver!r}")
    if not controller.adaptive:
        return solver, _steps_per_interval(times, dt0, steps_per_interval)
    if not solver.has_error_estimate:
        raise ValueError(
            "rtol/atol need a solver with an error estimate (Dopri5(), Heun(), or "
            f"Reversible() around one), got {solver!r}; for fixed steps drop rtol/atol and "
            "give dt0"
        )
    if steps_per_interval is not None:
        raise ValueError("steps_per_interval is for fixed steps; with rtol/atol give dt0")
    max_steps = check_count(max_steps, "max_steps")
    if dt0 is not None:
        if isinstance(dt0, int | float) and not dt0 > 0:
            raise ValueError(f"dt0 must be positive, got {dt0!r}")
        dt0 = jnp.abs(jnp.asarray(dt0, times.ts.dtype))
    return solver, AdaptiveSteps(controller, dt0, max_steps)


def meter_for(progress_meter) -> int | None:
    """A progress-meter number for ``progress_meter=True``, else ``None``."""
    if not isinstance(progress_meter, bool):
        raise TypeError(f"progress_meter must be True or False, got {progress_meter!r}")
    return new_meter() if progress_meter else None


def check_output(fn, name, y0, ts, args, expected=None):
    """Trace-time check that ``fn(t, y, args)`` returns the pytree ``expected``
    (default: shaped like ``y0``); dtypes may differ within real or within complex
    numbers (the solver casts), not from complex to real."""
    try:
        out = eqx.filter_eval_shape(fn, ts[0], y0, args)
    except TypeError as e:
        raise TypeError(f"{name} ({callable_name(fn)}) failed on y0: {e}") from e
    expected = y0 if expected is None else expected
    relaxed = (
        jax.tree.map(
            lambda o, e: (
                jax.ShapeDtypeStruct(o.shape, e.dtype)
                if isinstance(o, jax.ShapeDtypeStruct)
                and eqx.is_array(e)
                and not (jnp.iscomplexobj(o) and not jnp.iscomplexobj(e))
                else o
            ),
            out,
            expected,
            is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct),
        )
        if jax.tree.structure(out) == jax.tree.structure(expected)
        else out
    )
    problem = describe_mismatch(expected, relaxed)
    if problem is not None:
        raise ValueError(
            f"{name} ({callable_name(fn)}) must return a pytree shaped like y0: {problem}"
        )
    return out


def event_check(event, y0, times, args) -> EventCheck:
    """Validate an :class:`Event` and convert its condition to solve time."""
    if not isinstance(event, Event):
        raise TypeError(f"event must be a jaxsecond.Event, got {event!r}")
    try:
        out = eqx.filter_eval_shape(event.condition, times.ts[0], y0, args)
    except TypeError as e:
        raise TypeError(
            f"Event.condition ({callable_name(event.condition)}) failed on y0: {e}"
        ) from e
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != ():
        raise ValueError(
            f"Event.condition ({callable_name(event.condition)}) must return a scalar, got "
            f"{getattr(out, 'shape', out)}"
        )
    condition = eqx.filter_closure_convert(event.condition, times.ts[0], y0, args)
    if times.reflected:
        condition = Reflected(condition, times.sign, scale=False)
    return EventCheck(condition, event.direction)


def run_adjoint(adjoint, solver, term, y0, args, ts, stepping):
    """Check the adjoint against the solve and run it: ``(ys, (final, grid, stats))``."""
    adaptive = not isinstance(stepping, int)
    adjoint.check(solver, term, adaptive)
    if isinstance(stepping, AdaptiveSteps) and not adjoint.interpolates_outputs:
        stepping = dataclasses.replace(stepping, dense=False)
    return adjoint.solve(solver, term, y0, args, ts, stepping), stepping


def user_stats(stats, adjoint, solver, term, y0, args, ts, stepping, final, grid):
    """The statistics users see: internal entries removed, the reconstruction error of
    reversible solvers added (one extra backward pass)."""
    stats = {k: v for k, v in stats.items() if not k.startswith("_")}
    if isinstance(solver, AbstractReversibleSolver):
        if grid is None:
            # The plain solve keeps no grid; record one (without derivatives).
            _, final, grid, _ = run_steps(
                stepping, solver, term, *jax.lax.stop_gradient((y0, args)), ts
            )
        stats["reconstruction_error"] = reconstruction_error(
            solver, grid, final, term, y0, args, adjoint
        )
    return stats


def finish(adjoint, solver, term, y0, args, times, stepping, return_stats):
    """Run the solve through the adjoint, and add statistics if asked."""
    (ys, (final, grid, stats)), stepping = run_adjoint(
        adjoint, solver, term, y0, args, times.ts, stepping
    )
    if not return_stats:
        return ys
    stats = user_stats(stats, adjoint, solver, term, y0, args, times.ts, stepping, final, grid)
    return ys, stats


def _fixed_step_times(ts, steps_per_interval):
    """Every step boundary of the fixed grid on ``ts``."""
    grid = FixedGrid(ts, steps_per_interval)
    starts = jax.vmap(lambda k: grid.step_times(k)[0])(jnp.arange(grid.num_steps, dtype=jnp.int32))
    return jnp.concatenate([starts, ts[-1:]])


def _masked(tree, valid):
    """Rows where ``valid`` is false become ``inf`` (inexact leaves)."""

    def one(x):
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            return x
        mask = valid.reshape(valid.shape + (1,) * (x.ndim - 1))
        return jnp.where(mask, x, jnp.asarray(jnp.inf, x.dtype))

    return jax.tree.map(one, tree)


def _rows(tree, index):
    return jax.tree.map(lambda b: b[index], tree)


def solve_and_save(adjoint, solver, term, y0, args, times, stepping, saveat, event, return_stats):
    """The solve behind ``odeint(..., saveat=..., event=...)``: a :class:`Solution`."""
    adaptive = isinstance(stepping, AdaptiveSteps)
    keep_steps = saveat.steps or saveat.dense
    ts = times.ts
    if saveat.t1 and adaptive and not keep_steps:
        ts = ts[jnp.array([0, -1])]
    output_rows = None
    if keep_steps and not adaptive:
        output_rows = jnp.arange(ts.shape[0], dtype=jnp.int32) * stepping
        ts = _fixed_step_times(ts, stepping)
        stepping = 1
    if adaptive:
        stepping = dataclasses.replace(
            stepping,
            save_steps=keep_steps,
            dense=stepping.dense and not keep_steps and event is None,
            event=event,
        )
    elif event is not None:
        stepping = FixedEventSteps(stepping, event)
    (ys, (final, grid, stats)), stepping = run_adjoint(
        adjoint, solver, term, y0, args, ts, stepping
    )
    rows = jax.tree.leaves(ys)[0].shape[0]
    saved = stats.get("_saved_rows", rows)
    if event is not None:
        t_final, y_final, happened = event_time_and_state(
            solver,
            term,
            event.condition,
            final,
            args,
            stats["_event"],
            stats["_t_stop"],
            stats["num_steps"],
        )
    else:
        t_final, y_final, happened = ts[-1], final[0], jnp.bool_(False)
    index = jnp.arange(rows, dtype=jnp.int32)
    interpolation = None
    out_ts, out_ys = times.sign * times.ts, _masked(ys, index < saved)
    if keep_steps:
        step_times = stats["_step_times"] if adaptive else ts
        if adaptive:
            output_rows = stats["_output_rows"]
        valid = (output_rows >= 0) & (output_rows < saved)
        if event is not None:
            # The step to the event ends the saved steps.
            step_times = step_times.at[saved].set(t_final, mode="drop")
            ys = jax.tree.map(lambda b, y: b.at[saved].set(y, mode="drop"), ys, y_final)
            saved = jnp.minimum(saved + 1, rows)
        step_times = jnp.where(index < saved, step_times, step_times[saved - 1])
        if saveat.dense:
            interpolation = DenseInterpolation(
                solver, term, args, step_times, ys, saved - 1, times.sign
            )
        if saveat.steps:
            out_ts = jnp.where(index < saved, times.sign * step_times, jnp.inf)
            out_ys = _masked(ys, index < saved)
        else:
            # Outputs at ts, read from the saved steps.
            out_ys = _masked(_rows(ys, jnp.maximum(output_rows, 0)), valid)
            saved = jnp.sum(valid.astype(jnp.int32))
    if saveat.t1:
        out_ts = (times.sign * t_final)[None]
        out_ys = jax.tree.map(lambda y: y[None], y_final)
        saved = jnp.int32(1)
    if saveat.fn is not None:
        fn = saveat.fn
        values = jax.vmap(lambda t, y: fn(t, y, args))(out_ts, out_ys)
        out_ys = _masked(values, jnp.arange(out_ts.shape[0], dtype=jnp.int32) < saved)
    solution = Solution(
        ts=out_ts,
        ys=out_ys,
        num_saved=jnp.asarray(saved, jnp.int32),
        t_final=times.sign * t_final,
        y_final=y_final,
        event_happened=happened,
        interpolation=interpolation,
    )
    if not return_stats:
        return solution
    stats = user_stats(stats, adjoint, solver, term, y0, args, ts, stepping, final, grid)
    return solution, stats


def odeint(
    vector_field: Callable,
    y0,
    ts,
    args=None,
    *,
    solver: AbstractSolver | None = None,
    adjoint: AbstractAdjoint | None = None,
    dt0: float | None = None,
    steps_per_interval: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    stepsize_controller: AbstractStepSizeController | None = None,
    max_steps: int = 4096,
    saveat: SaveAt | None = None,
    event: Event | None = None,
    return_stats: bool = False,
    progress_meter: bool = False,
):
    """Solve ``dy/dt = vector_field(t, y, args)`` from ``y(ts[0]) = y0``.

    Fixed steps (default): every output interval ``[ts[i], ts[i + 1]]`` is cut into the
    same number of equal steps, no longer than ``dt0`` (or exactly
    ``steps_per_interval`` of them). Adaptive steps (``rtol``/``atol``, or a
    ``stepsize_controller``): a while loop whose cost follows the steps taken.
    Derivatives flow to ``y0``, ``args`` and any traced value ``vector_field`` closes
    over (the parameters of a neural network, say), in every autodiff mode, through
    every adjoint.

    Args:
        vector_field: ``(t, y, args) -> dy/dt``, same pytree structure as ``y``. Its
            output is cast to ``y``'s dtypes.
        y0: initial state, any pytree of float32/float64 (or complex) arrays.
        ts: strictly increasing or strictly decreasing times (decreasing: integrate
            backwards in time); the solution is returned at each. Converted to the
            state's real precision.
        args: passed to ``vector_field``.
        solver: default :class:`RK4` (fixed steps) or :class:`Dopri5` (adaptive).
        adjoint: how derivatives are computed: :class:`StoreAll` (default),
            :class:`Checkpointed`, :class:`ReversibleAdjoint` (reversible solvers),
            :class:`BacksolveAdjoint`. All work with fixed and adaptive steps.
        dt0: fixed steps: the largest step (a Python number). Adaptive: the first step
            (may be traced; default: chosen from the vector field at ``y0``).
        steps_per_interval: steps between consecutive times (instead of ``dt0``;
            required when ``ts`` is traced).
        rtol: relative tolerance of adaptive steps, which keep the local error within
            ``atol + rtol |y|`` (``rtol``/``atol`` are shorthand for
            ``stepsize_controller=PIDController(rtol, atol)``). Needs a
            solver with an error estimate (:class:`Dopri5`, :class:`Heun`,
            ``Reversible`` around one). With :class:`Dopri5` steps run over output
            times and outputs are interpolated (its fourth-order dense output); other
            solvers end a step at every output time, as does
            :class:`BacksolveAdjoint`. The step-size choices are not differentiated:
            gradients are those of the accepted discretisation.
        atol: absolute tolerance of adaptive steps, given with ``rtol``.
        stepsize_controller: :class:`PIDController` (with its gains) or
            :class:`ConstantStepSize`.
        max_steps: adaptive steps: the most steps (accepted and rejected) over the
            whole solve; running out raises at run time. Also sizes the buffer of
            accepted step times the adjoints walk back (one scalar per slot).
        saveat: what to save (:class:`SaveAt`: the final state only, every step, a
            function of the state, dense output for :meth:`Solution.evaluate`). Given,
            ``odeint`` returns a :class:`Solution`.
        event: :class:`Event`: stop where a condition of the state crosses zero; the
            event time is located by root finding and is differentiable. Given,
            ``odeint`` returns a :class:`Solution`; every adjoint works, and
            adaptive solves then end a step at every output time.
        progress_meter: show a tqdm bar of the time covered by the forward solve
            (updated from inside the compiled loop after every step, at the cost of a
            host callback per step; fixed-step :class:`Checkpointed` reports nothing).
        return_stats: also return a dict: ``num_steps``, ``vector_field_evaluations``,
            ``rejected_steps`` (adaptive) and, for reversible solvers,
            ``reconstruction_error`` (the largest relative distance between a state
            rebuilt by inverting the steps and the same state known exactly: ``y0``,
            and each checkpoint of ``ReversibleAdjoint(checkpoints=k)``; one extra
            backward pass). :class:`ReversibleAdjoint` refuses gradients above its
            ``max_reconstruction_error``.

    Returns:
        The solution at every time in ``ts``: ``y0``'s pytree with a leading axis of
        length ``len(ts)``; a :class:`Solution` with ``saveat`` or ``event``; and the
        statistics with ``return_stats=True``.

    Example:
        >>> import jax.numpy as jnp, jaxsecond
        >>> ys = jaxsecond.odeint(lambda t, y, k: -k * y, jnp.array(1.0),
        ...                       jnp.array([0.0, 1.0]), 2.0, dt0=0.01)
        >>> print(f"{float(ys[-1]):.6f} {float(jnp.exp(-2.0)):.6f}")
        0.135335 0.135335
        >>> ys = jaxsecond.odeint(lambda t, y, k: -k * y, jnp.array(1.0),
        ...                       jnp.array([0.0, 1.0]), 2.0, rtol=1e-8, atol=1e-8)
        >>> print(f"{float(ys[-1]):.7f}")  # exp(-2) = 0.13533528...
        0.1353353
    """
    if not callable(vector_field):
        raise TypeError(f"vector_field must be callable, got {vector_field!r}")
    adjoint = StoreAll() if adjoint is None else adjoint
    if not isinstance(adjoint, AbstractAdjoint):
        raise TypeError(f"adjoint must be a jaxsecond adjoint (e.g. StoreAll()), got {adjoint!r}")
    y0 = check_state(y0)
    times = check_times(ts, y0)
    solver, stepping = stepping_for(
        solver,
        stepsize_controller,
        times,
        dt0,
        steps_per_interval,
        rtol,
        atol,
        max_steps,
        default_solver=RK4(),
    )
    args = check_args(args)
    check_output(vector_field, "vector_field", y0, times.ts, args)
    # Closed-over traced arrays become explicit leaves so every adjoint can reach them.
    converted = eqx.filter_closure_convert(vector_field, times.ts[0], y0, args)
    if times.reflected:
        converted = Reflected(converted, times.sign)
    term = ODETerm(converted, progress=meter_for(progress_meter))
    if saveat is None and event is None:
        return finish(adjoint, solver, term, y0, args, times, stepping, return_stats)
    saveat = SaveAt() if saveat is None else saveat
    if not isinstance(saveat, SaveAt):
        raise TypeError(f"saveat must be a jaxsecond.SaveAt, got {saveat!r}")
    check = None
    if event is not None:
        check = event_check(event, y0, times, args)
    return solve_and_save(
        adjoint, solver, term, y0, args, times, stepping, saveat, check, return_stats
    )
