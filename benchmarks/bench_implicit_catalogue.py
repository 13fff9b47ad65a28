"""The implicit-differentiation catalogue against jaxopt: proximal operators,
projections, optimality conditions and the quadratic program, side by side.

Table a: every proximal operator and projection both libraries have, on random float64
inputs: the largest difference of the outputs and of their Jacobians in ``x``.

Table b: hypergradients through each optimality condition jaxopt also has (its solvers'
``optimality_fun``, or ``make_kkt_optimality_fun``), the same solver code decorated once
by each library with its default linear solve: the relative difference of the
hypergradients, and the time of the jitted reverse-mode hypergradient (median of
interleaved runs), ours / jaxopt. Then whether forward mode and ``jax.hessian`` run.

Table c: dense convex QPs of 10-200 variables (n/5 equalities, n inequalities):
``jaxsecond.quadratic_program`` against jaxopt's ``OSQP`` (ADMM) at its default tolerance
and at 1e-8, each jitted: solve time, reverse-mode gradient time, the largest KKT
residual of the solution, and the gradient's error against the active set's dense KKT
solve.

Run: ``python benchmarks/bench_implicit_catalogue.py [--quick]`` (needs the ``bench``
extra for jaxopt).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import jaxsecond
from jaxsecond import _harness
from jaxsecond import projection as our_projection
from jaxsecond import prox as our_prox
from jaxsecond.implicit import (
    kkt_condition,
    mirror_descent_condition,
    projected_gradient_condition,
    proximal_gradient_condition,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # "JAXopt is no longer maintained"
    import jaxopt
    from jaxopt import projection as their_projection
    from jaxopt import prox as their_prox
    from jaxopt._src.base import KKTSolution as _TheirKKT
    from jaxopt._src.implicit_diff import make_kkt_optimality_fun as _their_kkt


jax.config.update("jax_enable_x64", True)

PACKAGES = ("jaxopt",)
TITLE = "Implicit catalogue: jaxsecond vs jaxopt (prox, projections, conditions, QP)"


# --------------------------------------------------------------------------- a: operators


def _operator_cases(rng):
    x = jnp.asarray(rng.standard_normal(7))
    tree = {"a": jnp.asarray(rng.standard_normal(4)), "b": jnp.asarray(rng.standard_normal(3))}
    square = jnp.asarray(rng.standard_normal((4, 4)))
    a, b = jnp.asarray(rng.standard_normal(7)), 0.3
    A = jnp.asarray(rng.standard_normal((2, 7)))
    bounds = (-0.5 * jnp.ones(7), 0.4 * jnp.ones(7))
    prox_cases = {
        "prox_none": (x, None, 0.7),
        "prox_lasso": (x, 0.4, 0.7),
        "prox_non_negative_lasso": (x, 0.4, 0.7),
        "prox_elastic_net": (x, (0.4, 0.3), 0.7),
        "prox_group_lasso": (x, 0.9, 0.7),
        "prox_ridge": (x, 0.4, 0.7),
        "prox_non_negative_ridge": (x, 0.4, 0.7),
        "prox_lasso (pytree)": (tree, 0.4, 0.7),
    }
    projection_cases = {
        "projection_non_negative": (x,),
        "projection_box": (x, bounds),
        "projection_hypercube": (x, 0.6),
        "projection_simplex": (x, 1.5),
        "projection_l1_sphere": (x, 1.5),
        "projection_l1_ball": (x, 1.5),
        "projection_l2_sphere": (x, 1.5),
        "projection_l2_ball": (x, 1.5),
        "projection_linf_ball": (x, 0.6),
        "projection_hyperplane": (x, (a, b)),
        "projection_halfspace": (x, (a, b)),
        "projection_affine_set": (x, (A, jnp.asarray(rng.standard_normal(2)))),
        "projection_birkhoff": (square,),
    }
    return prox_cases, projection_cases


def _max_diff(a, b) -> float:
    return max(
        float(jnp.max(jnp.abs(u - v), initial=0.0))
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def operators_table(seeds: int) -> str:
    rng = np.random.default_rng(0)
    results: dict[str, list[float]] = {}
    for _ in range(seeds):
        prox_cases, projection_cases = _operator_cases(rng)
        for name, args in {**prox_cases, **projection_cases}.items():
            base = name.split(" ")[0]
            ours_mod, theirs_mod = (
                (our_prox, their_prox)
                if base.startswith("prox")
                else (our_projection, their_projection)
            )
            ours, theirs = getattr(ours_mod, base, None), getattr(theirs_mod, base, None)
            if ours is None or theirs is None:
                results.setdefault(name, [])
                continue
            x, rest = args[0], args[1:]
            value = _max_diff(ours(x, *rest), theirs(x, *rest))
            if base == "projection_birkhoff":
                jac = float("nan")  # jaxopt's and ours stop at their own tolerances
            else:
                jac = _max_diff(
                    jax.jacobian(lambda x: ours(x, *rest))(x),
                    jax.jacobian(lambda x: theirs(x, *rest))(x),
                )
            results.setdefault(name, []).append(max(value, 0.0))
            results.setdefault(name + " Jacobian", []).append(jac)
    rows = []
    for name, values in results.items():
        if name.endswith(" Jacobian"):
            continue
        jac = results.get(name + " Jacobian", [])
        if not values:
            rows.append([name, "missing", "missing"])
            continue
        rows.append(
            [
                name,
                f"{max(values):.1e}",
                f"{np.nanmax(jac):.1e}" if jac and not np.all(np.isnan(jac)) else "-",
            ]
        )
    return _harness.markdown_table(["operator", "max |value diff|", "max |Jacobian diff|"], rows)


# --------------------------------------------------------------------------- b: conditions


def _lasso_problem(n=100, d=40, seed=1):
    rng = np.random.default_rng(seed)
    X = jnp.asarray(rng.standard_normal((2 * n, d)) / np.sqrt(n))
    w = np.zeros(d)
    w[: d // 4] = rng.standard_normal(d // 4)
    y = X @ jnp.asarray(w) + 0.05 * jnp.asarray(rng.standard_normal(2 * n))
    return X[:n], y[:n], X[n:], y[n:]


def _fista(fun, prox, hyper, x0, args, steps, stepsize):
    grad = jax.grad(fun)

    def body(_, carry):
        x, z, t = carry
        x_next = prox(
            jax.tree.map(lambda zi, gi: zi - stepsize * gi, z, grad(z, *args)), hyper, stepsize
        )
        t_next = (1 + jnp.sqrt(1 + 4 * t**2)) / 2
        z_next = jax.tree.map(lambda a, b: a + (t - 1) / t_next * (a - b), x_next, x)
        return x_next, z_next, t_next

    return jax.lax.fori_loop(0, steps, body, (x0, x0, jnp.ones(())))[0]


def condition_cases(steps: int) -> dict[str, dict]:
    X, y, Xv, yv = _lasso_problem()
    d = X.shape[1]
    L = float(jnp.linalg.norm(X, 2) ** 2)
    least_squares = lambda w, X, y: 0.5 * jnp.sum((X @ w - y) ** 2)
    val = lambda w: 0.5 * jnp.sum((Xv @ w - yv) ** 2)

    cases = {}
    # Lasso by FISTA: the proximal-gradient condition.
    lasso_solver = lambda w0, l1reg, X, y: _fista(
        least_squares, our_prox.prox_lasso, l1reg, w0, (X, y), steps, 1 / L
    )
    cases["proximal gradient (lasso)"] = {
        "ours": proximal_gradient_condition(least_squares, our_prox.prox_lasso),
        "theirs": jaxopt.ProximalGradient(
            fun=least_squares, prox=their_prox.prox_lasso
        ).optimality_fun,
        "solver": lasso_solver,
        "init": jnp.zeros(d),
        "hyper": 0.02,
        "args": (X, y),
        "val": val,
    }
    # Least squares on the simplex (scaled to 3): projected gradient.
    simplex = lambda w, value: our_projection.projection_simplex(w, value)
    simplex_solver = lambda w0, value, X, y: _fista(
        least_squares, lambda v, hp, s: simplex(v, hp), value, w0, (X, y), steps, 1 / L
    )
    cases["projected gradient (simplex)"] = {
        "ours": projected_gradient_condition(least_squares, simplex),
        "theirs": jaxopt.ProjectedGradient(
            fun=least_squares, projection=their_projection.projection_simplex
        ).optimality_fun,
        "solver": simplex_solver,
        "init": jnp.full(d, 3.0 / d),
        "hyper": 3.0,
        "args": (X, y),
        "val": val,
    }
    # Entropy-regularised least squares on the simplex: mirror descent (KL projection).
    entropic = lambda w, X, y: least_squares(w, X, y) + 0.05 * jnp.sum(w * jnp.log(w))
    kl = lambda v, value: value * jax.nn.softmax(v)
    md_solver = lambda w0, value, X, y: jax.lax.fori_loop(
        0, steps, lambda _, w: kl(jnp.log(w) - 0.5 * jax.grad(entropic)(w, X, y), value), w0
    )
    cases["mirror descent (entropy, simplex)"] = {
        "ours": mirror_descent_condition(entropic, kl, jnp.log),
        "theirs": jaxopt.MirrorDescent(
            fun=entropic,
            projection_grad=jaxopt.MirrorDescent.make_projection_grad(kl, jnp.log),
            stepsize=1.0,
        ).optimality_fun,
        "solver": md_solver,
        "init": jnp.full(d, 3.0 / d),
        "hyper": 3.0,
        "args": (X, y),
        "val": val,
    }
    # Equality-constrained least squares: the KKT conditions (primal, dual) as a pair.
    A = jnp.ones((1, d))
    obj = lambda w, XY: least_squares(w, *XY)
    eq = lambda w, b: A @ w - b

    def kkt_solver(params0, XY, b, params_ineq=None):
        X, y = XY
        kkt = jnp.block([[X.T @ X, A.T], [A, jnp.zeros((1, 1))]])
        sol = jnp.linalg.solve(kkt, jnp.concatenate([X.T @ y, b]))
        return sol[:d], sol[d:], None

    cases["KKT (equality-constrained LS)"] = {
        "ours": kkt_condition(obj, eq),
        "theirs": _their_kkt(obj, eq),
        "solver": kkt_solver,
        "init": (jnp.zeros(d), jnp.zeros(1), None),
        "hyper": None,
        "args": None,
        "val": lambda sol: val(sol[0]),
        "kkt": ((X, y), jnp.array([1.0])),
    }
    return cases


def _hypergradient_fn(case, library, exact=False):
    decorate = jaxsecond.custom_root
    if library == "theirs":
        decorate = jaxopt.implicit_diff.custom_root
        if exact:  # dense LU as our default at these sizes (its LU takes arrays only)
            solve = jaxopt.linear_solve.solve_lu
            if "kkt" in case:
                solve = functools.partial(
                    jaxopt.linear_solve.solve_normal_cg, tol=1e-14, maxiter=10_000
                )
            decorate = functools.partial(decorate, solve=solve)
    inner = case["solver"]
    if "kkt" in case and library == "theirs":  # jaxopt's KKT function returns its own type
        inner = lambda params0, XY, b, params_ineq: _TheirKKT(
            *case["solver"](params0, XY, b, params_ineq)
        )
    solver = decorate(case[library])(inner)
    if "kkt" in case:
        XY, b = case["kkt"]
        return lambda b: case["val"](solver(case["init"], XY, b, None)), b
    return (
        lambda h: case["val"](solver(case["init"], h, *case["args"])),
        jnp.asarray(case["hyper"]),
    )


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:60]


def conditions_table(quick: bool) -> str:
    cases = condition_cases(steps=500 if quick else 3000)
    rows = []
    for name, case in cases.items():
        fns = {lib: _hypergradient_fn(case, lib) for lib in ("ours", "theirs")}
        grads = {lib: jax.jit(jax.grad(f))(x) for lib, (f, x) in fns.items()}
        rel_default = _harness.max_rel_error(grads["ours"], grads["theirs"])
        f, x = _hypergradient_fn(case, "theirs", exact=True)
        rel = _harness.max_rel_error(grads["ours"], jax.jit(jax.grad(f))(x))
        timings = {
            lib: _harness.time_jitted(jax.grad(f), x, repeats=5 if quick else 30)
            for lib, (f, x) in fns.items()
        }
        ability = {}
        for lib, (f, x) in fns.items():
            for mode, transform in (
                ("jvp", lambda f: lambda x: jax.jvp(f, (x,), (jnp.ones_like(x),))[1]),
                ("hessian", jax.hessian),
            ):
                try:
                    jax.block_until_ready(jax.jit(transform(f))(x))
                    ability[lib, mode] = "yes"
                except Exception as error:  # a capability, measured: record what failed
                    ability[lib, mode] = (
                        "no" if "custom_vjp" in str(error) else f"no ({_first_line(error)})"
                    )
        rows.append(
            [
                name,
                f"{rel:.1e} ({rel_default:.1e})",
                _harness.fmt_seconds(timings["ours"].median_s),
                _harness.fmt_seconds(timings["theirs"].median_s),
                f"{timings['ours'].median_s / timings['theirs'].median_s:.2f}",
                ability["ours", "jvp"] + " / " + ability["ours", "hessian"],
                ability["theirs", "jvp"] + " / " + ability["theirs", "hessian"],
            ]
        )
    return _harness.markdown_table(
        [
            "condition",
            "hypergradient rel. diff, jaxopt with an exact solve (its default)",
            "reverse, ours",
            "reverse, jaxopt",
            "ours / jaxopt",
            "ours jvp / hessian",
            "jaxopt jvp / hessian",
        ],
        rows,
    )


# --------------------------------------------------------------------------- c: QP


def qp_problem(n, seed=0):
    rng = np.random.default_rng(seed)
    p, m = max(n // 5, 1), n
    M = rng.standard_normal((n, n))
    Q = M @ M.T / n + 0.1 * np.eye(n)
    c = rng.standard_normal(n)
    A = rng.standard_normal((p, n))
    x0 = rng.standard_normal(n)
    G = rng.standard_normal((m, n))
    h = G @ x0 + rng.uniform(0.1, 1.0, m)
    return tuple(jnp.asarray(v) for v in (Q, c, A, A @ x0, G, h))


def _kkt_residual(Q, c, A, b, G, h, x, nu, lam) -> float:
    parts = (
        Q @ x + c + A.T @ nu + G.T @ lam,
        A @ x - b,
        jnp.maximum(G @ x - h, 0.0),
        jnp.minimum(lam, 0.0),
        lam * (G @ x - h),
    )
    return max(float(jnp.max(jnp.abs(r))) for r in parts)


def _active_set_gradient(Q, c, A, b, G, h, active):
    def primal(c):
        rows = jnp.concatenate([A, G[active]])
        k = rows.shape[0]
        kkt = jnp.block([[Q, rows.T], [rows, jnp.zeros((k, k))]])
        return jnp.linalg.solve(kkt, jnp.concatenate([-c, b, h[active]]))[: c.shape[0]]

    return jax.grad(lambda c: jnp.sum(jnp.sin(primal(c))))(c)


def qp_table(quick: bool) -> str:
    sizes = (10, 50) if quick else (10, 50, 100, 200)
    repeats = 3 if quick else 10
    solvers: dict[str, Callable] = {
        "jaxsecond": lambda Q, c, A, b, G, h: tuple(jaxsecond.quadratic_program(Q, c, A, b, G, h)),
    }
    for label, tol in (("jaxopt OSQP (default tol)", None), ("jaxopt OSQP (tol 1e-8)", 1e-8)):
        osqp = jaxopt.OSQP(**({} if tol is None else {"tol": tol, "maxiter": 20000}))
        solvers[label] = lambda Q, c, A, b, G, h, osqp=osqp: tuple(
            osqp.run(params_obj=(Q, c), params_eq=(A, b), params_ineq=(G, h)).params
        )
    rows = []
    for n in sizes:
        Q, c, A, b, G, h = problem = qp_problem(n)
        reference = tuple(jaxsecond.quadratic_program(*problem))
        active = np.asarray(reference[2] > 1e-7)
        exact = _active_set_gradient(*problem, active)
        for label, solve in solvers.items():
            loss = lambda c, solve=solve: jnp.sum(jnp.sin(solve(Q, c, A, b, G, h)[0]))
            x, nu, lam = jax.jit(solve)(*problem)
            t_solve = _harness.time_jitted(solve, *problem, repeats=repeats)
            t_grad = _harness.time_jitted(jax.grad(loss), c, repeats=repeats)
            grad = jax.jit(jax.grad(loss))(c)
            rows.append(
                [
                    n,
                    label,
                    _harness.fmt_seconds(t_solve.median_s),
                    _harness.fmt_seconds(t_grad.median_s),
                    f"{_kkt_residual(*problem, x, nu, lam):.1e}",
                    f"{_harness.max_rel_error(grad, exact):.1e}",
                ]
            )
    return _harness.markdown_table(
        ["n", "solver", "solve", "gradient (reverse)", "max KKT residual", "gradient rel. error"],
        rows,
    )


def run(quick: bool) -> str:
    parts = [
        f"Machine: {_harness.machine_description()}. float64, CPU, jitted; medians.",
        "",
        "**a. Proximal operators and projections** (random inputs, "
        f"{2 if quick else 10} draws; Birkhoff: values only, both stop at a tolerance)",
        "",
        operators_table(2 if quick else 10),
        "",
        "**b. Hypergradients through the optimality conditions** (same solver, each "
        "library's decorator and default linear solve)",
        "",
        conditions_table(quick),
        "",
        "**c. Quadratic programs** (n variables, n/5 equalities, n inequalities; gradient "
        "of sum(sin(x*)) w.r.t. c, error against the active set's dense KKT solve)",
        "",
        qp_table(quick),
    ]
    return "\n".join(parts)


if __name__ == "__main__":
    _harness.run_main(TITLE, run, packages=PACKAGES)
