"""Pieces shared by the RARTS and DARTS searchers: argument checks, state handling and
pytree arithmetic."""

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


def check_search_arguments(train_loss, val_loss, **optimizers) -> None:
    """Trace-time checks every searcher starts with: both losses callable, then each
    optimizer (in the order given, by keyword) an optax transformation."""
    check_callable(train_loss, "train_loss")
    check_callable(val_loss, "val_loss")
    for name, optimizer in optimizers.items():
        check_optimizer(optimizer, name)


def searched_parts(weights, arch):
    """The floating-point arrays of ``weights`` and ``arch``: what ``init`` builds the
    optimizer states on."""
    w, _ = floating_part(weights, "weights")
    a, _ = floating_part(arch, "arch")
    return w, a


def unpack_state(state, state_type, *blocks, tied=None):
    """Check a searcher's state and split its blocks into ``(dynamic, static)`` pairs.

    Each block is ``(field, opt_field, optimizer)``: ``state.<field>`` is split into its
    floating-point arrays (searched) and the rest (held fixed), and ``state.<opt_field>``
    must be what ``optimizer.init`` gives for those arrays. ``tied=(field, other)``:
    ``state.<field>`` must be shaped like ``state.<other>``. The checks run in that order
    (state type, every split, the tie, every optimizer state), so the first problem
    found is the one reported.
    """
    if not isinstance(state, state_type):
        raise TypeError(
            f"state must be a {state_type.__name__} from init, got {type(state).__name__}"
        )
    parts = {
        field: floating_part(getattr(state, field), f"state.{field}") for field, _, _ in blocks
    }
    if tied is not None:
        field, other = tied
        check_same(parts[other][0], parts[field][0], f"state.{field}", f"state.{other}")
    for field, opt_field, optimizer in blocks:
        check_opt_state(
            optimizer,
            getattr(state, opt_field),
            parts[field][0],
            f"state.{opt_field}",
            f"state.{field}",
        )
    return tuple(parts.values())


def bind_loss(loss, batch, weights_static, arch_static):
    """``loss`` on ``batch`` as a function of the floating-point arrays of the weights and
    of the architecture, their other leaves held fixed."""

    def bound(w, a):
        return loss(eqx.combine(w, weights_static), eqx.combine(a, arch_static), batch)

    return bound


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
