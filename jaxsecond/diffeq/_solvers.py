"""Fixed-step ODE solvers: explicit Runge-Kutta methods and reversible solvers.

A solver advances ``(y, state)`` from ``t0`` to ``t1`` with ``step``; ``state`` is what a
method carries between steps beyond ``y`` (nothing for Runge-Kutta methods; the second
sequence ``z`` and a cached vector-field value for reversible ones). A reversible
solver also has ``backward_step``, which recovers ``(y0, state0)`` from
``(y1, state1)`` exactly in exact arithmetic, so gradients can be computed without
storing the trajectory.

To add a solver, subclass :class:`AbstractSolver` (or
:class:`AbstractReversibleSolver`) and implement ``order``, ``init`` and ``step``
(and ``backward_step``).

References: E. Hairer, S. P. Norsett, G. Wanner, "Solving Ordinary Differential
Equations I"; P. Kidger, J. Foster, X. Li, T. Lyons, "Efficient and Accurate Gradients
for Neural SDEs", NeurIPS 2021 (reversible Heun); S. McCallum, J. Foster, "Efficient,
Accurate and Stable Gradients for Neural ODEs", 2024 (reversible wrapper).
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxsecond.diffeq._terms import negate


def _axpy(a, x, y):
    """``y + a * x`` on pytrees."""
    return jax.tree.map(lambda xi, yi: yi + a * xi, x, y)


def _combine(coefficients, trees):
    """``sum_i c_i * tree_i`` for Python-float coefficients (zeros skipped)."""
    pairs = [(c, t) for c, t in zip(coefficients, trees, strict=True) if c != 0.0]
    if not pairs:
        return jax.tree.map(jnp.zeros_like, trees[0])
    out = jax.tree.map(lambda x: pairs[0][0] * x, pairs[0][1])
    for c, t in pairs[1:]:
        out = _axpy(c, t, out)
    return out


class AbstractSolver(eqx.Module):
    """A one-step method for ``dy = term``, an ODE or an SDE (see ``_terms.py``).

    ``init(term, t0, y0, args) -> state``; ``step(term, t0, t1, y0, state, args,
    control) -> (y1, state1)``, where ``control`` is ``t1 - t0`` for an ODE and ``(t1 -
    t0, dW)`` for an SDE. Increments come from ``term.prod(term.vf(t, y, args),
    control)``. ``order`` is the global order of convergence for ODEs.

    A solver with an error estimate also implements ``step_with_error``, returning
    ``(y1, state1, error)`` with ``error`` shaped like ``y``; a step-size controller
    (:class:`PIDController`) then runs it adaptively.
    """

    order: ClassVar[int]
    evaluations_per_step: ClassVar[int]
    init_evaluations: ClassVar[int] = 0

    @abc.abstractmethod
    def init(self, term, t0, y0, args) -> Any:
        """The solver state that goes with ``y0`` at ``t0``."""

    @abc.abstractmethod
    def step(self, term, t0, t1, y0, state, args, control) -> tuple[Any, Any]:
        """One step from ``t0`` to ``t1``."""

    @property
    def has_error_estimate(self) -> bool:
        return False

    def step_with_error(self, term, t0, t1, y0, state, args, control) -> tuple[Any, Any, Any]:
        """``(y1, state1, local error estimate)`` of one step (adaptive solves)."""
        raise ValueError(f"{type(self).__name__} has no error estimate for adaptive steps")

    @property
    def has_dense_output(self) -> bool:
        """Whether :meth:`dense_step` and :meth:`interpolate` exist: adaptive solves
        then step over output times and interpolate, instead of stopping at each."""
        return False

    def dense_step(self, term, t0, t1, y0, state, args, control):
        """``(y1, state1, error, dense)``: a step with error estimate, plus what
        :meth:`interpolate` needs to evaluate the solution inside it."""
        raise ValueError(f"{type(self).__name__} has no dense output")

    def interpolate(self, dense, theta):
        """The solution at ``t0 + theta (t1 - t0)``, ``0 <= theta <= 1``."""
        raise ValueError(f"{type(self).__name__} has no dense output")


class AbstractReversibleSolver(AbstractSolver):
    """A solver whose steps can be inverted: ``backward_step`` undoes ``step``."""

    @abc.abstractmethod
    def backward_step(self, term, t0, t1, y1, state1, args, control) -> tuple[Any, Any]:
        """Recover ``(y0, state0)`` at ``t0`` from ``(y1, state1)`` at ``t1``."""

    def backward_step_vjp(self, term, t0, t1, y1, state1, args, control, ct_y1, ct_state1):
        """One step of the reverse pass: reconstruct ``(y0, state0)`` and pull the
        cotangents of ``(y1, state1)`` back through the forward step.

        Returns ``(y0, state0, ct_y0, ct_state0, ct_theta)``, ``ct_theta`` the
        cotangent of ``(term, args)`` (``None`` at non-differentiable leaves). This
        default inverts the step, then differentiates the forward step from the
        reconstructed state; solvers whose inverse evaluates the same maps as the
        forward step override it to reuse them.
        """
        y0, state0 = self.backward_step(term, t0, t1, y1, state1, args, control)

        def forward(y, state, theta):
            return self.step(theta[0], t0, t1, y, state, theta[1], control)

        _, vjp = eqx.filter_vjp(forward, y0, state0, (term, args))
        ct_y0, ct_state0, ct_theta = vjp((ct_y1, ct_state1))
        return y0, state0, ct_y0, ct_state0, ct_theta


class ExplicitRungeKutta(AbstractSolver):
    """An explicit Runge-Kutta method given by its Butcher tableau (``a`` strictly lower
    triangular, weights ``b``, nodes ``c``)."""

    a: ClassVar[tuple[tuple[float, ...], ...]]
    b: ClassVar[tuple[float, ...]]
    c: ClassVar[tuple[float, ...]]
    # Weights of an embedded lower-order method (an error estimate), if the tableau
    # has one; adaptive steps need it.
    b_low: ClassVar[tuple[float, ...] | None] = None

    @property
    def fsal(self) -> bool:
        """First same as last: the last stage is ``f(t1, y1)``, the next step's first,
        so it is carried in the solver state and each step costs one evaluation less."""
        return len(self.b) > 1 and tuple(self.a[-1]) == tuple(self.b[:-1]) and self.c[-1] == 1

    @property
    def evaluations_per_step(self) -> int:
        return len(self.b) - 1 if self.fsal else len(self.b)

    @property
    def init_evaluations(self) -> int:  # type: ignore[override]
        return 1 if self.fsal else 0

    def init(self, term, t0, y0, args):
        return term.vf(t0, y0, args) if self.fsal else None

    def _stages(self, term, t0, t1, y0, args, control, first=None):
        """Stage increments ``prod(vf_i, control)`` and the last stage's vector field."""
        h = t1 - t0
        stages = []
        value = None
        for i, row in enumerate(self.a):
            if i == 0 and first is not None:
                value = first
            else:
                yi = _axpy(1.0, _combine(row[:i], stages), y0) if i else y0
                value = term.vf(t0 + self.c[i] * h, yi, args)
            stages.append(term.prod(value, control))
        return stages, value

    def increment(self, term, t0, t1, y0, args, control):
        """``y1 - y0`` for one step (the map reversible wrappers build on)."""
        stages, _ = self._stages(term, t0, t1, y0, args, control)
        return _combine(self.b, stages)

    def increment_and_error(self, term, t0, t1, y0, args, control):
        """``(y1 - y0, local error estimate)`` from the embedded pair (``b_low``)."""
        if self.b_low is None:
            raise ValueError(f"{type(self).__name__} has no embedded error estimate")
        stages, _ = self._stages(term, t0, t1, y0, args, control)
        return _combine(self.b, stages), _combine(self._error_weights, stages)

    @property
    def _error_weights(self):
        return tuple(hi - lo for hi, lo in zip(self.b, self.b_low, strict=True))

    def step(self, term, t0, t1, y0, state, args, control):
        stages, last = self._stages(term, t0, t1, y0, args, control, first=state)
        y1 = jax.tree.map(jnp.add, y0, _combine(self.b, stages))
        return y1, (last if self.fsal else None)

    @property
    def has_error_estimate(self) -> bool:
        return self.b_low is not None

    def step_with_error(self, term, t0, t1, y0, state, args, control):
        if self.b_low is None:
            raise ValueError(f"{type(self).__name__} has no embedded error estimate")
        stages, last = self._stages(term, t0, t1, y0, args, control, first=state)
        y1 = jax.tree.map(jnp.add, y0, _combine(self.b, stages))
        return y1, (last if self.fsal else None), _combine(self._error_weights, stages)

    @property
    def has_dense_output(self) -> bool:
        return self.dense_weights is not None and self.b_low is not None

    # Hairer's continuous extension for FSAL pairs: with increments k_i = h f_i,
    # y(theta) = y0 + theta (r1 + (1 - theta) (r2 + theta (r3 + (1 - theta) r4))),
    # r1 = y1 - y0, r2 = k_1 - r1, r3 = r1 - k_last - r2, r4 = sum_i d_i k_i.
    dense_weights: ClassVar[tuple[float, ...] | None] = None

    def dense_step(self, term, t0, t1, y0, state, args, control):
        if not self.has_dense_output:
            raise ValueError(f"{type(self).__name__} has no dense output")
        stages, last = self._stages(term, t0, t1, y0, args, control, first=state)
        y1 = jax.tree.map(jnp.add, y0, _combine(self.b, stages))
        error = _combine(self._error_weights, stages)
        r1 = jax.tree.map(jnp.subtract, y1, y0)
        r2 = jax.tree.map(jnp.subtract, stages[0], r1)
        r3 = jax.tree.map(lambda a, k, b: a - k - b, r1, stages[-1], r2)
        r4 = _combine(self.dense_weights, stages)
        return y1, (last if self.fsal else None), error, (y0, r1, r2, r3, r4)

    def interpolate(self, dense, theta):
        y0, r1, r2, r3, r4 = dense

        def one(y0, r1, r2, r3, r4):
            th = jnp.asarray(theta).astype(y0.dtype)
            return y0 + th * (r1 + (1 - th) * (r2 + th * (r3 + (1 - th) * r4)))

        return jax.tree.map(one, y0, r1, r2, r3, r4)


