"""Optimality conditions: the functions ``custom_root`` differentiates through.

Each factory turns a problem description (an objective, constraints, a proximal
operator or a projection) into ``optimality_fun(params, *args, **kwargs)``, a pytree
shaped like ``params`` that is zero exactly at the problem's solutions. Decorate any
solver of the problem with ``custom_root(optimality_fun)`` and its output is
differentiable in every mode, whatever the solver does inside.

The catalogue follows Blondel et al., "Efficient and Modular Implicit Differentiation"
(NeurIPS 2022), section 2.2: stationarity, KKT conditions, proximal-gradient,
projected-gradient and mirror-descent fixed points, and Newton's fixed point. The
argument conventions are jaxopt's (``hyperparams_prox``, ``hyperparams_proj``,
``params_obj``/``params_eq``/``params_ineq``), so a jaxopt call site ports unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.flatten_util
import jax.numpy as jnp

from jaxsecond._tree import callable_name


def _check_callable(value, name: str, caller: str) -> None:
    if not callable(value):
        raise TypeError(f"{caller}: {name} must be callable, got {value!r}")


def _check_stepsize(stepsize, caller: str) -> None:
    if isinstance(stepsize, bool) or (isinstance(stepsize, int | float) and not stepsize > 0):
        raise ValueError(f"{caller}: stepsize must be a positive number, got {stepsize!r}")


def _named(fn: Callable, name: str) -> Callable:
    fn.__name__ = fn.__qualname__ = name
    return fn


def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


def _axpy(alpha, x, y):
    """``y + alpha * x`` leaf by leaf, in each leaf's dtype."""
    return jax.tree.map(lambda xi, yi: yi + jnp.asarray(alpha, yi.dtype) * xi, x, y)


def _sub(a, b):
    return jax.tree.map(jnp.subtract, a, b)


def stationarity_condition(fun: Callable) -> Callable:
    """``grad fun``: zero at an unconstrained minimum of ``fun(params, *args, **kwargs)``.

    Its Jacobian is the Hessian of ``fun``, symmetric positive definite at a strict
    minimum: decorate with ``custom_root(..., symmetric=True)`` to use CG.

    Example:
        >>> import jax, jax.numpy as jnp, jaxsecond
        >>> from jaxsecond.implicit import stationarity_condition
        >>> def ridge_loss(w, lam):  # 0.5 |w - 1|^2 + 0.5 lam |w|^2: w* = 1 / (1 + lam)
        ...     return 0.5 * jnp.sum((w - 1.0) ** 2) + 0.5 * lam * jnp.sum(w**2)
        >>> @jaxsecond.custom_root(stationarity_condition(ridge_loss), symmetric=True)
        ... def solve(w0, lam):
        ...     return jnp.full_like(w0, 1.0) / (1.0 + lam)
        >>> print(jax.grad(lambda lam: solve(jnp.zeros(()), lam))(1.0))  # -1 / (1 + lam)^2
        -0.25
    """
    _check_callable(fun, "fun", "stationarity_condition")
    return _named(jax.grad(fun), f"stationarity_condition({callable_name(fun)})")


