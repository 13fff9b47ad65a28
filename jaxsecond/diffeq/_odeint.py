"""``odeint``: solve an ODE and return the solution at the requested times."""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxsecond._tree import as_array_leaves, callable_name, describe_mismatch
from jaxsecond.diffeq._adjoint import (
    AbstractAdjoint,
    BacksolveAdjoint,
    ReversibleAdjoint,
    StoreAll,
)
from jaxsecond.diffeq._integrate import integrate_adaptive, statistics
from jaxsecond.diffeq._solvers import RK4, AbstractSolver, Dopri5, Reversible
from jaxsecond.diffeq._terms import ODETerm


def _check_ts(ts):
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
    if not jnp.issubdtype(ts.dtype, jnp.floating):
        ts = ts.astype(jnp.result_type(float))
    if concrete is not None and not np.all(np.diff(concrete) > 0):
        raise ValueError(f"ts must be strictly increasing, got {concrete}")
    return ts, concrete


def _steps_per_interval(concrete_ts, dt0, steps_per_interval):
    if steps_per_interval is not None:
        if isinstance(steps_per_interval, bool) or not (
            isinstance(steps_per_interval, int) and steps_per_interval >= 1
        ):
            raise ValueError(
                f"steps_per_interval must be an integer >= 1, got {steps_per_interval!r}"
            )
        if dt0 is not None:
            raise ValueError("give dt0 or steps_per_interval, not both")
        return steps_per_interval
    if dt0 is None:
        raise ValueError("fixed-step solvers need dt0 (a step size) or steps_per_interval")
    if not dt0 > 0:
        raise ValueError(f"dt0 must be positive, got {dt0!r}")
    if concrete_ts is None:
        raise ValueError(
            "ts is traced (e.g. a jit argument), so the number of steps cannot be derived "
            "from dt0; pass steps_per_interval (steps between consecutive times in ts) or "
            "close over ts as a constant"
        )
    # Equal steps within each output interval, none longer than dt0.
    return max(1, math.ceil(float(np.max(np.diff(concrete_ts))) / dt0 - 1e-9))


def prepare(solver, adjoint, y0, ts, dt0, steps_per_interval, *, default_solver):
    """Shared validation of ``odeint`` and ``sdeint``: returns ``(solver, adjoint, y0,
    ts, steps_per_interval)`` with ``y0`` as arrays and ``ts`` in its precision."""
    solver = default_solver if solver is None else solver
    adjoint = StoreAll() if adjoint is None else adjoint
    if not isinstance(solver, AbstractSolver):
        raise TypeError(f"solver must be a jaxsecond solver (e.g. RK4()), got {solver!r}")
    if not isinstance(adjoint, AbstractAdjoint):
        raise TypeError(f"adjoint must be a jaxsecond adjoint (e.g. StoreAll()), got {adjoint!r}")
    y0, ts, concrete = state_and_times(y0, ts)
    steps = _steps_per_interval(concrete, dt0, steps_per_interval)
    return solver, adjoint, y0, ts, steps


def state_and_times(y0, ts):
    """``y0`` as floating-point arrays and checked ``ts`` in their precision, plus ``ts``
    as NumPy when concrete (else None)."""
    ts, concrete = _check_ts(ts)
    y0 = jax.tree.map(jnp.asarray, y0)
    for path, leaf in jax.tree_util.tree_flatten_with_path(y0)[0]:
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            where = jax.tree_util.keystr(path) or "y0"
            raise TypeError(
                f"y0: leaf {where} has dtype {leaf.dtype}; the state must be floating point"
            )
    return y0, ts.astype(jnp.result_type(*jax.tree.leaves(y0), ts.dtype)), concrete


