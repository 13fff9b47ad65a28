"""Step-size controllers: how long the next step is, and whether to keep the last one.

A controller is separate from the solver, so any solver with an error estimate
(:class:`Dopri5`, :class:`Heun`, ``Reversible`` around either) runs adaptively, and a
new control rule is one class.

* :class:`ConstantStepSize`: equal steps, ``dt0`` long or ``steps_per_interval`` per
  output interval. The default when no tolerance is given.
* :class:`PIDController`: keep the local error within ``atol + rtol |y|`` (RMS norm
  over every component of the state) and choose the next step from the last three
  error ratios (Soderlind's PID form; the defaults are the classical I controller).

References: E. Hairer, G. Wanner, "Solving Ordinary Differential Equations I",
section II.4 (error control and the initial step); G. Soderlind, "Digital filters in
adaptive time-stepping", ACM TOMS 2003.
"""

from __future__ import annotations

import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxsecond._checks import check_positive
from jaxsecond.diffeq._terms import scale_by


class AbstractStepSizeController(eqx.Module):
    """Decides the steps of a solve. Subclasses are either constant (steps known before
    the solve) or adaptive (``init``/``adapt`` below)."""

    @property
    @abc.abstractmethod
    def adaptive(self) -> bool:
        """Whether steps depend on the solution (a while loop) or not (a fixed grid)."""


class ConstantStepSize(AbstractStepSizeController):
    """Equal steps: ``dt0`` or ``steps_per_interval`` given to :func:`odeint`.

    Example:
        >>> import jax.numpy as jnp, jaxsecond
        >>> ys = jaxsecond.odeint(lambda t, y, a: -y, jnp.array(1.0), jnp.array([0.0, 1.0]),
        ...                       stepsize_controller=jaxsecond.ConstantStepSize(), dt0=0.1)
    """

    @property
    def adaptive(self) -> bool:
        return False


