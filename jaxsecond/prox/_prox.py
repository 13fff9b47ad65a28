"""Proximal operators on pytrees, with jaxopt's names and call signatures.

Every operator computes

.. math::

    \\operatorname{prox}_{s g}(x) = \\arg\\min_y \\tfrac12 \\|x - y\\|_2^2 + s \\, g(y)

in closed form for a penalty ``g`` (``s`` is ``scaling``, usually a step size), leaf by
leaf on a pytree ``x`` (group lasso treats the whole pytree as one group, as jaxopt does).
Outputs keep the dtype of each leaf of ``x``. All operators work under ``jit``, ``vmap``,
``grad``, ``jvp`` and to second order (``jax.hessian``), and are differentiable with
respect to ``x`` and to their hyperparameters (``l1reg``, ``l2reg``, ``scaling``,
box bounds).

**Derivatives at kinks.** The operators are piecewise smooth. At a kink we return one
element of the generalized (Clarke) Jacobian, the kind of element that implicit
differentiation of a proximal-gradient fixed point uses (Blondel et al., 2022): the
derivative of the *flat* piece, i.e. the piece on which the output does not move with
``x``. Concretely the derivative with respect to ``x`` is

* ``1[|x| > t]`` for soft thresholding (lasso, elastic net), ``t = scaling * l1reg``;
  when ``t == 0`` there is no kink (the operator is the identity) and it is ``1``;
* ``0`` for group lasso when ``||x|| <= t`` (in particular at ``x = 0``, where a plain
  ``jnp.linalg.norm`` would give NaN: the norm here is a double-``where`` safe norm),
  and the identity when ``t == 0``;
* ``1[x > t]`` for non-negative lasso and ``1[x > 0]`` for non-negative ridge;
* ``1[lower < x < upper]`` for the box; a bound that is touched gets derivative ``1``.

Derivatives with respect to the hyperparameters follow the same pieces. Away from kinks
they equal jaxopt's autodiff derivatives.

References:
    M. Blondel, Q. Berthet, M. Cuturi, R. Frostig, S. Hoyer, F. Llinares-López,
    F. Pedregosa, J.-P. Vert, "Efficient and Modular Implicit Differentiation",
    NeurIPS 2022 (arXiv:2105.15183).
    N. Parikh, S. Boyd, "Proximal Algorithms", Foundations and Trends in Optimization
    1(3), 2014 (closed forms of the operators).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsecond._checks import concrete_value

__all__ = [
    "make_prox_from_projection",
    "prox_box",
    "prox_elastic_net",
    "prox_group_lasso",
    "prox_lasso",
    "prox_non_negative_lasso",
    "prox_non_negative_ridge",
    "prox_none",
    "prox_ridge",
]


# ----------------------------------------------------------------------------- checks


def _float_leaves(x, name: str = "x"):
    """Leaves of ``x`` as JAX arrays (Python floats converted), checked to be real
    floating point; returns ``(leaves, treedef)``."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(x)
    leaves = []
    for path, leaf in flat:
        where = jax.tree_util.keystr(path) or name
        # A Python int or bool leaf would silently become an integer array.
        if isinstance(leaf, bool | np.bool_) or not isinstance(
            leaf, float | np.floating | np.ndarray | jax.Array
        ):
            raise TypeError(
                f"{name} must be a pytree of real floating-point arrays; "
                f"leaf {where} is {type(leaf).__name__}"
            )
        leaf = jnp.asarray(leaf)
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise TypeError(
                f"{name} must be a pytree of real floating-point arrays; "
                f"leaf {where} has dtype {leaf.dtype}"
            )
        leaves.append(leaf)
    return leaves, treedef


