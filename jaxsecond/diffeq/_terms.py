"""What a solver integrates: an ODE vector field or SDE drift and diffusion.

A term splits an increment into two parts so that reversible solvers can cache the
expensive one: ``vf(t, y, args)`` evaluates the user's functions, ``prod(value,
control)`` turns that value into an increment of ``y`` over a step whose control is
``dt`` (ODE) or ``(dt, dW)`` (SDE). Controls are pytrees; reversing a step negates
its control.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp


def scale_by(a, v):
    """``a * v`` for a real time increment ``a`` and a state-like array ``v`` of any
    inexact dtype (complex included), without promoting ``v``."""
    return v * jnp.asarray(a).astype(jnp.result_type(v))


def cast_like(value, y):
    """``value`` in ``y``'s dtypes, leaf by leaf: a vector field that promotes (float64
    parameters, float64 times under x64) does not change the state's precision."""
    return jax.tree.map(lambda v, x: jnp.asarray(v).astype(jnp.result_type(x)), value, y)


class Reflected(eqx.Module):
    """``t -> sign * fn(sign * t, y, args)`` (or ``fn(sign * t, ...)`` unscaled): a solve
    backwards in time as a solve forwards in ``-t``."""

    fn: Callable
    sign: object  # -1.0, or a traced sign when ts are traced
    scale: bool = eqx.field(static=True, default=True)

    def __call__(self, t, y, args):
        out = self.fn(self.sign * t, y, args)
        if not self.scale:
            return out
        return jax.tree.map(lambda v: self.sign * v, out)


class ODETerm(eqx.Module):
    """``dy = f(t, y, args) dt``."""

    vector_field: Callable
    progress: int | None = eqx.field(static=True, default=None)  # see _progress.py

    def control(self, t0, t1, step_index):
        return t1 - t0

    def vf(self, t, y, args):
        return cast_like(self.vector_field(t, y, args), y)

    def prod(self, value, control):
        return jax.tree.map(lambda v: scale_by(control, v), value)


class SDETerm(eqx.Module):
    """``dy = drift(t, y, args) dt + diffusion(t, y, args) dW``.

    ``diffusion`` returning ``y``'s shape means diagonal noise (``dW`` has ``y``'s
    shape); returning ``y.shape + (m,)`` means general noise with ``m`` Brownian
    motions (``dW`` has shape ``(m,)``). Arrays only (``y`` a single array).
    """

    drift: Callable
    diffusion: Callable
    key_data: jax.Array  # raw key bits: a plain array crosses every transformation
    diagonal: bool = eqx.field(static=True)
    noise_shape: tuple[int, ...] = eqx.field(static=True)
    brownian: object = None  # anything with evaluate(t0, t1) -> dW, e.g. diffrax's
    reflected: bool = eqx.field(static=True, default=False)  # solving in -t
    progress: int | None = eqx.field(static=True, default=None)  # see _progress.py
    key_impl: str = eqx.field(static=True, default="threefry2x32")  # rbg keys keep theirs

    def control(self, t0, t1, step_index):
        """``(dt, dW)`` for step ``step_index``. Without a Brownian path object the
        increment is ``sqrt(dt) N(0, 1)`` drawn from ``fold_in(key, step_index)``, so
        the reverse pass regenerates it exactly at O(1) cost."""
        dt = t1 - t0
        if self.brownian is not None:
            if self.reflected:  # W~(s) = W(-s): W~(t1) - W~(t0) = -(W(-t0) - W(-t1))
                return dt, -self.brownian.evaluate(-t1, -t0)
            return dt, self.brownian.evaluate(t0, t1)
        key = jax.random.fold_in(
            jax.random.wrap_key_data(self.key_data, impl=self.key_impl), step_index
        )
        dw = jnp.sqrt(jnp.abs(dt)) * jax.random.normal(key, self.noise_shape, dt.dtype)
        return dt, dw

    def vf(self, t, y, args):
        return cast_like(self.drift(t, y, args), y), cast_like(self.diffusion(t, y, args), y)

    def prod(self, value, control):
        drift, diffusion = value
        dt, dw = control
        dw = jnp.asarray(dw).astype(jnp.result_type(diffusion))
        if self.diagonal:
            noise = diffusion * dw
        else:
            noise = jnp.einsum("...m,m->...", diffusion, dw)
        return scale_by(dt, drift) + noise


def negate(control):
    return jax.tree.map(jnp.negative, control)
