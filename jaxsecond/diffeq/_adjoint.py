"""How gradients of a solve are computed: the adjoints.

* :class:`StoreAll`: differentiate the loop itself; reverse mode stores every step.
* :class:`Checkpointed`: store a few states per output interval, recompute the rest.
* :class:`ReversibleAdjoint`: store nothing; reconstruct states backwards with the
  solver's exact inverse step.

Each works under ``jax.jvp``, ``jax.grad``, ``jax.vmap``, ``jax.jit`` and to second
order. The reversible adjoint is built so that forward mode never meets a
``custom_vjp``: the solve is a ``custom_jvp`` whose tangent is a primitive, linear in
the input tangents, computed by forward-mode propagation (O(1) memory). Reverse mode
transposes that primitive, and its transpose rule is the backward reconstruction. Both
rules are ordinary JAX code, so they can themselves be differentiated (second order).
"""

from __future__ import annotations

import abc
import functools

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
from jax.interpreters import ad, batching

from jaxsecond.diffeq._integrate import (
    integrate,
    num_intervals,
    skip_dead_steps,
    start_time,
    step_times,
)
from jaxsecond.diffeq._solvers import AbstractReversibleSolver, AbstractSolver
from jaxsecond.diffeq._terms import ODETerm, SDETerm


class AbstractAdjoint(eqx.Module):
    """How ``odeint`` differentiates a solve: ``solve(solver, f, y0, args, ts,
    steps_per_interval) -> ys``. ``f`` is closure-converted (its closed-over arrays are
    leaves), so an adjoint can differentiate with respect to them."""

    @abc.abstractmethod
    def solve(self, solver: AbstractSolver, f, y0, args, ts, steps_per_interval: int):
        """Return the solution at every time in ``ts``."""


class StoreAll(AbstractAdjoint):
    """Differentiate through every step: exact discrete gradients, memory linear in the
    number of steps for reverse mode (forward mode needs none)."""

    def solve(self, solver, f, y0, args, ts, steps_per_interval):
        return integrate(solver, f, y0, args, ts, steps_per_interval)[0]


class Checkpointed(AbstractAdjoint):
    """Store ``num_checkpoints`` states per output interval and recompute between them
    in the backward pass (``jax.checkpoint``).

    Reverse-mode memory: ``(len(ts) - 1) * num_checkpoints`` saved states plus the
    intermediates of ``ceil(steps_per_interval / num_checkpoints)`` recomputed steps,
    instead of the intermediates of ``(len(ts) - 1) * steps_per_interval`` steps
    (:class:`StoreAll`); minimal near ``num_checkpoints = sqrt(steps_per_interval)``.
    Compute: one extra forward pass. Exact discrete gradients, as :class:`StoreAll`.
    (Checked against compiled memory in the tests.)
    """

    num_checkpoints: int = 4

    def __check_init__(self):
        if isinstance(self.num_checkpoints, bool) or not (
            isinstance(self.num_checkpoints, int) and self.num_checkpoints >= 1
        ):
            raise ValueError(
                f"num_checkpoints must be an integer >= 1, got {self.num_checkpoints!r}"
            )

    def solve(self, solver, f, y0, args, ts, steps_per_interval):
        segments = min(self.num_checkpoints, steps_per_interval)
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

                    return jax.lax.scan(one_step, carry, jnp.arange(per_segment))[0], None

                return jax.lax.scan(segment, carry, jnp.arange(segments))[0]

            return run_interval

        return integrate(solver, f, y0, args, ts, steps_per_interval, interval_fn=interval_fn)[0]


class ReversibleAdjoint(AbstractAdjoint):
    """Exact gradients in O(1) memory in the number of steps, for reversible solvers
    (:class:`ReversibleHeun`, :class:`Reversible`).

    Reverse mode reconstructs each state from the next with the solver's inverse step
    and back-propagates through that one step, so the trajectory is never stored:
    memory is that of a few states, whatever the number of steps; compute is about one
    extra forward pass. The gradients are those of the discretisation (as
    :class:`StoreAll`), up to the round-off of the reconstruction. Forward mode
    propagates tangents alongside the solve (O(1) memory). No derivatives with respect
    to ``ts``.
    """

    def solve(self, solver, f, y0, args, ts, steps_per_interval):
        if not isinstance(solver, AbstractReversibleSolver):
            raise ValueError(
                "adjoint=ReversibleAdjoint() needs a reversible solver (ReversibleHeun() or "
                f"Reversible(base_solver)), got {type(solver).__name__}"
            )
        return _reconstructing_solve(self, solver, steps_per_interval, f, y0, args, ts)

    def backward(self, solver, steps, ts, f, y0, args, ct_ys):
        return _backward(solver, steps, ts, f, y0, args, ct_ys)