def _is_scalar(value) -> bool:
    """A Python real number or a 0-d array (NumPy or JAX, traced or not)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_):
        return True
    return isinstance(value, np.ndarray | np.generic | jax.Array) and np.ndim(value) == 0


def _check_real_leaf(leaf, name: str, where: str):
    if isinstance(leaf, bool | np.bool_) or not isinstance(
        leaf, numbers.Real | np.ndarray | np.generic | jax.Array
    ):
        raise TypeError(f"{name} must hold real numbers; {where} is {leaf!r}")
    dtype = jnp.result_type(leaf)
    if jnp.issubdtype(dtype, jnp.bool_) or jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(f"{name} must hold real numbers; {where} has dtype {dtype}")


def _check_nonnegative(leaf, name: str, where: str):
    # Only values known at trace time can be checked; traced values are the caller's.
    value = concrete_value(leaf)
    if value is not None and not np.all(value >= 0):
        raise ValueError(f"{name} must be >= 0, got {where} = {leaf!r}")


def _hyper_leaves(value, x_leaves, treedef, name: str, nonnegative: bool = True):
    """One hyperparameter array per leaf of ``x``: a scalar is shared by all leaves, a
    pytree must have the structure of ``x`` and leaves that broadcast to its leaves.
    Each is cast to its leaf's dtype, so that float32 inputs stay float32."""
    if _is_scalar(value):
        _check_real_leaf(value, name, name)
        if nonnegative:
            _check_nonnegative(value, name, name)
        return [jnp.asarray(value, dtype=leaf.dtype) for leaf in x_leaves]
    flat, value_def = jax.tree_util.tree_flatten_with_path(value)
    if value_def != treedef:
        raise ValueError(
            f"{name} must be a scalar or a pytree with the structure of x ({treedef}), "
            f"got {value_def}"
        )
    out = []
    for (path, v), leaf in zip(flat, x_leaves, strict=True):
        where = name + jax.tree_util.keystr(path)
        _check_real_leaf(v, name, where)
        shape = np.shape(v)
        try:
            ok = jnp.broadcast_shapes(shape, leaf.shape) == leaf.shape
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"{name}: {where} has shape {shape}, which does not broadcast to the "
                f"shape {leaf.shape} of the matching leaf of x"
            )
        if nonnegative:
            _check_nonnegative(v, name, where)
        out.append(jnp.asarray(v, dtype=leaf.dtype))
    return out


def _scalar_hyper(value, name: str):
    """A single real, non-negative (when known) scalar, as given."""
    if not _is_scalar(value):
        raise TypeError(f"{name} must be a real scalar, got {value!r}")
    _check_real_leaf(value, name, name)
    _check_nonnegative(value, name, name)
    return value


def _pair(hyperparams, name: str, what: str):
    """``hyperparams`` unpacked as a pair; a tuple, a list or a length-2 vector."""
    if isinstance(hyperparams, tuple | list) and len(hyperparams) == 2:
        return hyperparams[0], hyperparams[1]
    # jaxopt code sometimes passes the pair as an array: unpack it the same way.
    if isinstance(hyperparams, np.ndarray | jax.Array) and np.shape(hyperparams) == (2,):
        return hyperparams[0], hyperparams[1]
    raise TypeError(f"{name} must be a pair {what}, got {hyperparams!r}")


def _soft_threshold(u, t):
    """``sign(u) max(|u| - t, 0)`` with the Jacobian ``1[|u| > t]`` (``1`` when ``t == 0``)."""
    # t == 0 is the identity, which has no kink at u = 0: take the moving piece there.
    active = (jnp.abs(u) > t) | (t == 0)
    # sign(u) has derivative 0, so d/du = 1 and d/dt = -sign(u) on the moving piece.
    return jnp.where(active, u - jnp.sign(u) * t, jnp.zeros_like(u))


# -------------------------------------------------------------------------- operators


def prox_none(x: Any, hyperparams: Any = None, scaling: Any = 1.0) -> Any:
    """Proximal operator of ``g = 0``: the identity.

    ``argmin_y 0.5 ||x - y||^2 = x``. ``hyperparams`` and ``scaling`` are ignored; ``x``
    is returned unchanged (any pytree).

    Reference: Parikh & Boyd, "Proximal Algorithms" (2014), section 1.1.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsecond.prox import prox_none
        >>> print(prox_none(jnp.array([-2.0, 0.5]), hyperparams=3.0, scaling=0.1))
        [-2.   0.5]
    """
    del hyperparams, scaling
    return x


