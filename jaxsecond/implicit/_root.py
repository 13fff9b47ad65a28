"""Implicit differentiation of root finders and fixed-point solvers.

If ``x*(theta)`` solves ``F(x, theta) = 0`` and ``dF/dx`` is invertible there, the
implicit function theorem gives ``dx*/dtheta = -(dF/dx)^{-1} dF/dtheta``. We attach
this as a ``custom_jvp`` rule whose tangent is linear in the input tangents (one JVP
of ``F`` and one transposable lineax solve), so JAX derives reverse mode by
transposition, and higher orders by differentiating the rule, which calls the
decorated solver again. Forward mode, reverse mode, ``jax.hessian`` and
forward-over-reverse all come from this one rule.

Reference: M. Blondel, Q. Berthet, M. Cuturi, R. Frostig, S. Hoyer, F. Llinares-Lopez,
F. Pedregosa, J.-P. Vert, "Efficient and Modular Implicit Differentiation", NeurIPS 2022.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

from jaxsecond._checks import split_float_arrays
from jaxsecond._tree import (
    as_array_leaves,
    callable_name,
    describe_mismatch,
    flatten_with_none,
    tree_dtype,
    tree_size,
)
from jaxsecond.implicit._linear_solve import (
    LinearSolve,
    resolve_solver,
    solve_linear,
    tags_for,
)
from jaxsecond.implicit._outbox import Outbox

_TRACER_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
)


# ---------------------------------------------------------------------------------------
# The custom_jvp primitive shared by every decorated solver.
# ---------------------------------------------------------------------------------------


class _Problem(eqx.Module):
    """Everything static about one decorated call."""

    params_static: Any
    has_aux: bool = eqx.field(static=True)
    residual_tol: float | None = eqx.field(static=True)
    solver_name: str = eqx.field(static=True)
    linear: LinearSolve
    # For a solver JAX cannot trace: None otherwise. Receives the static part of aux
    # once the solver has run.
    black_box_aux: Outbox | None = eqx.field(static=True)


def _optimality_dynamic(f_conv, params_static):
    """``F`` as a map from the array part of params to the array part of its output."""

    def fn(x_dyn, theta):
        args, kwargs = theta
        out = f_conv(eqx.combine(x_dyn, params_static), *args, **kwargs)
        return eqx.filter(out, eqx.is_array)

    return fn


def _solve_and_track(params_dyn, theta, f_conv, s_conv, problem: _Problem):
    """Run the solver under the implicit-differentiation rule.

    Returns (array part of the solution, array part of aux).
    """
    dynamic, static = eqx.partition((params_dyn, theta, f_conv, s_conv), eqx.is_array)
    return _solve_and_track_p(static, problem, dynamic)


def _zero_to_none(t):
    return None if isinstance(t, jax.custom_derivatives.SymbolicZero) else t


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _solve_and_track_p(static, problem: _Problem, dynamic):
    # JAX may hand over Python scalars (or typed literals) where arrays went in.
    dynamic = jax.tree.map(jnp.asarray, dynamic)
    params_dyn, theta, f_conv, s_conv = eqx.combine(dynamic, static)
    args, kwargs = theta
    params = eqx.combine(params_dyn, problem.params_static)
    if problem.black_box_aux is None:
        out = s_conv(params, *args, **kwargs)
    else:
        out = _run_black_box(s_conv, problem, params, args, kwargs)
    sol, aux = out if problem.has_aux else (out, None)
    sol_dyn = eqx.filter(sol, eqx.is_array)
    aux_dyn = eqx.filter(aux, eqx.is_array)
    if problem.residual_tol is not None:
        residual = _optimality_dynamic(f_conv, problem.params_static)(sol_dyn, theta)
        norm = jnp.sqrt(sum(jnp.sum(jnp.abs(r) ** 2) for r in jax.tree.leaves(residual)))
        sol_dyn = eqx.error_if(
            sol_dyn,
            ~(norm <= problem.residual_tol),
            f"{problem.solver_name} did not converge: the optimality residual norm exceeds "
            f"residual_tol={problem.residual_tol} (or is not finite)",
        )
    return sol_dyn, aux_dyn


def _run_black_box(solver, problem: _Problem, params, args, kwargs):
    try:
        out = as_array_leaves(solver(params, *args, **kwargs))
    except _TRACER_ERRORS as e:
        raise TypeError(
            f"solver {problem.solver_name} cannot be traced by JAX (it needs concrete "
            "values), so it only runs outside jax.jit, jax.vmap and nested derivatives; "
            "wrap its non-JAX part in jax.pure_callback to use it there"
        ) from e
    _check_solver_output(problem.solver_name, problem.has_aux, params, out)
    if problem.has_aux:
        problem.black_box_aux.put(eqx.filter(out[1], eqx.is_array, inverse=True))
    return out


def _solve_and_track_jvp(static, problem: _Problem, primals, tangents):
    (dynamic,) = primals
    (t_dynamic,) = tangents
    # JAX may hand over Python scalars (or typed literals) where arrays went in.
    dynamic = jax.tree.map(jnp.asarray, dynamic)
    t_dynamic = jax.tree.map(
        _zero_to_none,
        t_dynamic,
        is_leaf=lambda t: isinstance(t, jax.custom_derivatives.SymbolicZero),
    )
    # Re-entering the custom_jvp (not the raw solver) lets an outer JVP trace apply the
    # implicit rule again: that is what makes second order exact.
    sol_dyn, aux_dyn = _solve_and_track_p(static, problem, dynamic)
    _, theta, f_conv, _ = eqx.combine(dynamic, static)
    t_theta, t_f_conv = _tangents_like((theta, f_conv), eqx.combine(t_dynamic, static)[1:3])
    t_sol = _implicit_tangent(
        f_conv, problem.params_static, sol_dyn, theta, (t_theta, t_f_conv), problem.linear
    )
    t_sol = jax.tree.map(jnp.zeros_like, sol_dyn) if t_sol is None else t_sol
    t_aux = jax.tree.map(_zero_tangent, aux_dyn)
    return (sol_dyn, aux_dyn), (t_sol, t_aux)


_solve_and_track_p.defjvp(_solve_and_track_jvp, symbolic_zeros=True)


def _zero_tangent(x):
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, dtype=jax.dtypes.float0)


def _is_tangent_value(t) -> bool:
    # JAX may pass a tangent as a Python scalar; float0 arrays mark integer inputs.
    if t is None or isinstance(t, jax.custom_derivatives.SymbolicZero):
        return False
    return isinstance(t, int | float | complex) or (
        eqx.is_array(t) and t.dtype != jax.dtypes.float0
    )


def _tangents_like(primals, mixed):
    """Tangent tree for ``primals``: array tangents where ``mixed`` has a floating-point
    tangent, ``None`` elsewhere (static leaves, integer arrays, symbolic zeros)."""
    flat_p, treedef = flatten_with_none(primals)
    flat_m, _ = flatten_with_none(mixed)
    flat = [
        jnp.asarray(t, dtype=p.dtype)
        if eqx.is_array(p) and jnp.issubdtype(p.dtype, jnp.inexact) and _is_tangent_value(t)
        else None
        for p, t in zip(flat_p, flat_m, strict=True)
    ]
    return jax.tree.unflatten(treedef, flat)


def _jvp_of_nonzero(fn, primals, tangents):
    """``jax.jvp(fn, (primals,), (tangents,))`` where ``None`` tangents are symbolic zeros.

    Only leaves with a tangent are differentiated. Returns ``None`` if none has one.
    """
    flat_p, treedef = flatten_with_none(primals)
    flat_t, _ = flatten_with_none(tangents)
    idx = [i for i, t in enumerate(flat_t) if t is not None]
    if not idx:
        return None

    def restricted(*diff):
        leaves = list(flat_p)
        for i, d in zip(idx, diff, strict=True):
            leaves[i] = d
        return fn(jax.tree.unflatten(treedef, leaves))

    _, out = jax.jvp(restricted, [flat_p[i] for i in idx], [flat_t[i] for i in idx])
    return out


def _implicit_tangent(f_conv, params_static, sol_dyn, theta, tangents, linear: LinearSolve):
    """``-(dF/dx)^{-1} (dF/dtheta . t_theta + dF/dconsts . t_consts)``, or None if zero."""
    t_theta, t_f_conv = tangents
    f_dyn = _optimality_dynamic(f_conv, params_static)
    rhs = _jvp_of_nonzero(
        lambda pair: _optimality_dynamic(pair[1], params_static)(sol_dyn, pair[0]),
        (theta, f_conv),
        (t_theta, t_f_conv),
    )
    if rhs is None:
        return None
    operator = lx.JacobianLinearOperator(f_dyn, sol_dyn, theta, tags=linear.tags)
    neg_rhs = jax.tree.map(jnp.negative, rhs)
    args, kwargs = theta
    return solve_linear(
        operator, neg_rhs, linear, (eqx.combine(sol_dyn, params_static), args, kwargs)
    )


# ---------------------------------------------------------------------------------------
# Validation and closure conversion.
# ---------------------------------------------------------------------------------------


def _is_arrayish(x) -> bool:
    return eqx.is_array(x) or isinstance(x, jax.ShapeDtypeStruct)


def _split_params(init_params, solver_name):
    params = as_array_leaves(init_params)
    params_dyn, params_static = split_float_arrays(
        params, f"init_params of {solver_name}", "implicit differentiation"
    )
    return params, params_dyn, params_static


def _check_optimality(optimality_fun, name, params, args, kwargs):
    try:
        out = eqx.filter_eval_shape(optimality_fun, params, *args, **kwargs)
    except _TRACER_ERRORS as e:
        raise TypeError(
            f"optimality function {name} must be traceable by JAX (it is differentiated): {e}"
        ) from e
    problem = describe_mismatch(eqx.filter(params, eqx.is_array), eqx.filter(out, _is_arrayish))
    if problem is not None:
        raise ValueError(
            f"optimality function {name} must return a pytree shaped like params: {problem}"
        )


def _check_solver_output(solver_name, has_aux, params, out):
    if has_aux:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError(
                f"solver {solver_name} was declared with has_aux=True, so it must return a pair "
                f"(params, aux); it returned {type(out).__name__}"
            )
        out = out[0]
    problem = describe_mismatch(eqx.filter(params, eqx.is_array), eqx.filter(out, _is_arrayish))
    if problem is not None:
        hint = " (if it also returns auxiliary data, pass has_aux=True)" if not has_aux else ""
        raise ValueError(
            f"solver {solver_name} must return a solution shaped like init_params: {problem}{hint}"
        )


def _check_options(symmetric, has_aux, residual_tol, preconditioner):
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be a bool, got {symmetric!r}")
    if not isinstance(has_aux, bool):
        raise TypeError(f"has_aux must be a bool, got {has_aux!r}")
    if residual_tol is not None and not residual_tol > 0:
        raise ValueError(f"residual_tol must be positive or None, got {residual_tol!r}")
    if preconditioner is not None and not callable(preconditioner):
        raise TypeError(
            "preconditioner must be a callable (params, *args, **kwargs) -> "
            f"lineax.AbstractLinearOperator, got {preconditioner!r}"
        )


def _signature(fn):
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # builtins and some C callables have none
        return None


def _bind_arguments(solver_sig, solver_name, optimality_fun, reference, args, kwargs):
    """The solver's arguments, and the optimality function that sees them as it should.

    The call is bound to the solver's signature, so an argument the caller left at the
    solver's default reaches the optimality function too, and keyword arguments become
    positional where the solver's signature allows (an optimality function taking
    ``*args`` then accepts them), as jaxopt does. Of: defaults filled in, bound as
    called, unchanged, the first form ``reference`` (the optimality function's
    signature) accepts is used. Failing all three, the optimality function is given,
    by name, the solver arguments its signature names: a solver option it does not take
    (``maxiter``) then stays with the solver, and the solution gets no derivative
    through it (the root does not move with it).
    """
    if solver_sig is None or reference is None:
        return args, kwargs, optimality_fun
    try:
        bound = solver_sig.bind(None, *args, **kwargs)
    except TypeError as e:  # the solver would raise the same; say it before tracing
        raise TypeError(f"solver {solver_name} cannot take these arguments: {e}") from None
    defaulted = inspect.BoundArguments(solver_sig, dict(bound.arguments))
    defaulted.apply_defaults()
    candidates = (
        (defaulted.args[1:], defaulted.kwargs),
        (bound.args[1:], bound.kwargs),
        (args, kwargs),
    )
    for cand_args, cand_kwargs in candidates:
        try:
            reference.bind(None, *cand_args, **cand_kwargs)
        except TypeError:
            continue
        return tuple(cand_args), dict(cand_kwargs), optimality_fun
    wanted = [
        name
        for name, p in list(reference.parameters.items())[1:]
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    if not wanted or not set(wanted) <= set(defaulted.arguments):
        return args, kwargs, optimality_fun  # the optimality check reports the mismatch

    @functools.wraps(optimality_fun)
    def optimality_by_name(params, *args, **kwargs):
        named = solver_sig.bind(None, *args, **kwargs)
        named.apply_defaults()
        return optimality_fun(params, **{name: named.arguments[name] for name in wanted})

    return tuple(bound.args[1:]), dict(bound.kwargs), optimality_by_name


def _init_from_output(solver, solver_name, has_aux, args, kwargs):
    """``init_params=None``: zeros shaped like the solver's output, and a solver that
    is handed ``None`` again (the zeros only carry the structure)."""
    try:
        out = eqx.filter_eval_shape(solver, None, *args, **kwargs)
    except _TRACER_ERRORS as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TypeError(
            f"init_params=None: the solution's structure is read by tracing {solver_name}, "
            f"which failed ({type(e).__name__}: {first}). Fix the solver if that is a bug; "
            "if it is a NumPy/SciPy black box, pass init_params explicitly"
        ) from e
    if has_aux:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError(
                f"solver {solver_name} was declared with has_aux=True, so it must return a "
                f"pair (params, aux); it returned {type(out).__name__}"
            )
        out = out[0]
    params = jax.tree.map(
        lambda leaf: jnp.zeros(leaf.shape, leaf.dtype) if _is_arrayish(leaf) else leaf, out
    )

    @functools.wraps(solver)
    def solver_from_none(_structure, *args, **kwargs):
        return solver(None, *args, **kwargs)

    return params, solver_from_none


def _check_tuple(value, name, caller):
    # A bare array would be iterated over (or fail as a 0-d array) deep inside.
    if not isinstance(value, tuple | list):
        example = "(theta,)" if name == "args" else "(d_theta,)"
        raise TypeError(
            f"{caller}: {name} must be a tuple with one entry per extra argument of the "
            f"optimality function, e.g. {example} for one; got {type(value).__name__}"
        )


def _linear_config(solve, symmetric, sol_dyn, rtol, atol, max_steps, preconditioner):
    return LinearSolve(
        solver=resolve_solver(
            solve,
            symmetric=symmetric,
            size=tree_size(sol_dyn),
            dtype=tree_dtype(sol_dyn),
            rtol=rtol,
            atol=atol,
            max_steps=max_steps,
        ),
        tags=tags_for(symmetric),
        preconditioner=preconditioner,
    )


# ---------------------------------------------------------------------------------------
# Public decorators.
# ---------------------------------------------------------------------------------------


def custom_root(
    optimality_fun: Callable,
    *,
    solve: lx.AbstractLinearSolver | str | None = None,
    has_aux: bool = False,
    symmetric: bool = False,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int | None = None,
    preconditioner: Callable | None = None,
    residual_tol: float | None = None,
):
    """Decorate a solver so that its solution is differentiated implicitly.

    The decorated ``solver(init_params, *args, **kwargs)`` returns ``params`` with
    ``optimality_fun(params, *args, **kwargs) == 0``. ``init_params=None`` is passed on
    to the solver, and the solution's structure is read from its output. The call is
    bound to the solver's signature first, as jaxopt does: arguments left at the
    solver's defaults reach ``optimality_fun`` too (when it takes them), and keyword
    arguments are passed by position where the solver's signature allows, so an
    ``optimality_fun(params, *args)`` accepts them. Derivatives of the solution are
    taken through that optimality condition, never through the solver's iterations:
    one linear solve with the Jacobian ``J = d optimality_fun / d params`` per
    derivative direction. They flow to every array in ``args`` and ``kwargs`` and to
    traced arrays that ``optimality_fun`` closes over. ``init_params`` gets a zero
    derivative (the solution does not depend on the starting point), and so do values
    only the solver uses (step sizes, iteration counts): the root does not move with
    them.

    Works under ``jax.jit``, ``jax.vmap``, ``jax.grad``/``jax.vjp``, ``jax.jvp``/
    ``jax.jacfwd``, ``jax.jacrev``, ``jax.hessian`` and forward-over-reverse
    Hessian-vector products, for params that are any pytree of floating-point arrays
    (dicts, tuples, equinox Modules).

    The solver itself may be anything that returns the solution: a JAX loop, a call
    to another library, or a NumPy/SciPy black box. A black box that JAX cannot trace
    is called on concrete values, so it works with ``jax.grad``, ``jax.jvp`` and
    ``jax.jacfwd``/``jax.jacrev`` but not inside ``jax.jit``, ``jax.vmap`` or nested
    derivatives (wrap it in ``jax.pure_callback`` for those).

    Args:
        optimality_fun: ``(params, *args, **kwargs) -> pytree shaped like params``,
            zero at the solution. Must be differentiable by JAX.
        solve: how ``J u = b`` is solved: a ``lineax.AbstractLinearSolver`` (with its
            own tolerances) or a name: ``"auto"`` (default), ``"cg"``, ``"gmres"``,
            ``"bicgstab"``, ``"lu"``, ``"normal_cg"``. ``"auto"`` picks CG when
            ``symmetric=True``, otherwise dense LU up to 64 unknowns and GMRES above.
        has_aux: the solver returns ``(params, aux)``; ``aux`` is passed through with a
            zero derivative.
        symmetric: declare ``J`` symmetric positive definite. True when
            ``optimality_fun`` is the gradient of a function being minimised (``J`` is
            then its Hessian at a strict minimum). Enables CG.
        rtol: relative tolerance of the named iterative solvers. Default: 1e-12 in
            float64 and 1e-5 in float32.
        atol: absolute tolerance of the named iterative solvers, with the same defaults.
        max_steps: iteration cap of the named iterative solvers. Default: lineax's step
            cap (10 x the number of unknowns).
        preconditioner: ``(params, *args, **kwargs) -> lineax.AbstractLinearOperator``
            approximating ``J^{-1}`` at the solution (tag it positive semidefinite for
            CG).
        residual_tol: opt-in check of the forward solve: raise at run time when the
            Euclidean norm of ``optimality_fun`` at the returned solution exceeds this.

    Returns:
        A decorator. The decorated solver has the same signature.

    Failures are reported, never silent. A linear solve that does not converge (or
    produces non-finite values) raises a run-time error through equinox's
    ``error_if``, in every mode and under ``jit``. To get NaN derivatives instead
    (e.g. to skip a bad step in a training loop), set the environment variable
    ``EQX_ON_ERROR=nan`` before importing JAX libraries; ``residual_tol`` opts in to
    the same check on the forward solve.

    Example:
        >>> import jax, jax.numpy as jnp, jaxsecond
        >>> def grad_ridge(w, X, y, lam):  # gradient of 0.5|Xw - y|^2 + 0.5 lam |w|^2
        ...     return (X @ w - y) @ X + lam * w
        >>> @jaxsecond.custom_root(grad_ridge, symmetric=True)
        ... def ridge(w0, X, y, lam):
        ...     return jnp.linalg.solve(X.T @ X + lam * jnp.eye(X.shape[1]), X.T @ y)
        >>> X, y = jnp.eye(3), jnp.ones(3)
        >>> print(jax.jacobian(ridge, argnums=3)(jnp.zeros(3), X, y, 1.0))  # -y / (1 + lam)^2
        [-0.25 -0.25 -0.25]

    Reference: Blondel et al., "Efficient and Modular Implicit Differentiation" (2022).
    """
    if not callable(optimality_fun):
        raise TypeError(f"optimality_fun must be callable, got {optimality_fun!r}")
    _check_options(symmetric, has_aux, residual_tol, preconditioner)
    # Catch a bad `solve` name at decoration time, before any data is seen.
    resolve_solver(
        solve,
        symmetric=symmetric,
        size=1,
        dtype=jnp.float32,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
    )
    opt_name = callable_name(optimality_fun)

    def decorator(solver: Callable) -> Callable:
        if not callable(solver):
            raise TypeError(f"custom_root decorates a solver function, got {solver!r}")
        solver_name = callable_name(solver)
        # Inspected once here, not on every call of the decorated solver.
        solver_sig, reference = _signature(solver), _signature(optimality_fun)

        @functools.wraps(solver)
        def wrapped(init_params, *args, **kwargs):
            args, kwargs, optimality = _bind_arguments(
                solver_sig, solver_name, optimality_fun, reference, args, kwargs
            )
            theta = as_array_leaves((args, kwargs))
            args_, kwargs_ = theta
            run = solver
            if init_params is None:
                init_params, run = _init_from_output(solver, solver_name, has_aux, args_, kwargs_)
            params, params_dyn, params_static = _split_params(init_params, solver_name)
            _check_optimality(optimality, opt_name, params, args_, kwargs_)
            # Closure conversion makes traced values the solver closes over explicit. A
            # solver JAX cannot trace (a NumPy/SciPy black box) is run as it is, on
            # concrete values, and checked on its output instead.
            try:
                s_conv = eqx.filter_closure_convert(run, params, *args_, **kwargs_)
                out_shape = eqx.filter_eval_shape(s_conv, params, *args_, **kwargs_)
            except _TRACER_ERRORS:
                s_conv, out_shape = run, None
            aux_static = None
            if out_shape is not None:
                _check_solver_output(solver_name, has_aux, params, out_shape)
                if has_aux:
                    aux_static = eqx.filter(out_shape[1], _is_arrayish, inverse=True)
            f_conv = eqx.filter_closure_convert(optimality, params, *args_, **kwargs_)
            linear = _linear_config(
                solve, symmetric, params_dyn, rtol, atol, max_steps, preconditioner
            )
            problem = _Problem(
                params_static=params_static,
                has_aux=has_aux,
                residual_tol=residual_tol,
                solver_name=solver_name,
                linear=linear,
                black_box_aux=None if out_shape is not None else Outbox(),
            )
            sol_dyn, aux_dyn = _solve_and_track(params_dyn, theta, f_conv, s_conv, problem)
            sol = eqx.combine(sol_dyn, params_static)
            if has_aux:
                if problem.black_box_aux is not None:
                    aux_static = problem.black_box_aux.take()
                return sol, eqx.combine(aux_dyn, aux_static)
            return sol

        return wrapped

    return decorator


def custom_fixed_point(
    fixed_point_fun: Callable,
    *,
    solve: lx.AbstractLinearSolver | str | None = None,
    has_aux: bool = False,
    symmetric: bool = False,
    **options,
):
    """Decorate a fixed-point solver so that its solution is differentiated implicitly.

    The decorated ``solver(init_params, *args, **kwargs)`` returns ``params`` with
    ``fixed_point_fun(params, *args, **kwargs) == params``. This is
    :func:`custom_root` applied to ``fixed_point_fun(params, ...) - params``, whose
    Jacobian is ``dT/dx - I``; all options of :func:`custom_root` apply.
    ``symmetric=True`` declares ``I - dT/dx`` symmetric positive definite (true for a
    gradient step ``T(x) = x - eta grad f(x)`` at a strict minimum with a small enough
    step), enabling CG.

    Example:
        >>> import jax, jax.numpy as jnp, jaxsecond
        >>> def step(x, a):  # contraction with fixed point x = a / 0.5
        ...     return 0.5 * x + a
        >>> @jaxsecond.custom_fixed_point(step)
        ... def fixed_point(x0, a):
        ...     return jax.lax.fori_loop(0, 100, lambda _, x: step(x, a), x0)
        >>> print(jax.grad(lambda a: fixed_point(jnp.zeros(()), a))(1.0))
        2.0
    """
    if not callable(fixed_point_fun):
        raise TypeError(f"fixed_point_fun must be callable, got {fixed_point_fun!r}")

    if symmetric:
        # I - T'(x) is SPD, so use that sign for CG.
        def optimality_fun(params, *args, **kwargs):
            nxt = fixed_point_fun(params, *args, **kwargs)
            return jax.tree.map(jnp.subtract, params, nxt)
    else:

        def optimality_fun(params, *args, **kwargs):
            nxt = fixed_point_fun(params, *args, **kwargs)
            return jax.tree.map(jnp.subtract, nxt, params)

    optimality_fun.__qualname__ = f"fixed-point residual of {callable_name(fixed_point_fun)}"
    # Arguments are bound against the user's function, not this wrapper's (*args, **kwargs).
    reference = _signature(fixed_point_fun)
    if reference is not None:
        optimality_fun.__signature__ = reference
    return custom_root(optimality_fun, solve=solve, has_aux=has_aux, symmetric=symmetric, **options)


# ---------------------------------------------------------------------------------------
# Lower-level building blocks.
# ---------------------------------------------------------------------------------------


def root_jvp(
    optimality_fun: Callable,
    sol,
    args: tuple,
    tangents: tuple,
    *,
    kwargs: dict | None = None,
    solve=None,
    symmetric: bool = False,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int | None = None,
    preconditioner: Callable | None = None,
):
    """Tangent of a root ``sol`` of ``optimality_fun(sol, *args, **kwargs) = 0``.

    Returns ``-J^{-1} (d optimality_fun / d args . tangents)`` with ``J`` the Jacobian in
    ``sol``; ``tangents`` has the structure of ``args`` (use ``None`` for arguments that
    do not move). Options as in :func:`custom_root`.

    Example:
        >>> import jax.numpy as jnp, jaxsecond
        >>> F = lambda x, a: x**2 - a  # root sqrt(a)
        >>> print(jaxsecond.root_jvp(F, jnp.array(2.0), (jnp.array(4.0),), (jnp.array(1.0),)))
        0.25
    """
    kwargs = {} if kwargs is None else kwargs
    _check_tuple(args, "args", "root_jvp")
    _check_tuple(tangents, "tangents", "root_jvp")
    sol = as_array_leaves(sol)
    _, sol_dyn, sol_static = _split_params(sol, "root_jvp")
    theta = as_array_leaves((tuple(args), kwargs))
    flat_args, args_def = flatten_with_none(theta[0])
    flat_tangents, tangents_def = flatten_with_none(as_array_leaves(tuple(tangents)))
    if args_def != tangents_def:
        raise ValueError(
            "root_jvp: tangents must have the pytree structure of args (None for arguments "
            f"that do not move); got {tangents_def}, expected {args_def}"
        )
    # jax.jvp insists that tangent and primal dtypes agree.
    flat_tangents = [
        None if t is None else jnp.asarray(t, dtype=jnp.result_type(a))
        for a, t in zip(flat_args, flat_tangents, strict=True)
    ]
    tangents = (jax.tree.unflatten(args_def, flat_tangents), jax.tree.map(lambda _: None, kwargs))
    _check_optimality(optimality_fun, callable_name(optimality_fun), sol, *theta)
    f_conv = eqx.filter_closure_convert(optimality_fun, sol, *theta[0], **theta[1])
    _check_options(symmetric, False, None, preconditioner)
    linear = _linear_config(solve, symmetric, sol_dyn, rtol, atol, max_steps, preconditioner)
    no_tangent = jax.tree.map(lambda _: None, f_conv)
    t_sol = _implicit_tangent(f_conv, sol_static, sol_dyn, theta, (tangents, no_tangent), linear)
    if t_sol is None:
        t_sol = jax.tree.map(jnp.zeros_like, sol_dyn)
    return eqx.combine(t_sol, sol_static)


def root_vjp(
    optimality_fun: Callable,
    sol,
    args: tuple,
    cotangent,
    *,
    kwargs: dict | None = None,
    solve=None,
    symmetric: bool = False,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int | None = None,
    preconditioner: Callable | None = None,
) -> tuple:
    """Cotangents of ``args`` given the cotangent of a root ``sol``.

    Solves ``J^T u = cotangent`` and returns ``-(d optimality_fun / d args)^T u`` as a
    tuple shaped like ``args`` (``None`` for non-array arguments). Options as in
    :func:`custom_root`.

    Example:
        >>> import jax.numpy as jnp, jaxsecond
        >>> F = lambda x, a: x**2 - a  # root sqrt(a)
        >>> (ct_a,) = jaxsecond.root_vjp(F, jnp.array(2.0), (jnp.array(4.0),), jnp.array(1.0))
        >>> print(ct_a)
        0.25
    """
    kwargs = {} if kwargs is None else kwargs
    _check_tuple(args, "args", "root_vjp")
    sol = as_array_leaves(sol)
    _, sol_dyn, sol_static = _split_params(sol, "root_vjp")
    args = as_array_leaves(tuple(args))
    kwargs = as_array_leaves(kwargs)
    _check_optimality(optimality_fun, callable_name(optimality_fun), sol, args, kwargs)
    problem = describe_mismatch(sol_dyn, eqx.filter(as_array_leaves(cotangent), eqx.is_array))
    if problem is not None:
        raise ValueError(f"root_vjp: cotangent must be shaped like sol: {problem}")
    f_conv = eqx.filter_closure_convert(optimality_fun, sol, *args, **kwargs)
    _check_options(symmetric, False, None, preconditioner)
    linear = _linear_config(solve, symmetric, sol_dyn, rtol, atol, max_steps, preconditioner)
    f_dyn = _optimality_dynamic(f_conv, sol_static)
    operator = lx.JacobianLinearOperator(f_dyn, sol_dyn, (args, kwargs), tags=linear.tags)
    u = solve_linear(
        operator.transpose(),
        eqx.filter(as_array_leaves(cotangent), eqx.is_array),
        linear,
        (sol, args, kwargs),
    )
    _, vjp_fn = eqx.filter_vjp(lambda a: f_dyn(sol_dyn, (a, kwargs)), args)
    (ct_args,) = vjp_fn(jax.tree.map(jnp.negative, u))
    return ct_args
