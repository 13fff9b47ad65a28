"""Small pytree utilities shared across jaxsecond, mostly for trace-time validation."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def _is_none(x) -> bool:
    return x is None


def flatten_with_none(tree) -> tuple[list, Any]:
    """Flatten keeping ``None`` as a leaf, so that a tree and its tangent tree (where
    ``None`` marks a symbolic zero) flatten to lists of the same length."""
    return jax.tree.flatten(tree, is_leaf=_is_none)


def as_array_leaves(tree):
    """Python floats and NumPy arrays in ``tree`` become JAX arrays; other leaves stay."""

    def convert(x):
        if isinstance(x, float | complex | np.ndarray | np.generic):
            return jnp.asarray(x)
        return x

    return jax.tree.map(convert, tree)


def describe_mismatch(expected, got) -> str | None:
    """Compare two pytrees of arrays (or shape structs) by structure, shape and dtype.

    Returns ``None`` when they agree, otherwise a sentence naming the first difference.
    Non-array leaves must compare equal.
    """
    exp_leaves, exp_def = jax.tree_util.tree_flatten_with_path(expected)
    got_leaves, got_def = jax.tree_util.tree_flatten_with_path(got)
    if exp_def != got_def:
        return f"pytree structure {got_def} differs from the expected {exp_def}"
    for (path, e), (_, g) in zip(exp_leaves, got_leaves, strict=True):
        where = jax.tree_util.keystr(path) or "the value"
        if eqx.is_array(e) or isinstance(e, jax.ShapeDtypeStruct):
            if not (eqx.is_array(g) or isinstance(g, jax.ShapeDtypeStruct)):
                return f"{where} is {type(g).__name__}, expected an array"
            if tuple(e.shape) != tuple(g.shape):
                return f"{where} has shape {tuple(g.shape)}, expected {tuple(e.shape)}"
            if jnp.dtype(e.dtype) != jnp.dtype(g.dtype):
                return f"{where} has dtype {jnp.dtype(g.dtype)}, expected {jnp.dtype(e.dtype)}"
    return None


def tree_size(tree) -> int:
    """Total number of array elements in ``tree``."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree) if eqx.is_array(x))


def tree_dtype(tree):
    """Common result dtype of the array leaves of ``tree`` (float32 when there are none)."""
    leaves = [x for x in jax.tree.leaves(tree) if eqx.is_array(x)]
    return jnp.result_type(*leaves) if leaves else jnp.dtype(jnp.float32)


def callable_name(fn) -> str:
    """A readable name for a user function in error messages."""
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def accumulation_dtype(dtype):
    """The dtype linear algebra runs in for ``dtype``: float32 for half precision
    (float16, bfloat16; LAPACK has no kernels for them and Krylov recurrences lose
    orthogonality within a few steps in them), ``dtype`` itself otherwise."""
    if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32:
        return jnp.dtype(jnp.float32)
    return jnp.dtype(dtype)
