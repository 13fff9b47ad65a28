"""DARTS: differentiable architecture search, first and second order.

DARTS (Liu, Simonyan and Yang, 2019) treats the architecture ``alpha`` as the upper level
of a bilevel problem, ``min_alpha L_val(w*(alpha), alpha)`` with ``w*(alpha) = argmin_w
L_train(w, alpha)``, and approximates ``w*`` by one virtual SGD step
``w' = w - xi * grad_w L_train(w, alpha)``. One search step is

    alpha <- alpha - eta_a * [grad_alpha L_val(w', alpha)
                              - xi * d2 L_train(w, alpha)/(d alpha d w) . grad_w' L_val(w', alpha)]
    w     <- w     - eta_w * grad_w L_train(w, alpha)          (with the new alpha)

(plain gradient steps shown; each block has its own optax optimizer). First order is
``xi = 0``: ``w' = w`` and no mixed term. Second order computes the mixed term exactly,
as a forward-over-reverse product (``jax.jvp`` of ``grad_alpha L_train`` along
``v = grad_w' L_val(w', alpha)``), or by the paper's central difference

    (grad_alpha L_train(w + eps v, alpha) - grad_alpha L_train(w - eps v, alpha)) / (2 eps)

with ``eps = 0.01 / ||v||``. The exact variant is the gradient of
``L_val(w'(alpha), alpha)`` itself; the difference is exact for losses quadratic in ``w``.

Reference: H. Liu, K. Simonyan, Y. Yang, "DARTS: Differentiable Architecture Search",
ICLR 2019.
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
    searched_parts,
    tree_axpy,
    tree_norm,
    unpack_state,
)

HVP_METHODS = ("exact", "finite_difference")


def _check_order(order, xi, hvp) -> None:
    """Trace-time checks of the order, the virtual step size and the mixed-term method."""
    if isinstance(order, bool) or order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    if hvp not in HVP_METHODS:
        raise ValueError(f"hvp must be one of {HVP_METHODS}, got {hvp!r}")
    if order == 1:
        if xi is not None and not (isinstance(xi, int | float) and xi == 0):
            raise ValueError(
                f"xi={xi!r} was given with order=1; first order is xi = 0 (use order=2 for "
                "a virtual step)"
            )
    else:
        if xi is None:
            raise ValueError(
                "order=2 needs xi, the virtual step size (DARTS uses the weights' learning rate)"
            )
        check_positive(xi, "xi")


def _mixed_term(l_train, w, a, v, hvp: str):
    """``d2 L_train / (d alpha d w) . v``, exactly or by the paper's central difference."""
    grad_a_train = jax.grad(l_train, argnums=1)
    if hvp == "exact":
        # Push v forward through grad_alpha.
        return jax.jvp(lambda w_: grad_a_train(w_, a), (w,), (v,))[1]
    norm = tree_norm(v)
    # eps = 0.01 / ||v|| as in the paper; when v = 0 both points coincide and the
    # difference is 0 whatever eps.
    eps = jnp.where(norm > 0, 0.01 / jnp.where(norm > 0, norm, 1), 0.01)
    plus = grad_a_train(tree_axpy(eps, v, w), a)
    minus = grad_a_train(tree_axpy(-eps, v, w), a)
    return jax.tree.map(lambda p, m: (p - m) / (2 * eps), plus, minus)


class DartsState(NamedTuple):
    """State of :func:`darts`.

    Attributes:
        count: steps taken (int32).
        weights: ``w``, the network weights (trained on the training split).
        arch: ``alpha``, the architecture parameters (trained on the validation split).
        weight_opt_state, arch_opt_state: optax states of the two blocks (over their
            floating-point arrays).
    """

    count: jax.Array
    weights: Any
    arch: Any
    weight_opt_state: Any
    arch_opt_state: Any


