"""RARTS: relaxed architecture search, first order, on the whole data set.

RARTS replaces DARTS's bilevel problem by a single-level relaxed one. Two copies of the
network share one architecture ``alpha``: weights ``w`` fitted on the training split and
weights ``y`` fitted on the validation split, tied by a quadratic penalty:

    L(y, w, alpha) = L_val(y, alpha) + lam * L_train(w, alpha) + beta/2 * ||y - w||^2

One step is one Gauss-Seidel sweep over the three blocks, each using the newest values:

    w     <- w     - eta_w * grad_w     [lam * L_train(w, alpha) + beta/2 ||y - w||^2]
    y     <- y     - eta_y * grad_y     [L_val(y, alpha) + beta/2 ||y - w||^2]
    alpha <- alpha - eta_a * grad_alpha [L_val(y, alpha) + lam * L_train(w, alpha)]

(plain gradient steps shown; each block has its own optax optimizer). Only first
derivatives appear: no Hessian-vector product, no unrolled step.

Reference: F. Xue, Y. Qi, J. Xin, "RARTS: An Efficient First-Order Relaxed Architecture
Search Method", IEEE Access 10, 2022.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from jaxsecond.nas._common import (
    ArchitectureSearch,
    bind_loss,
    check_positive,
    check_scalar_loss,
    check_search_arguments,
    half_sq_distance,
    searched_parts,
    tree_norm,
    unpack_state,
)


class RartsState(NamedTuple):
    """State of :func:`rarts`.

    Attributes:
        count: steps taken (int32).
        weights: ``w``, the network fitted on the training split.
        val_weights: ``y``, the network fitted on the validation split.
        arch: ``alpha``, the shared architecture parameters.
        weight_opt_state, val_weight_opt_state, arch_opt_state: optax states of the
            three blocks (over the floating-point arrays of each).
    """

    count: jax.Array
    weights: Any
    val_weights: Any
    arch: Any
    weight_opt_state: Any
    val_weight_opt_state: Any
    arch_opt_state: Any


def rarts(
    train_loss: Callable,
    val_loss: Callable,
    *,
    weight_optimizer: optax.GradientTransformation,
    val_weight_optimizer: optax.GradientTransformation | None = None,
    arch_optimizer: optax.GradientTransformation,
    lam: float,
    beta: float,
) -> ArchitectureSearch:
    """RARTS architecture search (Xue, Qi and Xin, 2022).

    Args:
        train_loss: ``train_loss(weights, arch, batch) -> scalar`` on a training batch.
        val_loss: ``val_loss(weights, arch, batch) -> scalar`` on a validation batch.
        weight_optimizer: optax optimizer of ``w`` (the training-split weights).
        val_weight_optimizer: optax optimizer of ``y`` (the validation-split weights);
            default: the same transformation as ``weight_optimizer``, with its own state.
        arch_optimizer: optax optimizer of ``alpha``.
        lam: ``lam > 0``, weight of the training loss in the relaxed objective.
        beta: ``beta > 0``, strength of the coupling ``beta/2 ||y - w||^2``.

    Returns:
        An :class:`ArchitectureSearch` with ``init(weights, arch) -> RartsState`` (``y``
        starts equal to ``w``) and ``step(state, train_batch, val_batch) -> (state,
        metrics)``. Weights and arch may be any pytrees (equinox Modules included: their
        non-floating-point leaves are held fixed). ``metrics`` holds, at the start of the
        sweep, ``train_loss`` ``L_train(w, alpha)``, ``val_loss`` ``L_val(y, alpha)`` and
        ``distance`` ``||y - w||``, and the norms of the three block gradients
        (``weight_grad_norm``, ``val_weight_grad_norm``, ``arch_grad_norm``).

    Example:
        DARTS's toy problem (Fig. 2 of Liu et al.): RARTS converges to
        ``a = 2 / (2 - 1/(2 lam) - 1/beta)``, near the bilevel optimum ``a = 1``.

        >>> import jax, jax.numpy as jnp, optax
        >>> from jaxsecond.nas import rarts
        >>> val = lambda w, a, batch: a * w - 2 * a + 1
        >>> train = lambda w, a, batch: w**2 - 2 * a * w + a**2
        >>> search = rarts(train, val, weight_optimizer=optax.sgd(0.008),
        ...                val_weight_optimizer=optax.sgd(0.0095),
        ...                arch_optimizer=optax.sgd(0.09), lam=10.0, beta=100.0)
        >>> state = search.init(jnp.array(-2.0), jnp.array(2.0))
        >>> step = jax.jit(lambda s, _: (search.step(s, None, None)[0], None))
        >>> state, _ = jax.lax.scan(step, state, length=3_000)
        >>> print(f"{float(state.arch):.4f} {2 / (2 - 1 / 20 - 1 / 100):.4f}")
        1.0309 1.0309
    """
    if val_weight_optimizer is None:
        val_weight_optimizer = weight_optimizer
    check_search_arguments(
        train_loss,
        val_loss,
        weight_optimizer=weight_optimizer,
        val_weight_optimizer=val_weight_optimizer,
        arch_optimizer=arch_optimizer,
    )
    check_positive(lam, "lam")
    check_positive(beta, "beta")

    def init(weights, arch) -> RartsState:
        w, a = searched_parts(weights, arch)
        return RartsState(
            count=jnp.zeros([], jnp.int32),
            weights=weights,
            # y starts at w: the coupling term is zero at the start.
            val_weights=weights,
            arch=arch,
            weight_opt_state=weight_optimizer.init(w),
            val_weight_opt_state=val_weight_optimizer.init(w),
            arch_opt_state=arch_optimizer.init(a),
        )

    def step(state: RartsState, train_batch, val_batch):
        (w, w_static), (y, y_static), (a, a_static) = unpack_state(
            state,
            RartsState,
            ("weights", "weight_opt_state", weight_optimizer),
            ("val_weights", "val_weight_opt_state", val_weight_optimizer),
            ("arch", "arch_opt_state", arch_optimizer),
            tied=("val_weights", "weights"),
        )
        l_train = bind_loss(train_loss, train_batch, w_static, a_static)
        l_val = bind_loss(val_loss, val_batch, y_static, a_static)
        check_scalar_loss(l_train, "train_loss", w, a)
        check_scalar_loss(l_val, "val_loss", y, a)

        # 1. w on lam * L_train + coupling, at the current y and alpha.
        def w_objective(w_):
            lt = l_train(w_, a)
            return lam * lt + beta * half_sq_distance(y, w_), lt

        (_, train_value), g_w = jax.value_and_grad(w_objective, has_aux=True)(w)
        updates, weight_opt_state = weight_optimizer.update(g_w, state.weight_opt_state, w)
        w_new = optax.apply_updates(w, updates)

        # 2. y on L_val + coupling, against the new w.
        def y_objective(y_):
            lv = l_val(y_, a)
            return lv + beta * half_sq_distance(y_, w_new), lv

        (_, val_value), g_y = jax.value_and_grad(y_objective, has_aux=True)(y)
        updates, val_weight_opt_state = val_weight_optimizer.update(
            g_y, state.val_weight_opt_state, y
        )
        y_new = optax.apply_updates(y, updates)

        # 3. alpha on L_val(y, .) + lam * L_train(w, .) with both new weights; the coupling
        # does not depend on alpha.
        g_a = jax.grad(lambda a_: l_val(y_new, a_) + lam * l_train(w_new, a_))(a)
        updates, arch_opt_state = arch_optimizer.update(g_a, state.arch_opt_state, a)
        a_new = optax.apply_updates(a, updates)

        new_state = RartsState(
            count=state.count + 1,
            weights=eqx.combine(w_new, w_static),
            val_weights=eqx.combine(y_new, y_static),
            arch=eqx.combine(a_new, a_static),
            weight_opt_state=weight_opt_state,
            val_weight_opt_state=val_weight_opt_state,
            arch_opt_state=arch_opt_state,
        )
        metrics = {
            "train_loss": train_value,
            "val_loss": val_value,
            "distance": jnp.sqrt(2 * half_sq_distance(y, w)),
            "weight_grad_norm": tree_norm(g_w),
            "val_weight_grad_norm": tree_norm(g_y),
            "arch_grad_norm": tree_norm(g_a),
        }
        return new_state, metrics

    return ArchitectureSearch(init=init, step=step)