class BacksolveAdjoint(AbstractAdjoint):
    """The continuous adjoint (Chen et al. 2018): reverse mode solves the adjoint ODE
    ``da/dt = -a df/dy``, ``dg/dt = -a df/dtheta`` backwards in time, alongside the
    state itself re-solved backwards, with the same solver and steps.

    Memory is flat in the number of steps and any solver works, but the gradients are
    only approximate: they are those of the continuous problem, discretised on the way
    back, and the backward re-solve of the state drifts on dissipative or chaotic
    problems. Forward mode (``jax.jvp``) propagates tangents alongside the forward
    solve and is exact for the discretisation. ODEs only.
    """

    def solve(self, solver, f, y0, args, ts, steps_per_interval):
        if isinstance(f, SDETerm):
            raise ValueError("adjoint=BacksolveAdjoint() supports ODEs (odeint) only")
        return _reconstructing_solve(self, solver, steps_per_interval, f, y0, args, ts)

    def backward(self, solver, steps, ts, f, y0, args, ct_ys):
        return _backsolve(solver, steps, ts, f, y0, args, ct_ys)


# --------------------------------------------------------------------------------------
# The reversible solve: custom_jvp over the solve, primitive for its tangent.
# --------------------------------------------------------------------------------------


def _reconstructing_solve(method, solver, steps, f, y0, args, ts):
    """A solve whose tangent is the primitive below; ``method.backward`` is its
    transpose (reverse mode) and never stores the trajectory."""
    dynamic, static = eqx.partition((f, y0, args, ts), eqx.is_array)
    return _reversible_solve_jvp(static, (method, solver), steps, dynamic)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _reversible_solve_jvp(static, method_solver, steps, dynamic):
    _, solver = method_solver
    f, y0, args, ts = eqx.combine(jax.tree.map(jnp.asarray, dynamic), static)
    return integrate(solver, f, y0, args, ts, steps)[0]


@_reversible_solve_jvp.defjvp
def _reversible_solve_jvp_rule(static, method_solver, steps, primals, tangents):
    method, solver = method_solver
    (dynamic,) = primals
    (t_dynamic,) = tangents
    dynamic = jax.tree.map(jnp.asarray, dynamic)
    ys = _reversible_solve_jvp(static, method_solver, steps, dynamic)
    f, y0, args, ts = eqx.combine(dynamic, static)
    # Tangents of (f, y0, args): arrays at floating-point leaves, None elsewhere. No
    # derivative with respect to ts.
    t_f, t_y0, t_args, _ = _floating_tangents(dynamic, t_dynamic)
    (t_ys,) = eqxi.filter_primitive_bind(
        _tangent_p, method, solver, steps, ts, _lift((f, y0, args)), _lift((t_f, t_y0, t_args))
    )
    return ys, t_ys


def _floating_tangents(primals, tangents):
    """Tangents as arrays for floating-point leaves (zeros where symbolic), else None."""

    def one(p, t):
        if not jnp.issubdtype(p.dtype, jnp.inexact):
            return None
        if t is None or isinstance(t, ad.Zero) or getattr(t, "dtype", None) == jax.dtypes.float0:
            return jnp.zeros_like(p)
        return jnp.asarray(t, p.dtype)

    return jax.tree.map(one, primals, tangents)


def _forward_fn(solver, steps, ts):
    def forward(tree):
        f, y0, args = tree
        return integrate(solver, f, y0, args, ts, steps)[0]

    return forward


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


def _tangent_impl(method, solver, steps, ts, primals, tangents):
    primals, tangents = _unlift((primals, tangents))
    # Forward mode: tangents ride along with the solve, nothing is stored.
    _, out = eqx.filter_jvp(_forward_fn(solver, steps, ts), (primals,), (tangents,))
    return (out,)


