"""The Pallas hash grid as two JAX primitives, so that every autodiff mode reaches the
kernels.

* ``interpolate(x, tables; order)`` returns ``(F_0, ..., F_order)``, the features and
  their spatial derivatives (``F_k`` has ``k`` trailing axes of size ``d``). It is
  linear in ``tables``; its derivative along ``x`` is the next order contracted with
  the tangent: ``d F_k = F_{k+1} . dx``.
* ``scatter(x, G_0, ..., G_K)`` returns ``sum_k A_k(x)^T G_k``, the transpose of
  ``tables -> F_k``. It is linear in the ``G_k``; along ``x``,
  ``d (A_k^T G_k) = A_{k+1}^T (G_k (x) dx)``.

So each primitive's JVP is made of the two primitives and plain array operations, and
each transposes into the other: ``jax.grad`` with respect to the tables runs
``scatter``; the gradient of an Eikonal loss (a loss on ``d features / d x``) runs
``interpolate`` to order 1 forward and one fused ``scatter`` of orders 0 and 1 backward;
Hessian-vector products add one order. Every derivative of order above ``d`` vanishes
(the interpolation weights are multilinear), which ends the recursion.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jaxsecond.kernels import hashgrid as kernels

# (points per program, warps) measured fastest on an H200 for L = 16, F = 2, d = 3:
# derivative outputs make each program's tile larger, so smaller blocks or more warps.
_INTERPOLATE_TUNING = {0: (128, 4), 1: (64, 4)}
_INTERPOLATE_TUNING_HIGHER = (128, 8)
_SCATTER_TUNING = (128, 4)


def _kernel_options(interpret, block_size, tuned):
    """Kernel keywords: ``block_size=None`` picks the measured best for the call."""
    if block_size is None:
        block_size, num_warps = tuned
    else:
        num_warps = 4
    return {"interpret": interpret, "block_size": block_size, "num_warps": num_warps}


# ---------------------------------------------------------------------- interpolate

interpolate_p = Primitive("jaxsecond_hashgrid_interpolate")
interpolate_p.multiple_results = True


def _interpolate_impl(x, tables, *, config, order, interpret, block_size):
    return list(
        kernels.interpolate_pallas(
            x,
            tables,
            config,
            order,
            **_kernel_options(
                interpret, block_size, _INTERPOLATE_TUNING.get(order, _INTERPOLATE_TUNING_HIGHER)
            ),
        )
    )


def _interpolate_abstract(x, tables, *, config, order, interpret, block_size):
    n, (levels, _, features) = x.shape[0], tables.shape
    return [
        jax.core.ShapedArray((n, levels, features) + (config.dim,) * k, tables.dtype)
        for k in range(order + 1)
    ]


def _contract(f_next, dx):
    """``F_{k+1} . dx`` over the last axis: the change of ``F_k`` along ``dx``."""
    keep = [0, 1, 2, *range(3, f_next.ndim - 1)]  # explicit: the point axis is not summed
    return jnp.einsum(f_next, [*keep, 99], dx, [0, 99], keep)


def _interpolate_jvp(primals, tangents, *, config, order, interpret, block_size):
    x, tables = primals
    dx, dtables = tangents
    params = dict(config=config, interpret=interpret, block_size=block_size)
    moves_x = type(dx) is not ad.Zero and order + 1 <= config.dim
    outs = interpolate_p.bind(x, tables, order=order + 1 if moves_x else order, **params)
    primal_out = outs[: order + 1]
    tangent_out = [jnp.zeros_like(f) for f in primal_out]
    if moves_x:
        dx = dx.astype(tables.dtype)
        tangent_out = [_contract(outs[k + 1], dx) for k in range(order + 1)]
    if type(dtables) is not ad.Zero:
        linear = interpolate_p.bind(x, dtables, order=order, **params)
        tangent_out = [a + b for a, b in zip(tangent_out, linear, strict=True)]
    return primal_out, tangent_out


def _interpolate_transpose(cts, x, tables, *, config, order, interpret, block_size):
    if ad.is_undefined_primal(x):
        raise ValueError("the hash-grid interpolation is linear in the tables only")
    # Orders whose cotangent is a symbolic zero are left out: the kernel never reads them
    # (an Eikonal loss, for one, leaves F_0 without a cotangent).
    present = [(k, ct) for k, ct in enumerate(cts) if type(ct) is not ad.Zero]
    if not present:
        return None, None
    params = dict(config=config, interpret=interpret, block_size=block_size)
    return None, _scatter(x, present, table_shape=tables.aval.shape, **params)


def _interpolate_batch(args, dims, *, config, order, interpret, block_size):
    x, tables = args
    x_dim, t_dim = dims
    params = dict(config=config, order=order, interpret=interpret, block_size=block_size)
    if t_dim is None:
        # Only the points are batched: they are just more points.
        x = jnp.moveaxis(x, x_dim, 0)
        b, n = x.shape[:2]
        outs = interpolate_p.bind(x.reshape(b * n, x.shape[-1]), tables, **params)
        return [f.reshape(b, n, *f.shape[1:]) for f in outs], [0] * len(outs)
    # Batched tables (an ensemble of grids): one kernel call per member.
    tables = jnp.moveaxis(tables, t_dim, 0)
    if x_dim is None:
        outs = jax.lax.map(lambda t: tuple(interpolate_p.bind(x, t, **params)), tables)
    else:
        x = jnp.moveaxis(x, x_dim, 0)
        outs = jax.lax.map(lambda a: tuple(interpolate_p.bind(*a, **params)), (x, tables))
    return list(outs), [0] * len(outs)


interpolate_p.def_impl(_interpolate_impl)
interpolate_p.def_abstract_eval(_interpolate_abstract)
ad.primitive_jvps[interpolate_p] = _interpolate_jvp
ad.primitive_transposes[interpolate_p] = _interpolate_transpose
batching.primitive_batchers[interpolate_p] = _interpolate_batch
mlir.register_lowering(interpolate_p, mlir.lower_fun(_interpolate_impl, multiple_results=True))


# -------------------------------------------------------------------------- scatter

scatter_p = Primitive("jaxsecond_hashgrid_scatter")


def _scatter(x, by_order, **params):
    """``sum_k A_k(x)^T G_k`` for the ``(k, G_k)`` pairs given (the others are zero)."""
    return scatter_p.bind(
        x, *(g for _, g in by_order), orders=tuple(k for k, _ in by_order), **params
    )


def _scatter_impl(x, *cts, config, interpret, block_size, table_shape, orders):
    by_order = [None] * (max(orders) + 1)
    for k, g in zip(orders, cts, strict=True):
        by_order[k] = g
    return kernels.scatter_pallas(
        x, tuple(by_order), config, **_kernel_options(interpret, block_size, _SCATTER_TUNING)
    )


def _scatter_abstract(x, *cts, config, interpret, block_size, table_shape, orders):
    return jax.core.ShapedArray(table_shape, cts[0].dtype)


def _outer(g, dx):
    """``G_k (x) dx``: one more trailing axis, indexed by the direction."""
    extra = (None,) * (g.ndim - 2)
    return g[..., None] * dx[(slice(None), *extra, slice(None))]


def _scatter_jvp(primals, tangents, *, config, interpret, block_size, table_shape, orders):
    x, *cts = primals
    dx, *dcts = tangents
    params = dict(
        config=config, interpret=interpret, block_size=block_size, table_shape=table_shape
    )
    out = scatter_p.bind(x, *cts, orders=orders, **params)
    tangent = jnp.zeros(table_shape, out.dtype)
    if type(dx) is not ad.Zero:
        dx = dx.astype(out.dtype)
        # Only orders below d move with x; the shifted G_d (x) dx would be order d + 1.
        shifted = [
            (k + 1, _outer(g, dx)) for k, g in zip(orders, cts, strict=True) if k < config.dim
        ]
        if shifted:
            tangent = tangent + _scatter(x, shifted, **params)
    moving = [(k, d) for k, d in zip(orders, dcts, strict=True) if type(d) is not ad.Zero]
    if moving:
        tangent = tangent + _scatter(x, moving, **params)
    return out, tangent


def _scatter_transpose(ct, x, *cts, config, interpret, block_size, table_shape, orders):
    if ad.is_undefined_primal(x):
        raise ValueError("the hash-grid scatter is linear in its cotangents only")
    if type(ct) is ad.Zero:
        return (None, *(None for _ in cts))
    outs = interpolate_p.bind(
        x, ct, config=config, order=max(orders), interpret=interpret, block_size=block_size
    )
    return (
        None,
        *(outs[k] if ad.is_undefined_primal(g) else None for k, g in zip(orders, cts, strict=True)),
    )


def _scatter_batch(args, dims, **params):
    size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
    args = [
        jnp.broadcast_to(a, (size, *a.shape)) if d is None else jnp.moveaxis(a, d, 0)
        for a, d in zip(args, dims, strict=True)
    ]
    # A separate table gradient per batch member (they do not add up): one call each.
    return jax.lax.map(lambda a: scatter_p.bind(*a, **params), tuple(args)), 0


scatter_p.def_impl(_scatter_impl)
scatter_p.def_abstract_eval(_scatter_abstract)
ad.primitive_jvps[scatter_p] = _scatter_jvp
ad.primitive_transposes[scatter_p] = _scatter_transpose
batching.primitive_batchers[scatter_p] = _scatter_batch
mlir.register_lowering(scatter_p, mlir.lower_fun(_scatter_impl, multiple_results=False))


@functools.partial(jax.jit, static_argnames=("config", "interpret", "block_size"))
def encode_pallas(x, tables, *, config, interpret=False, block_size=None):
    """Features ``[N, L, F]`` through the kernels, differentiable in every mode.
    ``block_size=None``: tuned per kernel and derivative order."""
    (features,) = interpolate_p.bind(
        x, tables, config=config, order=0, interpret=interpret, block_size=block_size
    )
    return features


def encode_xla(x, tables, *, config):
    """Features ``[N, L, F]`` with XLA gathers; JAX differentiates it directly."""
    return kernels.interpolate_reference(x, tables, config, 0)[0]
