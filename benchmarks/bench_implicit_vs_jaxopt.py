"""jaxsecond's implicit differentiation versus jaxopt's, on the same decorated solvers.

Two inner problems, each decorated once with :func:`jaxsecond.custom_root` and once with
``jaxopt.implicit_diff.custom_root``, with the same optimality function, the same solver
code and the same linear solver kind (conjugate gradients, since both optimality
functions are gradients of strictly convex objectives):

* ridge regression with one penalty per feature, ``theta = log lam`` (a vector), solved
  in closed form (``jnp.linalg.solve``);
* L2-regularised logistic regression, ``theta = log lam`` (a scalar), solved by a fixed
  number of Newton steps.

Table 1 times reverse mode, ``jax.jit(jax.grad(validation loss))`` with respect to
``theta``, in float32. Table 2 runs a list of transformations on both libraries (float64)
and records, measured, whether each runs and whether its result matches a reference
obtained by differentiating the closed-form ridge solution.

Run: ``python benchmarks/bench_implicit_vs_jaxopt.py [--quick]`` (needs the ``bench``
extra, which provides jaxopt).
"""

from __future__ import annotations

import functools
import importlib.metadata
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

import jaxsecond
from jaxsecond import _harness

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # "JAXopt is no longer maintained"
    import jaxopt


PACKAGES = ("jaxopt", "lineax")  # peer versions recorded with the results
TITLE = "Implicit differentiation: jaxsecond vs jaxopt"

LIBRARIES = ("jaxsecond", "jaxopt")
PROBLEMS = ("ridge", "logistic")
NEWTON_STEPS = 10
# Correlated features (rho^|i - j|) make the linear systems ill-conditioned enough that CG
# needs on the order of a hundred steps, so the backward pass is a sizeable part of the
# gradient's cost and differences between the two implementations show.
FEATURE_CORRELATION = 0.9
# CG tolerance given to both libraries: jaxsecond's float32 default, jax.scipy's cg default.
TOL_FLOAT32 = 1e-5
TOL_FLOAT64 = 1e-10
# A capability result "matches" when its relative error is below this. With CG at
# TOL_FLOAT64 in float64 a correct result is within ~1e-9; a wrong one (e.g. a derivative
# that misses a term) is off by O(1).
MATCH_TOL = 1e-6
MIN_DIFF_SHARE = 0.2  # report the differentiation-cost ratio only above this share


# --------------------------------------------------------------------------- problems


