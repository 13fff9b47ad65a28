"""Hessian-vector and Gauss-Newton-vector products on pytrees.

All products are forward-over-reverse (``jax.jvp`` of ``jax.grad``): one forward and
one reverse sweep, with memory like a gradient's, and they work for any pytree of
floating-point arrays, equinox Modules included (non-array leaves are held fixed).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxsecond._checks import split_float_arrays
from jaxsecond._tree import accumulation_dtype, callable_name, describe_mismatch


def split_params(params, name: str = "params"):
    """``(dynamic, static)``: floating-point arrays vs everything else (held fixed).

    Integer or boolean arrays raise ``TypeError``: a Hessian needs floating point.
    """
    return split_float_arrays(params, name, "curvature")


def scalar_function(fun: Callable, params, name: str = "fun"):
    """``fun`` restricted to the floating-point arrays of ``params``, checked to return a
    real scalar. Returns ``(f, dynamic)`` with ``f(dynamic) = fun(params)``."""
    if not callable(fun):
        raise TypeError(f"{name} must be callable, got {fun!r}")
    dynamic, static = split_params(params)

    def f(dyn):
        return fun(eqx.combine(dyn, static))

    out = jax.eval_shape(f, dynamic)
    if not (isinstance(out, jax.ShapeDtypeStruct) and out.shape == ()):
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"{name} ({callable_name(fun)}) must return a scalar loss, got {shape}; "
            "reduce it (e.g. mean over the batch) first"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(
            f"{name} ({callable_name(fun)}) must return a real floating-point scalar, "
            f"got dtype {out.dtype}"
        )
    return f, dynamic


def check_vector(vector, dynamic, name: str = "vector"):
    """The array part of ``vector``, checked to match the array part of params."""
    vec = eqx.filter(vector, eqx.is_array)
    problem = describe_mismatch(dynamic, vec)
    if problem is not None:
        raise ValueError(f"{name} must be a pytree shaped like params: {problem}")
    return vec


def tree_hvp(f, dynamic, v):
    """``H v`` for the scalar ``f`` at the pytree ``dynamic`` (forward over reverse)."""
    return jax.jvp(jax.grad(f), (dynamic,), (v,))[1]


def flat_hvp(f, dynamic):
    """``(flat, unravel, matvec)`` for ``f`` at the pytree ``dynamic``: its flattening,
    the inverse, and the Hessian-vector product on flat vectors. Products are taken in
    the params' dtype; the matvec maps vectors of :func:`accumulation_dtype` (float32
    for half-precision params, so QR, Lanczos and eigh run in float32) to the same."""
    flat, unravel = ravel_pytree(dynamic)
    wide = accumulation_dtype(flat.dtype)

    def matvec(v):
        hv = tree_hvp(f, dynamic, unravel(v.astype(flat.dtype)))
        return ravel_pytree(hv)[0].astype(wide)

    return flat, unravel, matvec


def hvp(fun: Callable, params, vector):
    """Hessian-vector product ``H(params) @ vector`` of a scalar function.

    Forward-over-reverse: ``jax.jvp(jax.grad(fun), (params,), (vector,))``; costs about
    two to three gradients and no more memory than one.

    Args:
        fun: ``params -> scalar``.
        params: any pytree of floating-point arrays (equinox Modules included;
            non-array leaves are held fixed).
        vector: a pytree shaped like ``params`` (its non-array leaves are ignored).

    Returns:
        A pytree shaped like ``params``, with ``None`` at its non-array leaves (as
        ``equinox.filter_grad`` does for an equinox Module's functions and flags).

    Example:
        >>> import jax.numpy as jnp, jaxsecond
        >>> f = lambda p: p["a"] ** 2 * p["b"]
        >>> p = {"a": jnp.array(1.0), "b": jnp.array(2.0)}
        >>> v = {"a": jnp.array(1.0), "b": jnp.array(0.0)}
        >>> print(jaxsecond.hvp(f, p, v)["a"])  # d2f/da2 = 2 b
        4.0
    """
    return grad_and_hvp(fun, params, vector)[2]


def grad_and_hvp(fun: Callable, params, vector):
    """``(value, gradient, Hessian-vector product)`` from one forward-over-reverse pass.

    ``jax.jvp`` of ``jax.value_and_grad``: the primal half of the pass is the gradient
    computation, so a caller who needs the gradient anyway gets the Hessian-vector
    product for the cost of the tangent half.

    Example:
        >>> import jax.numpy as jnp, jaxsecond
        >>> f = lambda x: jnp.sum(x**3)
        >>> value, grad, hv = jaxsecond.grad_and_hvp(f, jnp.array([1.0, 2.0]), jnp.ones(2))
        >>> print(value, grad, hv)  # 9, 3x^2, 6x
        9.0 [ 3. 12.] [ 6. 12.]
    """
    f, dynamic = scalar_function(fun, params)
    vec = check_vector(vector, dynamic)
    (value, grad), (_, hv) = jax.jvp(jax.value_and_grad(f), (dynamic,), (vec,))
    return value, grad, hv


def gnvp(model: Callable, loss: Callable, params, vector):
    """Gauss-Newton-vector product ``J^T H_loss J v`` for ``loss(model(params))``.

    ``J`` is the Jacobian of ``model`` at ``params`` and ``H_loss`` the Hessian of
    ``loss`` at ``model(params)``. The Gauss-Newton matrix drops the second-derivative
    term of ``model``, so it is positive semidefinite whenever ``loss`` is convex (e.g.
    squared error or cross-entropy on logits). Cost: one JVP of ``model``, one
    Hessian-vector product of ``loss`` (cheap: it acts on outputs), one VJP of
    ``model``.

    Args:
        model: ``params -> outputs`` (any pytree of arrays, e.g. logits).
        loss: ``outputs -> scalar``.
        params: pytree of floating-point arrays.
        vector: pytree shaped like ``params``.

    Example:
        >>> import jax.numpy as jnp, jaxsecond
        >>> A = jnp.array([[1.0, 2.0], [0.0, 1.0]])
        >>> model = lambda w: A @ w
        >>> loss = lambda y: 0.5 * jnp.sum(y**2)  # Gauss-Newton matrix = A^T A
        >>> print(jaxsecond.gnvp(model, loss, jnp.zeros(2), jnp.array([1.0, 0.0])))
        [1. 2.]
    """
    if not callable(model):
        raise TypeError(f"model must be callable, got {model!r}")
    dynamic, static = split_params(params)
    vec = check_vector(vector, dynamic)

    # Non-array output leaves (labels, names, flags) pass through to the loss untouched;
    # only the array outputs are linearised.
    passthrough = {}

    def m(dyn):
        out = model(eqx.combine(dyn, static))
        arrays, others = eqx.partition(out, eqx.is_array)
        for path, leaf in jax.tree_util.tree_leaves_with_path(arrays):
            if not jnp.issubdtype(leaf.dtype, jnp.inexact):
                raise TypeError(
                    f"gnvp: model output {jax.tree_util.keystr(path) or 'value'} has dtype "
                    f"{leaf.dtype}; array outputs must be floating point (the Gauss-Newton "
                    "matrix differentiates them); return integer data from outside model"
                )
        passthrough["others"] = others
        return arrays

    # Linearise once: the same linear map gives J v and, transposed, J^T u.
    outputs, jacobian = jax.linearize(m, dynamic)
    others = passthrough["others"]
    loss_fn, out_dynamic = scalar_function(
        lambda arrays: loss(eqx.combine(arrays, others)), outputs, name="loss"
    )
    h_jv = jax.jvp(jax.grad(loss_fn), (out_dynamic,), (jacobian(vec),))[1]
    (out,) = jax.linear_transpose(jacobian, dynamic)(h_jv)
    return out