def check_output(fn, name, y0, ts, args, expected=None):
    """Trace-time check that ``fn(t, y, args)`` returns the pytree ``expected``
    (default: shaped like ``y0``)."""
    try:
        out = eqx.filter_eval_shape(fn, ts[0], y0, args)
    except TypeError as e:
        raise TypeError(f"{name} ({callable_name(fn)}) failed on y0: {e}") from e
    problem = describe_mismatch(y0 if expected is None else expected, out)
    if problem is not None:
        raise ValueError(
            f"{name} ({callable_name(fn)}) must return a pytree shaped like y0: {problem}"
        )
    return out


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
    max_steps: int = 4096,
    return_stats: bool = False,
):
    """Solve ``dy/dt = vector_field(t, y, args)`` from ``y(ts[0]) = y0``.

    Every output interval ``[ts[i], ts[i + 1]]`` is cut into the same number of equal
    steps, no longer than ``dt0`` (or exactly ``steps_per_interval`` of them).
    Derivatives flow to ``y0``, ``args`` and any traced value ``vector_field`` closes
    over (the parameters of a neural network, say), in every autodiff mode.

    Args:
        vector_field: ``(t, y, args) -> dy/dt``, same pytree structure as ``y``.
        y0: initial state, any pytree of floating-point arrays.
        ts: strictly increasing times; the solution is returned at each.
        args: passed to ``vector_field``.
        solver: default :class:`RK4`.
        adjoint: how reverse mode works: :class:`StoreAll` (default),
            :class:`Checkpointed`, :class:`ReversibleAdjoint` (reversible solvers).
        dt0: the largest step size.
        steps_per_interval: steps between consecutive times (instead of ``dt0``;
            required when ``ts`` is traced).
        rtol, atol: with a solver that estimates its error (:class:`Dopri5`, or
            ``Reversible(Dopri5())``), adapt the steps to keep the local error within
            ``atol + rtol |y|`` (``dt0`` is then the first step). Adjoints:
            :class:`StoreAll` differentiates the adaptive loop; :class:`ReversibleAdjoint`
            and :class:`BacksolveAdjoint` first choose the steps (no derivatives), record
            the accepted step times (``len(ts) - 1`` rows of ``max_steps + 1`` scalars:
            memory linear in the number of steps, but scalars, not states) and solve
            again on them, so the forward pass costs two solves. Gradients are those of
            the recorded discretisation; the step-size choice is not differentiated.
        max_steps: adaptive step attempts per output interval; running out raises at
            run time.
        return_stats: also return a dict: ``num_steps``, ``vector_field_evaluations``
            and, for reversible solvers, ``reconstruction_error`` (the largest
            distance between ``y0`` and the state rebuilt by inverting every step;
            costs two extra solves, only when asked).

    Returns:
        The solution at every time in ``ts``: ``y0``'s pytree with a leading axis of
        length ``len(ts)`` (and the statistics with ``return_stats=True``).

    Example:
        >>> import jax.numpy as jnp, jaxsecond
        >>> ys = jaxsecond.odeint(lambda t, y, k: -k * y, jnp.array(1.0),
        ...                       jnp.array([0.0, 1.0]), 2.0, dt0=0.01)
        >>> print(f"{float(ys[-1]):.6f} {float(jnp.exp(-2.0)):.6f}")
        0.135335 0.135335
    """
    if not callable(vector_field):
        raise TypeError(f"vector_field must be callable, got {vector_field!r}")
    if rtol is not None or atol is not None:
        return _odeint_adaptive(
            vector_field,
            y0,
            ts,
            args,
            solver,
            adjoint,
            dt0,
            steps_per_interval,
            rtol,
            atol,
            max_steps,
            return_stats,
        )
    solver, adjoint, y0, ts, steps = prepare(
        solver, adjoint, y0, ts, dt0, steps_per_interval, default_solver=RK4()
    )
    args = as_array_leaves(args)
    check_output(vector_field, "vector_field", y0, ts, args)
    # Closed-over traced arrays become explicit leaves so every adjoint can reach them.
    term = ODETerm(eqx.filter_closure_convert(vector_field, ts[0], y0, args))
    ys = adjoint.solve(solver, term, y0, args, ts, steps)
    if return_stats:
        return ys, statistics(solver, term, y0, args, ts, steps)
    return ys