class PIDController(AbstractStepSizeController):
    """Adaptive steps from an embedded error estimate.

    A step from ``y0`` to ``y1`` with error estimate ``err`` is accepted when the RMS of
    ``err / (atol + rtol max(|y0|, |y1|))`` over all components is at most 1. The next
    step is the last one times ``safety * e_n^(-b1) * e_{n-1}^(-b2) * e_{n-2}^(-b3)``
    (``e`` the error ratios of accepted steps, exponents from ``pcoeff``, ``icoeff``,
    ``dcoeff`` divided by the method's order), clipped to ``[factormin, factormax]``
    (and to at most 1 after a rejection).

    Attributes:
        rtol, atol: relative and absolute tolerance (not both zero).
        pcoeff, icoeff, dcoeff: proportional, integral and derivative gains. The
            default ``(0, 1, 0)`` is the classical I controller; ``(0.3, 0.3, 0)`` (or
            ``(0.4, 0.3, 0)``) is smoother on problems whose step size oscillates.
        safety: factor applied to every proposed step.
        factormin, factormax: limits on the change of step size per step.
        dtmin: smallest step; a step that would be shorter is taken anyway (and
            accepted) instead of stalling. ``None`` (default): no minimum, a solve
            that cannot meet the tolerance runs out of ``max_steps`` and says so.
        dtmax: largest step, or ``None``.

    Example:
        >>> import jax.numpy as jnp, jaxsecond
        >>> controller = jaxsecond.PIDController(rtol=1e-6, atol=1e-8)
        >>> ys = jaxsecond.odeint(lambda t, y, a: -y, jnp.array(1.0), jnp.array([0.0, 1.0]),
        ...                       stepsize_controller=controller)
        >>> print(f"{float(ys[-1]):.6f}")
        0.367879
    """

    rtol: float
    atol: float
    pcoeff: float = 0.0
    icoeff: float = 1.0
    dcoeff: float = 0.0
    safety: float = 0.9
    factormin: float = 0.2
    factormax: float = 10.0
    dtmin: float | None = None
    dtmax: float | None = None

    def __check_init__(self):
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        if self.rtol == 0 and self.atol == 0:
            raise ValueError("rtol and atol cannot both be zero")
        if not 0 < self.factormin <= 1 <= self.factormax:
            raise ValueError(
                f"need 0 < factormin <= 1 <= factormax, got {self.factormin}, {self.factormax}"
            )
        if not 0 < self.safety <= 1:
            raise ValueError(f"safety must be in (0, 1], got {self.safety!r}")
        for name in ("dtmin", "dtmax"):
            if getattr(self, name) is not None:
                check_positive(getattr(self, name), name)

    @property
    def adaptive(self) -> bool:
        return True

    def init(self, dtype) -> Any:
        """The controller's memory: the error ratios of the last two accepted steps."""
        one = jnp.ones((), dtype)
        return one, one

    def error_ratio(self, y0, y1, error):
        """RMS of ``error / (atol + rtol max(|y0|, |y1|))``: at most 1 to accept. Complex
        states are measured by modulus. Not differentiated (step choices are not)."""
        y0, y1, error = jax.lax.stop_gradient((y0, y1, error))
        total, count = 0.0, 0
        for a, b, e in zip(
            jax.tree.leaves(y0), jax.tree.leaves(y1), jax.tree.leaves(error), strict=True
        ):
            scale = self.atol + self.rtol * jnp.maximum(jnp.abs(a), jnp.abs(b))
            total = total + jnp.sum((jnp.abs(e) / scale) ** 2)
            count += e.size
        ratio = jnp.sqrt(total / max(count, 1))
        return jnp.where(jnp.isfinite(ratio), ratio, jnp.inf)

    def adapt(self, h, ratio, state, order: int):
        """``(accept, next step, new state)`` after a step of length ``h`` whose error
        ratio is ``ratio``. ``order``: the method's order (exponents are divided by it)."""
        e1, e2 = state
        accept = ratio <= 1
        if self.dtmin is not None:
            accept = accept | (h <= self.dtmin)
        b1 = (self.pcoeff + self.icoeff + self.dcoeff) / order
        b2 = -(self.pcoeff + 2 * self.dcoeff) / order
        b3 = self.dcoeff / order
        safe = jnp.maximum(ratio, jnp.asarray(1e-10, ratio.dtype))
        factor = self.safety * safe ** (-b1)
        if b2 != 0:
            factor = factor * e1 ** (-b2)
        if b3 != 0:
            factor = factor * e2 ** (-b3)
        factor = jnp.where(jnp.isfinite(factor), factor, self.factormin)
        factor = jnp.clip(factor, self.factormin, self.factormax)
        factor = jnp.where(accept, factor, jnp.minimum(factor, 1.0))
        h_next = h * factor
        if self.dtmin is not None:
            h_next = jnp.maximum(h_next, self.dtmin)
        if self.dtmax is not None:
            h_next = jnp.minimum(h_next, self.dtmax)
        new_state = (jnp.where(accept, safe, e1), jnp.where(accept, e1, e2))
        return accept, h_next.astype(h.dtype), new_state


def initial_step(term, t0, y0, args, order: int, rtol: float, atol: float, t_span):
    """Hairer and Wanner's starting step (two vector-field evaluations): a step whose
    first-order error ``h^2 |f'|`` is about 1% of the tolerance, and no longer than
    the first output interval. ODE terms only."""
    y0 = jax.lax.stop_gradient(y0)
    f0 = term.vf(t0, y0, args)
    leaves_y, leaves_f = jax.tree.leaves(y0), jax.tree.leaves(f0)
    scale = [atol + rtol * jnp.abs(y) for y in leaves_y]
    count = sum(y.size for y in leaves_y)

    def rms(leaves):
        return jnp.sqrt(
            sum(jnp.sum((jnp.abs(x) / s) ** 2) for x, s in zip(leaves, scale, strict=True)) / count
        )

    d0, d1 = rms(leaves_y), rms(leaves_f)
    h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1).astype(t_span.dtype)
    h0 = jnp.minimum(h0, t_span)
    y1 = jax.tree.map(lambda y, f: y + scale_by(h0, f), y0, f0)
    f1 = term.vf(t0 + h0, y1, args)
    d2 = rms([a - b for a, b in zip(jax.tree.leaves(f1), leaves_f, strict=True)]) / h0
    big = jnp.maximum(d1, d2)
    h1 = jnp.where(
        big <= 1e-15, jnp.maximum(1e-6, h0 * 1e-3), (0.01 / big) ** (1.0 / order)
    ).astype(t_span.dtype)
    return jax.lax.stop_gradient(jnp.minimum(jnp.minimum(100 * h0, h1), t_span))