class Euler(ExplicitRungeKutta):
    """Explicit Euler, order 1, one evaluation per step. On an SDE this is
    Euler-Maruyama (Ito)."""

    order: ClassVar[int] = 1
    a: ClassVar = ((),)
    b: ClassVar = (1.0,)
    c: ClassVar = (0.0,)


class Midpoint(ExplicitRungeKutta):
    """Explicit midpoint, order 2, two evaluations per step."""

    order: ClassVar[int] = 2
    a: ClassVar = ((), (0.5,))
    b: ClassVar = (0.0, 1.0)
    c: ClassVar = (0.0, 0.5)


class Heun(ExplicitRungeKutta):
    """Heun's method (explicit trapezoidal rule), order 2, two evaluations per step. On
    an SDE it converges to the Stratonovich solution (strong order 0.5; 1 for additive
    noise). Its difference from Euler's step is the error estimate of adaptive steps
    (``rtol``/``atol``), for ODEs and SDEs."""

    order: ClassVar[int] = 2
    a: ClassVar = ((), (1.0,))
    b: ClassVar = (0.5, 0.5)
    b_low: ClassVar = (1.0, 0.0)  # Euler: the error estimate of adaptive steps
    c: ClassVar = (0.0, 1.0)


class RK4(ExplicitRungeKutta):
    """The classical fourth-order Runge-Kutta method, four evaluations per step."""

    order: ClassVar[int] = 4
    a: ClassVar = ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0))
    b: ClassVar = (1 / 6, 1 / 3, 1 / 3, 1 / 6)
    c: ClassVar = (0.0, 0.5, 0.5, 1.0)