def prox_lasso(x: Any, l1reg: Any = None, scaling: Any = 1.0) -> Any:
    """Proximal operator of the l1 norm: soft thresholding.

    ``argmin_y 0.5 ||x - y||^2 + scaling * sum(l1reg * |y|)``, i.e. coordinate-wise
    ``sign(x) * max(|x| - scaling * l1reg, 0)``.

    Args:
        x: pytree of real floating-point arrays.
        l1reg: non-negative regularization strength: a scalar shared by all
            coordinates, or a pytree with the structure of ``x`` whose leaves broadcast
            to its leaves (coordinate-wise weights). ``None`` means ``1.0``.
        scaling: non-negative scalar multiplying ``l1reg`` (a step size).

    Returns:
        pytree like ``x``, same dtypes.

    Derivatives: with ``t = scaling * l1reg``, ``d/dx = 1[|x| > t]`` and
    ``d/dt = -sign(x) 1[|x| > t]``; at ``|x| = t`` the flat piece (``0``) is taken. With
    ``t = 0`` the operator is the identity and ``d/dx = 1`` everywhere.

    Reference: Parikh & Boyd, "Proximal Algorithms" (2014), section 6.5.2; Blondel et
    al., "Efficient and Modular Implicit Differentiation" (NeurIPS 2022).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsecond.prox import prox_lasso
        >>> print(prox_lasso(jnp.array([-2.0, 0.5, 3.0]), l1reg=1.0))
        [-1.  0.  2.]
        >>> print(prox_lasso({"w": jnp.array([3.0])}, l1reg={"w": 2.0}, scaling=0.5)["w"])
        [2.]
    """
    if l1reg is None:
        l1reg = 1.0
    leaves, treedef = _float_leaves(x)
    lams = _hyper_leaves(l1reg, leaves, treedef, "l1reg")
    scales = _hyper_leaves(_scalar_hyper(scaling, "scaling"), leaves, treedef, "scaling")
    out = [_soft_threshold(u, s * lam) for u, lam, s in zip(leaves, lams, scales, strict=True)]
    return jax.tree.unflatten(treedef, out)


def prox_non_negative_lasso(x: Any, l1reg: Any = None, scaling: Any = 1.0) -> Any:
    """Proximal operator of the l1 norm restricted to the non-negative orthant.

    ``argmin_{y >= 0} 0.5 ||x - y||^2 + scaling * sum(l1reg * |y|)``, i.e.
    coordinate-wise ``max(x - scaling * l1reg, 0)``.

    Args:
        x: pytree of real floating-point arrays.
        l1reg: non-negative scalar, or a pytree like ``x`` (jaxopt takes a scalar only).
            ``None`` means ``1.0``.
        scaling: non-negative scalar multiplying ``l1reg``.

    Returns:
        pytree like ``x``, same dtypes.

    Derivatives: with ``t = scaling * l1reg``, ``d/dx = 1[x > t]`` and
    ``d/dt = -1[x > t]``; at ``x = t`` the flat piece (``0``) is taken.

    Reference: Parikh & Boyd, "Proximal Algorithms" (2014), section 6.5.2.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsecond.prox import prox_non_negative_lasso
        >>> print(prox_non_negative_lasso(jnp.array([-2.0, 0.5, 3.0]), l1reg=1.0))
        [0. 0. 2.]
    """
    if l1reg is None:
        l1reg = 1.0
    leaves, treedef = _float_leaves(x)
    lams = _hyper_leaves(l1reg, leaves, treedef, "l1reg")
    scales = _hyper_leaves(_scalar_hyper(scaling, "scaling"), leaves, treedef, "scaling")
    out = []
    for u, lam, s in zip(leaves, lams, scales, strict=True):
        shifted = u - s * lam
        # where, not relu: the strict > makes the kink's choice explicit (flat piece).
        out.append(jnp.where(shifted > 0, shifted, jnp.zeros_like(shifted)))
    return jax.tree.unflatten(treedef, out)