def darts(
    train_loss: Callable,
    val_loss: Callable,
    *,
    weight_optimizer: optax.GradientTransformation,
    arch_optimizer: optax.GradientTransformation,
    order: int = 1,
    xi: float | None = None,
    hvp: str = "exact",
) -> ArchitectureSearch:
    """DARTS architecture search (Liu, Simonyan and Yang, 2019), first or second order.

    Args:
        train_loss: ``train_loss(weights, arch, batch) -> scalar`` on a training batch.
        val_loss: ``val_loss(weights, arch, batch) -> scalar`` on a validation batch.
        weight_optimizer: optax optimizer of the weights (the paper: SGD with momentum).
        arch_optimizer: optax optimizer of the architecture (the paper: Adam).
        order: 1 (``xi = 0``: the architecture gradient at the current weights) or 2
            (through one virtual plain-SGD step of size ``xi``).
        xi: the virtual step size, required for ``order=2`` (DARTS uses the weights'
            learning rate); must be omitted (or 0) for ``order=1``.
        hvp: how the second-order mixed term is computed: ``"exact"``
            (forward-over-reverse) or ``"finite_difference"`` (the paper's central
            difference with ``eps = 0.01 / ||grad_w' L_val||``).

    Returns:
        An :class:`ArchitectureSearch` with ``init(weights, arch) -> DartsState`` and
        ``step(state, train_batch, val_batch) -> (state, metrics)``. ``metrics`` holds
        ``val_loss`` ``L_val(w', alpha)`` (before the architecture step), ``train_loss``
        ``L_train(w, alpha)`` (at the weight step, with the new ``alpha``),
        ``arch_grad_norm`` and ``weight_grad_norm``.

    Example:
        DARTS's toy problem (Fig. 2 of Liu et al.): second order converges to
        ``a = 2 / (1 + 2 xi)``; first order to ``a = 2`` (the bilevel optimum is 1).

        >>> import jax, jax.numpy as jnp, optax
        >>> from jaxsecond.nas import darts
        >>> val = lambda w, a, batch: a * w - 2 * a + 1
        >>> train = lambda w, a, batch: w**2 - 2 * a * w + a**2
        >>> search = darts(train, val, weight_optimizer=optax.sgd(0.2),
        ...                arch_optimizer=optax.sgd(0.2), order=2, xi=0.5)
        >>> state = search.init(jnp.array(-2.0), jnp.array(2.0))
        >>> step = jax.jit(lambda s, _: (search.step(s, None, None)[0], None))
        >>> state, _ = jax.lax.scan(step, state, length=500)
        >>> print(f"{float(state.arch):.4f}")  # 2 / (1 + 2 * 0.5)
        1.0000
    """
    check_search_arguments(
        train_loss, val_loss, weight_optimizer=weight_optimizer, arch_optimizer=arch_optimizer
    )
    _check_order(order, xi, hvp)

    def init(weights, arch) -> DartsState:
        w, a = searched_parts(weights, arch)
        return DartsState(
            count=jnp.zeros([], jnp.int32),
            weights=weights,
            arch=arch,
            weight_opt_state=weight_optimizer.init(w),
            arch_opt_state=arch_optimizer.init(a),
        )

    def step(state: DartsState, train_batch, val_batch):
        (w, w_static), (a, a_static) = unpack_state(
            state,
            DartsState,
            ("weights", "weight_opt_state", weight_optimizer),
            ("arch", "arch_opt_state", arch_optimizer),
        )
        l_train = bind_loss(train_loss, train_batch, w_static, a_static)
        l_val = bind_loss(val_loss, val_batch, w_static, a_static)
        check_scalar_loss(l_train, "train_loss", w, a)
        check_scalar_loss(l_val, "val_loss", w, a)

        # 1. Architecture: gradient of the validation loss after a virtual SGD step.
        if order == 2:
            w_virtual = tree_axpy(-xi, jax.grad(l_train)(w, a), w)
        else:
            w_virtual = w
        val_value, (v, g_a) = jax.value_and_grad(l_val, argnums=(0, 1))(w_virtual, a)
        if order == 2:
            mixed = _mixed_term(l_train, w, a, v, hvp)
            g_a = jax.tree.map(lambda g, m: g - xi * m, g_a, mixed)
        updates, arch_opt_state = arch_optimizer.update(g_a, state.arch_opt_state, a)
        a_new = optax.apply_updates(a, updates)

        # 2. Weights: a training step with the new architecture.
        train_value, g_w = jax.value_and_grad(l_train)(w, a_new)
        updates, weight_opt_state = weight_optimizer.update(g_w, state.weight_opt_state, w)
        w_new = optax.apply_updates(w, updates)

        new_state = DartsState(
            count=state.count + 1,
            weights=eqx.combine(w_new, w_static),
            arch=eqx.combine(a_new, a_static),
            weight_opt_state=weight_opt_state,
            arch_opt_state=arch_opt_state,
        )
        metrics = {
            "train_loss": train_value,
            "val_loss": val_value,
            "weight_grad_norm": tree_norm(g_w),
            "arch_grad_norm": tree_norm(g_a),
        }
        return new_state, metrics

    return ArchitectureSearch(init=init, step=step)