class ReversibleHeun(AbstractReversibleSolver):
    """Reversible Heun (Kidger et al. 2021): order 2, one evaluation per step, exactly
    invertible; on an SDE it converges to the Stratonovich solution.

    Carries a second sequence ``z`` and the cached ``f(t, z)``:
    ``z1 = 2 y0 - z0 + h f(t0, z0)``, ``y1 = y0 + h/2 (f(t0, z0) + f(t1, z1))``.
    Only stable on the imaginary axis (its stability region is a segment), so long
    horizons on dissipative problems can drift; :class:`Reversible` adds damping.
    """

    order: ClassVar[int] = 2
    evaluations_per_step: ClassVar[int] = 1
    init_evaluations: ClassVar[int] = 1

    def init(self, term, t0, y0, args):
        return y0, term.vf(t0, y0, args)

    def step(self, term, t0, t1, y0, state, args, control):
        z0, v0 = state
        inc0 = term.prod(v0, control)
        z1 = jax.tree.map(lambda y, z, d: 2 * y - z + d, y0, z0, inc0)
        v1 = term.vf(t1, z1, args)
        inc1 = term.prod(v1, control)
        y1 = jax.tree.map(lambda y, a, b: y + 0.5 * (a + b), y0, inc0, inc1)
        return y1, (z1, v1)

    def backward_step(self, term, t0, t1, y1, state1, args, control):
        z1, v1 = state1
        inc1 = term.prod(v1, control)
        z0 = jax.tree.map(lambda y, z, d: 2 * y - z - d, y1, z1, inc1)
        v0 = term.vf(t0, z0, args)
        inc0 = term.prod(v0, control)
        y0 = jax.tree.map(lambda y, a, b: y - 0.5 * (a + b), y1, inc0, inc1)
        return y0, (z0, v0)