def _to_struct(x):
    if isinstance(x, jax.core.ShapedArray):
        return jax.ShapeDtypeStruct(x.shape, x.dtype)
    return x


def _tangent_abstract_eval(method, solver, steps, ts, primals, tangents):
    ts, primals, tangents = jax.tree.map(_to_struct, (ts, primals, tangents))
    out = eqx.filter_eval_shape(_tangent_impl, method, solver, steps, ts, primals, tangents)
    return jax.tree.map(lambda s: jax.core.ShapedArray(s.shape, s.dtype), out)


def _tangent_jvp(primals_in, tangents_in):
    method, solver, steps, ts, primals, tangents = primals_in
    _, _, _, _, d_primals, d_tangents = tangents_in
    out = eqxi.filter_primitive_bind(_tangent_p, method, solver, steps, ts, primals, tangents)
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
            eqxi.filter_primitive_bind(_tangent_p, method, solver, steps, ts, primals, d_tangents)[
                0
            ]
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
            lambda p: _tangent_impl(method, solver, steps, ts, p, t_u)[0], (p_u,), (d_u,)
        )
        terms.append(term)
    if not terms:
        return out, None
    total = terms[0]
    for term in terms[1:]:
        total = jax.tree.map(jnp.add, total, term)
    return out, (total,)


def _tangent_transpose(inputs, cts_out):
    method, solver, steps, ts, primals, tangents = inputs
    (ct_ys,) = cts_out
    f, y0, args = _unlift(primals)
    ct_f, ct_y0, ct_args = _lift(method.backward(solver, steps, ts, f, y0, args, ct_ys))
    is_leaf = lambda x: x is None or isinstance(x, ad.UndefinedPrimal)
    # Both trees have None exactly at the non-floating leaves, so they align leafwise.
    cts = jax.tree.map(
        lambda t, ct: ct if isinstance(t, ad.UndefinedPrimal) else None,
        tangents,
        (ct_f, ct_y0, ct_args),
        is_leaf=is_leaf,
    )
    no_ct = lambda tree: jax.tree.map(lambda _: None, tree)
    return no_ct(method), no_ct(solver), no_ct(steps), no_ct(ts), no_ct(primals), cts


def _backward(solver, steps, ts, f, y0, args, ct_ys):
    """Reverse pass by reconstruction: cotangents of ``(f, y0, args)``."""
    ts = jnp.asarray(ts)  # transpose rules may receive a NumPy constant
    _, (y_end, state_end) = integrate(solver, f, y0, args, ts, steps)
    diff = lambda x: eqx.is_inexact_array(x)
    theta = (f, args)
    zeros_theta = jax.tree.map(lambda x: jnp.zeros_like(x) if diff(x) else None, theta)
    zeros_state = jax.tree.map(jnp.zeros_like, state_end)
    ct_last = jax.tree.map(lambda c: c[-1], ct_ys)

    def step_back(carry, j, i):
        t0, t1 = step_times(ts, i, j, steps)
        control = f.control(t0, t1, i * steps + j)  # regenerated, not stored

        def back(carry):
            y1, state1, ct_y1, ct_state1, ct_theta = carry
            y0_, state0 = solver.backward_step(f, t0, t1, y1, state1, args, control)

            def forward_step(y, state, theta):
                f_, args_ = theta
                return solver.step(f_, t0, t1, y, state, args_, control)

            _, vjp = eqx.filter_vjp(forward_step, y0_, state0, theta)
            ct_y0, ct_state0, ct_th = vjp((ct_y1, ct_state1))
            ct_theta = jax.tree.map(
                lambda a, b: a if b is None else a + b,
                ct_theta,
                ct_th,
                is_leaf=lambda x: x is None,
            )
            return y0_, state0, ct_y0, _fill(ct_state0, state0), ct_theta

        return skip_dead_steps(ts, t0, t1, back, carry), None

    def interval_back(carry, i):
        carry = jax.lax.fori_loop(0, steps, lambda r, c: step_back(c, steps - 1 - r, i)[0], carry)
        y, state, ct_y, ct_state, ct_theta = carry
        ct_y = jax.tree.map(lambda a, c: a + c[i], ct_y, ct_ys)
        return (y, state, ct_y, ct_state, ct_theta), None

    init = (y_end, state_end, ct_last, zeros_state, zeros_theta)
    carry, _ = jax.lax.scan(interval_back, init, jnp.arange(num_intervals(ts) - 1, -1, -1))
    y_start, _, ct_y, ct_state, ct_theta = carry
    # The initial solver state depends on y0 and theta too (e.g. a cached f(t0, y0)).
    _, vjp_init = eqx.filter_vjp(
        lambda y, theta: solver.init(theta[0], start_time(ts), y, theta[1]), y_start, theta
    )
    ct_y_init, ct_th = vjp_init(ct_state)
    ct_y0 = jax.tree.map(jnp.add, ct_y, ct_y_init)
    ct_theta = jax.tree.map(
        lambda a, b: a if b is None else a + b, ct_theta, ct_th, is_leaf=lambda x: x is None
    )
    return ct_theta[0], ct_y0, ct_theta[1]