def _odeint_adaptive(
    vector_field,
    y0,
    ts,
    args,
    solver,
    adjoint,
    dt0,
    steps_per_interval,
    rtol,
    atol,
    max_steps,
    return_stats,
):
    solver, adjoint, rtol, atol = check_adaptive(
        solver, adjoint, steps_per_interval, rtol, atol, max_steps, dt0, default_solver=Dopri5()
    )
    y0, ts, _ = state_and_times(y0, ts)
    args = as_array_leaves(args)
    check_output(vector_field, "vector_field", y0, ts, args)
    term = ODETerm(eqx.filter_closure_convert(vector_field, ts[0], y0, args))
    return solve_adaptive(
        solver, adjoint, term, y0, args, ts, dt0, rtol, atol, max_steps, return_stats
    )


def check_adaptive(
    solver, adjoint, steps_per_interval, rtol, atol, max_steps, dt0, *, default_solver
):
    """Validate the options of an adaptive solve; returns ``(solver, adjoint, rtol, atol)``."""
    solver = default_solver if solver is None else solver
    method = solver.base_solver if isinstance(solver, Reversible) else solver
    if getattr(method, "b_low", None) is None:
        raise ValueError(
            "rtol/atol need a solver with an error estimate (Dopri5(), Heun(), or "
            f"Reversible() around one), got {solver!r}; for fixed steps drop rtol/atol and "
            "give dt0"
        )
    adjoint = StoreAll() if adjoint is None else adjoint
    if not isinstance(adjoint, StoreAll | ReversibleAdjoint | BacksolveAdjoint):
        raise ValueError(
            "adaptive steps (rtol/atol) support StoreAll(), ReversibleAdjoint() and "
            f"BacksolveAdjoint(), got {adjoint!r}; Checkpointed needs fixed steps"
        )
    if steps_per_interval is not None:
        raise ValueError("steps_per_interval is for fixed steps; with rtol/atol give dt0")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if tol is not None and not tol >= 0:
            raise ValueError(f"{name} must be non-negative, got {tol!r}")
    if isinstance(max_steps, bool) or not (isinstance(max_steps, int) and max_steps >= 1):
        raise ValueError(f"max_steps must be an integer >= 1, got {max_steps!r}")
    rtol = 0.0 if rtol is None else rtol
    atol = 0.0 if atol is None else atol
    if rtol == 0 and atol == 0:
        raise ValueError("rtol and atol cannot both be zero")
    if dt0 is not None and not dt0 > 0:
        raise ValueError(f"dt0 must be positive, got {dt0!r}")
    return solver, adjoint, rtol, atol


def solve_adaptive(solver, adjoint, term, y0, args, ts, dt0, rtol, atol, max_steps, return_stats):
    """The adaptive solve behind ``odeint`` and ``sdeint`` (options already checked)."""
    if dt0 is None:
        dt0 = 0.01 * (ts[1] - ts[0])
    if isinstance(adjoint, StoreAll):
        ys, stats, _ = integrate_adaptive(solver, term, y0, args, ts, dt0, rtol, atol, max_steps)
        return (ys, stats) if return_stats else ys
    # Choose the steps first, without derivatives, then solve again on the recorded
    # grid with the memory-flat adjoint: its reverse pass walks the same steps back.
    dynamic, static = eqx.partition((term, y0, args), eqx.is_array)
    term_, y0_, args_ = eqx.combine(jax.lax.stop_gradient(dynamic), static)
    _, stats, grid = integrate_adaptive(solver, term_, y0_, args_, ts, dt0, rtol, atol, max_steps)
    ys = adjoint.solve(solver, term, y0, args, grid, max_steps)
    if not return_stats:
        return ys
    stats["vector_field_evaluations"] = (
        stats["vector_field_evaluations"]
        + solver.init_evaluations
        + jnp.sum(stats["num_steps"]) * solver.evaluations_per_step
    )
    recorded = statistics(solver, term_, y0_, args_, grid, max_steps)
    if "reconstruction_error" in recorded:
        stats["reconstruction_error"] = recorded["reconstruction_error"]
    return ys, stats