def kkt_condition(
    fun: Callable, eq_fun: Callable | None = None, ineq_fun: Callable | None = None
) -> Callable:
    """KKT conditions of ``min fun(x) s.t. eq_fun(x) = 0, ineq_fun(x) <= 0``.

    Returns ``optimality_fun(params, params_obj, params_eq=None, params_ineq=None)``
    where ``params = (x, eq_dual, ineq_dual)`` (``None`` for an absent constraint) and
    ``fun(x, params_obj)``, ``eq_fun(x, params_eq)``, ``ineq_fun(x, params_ineq)``.
    It stacks:

    - stationarity of the Lagrangian, ``grad fun(x) + J_eq^T eq_dual + J_ineq^T
      ineq_dual``;
    - primal feasibility of the equalities, ``eq_fun(x)``;
    - complementary slackness in the smooth form ``ineq_dual * ineq_fun(x)``.

    The smooth (bilinear) form of complementary slackness has a Jacobian that is
    invertible under strict complementarity (every active constraint has a positive
    multiplier) and linearly independent active constraint gradients; the
    derivatives are then those of the solution. Dual feasibility (``ineq_dual >= 0``)
    is an inequality, not a root: it is the solver's business. Primal, ``eq_dual`` and
    ``ineq_dual`` may be any pytrees (the duals shaped like the constraint outputs).

    Example:
        >>> import jax, jax.numpy as jnp, jaxsecond
        >>> from jaxsecond.implicit import kkt_condition
        >>> fun = lambda x, z: 0.5 * jnp.sum((x - z) ** 2)  # project z onto sum(x) <= 1
        >>> ineq = lambda x, _: jnp.sum(x, keepdims=True) - 1.0
        >>> @jaxsecond.custom_root(kkt_condition(fun, ineq_fun=ineq))
        ... def project(params0, z, params_eq, params_ineq):
        ...     excess = jnp.maximum(jnp.sum(z) - 1.0, 0.0) / z.size
        ...     return z - excess, None, jnp.atleast_1d(excess)
        >>> z = jnp.array([1.0, 2.0])
        >>> x, _, dual = project(None, z, None, None)
        >>> print(x, dual, jax.jacobian(lambda z: project(None, z, None, None)[0])(z))
        [0. 1.] [1.] [[ 0.5 -0.5]
         [-0.5  0.5]]

    Reference: Blondel et al. (2022), eq. (6); Karush (1939), Kuhn and Tucker (1951).
    """
    _check_callable(fun, "fun", "kkt_condition")
    if eq_fun is not None:
        _check_callable(eq_fun, "eq_fun", "kkt_condition")
    if ineq_fun is not None:
        _check_callable(ineq_fun, "ineq_fun", "kkt_condition")

    def optimality_fun(params, params_obj, params_eq=None, params_ineq=None):
        if not (isinstance(params, tuple | list) and len(params) == 3):
            raise TypeError(
                "kkt_condition: params must be a triple (primal, eq_dual, ineq_dual), with "
                f"None for an absent constraint; got {type(params).__name__}"
            )
        primal, eq_dual, ineq_dual = params
        for dual, constraint, name in (
            (eq_dual, eq_fun, "eq_dual"),
            (ineq_dual, ineq_fun, "ineq_dual"),
        ):
            if (dual is None) != (constraint is None):
                given = "given" if dual is not None else "None"
                raise ValueError(
                    f"kkt_condition: {name} is {given} but the constraint function is "
                    f"{'absent' if constraint is None else 'present'}"
                )
        stationarity = jax.grad(fun)(primal, params_obj)
        eq_residual = ineq_residual = None
        if eq_fun is not None:
            eq_residual, eq_vjp = jax.vjp(lambda x: eq_fun(x, params_eq), primal)
            stationarity = _add(stationarity, eq_vjp(eq_dual)[0])
        if ineq_fun is not None:
            values, ineq_vjp = jax.vjp(lambda x: ineq_fun(x, params_ineq), primal)
            stationarity = _add(stationarity, ineq_vjp(ineq_dual)[0])
            ineq_residual = jax.tree.map(jnp.multiply, ineq_dual, values)
        parts = (stationarity, eq_residual, ineq_residual)
        if hasattr(params, "_fields"):  # a NamedTuple such as KKTSolution
            return type(params)(*parts)
        return type(params)(parts)

    return _named(optimality_fun, f"kkt_condition({callable_name(fun)})")