def make_data(problem: str, n: int, d: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Float64 NumPy data: training and validation features/targets and ``theta``."""
    if problem not in PROBLEMS:
        raise ValueError(f"problem must be one of {PROBLEMS}, got {problem!r}")
    rng = np.random.default_rng(seed)
    idx = np.arange(d)
    cov = FEATURE_CORRELATION ** np.abs(idx[:, None] - idx[None, :])
    X_all = rng.standard_normal((2 * n, d)) @ np.linalg.cholesky(cov).T
    w_true = rng.standard_normal(d) / np.sqrt(d) * 2.0
    z = X_all @ w_true
    if problem == "ridge":
        y_all = z + 0.5 * rng.standard_normal(2 * n)
        theta = np.log(0.01) + 0.5 * rng.standard_normal(d)  # one log-penalty per feature
    else:
        y_all = (rng.uniform(size=2 * n) < 1 / (1 + np.exp(-z))).astype(np.float64)
        theta = np.array(np.log(0.005))
    return dict(theta=theta, X=X_all[:n], y=y_all[:n], X_val=X_all[n:], y_val=y_all[n:])


def ridge_optimality(w, theta, X, y):
    """Gradient of |X w - y|^2 / (2 n) + sum_j exp(theta_j) w_j^2 / 2."""
    return (X @ w - y) @ X / X.shape[0] + jnp.exp(theta) * w


def ridge_solver(w0, theta, X, y):
    """The exact ridge solution (w0 unused)."""
    n = X.shape[0]
    return jnp.linalg.solve(X.T @ X / n + jnp.diag(jnp.exp(theta)), y @ X / n)


def logistic_optimality(w, theta, X, y):
    """Gradient of the mean logistic loss + exp(theta) |w|^2 / 2 (labels in {0, 1})."""
    return (jax.nn.sigmoid(X @ w) - y) @ X / X.shape[0] + jnp.exp(theta) * w


def logistic_solver(w0, theta, X, y):
    """NEWTON_STEPS Newton steps from w0."""
    n, d = X.shape

    def step(_, w):
        p = jax.nn.sigmoid(X @ w)
        hessian = (X * (p * (1 - p))[:, None]).T @ X / n + jnp.exp(theta) * jnp.eye(
            d, dtype=w.dtype
        )
        return w - jnp.linalg.solve(hessian, logistic_optimality(w, theta, X, y))

    return jax.lax.fori_loop(0, NEWTON_STEPS, step, w0)


def ridge_val_loss(w, X_val, y_val):
    return 0.5 * jnp.mean((X_val @ w - y_val) ** 2)


def logistic_val_loss(w, X_val, y_val):
    z = X_val @ w
    return jnp.mean(jax.nn.softplus(z) - y_val * z)


_SPECS = {
    "ridge": (ridge_optimality, ridge_solver, ridge_val_loss),
    "logistic": (logistic_optimality, logistic_solver, logistic_val_loss),
}


def decorate(library: str, optimality: Callable, tol: float) -> Callable:
    """The implicit-differentiation decorator of ``library``, CG with tolerance ``tol``.

    jaxsecond: its ``solve="cg"`` with ``rtol = atol = tol`` (see
    :func:`describe_our_cg`). jaxopt: ``jax.scipy`` CG, stopping when
    ``|r|_2 <= max(tol |b|_2, atol)``. Same numbers on both sides.
    """
    if library == "jaxsecond":
        return jaxsecond.custom_root(optimality, symmetric=True, solve="cg", rtol=tol, atol=tol)
    if library == "jaxopt":
        solve = functools.partial(jaxopt.linear_solve.solve_cg, tol=tol, atol=tol)
        return jaxopt.implicit_diff.custom_root(optimality, solve=solve)
    raise ValueError(f"library must be one of {LIBRARIES}, got {library!r}")


def describe_our_cg() -> str:
    """What jaxsecond's ``solve="cg"`` runs, and its stopping rule where it differs from
    jaxopt's, read from the installed version (the choice is jaxsecond's to change)."""
    try:
        from jaxsecond.implicit._linear_solve import resolve_solver

        solver = resolve_solver(
            "cg", symmetric=True, size=1, dtype=jnp.float32, rtol=1.0, atol=1.0, max_steps=None
        )
    except Exception:  # a private helper; its absence only costs the description
        return "jaxsecond's `solve='cg'`"
    name = f"`{type(solver).__module__.split('._')[0]}.{type(solver).__name__}`"
    if isinstance(solver, lx.CG):
        return (
            f"jaxsecond's `solve='cg'` ({name}; it stops per coordinate, in both residual "
            "and update, where jax.scipy's CG uses the 2-norm of the residual, hence the "
            "error columns)"
        )
    return f"jaxsecond's `solve='cg'` ({name})"


def make_val_loss(problem: str, solver: Callable) -> Callable:
    """``(theta, X, y, X_val, y_val) -> validation loss`` of the solution of ``solver``."""
    val_loss = _SPECS[problem][2]

    def fn(theta, X, y, X_val, y_val):
        w = solver(jnp.zeros(X.shape[1], X.dtype), theta, X, y)
        return val_loss(w, X_val, y_val)

    return fn


def reference_gradient(problem: str, data: dict[str, np.ndarray]) -> np.ndarray:
    """d validation loss / d theta at the exact solution, in float64 NumPy.

    With ``F(w, theta) = grad_w objective`` and ``H = dF/dw``, ``dF/dtheta = lam * w``
    (diagonal for ridge, a column for logistic), so the gradient is
    ``-(lam * w) . H^{-1} grad_w L_val``.
    """
    X, y, theta = data["X"], data["y"], data["theta"]
    n, d = X.shape
    lam = np.exp(theta)
    if problem == "ridge":
        H = X.T @ X / n + np.diag(lam)
        w = np.linalg.solve(H, X.T @ y / n)
        grad_val = data["X_val"].T @ (data["X_val"] @ w - data["y_val"]) / len(data["y_val"])
        return -lam * w * np.linalg.solve(H, grad_val)
    w = np.zeros(d)
    for _ in range(100):  # Newton to convergence in float64
        p = 1 / (1 + np.exp(-(X @ w)))
        H = (X * (p * (1 - p))[:, None]).T @ X / n + lam * np.eye(d)
        w = w - np.linalg.solve(H, X.T @ (p - y) / n + lam * w)
    p = 1 / (1 + np.exp(-(X @ w)))
    H = (X * (p * (1 - p))[:, None]).T @ X / n + lam * np.eye(d)
    p_val = 1 / (1 + np.exp(-(data["X_val"] @ w)))
    grad_val = data["X_val"].T @ (p_val - data["y_val"]) / len(data["y_val"])
    return np.asarray(-lam * w @ np.linalg.solve(H, grad_val))


def _arguments(data: dict[str, np.ndarray], dtype) -> tuple:
    return tuple(jnp.asarray(data[k], dtype) for k in ("theta", "X", "y", "X_val", "y_val"))


def gradient_functions(problem: str, tol: float) -> dict[str, Callable]:
    """Jitted reverse-mode hypergradient of each library, plus the jitted primal."""
    optimality, solver, _ = _SPECS[problem]
    out = {
        lib: jax.jit(jax.grad(make_val_loss(problem, decorate(lib, optimality, tol)(solver))))
        for lib in LIBRARIES
    }
    out["primal"] = jax.jit(make_val_loss(problem, solver))
    return out


def gradients(
    problem: str, n: int, d: int, *, seed: int = 0, dtype=jnp.float32, tol: float = TOL_FLOAT32
) -> dict[str, np.ndarray]:
    """The core comparison without timing: each library's gradient and the reference."""
    data = make_data(problem, n, d, seed)
    args = _arguments(data, dtype)
    fns = gradient_functions(problem, tol)
    out = {lib: np.asarray(fns[lib](*args)) for lib in LIBRARIES}
    out["reference"] = reference_gradient(problem, data)
    return out


