"""Euclidean projections onto simple convex sets, ``argmin_{p in C} ||x - p||_2``.

Every projection keeps the dtype of ``x``, works under ``jit`` and ``vmap``, and is
differentiable in ``x`` and in the set's parameters, to second order. Where the
projection is only piecewise smooth (at the faces of a box, a simplex or a ball) the
derivative is an element of the generalized (Clarke) Jacobian, the choice each
docstring states; away from those kinks it is the ordinary Jacobian.

Names and call signatures follow jaxopt's ``jaxopt.projection`` so that code written
for it ports unchanged.

References:
    J. Duchi, S. Shalev-Shwartz, Y. Singer, T. Chandra, "Efficient Projections onto the
    l1-Ball for Learning in High Dimensions", ICML 2008.
    L. Condat, "Fast Projection onto the Simplex and the l1 Ball", Mathematical
    Programming 158, 2016.
    M. Blondel, Q. Berthet, M. Cuturi, R. Frostig, S. Hoyer, F. Llinares-Lopez,
    F. Pedregosa, J.-P. Vert, "Efficient and Modular Implicit Differentiation",
    NeurIPS 2022.
"""

from __future__ import annotations

import numbers
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxsecond._checks import concrete_value

# ---------------------------------------------------------------------------------------
# Trace-time checks.
# ---------------------------------------------------------------------------------------


def _as_float_array(x, name: str, fn: str):
    """``x`` as a real floating-point JAX array, or a TypeError naming it."""
    if isinstance(x, bool | np.bool_):
        raise TypeError(f"{fn}: {name} must be a floating-point array, got {x!r}")
    try:
        arr = jnp.asarray(x)
    except TypeError as e:
        raise TypeError(
            f"{fn}: {name} must be a floating-point array, got {type(x).__name__}"
        ) from e
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(
            f"{fn}: {name} must have a real floating-point dtype (float32 or float64), got "
            f"{arr.dtype}; convert it first, e.g. x.astype(jnp.float32)"
        )
    return arr


def _as_float_tree(x, name: str, fn: str):
    leaves, treedef = jax.tree.flatten(x)
    if not leaves:
        raise ValueError(f"{fn}: {name} must contain at least one array, got {x!r}")
    leaves = [
        _as_float_array(leaf, f"{name} leaf {i}" if len(leaves) > 1 else name, fn)
        for i, leaf in enumerate(leaves)
    ]
    return jax.tree.unflatten(treedef, leaves)