class EulerMaruyama(Euler):
    """Euler-Maruyama for SDEs (Ito): strong order 0.5, weak order 1; explicit Euler
    on an ODE."""


class Reversible(AbstractReversibleSolver):
    """Make any explicit Runge-Kutta method reversible (McCallum and Foster 2024).

    With the base method's increment ``Psi_h(t, z) = step(z) - z`` and coupling
    ``lam`` in (0, 1]:

        y1 = lam y0 + (1 - lam) z0 + Psi_h(t0, z0)
        z1 = z0 - Psi_{-h}(t1, y1)

    which inverts exactly: ``z0 = z1 + Psi_{-h}(t1, y1)``, ``y0 = (y1 - (1 - lam) z0 -
    Psi_h(t0, z0)) / lam``. It keeps the base method's order at twice its cost per
    step. ``lam < 1`` damps the drift between ``y`` and ``z`` that makes plain
    reversible schemes unstable on dissipative problems (the parasitic root is about
    ``lam / (1 + h a)`` for ``y' = a y``, so stiffer problems need smaller ``lam``);
    the price is that reconstructing backwards amplifies round-off by ``1 / lam`` per
    step, so keep ``lam`` close to 1 for long solves.

    Example:
        >>> import jaxsecond
        >>> solver = jaxsecond.Reversible(jaxsecond.RK4(), coupling=0.999)
    """

    base_solver: ExplicitRungeKutta
    coupling: float = 0.999

    def __check_init__(self):
        if not isinstance(self.base_solver, ExplicitRungeKutta):
            raise TypeError(
                "Reversible wraps an explicit Runge-Kutta solver (Euler, Midpoint, Heun, "
                f"RK4), got {self.base_solver!r}"
            )
        if not 0 < self.coupling <= 1:
            raise ValueError(f"coupling must be in (0, 1], got {self.coupling!r}")

    @property
    def order(self):  # type: ignore[override]
        return self.base_solver.order

    @property
    def evaluations_per_step(self) -> int:
        return 2 * len(self.base_solver.b)  # two increments, no stage carried over

    def init(self, term, t0, y0, args):
        return y0

    def step(self, term, t0, t1, y0, state, args, control):
        lam = self.coupling
        z0 = state
        inc = self.base_solver.increment(term, t0, t1, z0, args, control)
        y1 = jax.tree.map(lambda y, z, d: lam * y + (1 - lam) * z + d, y0, z0, inc)
        back = self.base_solver.increment(term, t1, t0, y1, args, negate(control))
        z1 = jax.tree.map(jnp.subtract, z0, back)
        return y1, z1

    @property
    def has_error_estimate(self) -> bool:
        return self.base_solver.has_error_estimate

    def step_with_error(self, term, t0, t1, y0, state, args, control):
        # The base method's estimate for the increment it takes from z, plus how much
        # the gap between the two sequences moved: that gap carries the parasitic mode,
        # which grows where the step is too long for the coupling (dissipative
        # problems), so the controller shortens the step until it is damped.
        lam = self.coupling
        z0 = state
        inc, err = self.base_solver.increment_and_error(term, t0, t1, z0, args, control)
        y1 = jax.tree.map(lambda y, z, d: lam * y + (1 - lam) * z + d, y0, z0, inc)
        back = self.base_solver.increment(term, t1, t0, y1, args, negate(control))
        z1 = jax.tree.map(jnp.subtract, z0, back)
        err = jax.tree.map(lambda e, a, b, c, d: e + (a - b) - (c - d), err, y1, z1, y0, z0)
        return y1, z1, err

    def backward_step(self, term, t0, t1, y1, state1, args, control):
        lam = self.coupling
        back = self.base_solver.increment(term, t1, t0, y1, args, negate(control))
        z0 = jax.tree.map(jnp.add, state1, back)
        inc = self.base_solver.increment(term, t0, t1, z0, args, control)
        y0 = jax.tree.map(lambda y, z, d: (y - (1 - lam) * z - d) / lam, y1, z0, inc)
        return y0, z0

    def backward_step_vjp(self, term, t0, t1, y1, state1, args, control, ct_y1, ct_state1):
        # The inverse evaluates the forward step's two increments at the same points
        # (the backward one at y1, the forward one at z0), so their VJPs come with the
        # reconstruction: two increments and two VJPs per step instead of four and two.
        lam, base = self.coupling, self.base_solver
        back, vjp_back = eqx.filter_vjp(
            lambda y, th: base.increment(th[0], t1, t0, y, th[1], negate(control)),
            y1,
            (term, args),
        )
        z0 = jax.tree.map(jnp.add, state1, back)
        inc, vjp_inc = eqx.filter_vjp(
            lambda z, th: base.increment(th[0], t0, t1, z, th[1], control), z0, (term, args)
        )
        y0 = jax.tree.map(lambda y, z, d: (y - (1 - lam) * z - d) / lam, y1, z0, inc)
        # Forward: y1 = lam y0 + (1 - lam) z0 + inc(z0), z1 = z0 - back(y1).
        ct_y1_back, ct_theta_back = vjp_back(jax.tree.map(jnp.negative, ct_state1))
        ct_y1 = jax.tree.map(jnp.add, ct_y1, ct_y1_back)
        ct_z0_inc, ct_theta_inc = vjp_inc(ct_y1)
        ct_z0 = jax.tree.map(lambda c, a, b: c + (1 - lam) * a + b, ct_state1, ct_y1, ct_z0_inc)
        ct_y0 = jax.tree.map(lambda a: lam * a, ct_y1)
        ct_theta = jax.tree.map(jnp.add, ct_theta_back, ct_theta_inc)
        return y0, z0, ct_y0, ct_z0, ct_theta


class Dopri5(ExplicitRungeKutta):
    """Dormand-Prince 5(4): order 5 with an embedded order-4 error estimate, seven
    evaluations per step. With ``rtol``/``atol`` (or a :class:`PIDController`) given to
    :func:`odeint` it adapts its steps; otherwise it takes fixed steps like any
    Runge-Kutta method.

    Reference: J. R. Dormand, P. J. Prince, "A family of embedded Runge-Kutta
    formulae", 1980.
    """

    order: ClassVar[int] = 5
    a: ClassVar = (
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    )
    b: ClassVar = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
    b_low: ClassVar = (
        5179 / 57600,
        0.0,
        7571 / 16695,
        393 / 640,
        -92097 / 339200,
        187 / 2100,
        1 / 40,
    )
    c: ClassVar = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
    # Dense output of order 4 (Hairer, Norsett, Wanner, section II.6; the coefficients
    # of Hairer's DOPRI5 code).
    dense_weights: ClassVar = (
        -12715105075 / 11282082432,
        0.0,
        87487479700 / 32700410799,
        -10690763975 / 1880347072,
        701980252875 / 199316789632,
        -1453857185 / 822651844,
        69997945 / 29380423,
    )