def _backsolve(solver, steps, ts, term, y0, args, ct_ys):
    """Continuous-adjoint reverse pass: cotangents of ``(term, y0, args)``."""
    ts = jnp.asarray(ts)
    _, (y_end, _) = integrate(solver, term, y0, args, ts, steps)
    theta = (term, args)

    def augmented(t, state, _):
        y, a, _g = state
        fy, vjp = eqx.filter_vjp(lambda y_, th: th[0].vf(t, y_, th[1]), y, theta)
        ct_y, ct_theta = vjp(a)
        neg = lambda tree: jax.tree.map(jnp.negative, tree)
        return fy, neg(ct_y), neg(ct_theta)

    aug = ODETerm(augmented)
    g0 = jax.tree.map(lambda x: jnp.zeros_like(x) if eqx.is_inexact_array(x) else None, theta)
    a0 = jax.tree.map(lambda c: c[-1], ct_ys)

    def interval_back(state, i):
        solver_state = solver.init(aug, step_times(ts, i, steps - 1, steps)[1], state, None)

        def one_step(r, carry):
            j = steps - 1 - r
            t0, t1 = step_times(ts, i, j, steps)
            step = lambda c: solver.step(aug, t1, t0, *c, None, t0 - t1)
            return skip_dead_steps(ts, t0, t1, step, carry)

        state, _ = jax.lax.fori_loop(0, steps, one_step, (state, solver_state))
        y, a, g = state
        a = jax.tree.map(lambda a_, c: a_ + c[i], a, ct_ys)
        return (y, a, g), None

    (_, ct_y0, g), _ = jax.lax.scan(
        interval_back, (y_end, a0, g0), jnp.arange(num_intervals(ts) - 1, -1, -1)
    )
    return g[0], ct_y0, g[1]


def _fill(ct, like):
    """Zeros for None cotangents so the scan carry keeps its structure."""
    return jax.tree.map(
        lambda c, x: jnp.zeros_like(x) if c is None else c, ct, like, is_leaf=lambda x: x is None
    )


_tangent_p = eqxi.create_vprim(
    "jaxsecond_reversible_tangent",
    eqxi.filter_primitive_def(_tangent_impl),
    eqxi.filter_primitive_def(_tangent_abstract_eval),
    eqxi.filter_primitive_jvp(_tangent_jvp),
    eqxi.filter_primitive_transpose(materialise_zeros=True)(_tangent_transpose),
)


# equinox's automatic batching transposes a batched call by vmapping the transpose
# rule with the inputs' batch axes as output axes, which fails when an unbatched
# linear input (e.g. closed-over parameters under a vmap over y0) receives a batched
# cotangent. Broadcasting every input first makes all of them batched; the broadcasts
# are linear, and their transposes sum the cotangents over the batch.
_vprim_batch_rule = batching.fancy_primitive_batchers[_tangent_p]


def _batch_everything(axis_data, inputs, batch_axes, **params):
    if any(b is not None for b in batch_axes):
        inputs = [
            jnp.broadcast_to(x, (axis_data.size, *jnp.shape(x)))
            if b is None
            else jnp.moveaxis(x, b, 0)
            for x, b in zip(inputs, batch_axes, strict=True)
        ]
        batch_axes = (0,) * len(inputs)
    return _vprim_batch_rule(axis_data, inputs, batch_axes, **params)


batching.fancy_primitive_batchers[_tangent_p] = _batch_everything