def proximal_gradient_condition(fun: Callable, prox: Callable, stepsize=1.0) -> Callable:
    """Fixed point of proximal gradient for ``min fun(x) + g(x)``, ``prox`` that of ``g``.

    Returns ``optimality_fun(params, hyperparams_prox, *args, **kwargs) =
    prox(params - stepsize * grad fun(params, *args, **kwargs), hyperparams_prox,
    stepsize) - params``, zero exactly at the minimisers for any ``stepsize > 0``.
    ``prox(x, hyperparams, scaling)`` follows :mod:`jaxsecond.prox` (and jaxopt).
    The derivatives use ``prox``'s own (generalized) Jacobian; with ``stepsize``
    near ``1 / L`` (``L`` the gradient's Lipschitz constant) the linear system is
    best conditioned.

    Example:
        >>> import jax, jax.numpy as jnp, jaxsecond
        >>> from jaxsecond.implicit import proximal_gradient_condition
        >>> soft = lambda x, l1, s: jnp.sign(x) * jnp.maximum(jnp.abs(x) - l1 * s, 0.0)
        >>> fun = lambda x, y: 0.5 * jnp.sum((x - y) ** 2)  # lasso, identity design
        >>> @jaxsecond.custom_root(proximal_gradient_condition(fun, soft))
        ... def lasso(x0, l1reg, y):
        ...     return soft(y, l1reg, 1.0)
        >>> y = jnp.array([3.0, 0.5, -2.0])
        >>> print(jax.jacobian(lasso, argnums=1)(jnp.zeros(3), 1.0, y) + 0.0)  # -sign(y), support
        [-1.  0.  1.]
    """
    _check_callable(fun, "fun", "proximal_gradient_condition")
    _check_callable(prox, "prox", "proximal_gradient_condition")
    _check_stepsize(stepsize, "proximal_gradient_condition")
    grad = jax.grad(fun)

    def optimality_fun(params, hyperparams_prox, *args, **kwargs):
        step = _axpy(-stepsize, grad(params, *args, **kwargs), params)
        return _sub(prox(step, hyperparams_prox, stepsize), params)

    return _named(optimality_fun, f"proximal_gradient_condition({callable_name(fun)})")


def projected_gradient_condition(fun: Callable, projection: Callable, stepsize=1.0) -> Callable:
    """Fixed point of projected gradient for ``min fun(x) s.t. x in C``.

    Returns ``optimality_fun(params, hyperparams_proj, *args, **kwargs) =
    projection(params - stepsize * grad fun(params, *args, **kwargs),
    hyperparams_proj) - params``, zero exactly at the minimisers over ``C`` for any
    ``stepsize > 0``. ``projection(x, hyperparams)`` follows
    :mod:`jaxsecond.projection` (and jaxopt).

    Example:
        >>> import jax, jax.numpy as jnp, jaxsecond
        >>> from jaxsecond.implicit import projected_gradient_condition
        >>> box = lambda x, bounds: jnp.clip(x, *bounds)
        >>> fun = lambda x, z: 0.5 * jnp.sum((x - z) ** 2)
        >>> @jaxsecond.custom_root(projected_gradient_condition(fun, box))
        ... def solve(x0, bounds, z):
        ...     return box(z, bounds)
        >>> z = jnp.array([-2.0, 0.5, 3.0])
        >>> print(jax.jacobian(solve, argnums=2)(jnp.zeros(3), (0.0, 1.0), z).diagonal())
        [0. 1. 0.]
    """
    _check_callable(fun, "fun", "projected_gradient_condition")
    _check_callable(projection, "projection", "projected_gradient_condition")
    _check_stepsize(stepsize, "projected_gradient_condition")
    grad = jax.grad(fun)

    def optimality_fun(params, hyperparams_proj, *args, **kwargs):
        step = _axpy(-stepsize, grad(params, *args, **kwargs), params)
        return _sub(projection(step, hyperparams_proj), params)

    return _named(optimality_fun, f"projected_gradient_condition({callable_name(fun)})")


