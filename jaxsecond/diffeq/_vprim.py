"""The one place jaxsecond builds on equinox's internal primitive machinery.

Adjoints bind the tangent of a solve as a JAX primitive whose rules are ordinary JAX
functions on pytrees (``equinox.internal.create_vprim`` and its ``filter_primitive_*``
helpers). That API is internal to equinox and may change in any release, so it is used
here only, behind :func:`filter_vprim` and :func:`filter_bind`, and checked when this
module is imported: an incompatible equinox fails at import with a message naming the
supported versions, never silently with wrong gradients. ``tests/test_compat.py`` pins
the behaviour the adjoints rely on.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from jax.interpreters import batching

try:
    import equinox.internal as _eqxi

    _create_vprim = _eqxi.create_vprim
    _primitive_def = _eqxi.filter_primitive_def
    _primitive_jvp = _eqxi.filter_primitive_jvp
    _primitive_transpose = _eqxi.filter_primitive_transpose
    _primitive_bind = _eqxi.filter_primitive_bind
except (ImportError, AttributeError) as e:  # pragma: no cover - only on an upgrade
    raise ImportError(
        "jaxsecond's differential-equation adjoints need equinox's internal primitive "
        "API (equinox.internal.create_vprim and filter_primitive_*), which this equinox "
        "does not have; install a supported version: pip install 'equinox>=0.13.8,<0.14'"
    ) from e

SUPPORTED_EQUINOX = ">=0.13.8,<0.14"


def filter_bind(prim, *args):
    """Bind ``prim`` to pytree arguments (arrays and any static Python values)."""
    return _primitive_bind(prim, *args)


def filter_vprim(name: str, impl: Callable, abstract_eval: Callable, jvp: Callable, transpose):
    """A primitive from rules written on pytrees, batched by vmapping ``impl``.

    Args:
        name: the primitive's name, as it shows in jaxprs.
        impl: ``(*args) -> out`` on pytrees.
        abstract_eval: ``(*args) -> out`` on shape/dtype structs.
        jvp: ``(primals, tangents) -> (out, tangent_out)``.
        transpose: ``(cotangents_out, *args) -> cotangents_in``, with zero cotangents
            materialised as arrays.

    Returns:
        The primitive; bind it with :func:`filter_bind`.
    """
    prim = _create_vprim(
        name,
        _primitive_def(impl),
        _primitive_def(abstract_eval),
        _primitive_jvp(jvp),
        _primitive_transpose(materialise_zeros=True)(transpose),
    )
    rule = batching.fancy_primitive_batchers.get(prim)
    if rule is None:  # pragma: no cover - only on an upgrade
        raise ImportError(
            "equinox.internal.create_vprim no longer registers a batching rule where "
            f"jaxsecond expects it; install a supported version: equinox{SUPPORTED_EQUINOX}"
        )
    batching.fancy_primitive_batchers[prim] = _broadcast_unbatched(rule)
    return prim


def _broadcast_unbatched(rule):
    # equinox transposes a batched call by vmapping the transpose rule with the inputs'
    # batch axes as output axes, which fails when an unbatched linear input (e.g.
    # closed-over parameters under a vmap over y0) receives a batched cotangent.
    # Broadcasting every input first makes all of them batched; the broadcasts are
    # linear, and their transposes sum the cotangents over the batch.
    def batch_everything(axis_data, inputs, batch_axes, **params):
        if any(b is not None for b in batch_axes):
            inputs = [
                jnp.broadcast_to(x, (axis_data.size, *jnp.shape(x)))
                if b is None
                else jnp.moveaxis(x, b, 0)
                for x, b in zip(inputs, batch_axes, strict=True)
            ]
            batch_axes = (0,) * len(inputs)
        return rule(axis_data, inputs, batch_axes, **params)

    batch_everything.wrapped_rule = rule
    return batch_everything