def prox_elastic_net(x: Any, hyperparams: Any = None, scaling: Any = 1.0) -> Any:
    """Proximal operator of the elastic net, with jaxopt's parametrization.

    With ``hyperparams = (l1reg, l2reg)`` the penalty is
    ``g(y) = l1reg * (||y||_1 + 0.5 * l2reg * ||y||_2^2)`` (``l2reg`` is relative to
    ``l1reg``), so that coordinate-wise

    ``prox(x) = sign(x) max(|x| - scaling * l1reg, 0) / (1 + scaling * l1reg * l2reg)``.

    Args:
        x: pytree of real floating-point arrays.
        hyperparams: a pair ``(l1reg, l2reg)`` of non-negative scalars or pytrees like
            ``x``. ``None`` means ``(1.0, 1.0)``.
        scaling: non-negative scalar.

    Returns:
        pytree like ``x``, same dtypes.

    Derivatives: those of the soft threshold (see :func:`prox_lasso`, flat piece at
    ``|x| = scaling * l1reg``) divided by the smooth factor ``1 + scaling l1reg l2reg``.

    Reference: Parikh & Boyd, "Proximal Algorithms" (2014), section 6.5.3; jaxopt's
    ``prox_elastic_net`` (same definition).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsecond.prox import prox_elastic_net
        >>> print(prox_elastic_net(jnp.array([-3.0, 0.5, 5.0]), hyperparams=(1.0, 1.0)))
        [-1.  0.  2.]
    """
    if hyperparams is None:
        hyperparams = (1.0, 1.0)
    l1reg, l2reg = _pair(hyperparams, "hyperparams", "(l1reg, l2reg)")
    leaves, treedef = _float_leaves(x)
    lams = _hyper_leaves(l1reg, leaves, treedef, "hyperparams[0] (l1reg)")
    gams = _hyper_leaves(l2reg, leaves, treedef, "hyperparams[1] (l2reg)")
    scales = _hyper_leaves(_scalar_hyper(scaling, "scaling"), leaves, treedef, "scaling")
    out = [
        _soft_threshold(u, s * lam) / (1 + s * lam * gam)
        for u, lam, gam, s in zip(leaves, lams, gams, scales, strict=True)
    ]
    return jax.tree.unflatten(treedef, out)


def prox_group_lasso(x: Any, l2reg: Any = 1.0, scaling: Any = 1.0) -> Any:
    """Proximal operator of the l2 norm: block soft thresholding.

    ``argmin_y 0.5 ||x - y||^2 + scaling * l2reg * ||y||_2``, i.e.
    ``max(1 - scaling * l2reg / ||x||, 0) * x``. The group is the **whole pytree** ``x``
    (``||x||`` is the l2 norm over all its leaves), as in jaxopt; for several groups,
    ``jax.vmap`` over a stacked axis or call once per group.

    Args:
        x: pytree of real floating-point arrays.
        l2reg: non-negative scalar. ``None`` means ``1.0``.
        scaling: non-negative scalar.

    Returns:
        pytree like ``x``, same dtypes.

    Derivatives: with ``t = scaling * l2reg``, for ``||x|| > t`` the Jacobian is
    ``(1 - t/||x||) I + t x x^T / ||x||^3`` and ``d/dt = -x / ||x||``; for
    ``||x|| <= t`` (the ball is closed: the boundary takes the flat piece) both are
    ``0``. At ``x = 0`` the norm is a double-``where`` safe norm, so derivatives of
    every order are finite (``0``, or the identity when ``t = 0``, where the operator is
    the identity).

    Reference: Parikh & Boyd, "Proximal Algorithms" (2014), section 6.5.1; Blondel et
    al., "Efficient and Modular Implicit Differentiation" (NeurIPS 2022).

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsecond.prox import prox_group_lasso
        >>> print(prox_group_lasso(jnp.array([3.0, 4.0]), l2reg=2.5))
        [1.5 2. ]
        >>> print(prox_group_lasso(jnp.array([3.0, 4.0]), l2reg=5.0))
        [0. 0.]
    """
    if l2reg is None:
        l2reg = 1.0
    l2reg = _scalar_hyper(l2reg, "l2reg")
    scaling = _scalar_hyper(scaling, "scaling")
    leaves, treedef = _float_leaves(x)
    if not leaves:
        return x
    dtype = jnp.result_type(*leaves)
    sq = sum(jnp.sum(jnp.square(u.astype(dtype))) for u in leaves)
    positive = sq > 0
    # Double where: sqrt's derivative at 0 is inf, and 0 * inf would leak NaN into grads.
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1)), 0)
    t = jnp.asarray(scaling, dtype) * jnp.asarray(l2reg, dtype)
    # Closed ball maps to 0; t == 0 is the identity, which has no kink at x = 0.
    active = (norm > t) | (t == 0)
    # Safe denominator: where the factor is used with norm == 0, t == 0 so the ratio is 0.
    factor = jnp.where(active, 1 - t / jnp.where(positive, norm, 1), 0)
    out = [factor.astype(u.dtype) * u for u in leaves]
    return jax.tree.unflatten(treedef, out)


