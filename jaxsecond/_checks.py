"""Trace-time checks of user arguments shared by every area: each raises a
``ValueError``/``TypeError`` that names the argument and says what was expected."""

from __future__ import annotations

import numbers

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def concrete_value(value):
    """``value`` as a NumPy array when it is known at trace time, else ``None``.

    Checks must look at the caller's value: inside ``jit`` even ``jnp.asarray`` of a
    constant is a tracer, and a traced value is the caller's to check."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return np.asarray(value)
    except (TypeError, ValueError, jax.errors.JAXTypeError):
        return None


def check_count(value, name: str, minimum: int = 1) -> int:
    """``value`` is an integer ``>= minimum``: a Python or NumPy integer (``bool`` is
    refused); returned as a Python ``int``."""
    if (
        isinstance(value, bool | np.bool_)
        or not isinstance(value, numbers.Integral)
        or value < minimum
    ):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_key(key):
    """Accept a typed key (``jax.random.key``) or a legacy ``uint32[2]`` key."""
    typed = isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    # Raw key data: threefry's uint32[2] (jax.random.PRNGKey); other implementations
    # (rbg: uint32[4]) must come as typed keys, which carry their implementation.
    legacy = isinstance(key, jax.Array) and key.dtype == jnp.uint32 and key.shape == (2,)
    if not (typed and key.shape == ()) and not legacy:
        raise TypeError(f"key must be a single jax.random key (jax.random.key(seed)), got {key!r}")
    return key


def check_positive(value, name: str) -> None:
    """``value > 0`` for Python numbers and concrete arrays (traced values are not checked)."""
    if isinstance(value, bool) or not isinstance(value, int | float | jax.Array):
        raise TypeError(f"{name} must be a positive real number, got {value!r}")
    if isinstance(value, jax.Array):
        if value.shape != ():
            raise ValueError(f"{name} must be a scalar, got shape {value.shape}")
        if isinstance(value, jax.core.Tracer):
            return
    if not float(value) > 0:
        raise ValueError(f"{name} must be > 0, got {float(value)!r}")


def split_float_arrays(tree, name: str, needed_for: str):
    """``(dynamic, static)``: the arrays of ``tree`` and everything else (held fixed).

    The arrays must be floating point (complex included): an integer or boolean array
    raises ``TypeError`` naming its leaf and ``needed_for`` (what needs floating point);
    a tree without arrays raises too. Integer fields of an equinox Module belong in
    static fields.
    """
    dynamic, static = eqx.partition(tree, eqx.is_array)
    for path, leaf in jax.tree_util.tree_flatten_with_path(dynamic)[0]:
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            where = jax.tree_util.keystr(path) or "params"
            raise TypeError(
                f"{name}: leaf {where} has dtype {leaf.dtype}; {needed_for} needs "
                "floating-point arrays (mark integer fields of an equinox Module static)"
            )
    if not jax.tree.leaves(dynamic):
        raise TypeError(f"{name} contains no floating-point arrays")
    return dynamic, static