def _as_vector(x, fn: str):
    arr = _as_float_array(x, "x", fn)
    if arr.ndim != 1:
        raise ValueError(
            f"{fn}: x must be a vector (1-D array), got shape {arr.shape}; for a batch of "
            "vectors use jax.vmap"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{fn}: x must not be empty")
    return arr


def _positive_scalar(value, name: str, fn: str, dtype):
    """A scalar ``> 0`` (checked when concrete) cast to ``dtype``."""
    if isinstance(value, bool | np.bool_) or not isinstance(
        value, numbers.Real | np.ndarray | np.generic | jax.Array
    ):
        raise TypeError(f"{fn}: {name} must be a positive real number, got {value!r}")
    arr = jnp.asarray(value)
    if arr.shape != ():
        raise ValueError(f"{fn}: {name} must be a scalar, got shape {arr.shape}")
    if not jnp.issubdtype(arr.dtype, jnp.floating) and not jnp.issubdtype(arr.dtype, jnp.integer):
        raise TypeError(f"{fn}: {name} must be a positive real number, got dtype {arr.dtype}")
    known = concrete_value(value)
    if known is not None and not float(known) > 0:
        raise ValueError(f"{fn}: {name} must be > 0, got {float(known)!r}")
    return arr.astype(dtype)


def _real_scalar(value, name: str, fn: str, dtype):
    if isinstance(value, bool | np.bool_) or not isinstance(
        value, numbers.Real | np.ndarray | np.generic | jax.Array
    ):
        raise TypeError(f"{fn}: {name} must be a real scalar, got {value!r}")
    arr = jnp.asarray(value)
    if arr.shape != ():
        raise ValueError(f"{fn}: {name} must be a scalar, got shape {arr.shape}")
    return arr.astype(dtype)


def _pair(hyperparams, names: str, fn: str):
    if not (isinstance(hyperparams, tuple | list) and len(hyperparams) == 2):
        raise TypeError(f"{fn}: hyperparams must be a pair {names}, got {hyperparams!r}")
    return hyperparams


def _like_x(param, x, name: str, fn: str):
    """``param`` leafwise like the pytree ``x``: either one scalar/array broadcast to every
    leaf, or a pytree with the structure of ``x``; each leaf cast to its leaf's dtype."""
    x_leaves, x_def = jax.tree.flatten(x)
    p_leaves, p_def = jax.tree.flatten(param)
    if p_def == x_def:
        pass
    elif len(p_leaves) == 1 and p_def == jax.tree.structure(0):
        p_leaves = p_leaves * len(x_leaves)
    else:
        raise ValueError(
            f"{fn}: {name} must be a scalar or a pytree with the structure of x "
            f"({x_def}), got {p_def}"
        )
    out = []
    for xl, pl in zip(x_leaves, p_leaves, strict=True):
        arr = _as_float_array(pl, name, fn) if not isinstance(pl, numbers.Real) else pl
        arr = jnp.asarray(arr, dtype=xl.dtype)
        try:
            shape = jnp.broadcast_shapes(arr.shape, xl.shape)
        except ValueError:
            shape = None
        if shape != xl.shape:
            raise ValueError(
                f"{fn}: {name} has a leaf of shape {arr.shape}, which does not broadcast to "
                f"the shape {xl.shape} of the matching leaf of x"
            )
        out.append(arr)
    return out, x_leaves, x_def


def _tree_vdot(a_leaves, x_leaves):
    return sum(jnp.sum(a * x) for a, x in zip(a_leaves, x_leaves, strict=True))


# ---------------------------------------------------------------------------------------
# Orthant, box, hypercube, l-infinity ball.
# ---------------------------------------------------------------------------------------


def projection_non_negative(x: Any, hyperparams=None) -> Any:
    r"""Projection onto the non-negative orthant, ``argmin_{p >= 0} ||x - p||_2``.

    That is ``max(x, 0)`` elementwise. The derivative at ``x_i = 0`` is taken as 0
    (the constraint counts as active there), like ``jax.nn.relu``.

    Args:
        x: pytree of floating-point arrays.
        hyperparams: ignored (kept for jaxopt's signature).

    Returns:
        A pytree shaped like ``x``.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsecond.projection import projection_non_negative
        >>> print(projection_non_negative(jnp.array([-1.0, 0.5, 2.0])))
        [0.  0.5 2. ]

    Reference: jaxopt's ``projection_non_negative`` (Blondel et al., "Efficient and
    Modular Implicit Differentiation", 2022).
    """
    del hyperparams
    x = _as_float_tree(x, "x", "projection_non_negative")
    return jax.tree.map(lambda v: jnp.where(v > 0, v, jnp.zeros((), v.dtype)), x)


def _box_leaf(v, lo, hi):
    # At a tie x == bound the bound's value is taken, so the derivative goes to the
    # bound (the constraint counts as active), consistent with the other projections.
    return jnp.where(v <= lo, lo, jnp.where(v >= hi, hi, v)).astype(v.dtype)


def _check_box_order(lower, upper, fn):
    # On the caller's values (see concrete_value); pytrees of bounds leaf by leaf.
    lo_leaves, hi_leaves = jax.tree.leaves(lower), jax.tree.leaves(upper)
    if len(lo_leaves) != len(hi_leaves):
        lo_leaves = lo_leaves * len(hi_leaves) if len(lo_leaves) == 1 else lo_leaves
        hi_leaves = hi_leaves * len(lo_leaves) if len(hi_leaves) == 1 else hi_leaves
    for lo, hi in zip(lo_leaves, hi_leaves, strict=False):
        lo, hi = concrete_value(lo), concrete_value(hi)
        if lo is not None and hi is not None and bool(np.any(lo > hi)):
            raise ValueError(
                f"{fn}: the box is empty: some entry of lower exceeds the matching entry of upper"
            )


def projection_box(x: Any, hyperparams: tuple) -> Any:
    r"""Projection onto the box ``{p : lower <= p <= upper}``.

    That is ``clip(x, lower, upper)`` elementwise. At a tie ``x_i == lower_i`` (or
    ``upper_i``) the derivative goes to the bound, not to ``x`` (the constraint counts
    as active); jaxopt's ``jnp.clip`` splits it half and half there.

    Args:
        x: pytree of floating-point arrays.
        hyperparams: ``(lower, upper)``, each a scalar or a pytree with the structure of
            ``x`` whose leaves broadcast to ``x``'s leaves.

    Returns:
        A pytree shaped like ``x``.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsecond.projection import projection_box
        >>> print(projection_box(jnp.array([-2.0, 0.5, 3.0]), (0.0, 1.0)))
        [0.  0.5 1. ]

    Reference: jaxopt's ``projection_box`` (Blondel et al., "Efficient and Modular
    Implicit Differentiation", 2022).
    """
    fn = "projection_box"
    lower, upper = _pair(hyperparams, "(lower, upper)", fn)
    x = _as_float_tree(x, "x", fn)
    lo, x_leaves, x_def = _like_x(lower, x, "lower", fn)
    hi, _, _ = _like_x(upper, x, "upper", fn)
    _check_box_order(lower, upper, fn)
    return jax.tree.unflatten(x_def, [_box_leaf(*t) for t in zip(x_leaves, lo, hi, strict=True)])


def projection_hypercube(x: Any, unit: float = 1.0) -> Any:
    r"""Projection onto the hypercube ``{p : 0 <= p <= unit}``.

    :func:`projection_box` with ``(0, unit)``; the same derivative convention.

    Args:
        x: pytree of floating-point arrays.
        unit: side length, a positive scalar (default 1).

    Returns:
        A pytree shaped like ``x``.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsecond.projection import projection_hypercube
        >>> print(projection_hypercube(jnp.array([-2.0, 0.5, 3.0]), 2.0))
        [0.  0.5 2. ]

    Reference: jaxopt's ``projection_hypercube``.
    """
    x = _as_float_tree(x, "x", "projection_hypercube")
    dtype = jax.tree.leaves(x)[0].dtype
    unit = _positive_scalar(unit, "unit", "projection_hypercube", dtype)
    return projection_box(x, (0.0, unit))


def projection_linf_ball(x: Any, max_value: float = 1.0) -> Any:
    r"""Projection onto the l-infinity ball ``{p : ||p||_inf <= max_value}``.

    :func:`projection_box` with ``(-max_value, max_value)``, over all leaves of the
    pytree; the same derivative convention.

    Args:
        x: pytree of floating-point arrays.
        max_value: radius, a positive scalar (default 1).

    Returns:
        A pytree shaped like ``x``.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsecond.projection import projection_linf_ball
        >>> print(projection_linf_ball(jnp.array([-2.0, 0.5, 3.0])))
        [-1.   0.5  1. ]

    Reference: jaxopt's ``projection_linf_ball``.
    """
    x = _as_float_tree(x, "x", "projection_linf_ball")
    dtype = jax.tree.leaves(x)[0].dtype
    r = _positive_scalar(max_value, "max_value", "projection_linf_ball", dtype)
    return projection_box(x, (-r, r))


# ---------------------------------------------------------------------------------------
# Simplex and l1 ball.
# ---------------------------------------------------------------------------------------


def simplex_threshold(x, value):
    """``tau`` with ``sum(max(x - tau, 0)) == value`` for a vector ``x`` and ``value > 0``.

    Sort-based (Duchi et al. 2008, Condat 2016): with ``u`` sorted decreasingly, the
    support size ``rho`` is the number of ``k`` with ``k u_k > sum_{i<=k} u_i - value``
    (those ``k`` form a prefix).
    """
    u = jnp.sort(x)[::-1]
    css = jnp.cumsum(u)
    k = jnp.arange(1, x.shape[0] + 1, dtype=x.dtype)
    # rho >= 1 in exact arithmetic; the floor guards round-off when value << |x|.
    rho = jnp.maximum(jnp.count_nonzero(u * k > css - value), 1)
    return (css[rho - 1] - value) / rho.astype(x.dtype)


@jax.custom_jvp
def simplex(x, value):
    """Projection of the vector ``x`` onto ``{p >= 0, sum(p) = value}`` (no checks)."""
    return jnp.maximum(x - simplex_threshold(x, value), 0)


@simplex.defjvp
def _simplex_jvp(primals, tangents):
    x, value = primals
    dx, dvalue = tangents
    p = simplex(x, value)
    # On the support s, p_s = x_s - tau with tau = (sum_s x - value) / |s|, so
    # dp = s * (dx - dtau): the Jacobian in x is diag(s) - s s^T / |s| (Blondel et al.
    # 2022). Entries exactly at the threshold count as off the support.
    s = (p > 0).astype(x.dtype)
    card = jnp.maximum(jnp.sum(s), 1)
    dtau = (jnp.dot(s, dx) - dvalue) / card
    return p, s * (dx - dtau)


def projection_simplex(x: jax.Array, value: float = 1.0) -> jax.Array:
    r"""Projection onto the simplex ``{p : p >= 0, sum(p) = value}``.

    Sort-based, ``O(n log n)``: ``p = max(x - tau, 0)`` with the threshold ``tau``
    found from the sorted entries. The Jacobian in ``x`` is ``diag(s) - s s^T / |s|``
    with ``s`` the indicator of the support ``p > 0`` (entries exactly at the threshold
    count as off the support, as in jaxopt); in ``value`` it is ``s / |s|``.

    Args:
        x: vector to project, shape ``(n,)``. As in jaxopt, one vector: use
            ``jax.vmap`` for a batch (e.g. the rows of a matrix).
        value: what ``p`` sums to, a positive scalar (default 1: the probability
            simplex). ``None`` means 1.

    Returns:
        A vector shaped like ``x``, of its dtype.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsecond.projection import projection_simplex
        >>> print(projection_simplex(jnp.array([0.5, 2.0, 1.0])))
        [0. 1. 0.]
        >>> print(projection_simplex(jnp.array([0.5, 1.25, 1.0])))
        [0.    0.625 0.375]

    References: Duchi et al., "Efficient Projections onto the l1-Ball for Learning in
    High Dimensions" (ICML 2008); Condat, "Fast Projection onto the Simplex and the l1
    Ball" (2016); Blondel et al., "Efficient and Modular Implicit Differentiation"
    (2022) for the Jacobian.
    """
    fn = "projection_simplex"
    x = _as_vector(x, fn)
    value = _positive_scalar(1.0 if value is None else value, "value", fn, x.dtype)
    return simplex(x, value)


def _signs(x):
    # A zero entry takes the + sign: any sign gives the same distance, and + keeps the
    # l1 sphere's projection on the sphere (jnp.sign(0) == 0 would not).
    return jnp.where(x >= 0, jnp.ones((), x.dtype), -jnp.ones((), x.dtype))


def projection_l1_sphere(x: jax.Array, value: float = 1.0) -> jax.Array:
    r"""Projection onto the l1 sphere ``{p : ||p||_1 = value}``.

    ``sign(x) * projection_simplex(|x|, value)``. The sphere is not convex: for ``x``
    inside the ball a projection exists but ties are possible; a zero entry ``x_i``
    takes the sign ``+`` (jaxopt's ``jnp.sign`` gives 0 there, which can leave the
    sphere, e.g. at ``x = 0``).

    Args:
        x: vector to project, shape ``(n,)``.
        value: radius, a positive scalar (default 1).

    Returns:
        A vector shaped like ``x``.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsecond.projection import projection_l1_sphere
        >>> print(projection_l1_sphere(jnp.array([0.25, -0.25])))
        [ 0.5 -0.5]

    Reference: Duchi et al., "Efficient Projections onto the l1-Ball for Learning in
    High Dimensions" (ICML 2008).
    """
    fn = "projection_l1_sphere"
    x = _as_vector(x, fn)
    value = _positive_scalar(value, "value", fn, x.dtype)
    return _signs(x) * simplex(jnp.abs(x), value)


def projection_l1_ball(x: jax.Array, max_value: float = 1.0) -> jax.Array:
    r"""Projection onto the l1 ball ``{p : ||p||_1 <= max_value}``.

    ``x`` itself inside the ball, else ``sign(x) * projection_simplex(|x|,
    max_value)`` (Duchi et al. 2008). On the boundary ``||x||_1 == max_value`` the
    derivative is the identity's (as in jaxopt); elsewhere it is the simplex's
    generalized Jacobian, conjugated by the signs.

    Args:
        x: vector to project, shape ``(n,)``.
        max_value: radius, a positive scalar (default 1).

    Returns:
        A vector shaped like ``x``.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsecond.projection import projection_l1_ball
        >>> print(projection_l1_ball(jnp.array([2.0, -0.5, 0.25])))
        [ 1. -0.  0.]
        >>> print(projection_l1_ball(jnp.array([0.5, -0.25])))
        [ 0.5  -0.25]

    Reference: Duchi et al., "Efficient Projections onto the l1-Ball for Learning in
    High Dimensions" (ICML 2008).
    """
    fn = "projection_l1_ball"
    x = _as_vector(x, fn)
    r = _positive_scalar(max_value, "max_value", fn, x.dtype)
    outside = _signs(x) * simplex(jnp.abs(x), r)
    # jnp.where rather than lax.cond: under vmap a cond becomes a select anyway, and
    # both branches are finite (with derivatives) everywhere.
    return jnp.where(jnp.sum(jnp.abs(x)) <= r, x, outside)


# ---------------------------------------------------------------------------------------
# l2 ball and sphere.
# ---------------------------------------------------------------------------------------


def _squared_norm(leaves):
    return sum(jnp.sum(v * v) for v in leaves)


def projection_l2_ball(x: Any, max_value: float = 1.0) -> Any:
    r"""Projection onto the l2 ball ``{p : ||p||_2 <= max_value}``.

    ``x`` inside the ball, else ``max_value * x / ||x||_2``, with the norm taken over
    all leaves of the pytree. On the boundary the derivative is the identity's (as in
    jaxopt). The norm is never evaluated at 0, so ``x = 0`` has finite derivatives
    (the identity).

    Args:
        x: pytree of floating-point arrays.
        max_value: radius, a positive scalar (default 1).

    Returns:
        A pytree shaped like ``x``.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsecond.projection import projection_l2_ball
        >>> print(projection_l2_ball(jnp.array([3.0, 4.0])))
        [0.6 0.8]

    Reference: jaxopt's ``projection_l2_ball`` (Blondel et al., "Efficient and Modular
    Implicit Differentiation", 2022).
    """
    fn = "projection_l2_ball"
    x = _as_float_tree(x, "x", fn)
    leaves, treedef = jax.tree.flatten(x)
    r = _positive_scalar(max_value, "max_value", fn, leaves[0].dtype)
    sq = _squared_norm(leaves)
    inside = sq <= r * r
    # sqrt only sees sq > r^2 > 0 on the branch that is used: no NaN gradient at 0.
    factor = jnp.where(inside, 1, r / jnp.sqrt(jnp.where(inside, 1, sq)))
    return jax.tree.unflatten(treedef, [v * factor.astype(v.dtype) for v in leaves])


def projection_l2_sphere(x: Any, value: float = 1.0) -> Any:
    r"""Projection onto the l2 sphere ``{p : ||p||_2 = value}``.

    ``value * x / ||x||_2``, the norm over all leaves of the pytree. At ``x = 0`` every
    point of the sphere is a projection; this returns ``value`` times the first basis
    vector (the first entry of the first leaf) with a zero derivative in ``x``, where
    jaxopt returns NaN.

    Args:
        x: pytree of floating-point arrays.
        value: radius, a positive scalar (default 1).

    Returns:
        A pytree shaped like ``x``.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsecond.projection import projection_l2_sphere
        >>> print(projection_l2_sphere(jnp.array([0.3, 0.4]), 10.0))
        [6. 8.]

    Reference: jaxopt's ``projection_l2_sphere``.
    """
    fn = "projection_l2_sphere"
    x = _as_float_tree(x, "x", fn)
    leaves, treedef = jax.tree.flatten(x)
    value = _positive_scalar(value, "value", fn, leaves[0].dtype)
    sq = _squared_norm(leaves)
    zero = sq == 0
    factor = value / jnp.sqrt(jnp.where(zero, 1, sq))
    out = [v * factor.astype(v.dtype) for v in leaves]
    first = leaves[0]
    e1 = jnp.zeros(first.size, first.dtype).at[0].set(1).reshape(first.shape)
    out[0] = jnp.where(zero, value.astype(first.dtype) * e1, out[0])
    return jax.tree.unflatten(treedef, out)


# ---------------------------------------------------------------------------------------
# Hyperplane, halfspace, affine set.
# ---------------------------------------------------------------------------------------


def _normal_and_offset(hyperparams, x, fn):
    a, b = _pair(hyperparams, "(a, b)", fn)
    x_leaves, x_def = jax.tree.flatten(x)
    known = [concrete_value(al) for al in jax.tree.leaves(a)]
    if known and all(k is not None and not np.any(k) for k in known):
        raise ValueError(f"{fn}: a must be nonzero (it is the normal of the plane)")
    a = _as_float_tree(a, "a", fn)
    a_leaves, a_def = jax.tree.flatten(a)
    if a_def != x_def:
        raise ValueError(f"{fn}: a must have the pytree structure of x ({x_def}), got {a_def}")
    for al, xl in zip(a_leaves, x_leaves, strict=True):
        if al.shape != xl.shape:
            raise ValueError(
                f"{fn}: a must have the shapes of x, got a leaf of shape {al.shape} for one of "
                f"shape {xl.shape}"
            )
    a_leaves = [al.astype(xl.dtype) for al, xl in zip(a_leaves, x_leaves, strict=True)]
    b = _real_scalar(b, "b", fn, x_leaves[0].dtype)
    return a_leaves, b, x_leaves, x_def


def projection_hyperplane(x: Any, hyperparams: tuple) -> Any:
    r"""Projection onto the hyperplane ``{p : <a, p> = b}``.

    ``x - (<a, x> - b) / <a, a> * a``; smooth in ``x``, ``a`` and ``b`` for ``a != 0``.

    Args:
        x: pytree of floating-point arrays.
        hyperparams: ``(a, b)``: ``a`` a nonzero pytree with the structure and shapes
            of ``x``, ``b`` a scalar.

    Returns:
        A pytree shaped like ``x``.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsecond.projection import projection_hyperplane
        >>> print(projection_hyperplane(jnp.array([3.0, 1.0]), (jnp.array([1.0, 1.0]), 2.0)))
        [2. 0.]

    Reference: jaxopt's ``projection_hyperplane``; Bauschke & Combettes, "Convex
    Analysis and Monotone Operator Theory in Hilbert Spaces" (2011), Example 29.18.
    """
    fn = "projection_hyperplane"
    x = _as_float_tree(x, "x", fn)
    a, b, xs, x_def = _normal_and_offset(hyperparams, x, fn)
    scale = (_tree_vdot(a, xs) - b) / _tree_vdot(a, a)
    return jax.tree.unflatten(x_def, [v - scale * al for v, al in zip(xs, a, strict=True)])


def projection_halfspace(x: Any, hyperparams: tuple) -> Any:
    r"""Projection onto the halfspace ``{p : <a, p> <= b}``.

    ``x - max(<a, x> - b, 0) / <a, a> * a``. On the boundary ``<a, x> == b`` the
    derivative is the identity's (``max``'s derivative at 0 taken as 0, as in jaxopt).

    Args:
        x: pytree of floating-point arrays.
        hyperparams: ``(a, b)``: ``a`` a nonzero pytree with the structure and shapes
            of ``x``, ``b`` a scalar.

    Returns:
        A pytree shaped like ``x``.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsecond.projection import projection_halfspace
        >>> print(projection_halfspace(jnp.array([3.0, 1.0]), (jnp.array([1.0, 1.0]), 2.0)))
        [2. 0.]
        >>> print(projection_halfspace(jnp.array([0.5, 1.0]), (jnp.array([1.0, 1.0]), 2.0)))
        [0.5 1. ]

    Reference: jaxopt's ``projection_halfspace``; Bauschke & Combettes (2011),
    Example 29.20.
    """
    fn = "projection_halfspace"
    x = _as_float_tree(x, "x", fn)
    a, b, xs, x_def = _normal_and_offset(hyperparams, x, fn)
    excess = _tree_vdot(a, xs) - b
    scale = jnp.where(excess > 0, excess, 0) / _tree_vdot(a, a)
    return jax.tree.unflatten(x_def, [v - scale * al for v, al in zip(xs, a, strict=True)])


def projection_affine_set(x: jax.Array, hyperparams: tuple) -> jax.Array:
    r"""Projection onto the affine set ``{p : A p = b}``.

    The least-norm correction ``p = x - A^T (A A^T)^{-1} (A x - b)``, computed from a
    QR factorization ``A^T = Q R`` as ``x - Q R^{-T} (A x - b)`` (no normal equations,
    so the error grows with ``cond(A)``, not its square). ``A`` must have full row
    rank; a numerically rank-deficient ``A`` raises at run time (``equinox.error_if``;
    set ``EQX_ON_ERROR=nan`` for NaN instead). Smooth in ``x``, ``A`` and ``b``.

    Unlike jaxopt, which solves the KKT system iteratively (GMRES, tolerance 1e-5),
    this is a direct solve, exact to round-off.

    Args:
        x: vector to project, shape ``(n,)``.
        hyperparams: ``(A, b)`` with ``A`` of shape ``(m, n)``, ``m <= n``, and ``b`` of
            shape ``(m,)``.

    Returns:
        A vector shaped like ``x``.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxsecond.projection import projection_affine_set
        >>> A, b = jnp.array([[1.0, 1.0, 0.0]]), jnp.array([2.0])
        >>> print(projection_affine_set(jnp.array([3.0, 1.0, 5.0]), (A, b)).round(4))
        [2. 0. 5.]

    Reference: jaxopt's ``projection_affine_set``; Boyd & Vandenberghe, "Convex
    Optimization" (2004), section 8.1.1.
    """
    fn = "projection_affine_set"
    A, b = _pair(hyperparams, "(A, b)", fn)
    x = _as_vector(x, fn)
    A = _as_float_array(A, "A", fn)
    b = _as_float_array(b, "b", fn)
    n = x.shape[0]
    if A.ndim != 2 or A.shape[1] != n:
        raise ValueError(f"{fn}: A must have shape (m, {n}) to match x, got {A.shape}")
    m = A.shape[0]
    if m == 0 or m > n:
        raise ValueError(
            f"{fn}: A must have between 1 and {n} rows (full row rank), got shape {A.shape}"
        )
    if b.shape != (m,):
        raise ValueError(f"{fn}: b must have shape ({m},) to match A's rows, got {b.shape}")
    A, b = A.astype(x.dtype), b.astype(x.dtype)
    q, r = jnp.linalg.qr(A.T)
    diag = jnp.abs(jnp.diagonal(r))
    eps = jnp.finfo(x.dtype).eps
    rank_deficient = ~(jnp.min(diag) > n * eps * jnp.max(diag))
    z = jax.scipy.linalg.solve_triangular(r.T, A @ x - b, lower=True)
    p = x - q @ z
    return eqx.error_if(p, rank_deficient, f"{fn}: A is rank deficient; it must have full row rank")