def prox_ridge(x: Any, l2reg: Any = None, scaling: Any = 1.0) -> Any:
    """Proximal operator of the squared l2 norm.

    ``argmin_y 0.5 ||x - y||^2 + scaling * 0.5 * sum(l2reg * y^2)``, i.e.
    ``x / (1 + scaling * l2reg)``. The penalty carries a factor ``0.5``: this is what
    jaxopt's ``prox_ridge`` computes.

    Args:
        x: pytree of real floating-point arrays.
        l2reg: non-negative scalar, or a pytree like ``x`` (coordinate-wise weights).
            ``None`` means ``1.0``.
        scaling: non-negative scalar.

    Returns:
        pytree like ``x``, same dtypes. Smooth everywhere.

    Reference: Parikh & Boyd, "Proximal Algorithms" (2014), section 6.1.1.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsecond.prox import prox_ridge
        >>> print(prox_ridge(jnp.array([-2.0, 3.0]), l2reg=1.0))
        [-1.   1.5]
    """
    if l2reg is None:
        l2reg = 1.0
    leaves, treedef = _float_leaves(x)
    gams = _hyper_leaves(l2reg, leaves, treedef, "l2reg")
    scales = _hyper_leaves(_scalar_hyper(scaling, "scaling"), leaves, treedef, "scaling")
    out = [u / (1 + s * gam) for u, gam, s in zip(leaves, gams, scales, strict=True)]
    return jax.tree.unflatten(treedef, out)


def prox_non_negative_ridge(x: Any, l2reg: Any = None, scaling: Any = 1.0) -> Any:
    """Proximal operator of the squared l2 norm on the non-negative orthant.

    ``argmin_{y >= 0} 0.5 ||x - y||^2 + scaling * 0.5 * sum(l2reg * y^2)``, i.e.
    ``max(x, 0) / (1 + scaling * l2reg)`` (same ``0.5`` convention as
    :func:`prox_ridge`).

    Args:
        x: pytree of real floating-point arrays.
        l2reg: non-negative scalar or a pytree like ``x``. ``None`` means ``1.0``.
        scaling: non-negative scalar.

    Returns:
        pytree like ``x``, same dtypes.

    Derivatives: ``d/dx = 1[x > 0] / (1 + scaling * l2reg)``; at ``x = 0`` the flat
    piece (``0``) is taken.

    Reference: Parikh & Boyd, "Proximal Algorithms" (2014), sections 6.1.1 and 2.2.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsecond.prox import prox_non_negative_ridge
        >>> print(prox_non_negative_ridge(jnp.array([-2.0, 3.0]), l2reg=1.0))
        [0.  1.5]
    """
    if l2reg is None:
        l2reg = 1.0
    leaves, treedef = _float_leaves(x)
    gams = _hyper_leaves(l2reg, leaves, treedef, "l2reg")
    scales = _hyper_leaves(_scalar_hyper(scaling, "scaling"), leaves, treedef, "scaling")
    out = [
        # Strict > so that x = 0 takes the flat piece (derivative 0).
        jnp.where(u > 0, u, jnp.zeros_like(u)) / (1 + s * gam)
        for u, gam, s in zip(leaves, gams, scales, strict=True)
    ]
    return jax.tree.unflatten(treedef, out)