def mirror_descent_condition(
    fun: Callable, projection: Callable, mapping_fun: Callable, stepsize=1.0
) -> Callable:
    """Fixed point of mirror descent for ``min fun(x) s.t. x in C``.

    With the mirror map ``mapping_fun = grad phi`` and ``projection(y,
    hyperparams_proj)`` the Bregman projection (under ``phi``) onto ``C`` of the point
    whose mirror image is ``y`` (the two arguments of jaxopt's
    ``MirrorDescent.make_projection_grad``), returns ``optimality_fun(params,
    hyperparams_proj, *args, **kwargs) = projection(mapping_fun(params) - stepsize *
    grad fun(params, ...), hyperparams_proj) - params``. The classic case is the
    probability simplex with the negative entropy: ``mapping_fun = jnp.log`` and
    ``projection = lambda y, _: jax.nn.softmax(y)`` (exponentiated gradient), whose
    iterates stay in the simplex's interior, so the condition is smooth where the
    projected one has kinks.

    Example:
        >>> import jax, jax.numpy as jnp, jaxsecond
        >>> from jaxsecond.implicit import mirror_descent_condition
        >>> # min <x, log x> - <theta, x> on the simplex: x* = softmax(theta)
        >>> fun = lambda x, theta: jnp.sum(x * jnp.log(x)) - jnp.dot(theta, x)
        >>> cond = mirror_descent_condition(fun, lambda y, _: jax.nn.softmax(y), jnp.log)
        >>> @jaxsecond.custom_root(cond)
        ... def solve(x0, hyperparams_proj, theta):
        ...     return jax.nn.softmax(theta)
        >>> theta = jnp.array([0.0, jnp.log(3.0)])
        >>> print(jax.jacobian(solve, argnums=2)(jnp.full(2, 0.5), None, theta).round(6))
        [[ 0.1875 -0.1875]
         [-0.1875  0.1875]]

    Reference: Beck and Teboulle, "Mirror descent and nonlinear projected subgradient
    methods for convex optimization" (2003); Blondel et al. (2022), section 2.2.
    """
    _check_callable(fun, "fun", "mirror_descent_condition")
    _check_callable(projection, "projection", "mirror_descent_condition")
    _check_callable(mapping_fun, "mapping_fun", "mirror_descent_condition")
    _check_stepsize(stepsize, "mirror_descent_condition")
    grad = jax.grad(fun)

    def optimality_fun(params, hyperparams_proj, *args, **kwargs):
        mirrored = jax.tree.map(mapping_fun, params)
        step = _axpy(-stepsize, grad(params, *args, **kwargs), mirrored)
        return _sub(projection(step, hyperparams_proj), params)

    return _named(optimality_fun, f"mirror_descent_condition({callable_name(fun)})")


def newton_condition(residual_fun: Callable, stepsize=1.0) -> Callable:
    """Fixed point of Newton's method on ``residual_fun(x, ...) = 0``.

    Returns ``optimality_fun(params, *args, **kwargs) = -stepsize *
    J(params)^{-1} residual_fun(params, *args, **kwargs)`` (the Newton step), with
    ``J`` the dense Jacobian of ``residual_fun`` in ``params``. Its roots are those of
    ``residual_fun`` wherever ``J`` is invertible, and at a root its Jacobian is
    ``-stepsize * I``, so the implicit linear solve is trivial: the cost moves into
    evaluating ``J`` (dense, for small ``params``). ``residual_fun`` itself is the
    general root condition and can be given to ``custom_root`` directly.

    Example:
        >>> import jax, jax.numpy as jnp, jaxsecond
        >>> from jaxsecond.implicit import newton_condition
        >>> F = lambda x, a: x**3 - a
        >>> @jaxsecond.custom_root(newton_condition(F))
        ... def cube_root(x0, a):
        ...     return jnp.cbrt(a)
        >>> print(f"{jax.grad(cube_root, argnums=1)(jnp.ones(()), 8.0):.6f}")  # 1 / (3 x^2)
        0.083333
    """
    _check_callable(residual_fun, "residual_fun", "newton_condition")
    _check_stepsize(stepsize, "newton_condition")

    def optimality_fun(params, *args, **kwargs):
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        flat_residual = lambda v: jax.flatten_util.ravel_pytree(
            residual_fun(unravel(v), *args, **kwargs)
        )[0]
        jacobian = jax.jacfwd(flat_residual)(flat)
        step = jnp.linalg.solve(jacobian, flat_residual(flat))
        return unravel(-jnp.asarray(stepsize, step.dtype) * step)

    return _named(optimality_fun, f"newton_condition({callable_name(residual_fun)})")


__all__ = [
    "kkt_condition",
    "mirror_descent_condition",
    "newton_condition",
    "projected_gradient_condition",
    "proximal_gradient_condition",
    "stationarity_condition",
]
