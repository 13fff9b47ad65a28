"""Pieces shared by the RARTS and DARTS searchers: argument checks and pytree arithmetic."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from jaxsecond._checks import check_positive as check_positive
from jaxsecond._tree import describe_mismatch


class ArchitectureSearch(NamedTuple):
    """A search method as a pair of pure functions (optax style).

    Attributes:
        init: ``init(weights, arch) -> state``.
        step: ``step(state, train_batch, val_batch) -> (state, metrics)``, pure and
            jittable (``jax.jit`` for pytrees of arrays, ``equinox.filter_jit`` when the
            weights are an equinox Module holding functions).
    """

    init: Callable
    step: Callable


def check_callable(fun, name: str) -> None:
    if not callable(fun):
        raise TypeError(f"{name} must be callable as {name}(weights, arch, batch), got {fun!r}")


def check_optimizer(opt, name: str) -> None:
    if not isinstance(opt, optax.GradientTransformation | optax.GradientTransformationExtraArgs):
        raise TypeError(
            f"{name} must be an optax GradientTransformation (e.g. optax.sgd(0.1)), got "
            f"{type(opt).__name__}"
        )


def floating_part(tree, name: str):
    """``(dynamic, static)``: the floating-point arrays of ``tree`` (searched) and the rest
    (held fixed). Raises when there is nothing to search."""
    dynamic, static = eqx.partition(tree, eqx.is_inexact_array)
    if not jax.tree.leaves(dynamic):
        raise TypeError(f"{name} contains no floating-point arrays to optimise")
    return dynamic, static


def check_opt_state(optimizer, opt_state, params, state_name: str, params_name: str) -> None:
    """The optimizer state must be the one ``optimizer.init(params)`` gives (structure,
    shapes, dtypes): a state built for other weights would otherwise be broadcast silently
    (e.g. a momentum of shape ``(1,)`` against weights of shape ``(3,)``)."""
    expected = jax.eval_shape(optimizer.init, params)
    problem = describe_mismatch(expected, opt_state)
    if problem is not None:
        raise ValueError(
            f"{state_name} does not match {params_name} (was it initialised from other "
            f"weights?): {problem}"
        )


def check_same(expected, got, got_name: str, expected_name: str) -> None:
    problem = describe_mismatch(expected, got)
    if problem is not None:
        raise ValueError(f"{got_name} must be shaped like {expected_name}: {problem}")


def tree_norm(tree) -> jax.Array:
    """Euclidean norm of all leaves together."""
    return optax.tree_utils.tree_norm(tree)


def tree_axpy(a, x, y):
    """``a * x + y`` leafwise, keeping the dtype of ``y``."""
    return jax.tree.map(lambda xi, yi: (yi + a * xi).astype(yi.dtype), x, y)


def half_sq_distance(y, w) -> jax.Array:
    """``||y - w||^2 / 2`` over all leaves."""
    leaves = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.sum((a - b) ** 2), y, w))
    return 0.5 * sum(leaves)


def check_scalar_loss(fun, name: str, *args) -> None:
    out = jax.eval_shape(fun, *args)
    if not (isinstance(out, jax.ShapeDtypeStruct) and out.shape == ()):
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"{name} must return a scalar loss, got {shape}")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(f"{name} must return a real floating-point scalar, got {out.dtype}")