def prox_box(x: Any, hyperparams: Any, scaling: Any = 1.0) -> Any:
    """Proximal operator of the indicator of a box: the projection onto it.

    ``argmin_y 0.5 ||x - y||^2`` subject to ``lower <= y <= upper``, i.e. coordinate-wise
    ``clip(x, lower, upper)``. An indicator function is unchanged by positive scaling,
    so ``scaling`` has no effect (it is accepted for the common prox signature).

    Args:
        x: pytree of real floating-point arrays.
        hyperparams: a pair ``(lower, upper)`` of scalars or pytrees like ``x``, with
            ``lower <= upper`` (checked where the values are known at trace time).
        scaling: ignored.

    Returns:
        pytree like ``x``, same dtypes.

    Derivatives: ``d/dx = 1[lower < x < upper]``; ``d/dlower = 1[x <= lower]`` and
    ``d/dupper = 1[x >= upper, x > lower]``: a touched bound counts as active (flat piece
    in ``x``), and with ``lower = upper = x`` the output follows ``lower``.

    Reference: Parikh & Boyd, "Proximal Algorithms" (2014), section 6.2.1; jaxopt's
    ``projection_box`` with ``make_prox_from_projection``.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsecond.prox import prox_box
        >>> print(prox_box(jnp.array([-2.0, 0.5, 3.0]), hyperparams=(-1.0, 1.0)))
        [-1.   0.5  1. ]
    """
    del scaling
    lower, upper = _pair(hyperparams, "hyperparams", "(lower, upper)")
    leaves, treedef = _float_leaves(x)
    lows = _hyper_leaves(lower, leaves, treedef, "hyperparams[0] (lower)", nonnegative=False)
    ups = _hyper_leaves(upper, leaves, treedef, "hyperparams[1] (upper)", nonnegative=False)
    out = []
    for u, lo, hi in zip(leaves, lows, ups, strict=True):
        lo_value, hi_value = concrete_value(lo), concrete_value(hi)
        if lo_value is not None and hi_value is not None and not np.all(lo_value <= hi_value):
            raise ValueError(f"hyperparams: lower must be <= upper, got {lower!r} and {upper!r}")
        # Lower bound tested first, non-strictly: a touched bound is active (d/dx = 0).
        out.append(jnp.where(u <= lo, lo, jnp.where(u >= hi, hi, u)).astype(u.dtype))
    return jax.tree.unflatten(treedef, out)


def make_prox_from_projection(projection: Callable) -> Callable:
    """A proximal operator from a projection: ``prox(x, hyperparams=None, scaling=1.0)
    = projection(x, hyperparams)``.

    The proximal operator of the indicator function of a set is the projection onto it,
    and an indicator is unchanged by scaling, so ``scaling`` is ignored. Derivatives are
    those of ``projection``.

    Reference: Parikh & Boyd, "Proximal Algorithms" (2014), section 1.2.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsecond.prox import make_prox_from_projection
        >>> nonneg = lambda x, hyperparams: jnp.maximum(x, 0.0)
        >>> prox = make_prox_from_projection(nonneg)
        >>> print(prox(jnp.array([-2.0, 3.0]), scaling=10.0))
        [0. 3.]
    """
    if not callable(projection):
        raise TypeError(f"projection must be callable, got {projection!r}")

    def prox(x, hyperparams=None, scaling=1.0):
        del scaling  # the indicator of a set is invariant to scaling
        return projection(x, hyperparams)

    prox.__name__ = f"prox_from_{getattr(projection, '__name__', 'projection')}"
    prox.__doc__ = f"Proximal operator made from the projection {projection!r}."
    return prox