# --------------------------------------------------------------------------- capabilities


def _capability_cases(library: str, data: dict[str, jax.Array], tol: float) -> dict:
    """name -> (thunk computing the library's result, thunk computing the reference)."""
    theta, X, y, X_val, y_val = (data[k] for k in ("theta", "X", "y", "X_val", "y_val"))
    w0 = jnp.zeros(X.shape[1], X.dtype)
    solver = decorate(library, ridge_optimality, tol)(ridge_solver)
    w_star = lambda t: solver(w0, t, X, y)
    w_ref = lambda t: ridge_solver(w0, t, X, y)  # closed form, differentiated by JAX
    val = lambda t: ridge_val_loss(w_star(t), X_val, y_val)
    val_ref = lambda t: ridge_val_loss(w_ref(t), X_val, y_val)
    direction = jnp.linspace(-1.0, 1.0, theta.shape[0], dtype=theta.dtype)
    thetas = theta[None, :] + jnp.arange(3, dtype=theta.dtype)[:, None] * 0.3

    def closed_over(s, use_library: bool):
        # The extra penalty s is closed over by the optimality function and the solver,
        # not passed as an argument.
        def optimality(w, t, X, y):
            return ridge_optimality(w, t, X, y) + s * w

        def inner(w0, t, X, y):
            n = X.shape[0]
            A = X.T @ X / n + jnp.diag(jnp.exp(t)) + s * jnp.eye(X.shape[1], dtype=X.dtype)
            return jnp.linalg.solve(A, y @ X / n)

        fn = decorate(library, optimality, tol)(inner) if use_library else inner
        return ridge_val_loss(fn(w0, theta, X, y), X_val, y_val)

    s0 = jnp.asarray(0.05, X.dtype)
    jit = jax.jit
    return {
        "forward mode: `jax.jvp` of the validation loss": (
            lambda: jit(lambda t: jax.jvp(val, (t,), (direction,))[1])(theta),
            lambda: jit(lambda t: jax.jvp(val_ref, (t,), (direction,))[1])(theta),
        ),
        "`jax.jacfwd` of the solution": (
            lambda: jit(jax.jacfwd(w_star))(theta),
            lambda: jit(jax.jacfwd(w_ref))(theta),
        ),
        "`jax.hessian` of the validation loss": (
            lambda: jit(jax.hessian(val))(theta),
            lambda: jit(jax.hessian(val_ref))(theta),
        ),
        "`jax.grad` w.r.t. a value the optimality function closes over": (
            lambda: jit(jax.grad(lambda s: closed_over(s, True)))(s0),
            lambda: jit(jax.grad(lambda s: closed_over(s, False)))(s0),
        ),
        "`jax.vmap` of `jax.grad` (batch of 3 hyperparameters)": (
            lambda: jit(jax.vmap(jax.grad(val)))(thetas),
            lambda: jit(jax.vmap(jax.grad(val_ref)))(thetas),
        ),
    }


