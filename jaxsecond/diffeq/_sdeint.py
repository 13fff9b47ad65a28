"""``sdeint``: solve a stochastic differential equation on fixed or adaptive steps."""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from jaxsecond._checks import check_key
from jaxsecond._tree import callable_name
from jaxsecond.diffeq._adjoint import AbstractAdjoint, StoreAll
from jaxsecond.diffeq._controllers import AbstractStepSizeController
from jaxsecond.diffeq._odeint import (
    check_args,
    check_output,
    check_state,
    check_times,
    finish,
    meter_for,
    solve_and_save,
    stepping_for,
)
from jaxsecond.diffeq._saveat import SaveAt
from jaxsecond.diffeq._solvers import AbstractSolver, EulerMaruyama, Heun
from jaxsecond.diffeq._terms import Reflected, SDETerm


def sdeint(
    drift: Callable,
    diffusion: Callable,
    y0,
    ts,
    args=None,
    *,
    key,
    solver: AbstractSolver | None = None,
    adjoint: AbstractAdjoint | None = None,
    dt0: float | None = None,
    steps_per_interval: int | None = None,
    brownian=None,
    rtol: float | None = None,
    atol: float | None = None,
    stepsize_controller: AbstractStepSizeController | None = None,
    max_steps: int = 4096,
    saveat: SaveAt | None = None,
    return_stats: bool = False,
    progress_meter: bool = False,
):
    """Solve ``dy = drift(t, y, args) dt + diffusion(t, y, args) dW`` from ``y0``.

    Noise: ``diffusion`` returning ``y0``'s shape is diagonal noise (one Brownian
    motion per component); returning ``y0.shape + (m,)`` is general noise driven by
    ``m`` Brownian motions. The interpretation follows the solver:
    :class:`EulerMaruyama` (default) converges to the Ito solution, :class:`Heun`,
    :class:`ReversibleHeun` and ``Reversible(Heun())`` to the Stratonovich solution.

    Stability: :class:`ReversibleHeun`'s spurious mode grows like ``exp(theta t)`` on a
    drift that reverts at rate ``theta``, whatever the step; for strongly
    mean-reverting SDEs over long horizons use ``Reversible(Heun(), coupling)`` or a
    non-reversible solver.

    Brownian increments: by default step ``n`` draws ``sqrt(dt) N(0, 1)`` from
    ``jax.random.fold_in(key, n)``, so :class:`ReversibleAdjoint` regenerates them
    in its backward pass instead of storing them. Pass ``brownian=`` any object with
    ``evaluate(t0, t1) -> dW`` (e.g. ``diffrax.VirtualBrownianTree``) to sample one
    path consistently across step sizes.

    Adaptive steps: with ``rtol``/``atol`` and a solver with an error estimate
    (:class:`Heun`, or ``Reversible(Heun())`` for :class:`ReversibleAdjoint`), the
    steps follow the difference between Heun's and Euler's increments over the same
    Brownian increment. Rejected steps are retried on the same path, so the increments
    come from a Brownian path object: ``brownian`` if given, else a
    ``diffrax.VirtualBrownianTree`` seeded by ``key`` that resolves the path down to
    ``dt0 / 1000`` (``dt0`` defaults to 1% of the first output interval).

    Args:
        drift: ``(t, y, args) -> array``.
        diffusion: ``(t, y, args) -> array``.
        y0: initial state, a floating-point array.
        ts: strictly increasing (or decreasing: backwards in time) output times.
        args: passed to ``drift`` and ``diffusion``.
        key: a ``jax.random`` key for the Brownian motion.
        solver: as in :func:`odeint`.
        adjoint: as in :func:`odeint`. :class:`BacksolveAdjoint` needs a Stratonovich
            solver (it solves the adjoint SDE backwards on the same increments).
        dt0: as in :func:`odeint`.
        steps_per_interval: as in :func:`odeint`.
        brownian: optional Brownian path (see above).
        rtol: adaptive steps (see above and :func:`odeint`).
        atol: adaptive steps (see above and :func:`odeint`).
        stepsize_controller: adaptive steps (see above and :func:`odeint`).
        max_steps: adaptive steps (see above and :func:`odeint`).
        saveat: :class:`SaveAt` as in :func:`odeint` (final state, every step, ``fn``;
            no dense output); given, ``sdeint`` returns a :class:`Solution`.
        return_stats: as in :func:`odeint`.
        progress_meter: as in :func:`odeint`.

    Returns:
        The solution at every time in ``ts`` (leading axis ``len(ts)``).

    Example:
        >>> import jax, jax.numpy as jnp, jaxsecond
        >>> ys = jaxsecond.sdeint(lambda t, y, a: -y, lambda t, y, a: 0.1 * jnp.ones_like(y),
        ...                       jnp.ones(3), jnp.linspace(0.0, 1.0, 5), key=jax.random.key(0),
        ...                       dt0=0.01)
        >>> ys.shape
        (5, 3)
    """
    for fn, name in ((drift, "drift"), (diffusion, "diffusion")):
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {fn!r}")
    check_key(key)
    adjoint = StoreAll() if adjoint is None else adjoint
    if not isinstance(adjoint, AbstractAdjoint):
        raise TypeError(f"adjoint must be a jaxsecond adjoint (e.g. StoreAll()), got {adjoint!r}")
    y0 = check_state(y0)
    if not eqx.is_array(y0):
        raise TypeError(f"y0 of an SDE must be a single floating-point array, got {y0!r}")
    # Traced ts must increase (a traced time direction would have to flip the Brownian
    # path object); concrete decreasing ts integrate backwards.
    times = check_times(ts, y0, traced_direction=False)
    if solver is None and (rtol, atol, stepsize_controller) != (None, None, None):
        solver = Heun()  # adaptive steps need an error estimate
    solver, stepping = stepping_for(
        solver,
        stepsize_controller,
        times,
        dt0,
        steps_per_interval,
        rtol,
        atol,
        max_steps,
        default_solver=EulerMaruyama(),
    )
    adaptive = not isinstance(stepping, int)
    ts = times.ts
    args = check_args(args)
    check_output(drift, "drift", y0, ts, args)
    out = eqx.filter_eval_shape(diffusion, ts[0], y0, args)
    shape = getattr(out, "shape", None)
    if shape == y0.shape:
        diagonal, noise_shape = True, y0.shape
    elif shape is not None and len(shape) == y0.ndim + 1 and shape[:-1] == y0.shape:
        diagonal, noise_shape = False, (shape[-1],)
    else:
        raise ValueError(
            f"diffusion ({callable_name(diffusion)}) must return y0's shape {y0.shape} "
            f"(diagonal noise) or {(*y0.shape, 'm')} (m Brownian motions), got {shape}"
        )
    if adaptive:
        dt0 = 0.01 * (ts[1] - ts[0]) if stepping.dt0 is None else stepping.dt0
        stepping = eqx.tree_at(lambda s: s.dt0, stepping, dt0, is_leaf=lambda x: x is None)
        if brownian is None:
            brownian = diffrax.VirtualBrownianTree(
                ts[0],
                ts[-1],
                tol=dt0 / 1000,
                shape=jax.ShapeDtypeStruct(noise_shape, y0.dtype),
                key=key,
            )
            # The tree is built in solve time already.
            reflected_brownian = False
        else:
            reflected_brownian = times.reflected
    else:
        reflected_brownian = times.reflected and brownian is not None
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    key_data = jax.random.key_data(key) if typed else key
    drift_c = eqx.filter_closure_convert(drift, ts[0], y0, args)
    diffusion_c = eqx.filter_closure_convert(diffusion, ts[0], y0, args)
    if times.reflected:
        drift_c = Reflected(drift_c, times.sign)
        diffusion_c = Reflected(diffusion_c, times.sign, scale=False)
    term = SDETerm(
        drift=drift_c,
        diffusion=diffusion_c,
        key_data=jnp.asarray(key_data),
        key_impl=str(jax.random.key_impl(key)) if typed else "threefry2x32",
        diagonal=diagonal,
        noise_shape=tuple(noise_shape),
        brownian=brownian,
        reflected=reflected_brownian,
        progress=meter_for(progress_meter),
    )
    if saveat is None:
        return finish(adjoint, solver, term, y0, args, times, stepping, return_stats)
    if not isinstance(saveat, SaveAt):
        raise TypeError(f"saveat must be a jaxsecond.SaveAt, got {saveat!r}")
    if saveat.dense:
        raise ValueError("SaveAt(dense=True) is for odeint: an SDE path has no interpolant")
    return solve_and_save(
        adjoint, solver, term, y0, args, times, stepping, saveat, None, return_stats
    )