def _first_line(e: BaseException, limit: int = 140) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."


CAPABILITY_SIZE = (40, 6)  # (n, d) of the ridge problem in the capability table


def capabilities(
    n: int = CAPABILITY_SIZE[0], d: int = CAPABILITY_SIZE[1], seed: int = 0
) -> dict[str, dict[str, dict]]:
    """Run each transformation on each library (float64) and judge it against a reference.

    Returns ``{case: {library: {"status": "ok" | "wrong" | "error", "error": float | None,
    "text": str}}}``; ``error`` is the relative error (max abs difference over max abs
    reference) when the call returned.
    """
    results: dict[str, dict[str, dict]] = {}
    with jax.enable_x64(True):
        data = {k: jnp.asarray(v, jnp.float64) for k, v in make_data("ridge", n, d, seed).items()}
        for library in LIBRARIES:
            for name, (run_lib, run_ref) in _capability_cases(library, data, TOL_FLOAT64).items():
                reference = np.asarray(run_ref())
                try:
                    value = np.asarray(run_lib())
                except Exception as e:  # measured: record what the library raises
                    entry = {
                        "status": "error",
                        "error": None,
                        "text": f"{type(e).__name__}: {_first_line(e)}",
                    }
                else:
                    if value.shape != reference.shape:
                        err = float("inf")
                    else:
                        err = float(np.max(np.abs(value - reference)) / np.max(np.abs(reference)))
                    ok = err <= MATCH_TOL
                    entry = {
                        "status": "ok" if ok else "wrong",
                        "error": err,
                        "text": f"ok (matches reference to {err:.1e})"
                        if ok
                        else f"wrong: error {err:.1e}",
                    }
                results.setdefault(name, {})[library] = entry
    return results


# --------------------------------------------------------------------------- benchmark


def interleaved_timings(
    fns: dict[str, Callable], args: tuple, *, rounds: int, repeats: int
) -> dict[str, tuple[float, np.ndarray]]:
    """``name -> (compile seconds, per-round median seconds)``, timing the functions in turn.

    Each round times every function once with ``_harness.time_jitted``. Alternating keeps
    a change in the load of a shared machine from landing on one side only; the spread of
    the per-round ratios shows how much of a difference is noise.
    """
    samples: dict[str, list] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(_harness.time_jitted(fn, *args, repeats=repeats))
    return {
        name: (timings[0].compile_s, np.array([t.median_s for t in timings]))
        for name, timings in samples.items()
    }


def run(quick: bool) -> str:
    sizes = (
        {"ridge": (1000, 200), "logistic": (1000, 100)}
        if quick
        else {"ridge": (5000, 1000), "logistic": (5000, 500)}
    )
    rounds, repeats = (10, 10) if quick else (10, 5)
    rows = []
    lost = []
    for problem in PROBLEMS:
        n, d = sizes[problem]
        data = make_data(problem, n, d)
        args = _arguments(data, jnp.float32)
        fns = gradient_functions(problem, TOL_FLOAT32)
        timings = interleaved_timings(fns, args, rounds=rounds, repeats=repeats)
        (c_ours, r_ours), (c_opt, r_opt), (_, r_primal) = (
            timings[k] for k in ("jaxsecond", "jaxopt", "primal")
        )
        t_ours, t_opt, t_primal = (float(np.median(r)) for r in (r_ours, r_opt, r_primal))
        round_ratios = r_ours / r_opt
        spread = f"{np.min(round_ratios):.2f}-{np.max(round_ratios):.2f}"
        grads = {lib: np.asarray(fns[lib](*args), np.float64) for lib in LIBRARIES}
        ref = reference_gradient(problem, data)
        scale = np.max(np.abs(ref))
        ratio = t_ours / t_opt
        # The difference of two noisy medians means something only when differentiation
        # is a sizeable share of the total.
        if min(t_ours, t_opt) - t_primal > MIN_DIFF_SHARE * t_primal:
            diff_ratio = f"{(t_ours - t_primal) / (t_opt - t_primal):.2f}"
        else:
            diff_ratio = f"n/a (< {MIN_DIFF_SHARE:.0%} of primal)"
        if ratio > 1.0:
            noise = ", within round-to-round noise" if np.min(round_ratios) <= 1.0 else ""
            lost.append(f"{problem} ({ratio:.3f}; per-round range {spread}{noise})")
        rows.append(
            [
                problem,
                f"n={n}, d={d}",
                _harness.fmt_seconds(t_ours),
                _harness.fmt_seconds(t_opt),
                f"{ratio:.2f} ({spread})",
                _harness.fmt_seconds(t_primal),
                diff_ratio,
                f"{_harness.fmt_seconds(c_ours)} / {_harness.fmt_seconds(c_opt)}",
                f"{np.max(np.abs(grads['jaxsecond'] - grads['jaxopt'])):.1e}",
                f"{np.max(np.abs(grads['jaxsecond'] - ref)) / scale:.1e}",
                f"{np.max(np.abs(grads['jaxopt'] - ref)) / scale:.1e}",
            ]
        )
    timing_table = _harness.markdown_table(
        [
            "problem",
            "size",
            "jaxsecond",
            "jaxopt",
            "ours / jaxopt (range over rounds)",
            "primal only",
            "(ours - primal) / (jaxopt - primal)",
            "compile (ours / jaxopt)",
            "max abs grad diff",
            "ours rel. error",
            "jaxopt rel. error",
        ],
        rows,
    )
    caps = capabilities()
    cap_table = _harness.markdown_table(
        ["transformation", *LIBRARIES],
        [[name, *(caps[name][lib]["text"] for lib in LIBRARIES)] for name in caps],
    )
    verdict = (
        "ours / jaxopt <= 1.0 on every problem (goal met)."
        if not lost
        else "Goal ours / jaxopt <= 1.0 NOT met for: " + ", ".join(lost) + "."
    )
    return "\n".join(
        [
            f"Peers: jaxopt {importlib.metadata.version('jaxopt')} (its CG is "
            f"`jax.scipy.sparse.linalg.cg`), lineax {importlib.metadata.version('lineax')} "
            "(behind jaxsecond).",
            "",
            "Reverse mode, `jax.jit(jax.grad(validation loss))` w.r.t. `theta = log lam` "
            "(a vector of per-feature penalties for ridge, a scalar for logistic), in "
            "float32. The same optimality function and solver code are decorated by "
            "`jaxsecond.custom_root(F, symmetric=True, solve='cg', rtol=1e-5, atol=1e-5)` "
            "and `jaxopt.implicit_diff.custom_root(F, solve=partial(solve_cg, tol=1e-5, "
            f"atol=1e-5))`; linear solvers: {describe_our_cg()} vs jaxopt's `solve_cg` "
            "(`jax.scipy.sparse.linalg.cg`). Ridge is solved exactly by `jnp.linalg.solve`, "
            "logistic by "
            f"{NEWTON_STEPS} Newton steps; 'primal only' is the validation loss without "
            "the gradient, so time minus primal is the cost of differentiation (its ratio is "
            "noisy when that cost is a small part of the total). Times are medians over "
            f"{rounds} rounds that alternate the three functions ({repeats} timed calls "
            "each); the range is that of the per-round ratio. Errors are "
            "max abs difference over max abs value of a float64 reference (closed form "
            "for ridge; Newton to convergence plus a dense implicit-function solve for "
            "logistic).",
            "",
            timing_table,
            "",
            verdict,
            "",
            "Capabilities, measured (float64, ridge with per-feature penalties, "
            f"n={CAPABILITY_SIZE[0]}, d={CAPABILITY_SIZE[1]}, CG tolerance {TOL_FLOAT64:g}). "
            "Each cell runs the transformation under `jax.jit` and compares with the same "
            "transformation of the closed-form "
            f"solution `solve(X^T X / n + diag(lam), X^T y / n)`; 'ok' below {MATCH_TOL:g} "
            "relative error, otherwise 'wrong'; an exception is shown by type and first "
            "line.",
            "",
            cap_table,
        ]
    )


if __name__ == "__main__":
    _harness.run_main(TITLE, run, packages=PACKAGES)
