"""Hypergradients by implicit differentiation versus backpropagation through the iterations.

Two bilevel problems, each the derivative of a validation loss with respect to the
regularisation strength ``lam`` of an inner training problem solved by a fixed number of
iterations:

* ridge regression, ``min_w |X w - y|^2 / (2 n) + lam |w|^2 / 2``, by gradient descent;
  implicit side: :func:`jaxsecond.custom_root` on the gradient of the objective
  (``symmetric=True``, so conjugate gradients);
* lasso, ``min_w |X w - y|^2 / (2 n) + lam |w|_1``, by proximal gradient descent (ISTA);
  implicit side: :func:`jaxsecond.custom_fixed_point` on the ISTA map (default linear
  solver: dense LU below 1024 unknowns).

The unrolled side is ``jax.grad`` through the same ``lax.fori_loop`` (which reverse mode
turns into a scan that stores every iterate). Gradients are computed in float32 and
compared with a float64 reference: the closed form for ridge, central finite differences
of the exactly solved lasso for lasso (see :func:`lasso_reference` for the step).

Run: ``python benchmarks/bench_implicit_vs_unrolled.py [--quick]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import jaxsecond
from jaxsecond import _harness

PACKAGES = ("lineax",)
TITLE = "Implicit vs unrolled hypergradients"

ITERATIONS = (100, 1000, 10000)
KINDS = ("ridge", "lasso")
# Feature correlation rho^|i - j|: it makes the ridge problem ill-conditioned enough
# (condition number ~100 at the quick size) that 100 gradient steps are visibly short of
# convergence, 1000 nearly converge and 10000 converge.
FEATURE_CORRELATION = 0.8
RIDGE_LAM = 0.1
LASSO_LAM_FRACTION = 0.05  # lam = fraction * lam_max (lam_max: smallest lam giving w = 0)
# Relative finite-difference step for the lasso reference (justified in lasso_reference).
LASSO_FD_STEP = 1e-4
GOAL_SPEEDUP = 10.0
GOAL_ITERATIONS = 1000
FLAT_MEMORY_RATIO = 1.1  # "memory flat": peak at 10000 iterations <= 1.1 x peak at 100


# --------------------------------------------------------------------------- problems


@dataclasses.dataclass(frozen=True)
class Problem:
    """One inner problem in float64 NumPy arrays, plus the step size of its solver."""

    kind: str
    X: np.ndarray
    y: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    lam: float
    step: float  # 1 / L, L the Lipschitz constant of the gradient of the smooth part


def make_problem(
    kind: str, n_train: int = 400, n_features: int = 200, n_val: int = 400, seed: int = 0
) -> Problem:
    """Correlated Gaussian features, a sparse ground truth, noisy targets."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rng = np.random.default_rng(seed)
    idx = np.arange(n_features)
    cov = FEATURE_CORRELATION ** np.abs(idx[:, None] - idx[None, :])
    X_all = rng.standard_normal((n_train + n_val, n_features)) @ np.linalg.cholesky(cov).T
    w_true = np.zeros(n_features)
    k = max(1, n_features // 10)
    w_true[rng.choice(n_features, k, replace=False)] = 2.0 * rng.standard_normal(k)
    y_all = X_all @ w_true + 0.5 * rng.standard_normal(n_train + n_val)
    X, y, X_val, y_val = X_all[:n_train], y_all[:n_train], X_all[n_train:], y_all[n_train:]
    lipschitz = np.linalg.eigvalsh(X.T @ X / n_train)[-1]
    if kind == "ridge":
        lam, lipschitz = RIDGE_LAM, lipschitz + RIDGE_LAM
    else:
        lam = LASSO_LAM_FRACTION * np.max(np.abs(X.T @ y)) / n_train
    return Problem(kind, X, y, X_val, y_val, float(lam), float(1.0 / lipschitz))


def ridge_reference(p: Problem) -> float:
    """d validation loss / d lam at the exact ridge solution, in closed form (float64).

    ``w = A^{-1} X^T y / n`` with ``A = X^T X / n + lam I``, so ``dw/dlam = -A^{-1} w``.
    """
    n, d = p.X.shape
    A = p.X.T @ p.X / n + p.lam * np.eye(d)
    w = np.linalg.solve(A, p.X.T @ p.y / n)
    grad_w = p.X_val.T @ (p.X_val @ w - p.y_val) / len(p.y_val)
    return float(grad_w @ -np.linalg.solve(A, w))


def _lasso_exact(p: Problem, lam: float) -> np.ndarray:
    """The lasso solution in float64: ISTA until the support settles, then the exact
    solution on that support and sign pattern, checked against the optimality conditions."""
    n, d = p.X.shape
    G, c = p.X.T @ p.X / n, p.X.T @ p.y / n
    w = np.zeros(d)
    for _ in range(200_000):
        v = w - p.step * (G @ w - c)
        w_next = np.sign(v) * np.maximum(np.abs(v) - p.step * lam, 0.0)
        done = np.max(np.abs(w_next - w)) < 1e-13
        w = w_next
        if done:
            break
    support = w != 0
    signs = np.sign(w[support])
    w = np.zeros(d)
    w[support] = np.linalg.solve(G[np.ix_(support, support)], c[support] - lam * signs)
    corr = c - G @ w  # = lam * subgradient of |w|_1 at the optimum
    if not (
        np.all(np.sign(w[support]) == signs) and np.all(np.abs(corr[~support]) < lam * (1 - 1e-9))
    ):
        raise RuntimeError("lasso reference: the optimality conditions do not hold")
    return w


def _val_loss_np(p: Problem, w: np.ndarray) -> float:
    return float(0.5 * np.mean((p.X_val @ w - p.y_val) ** 2))


def lasso_reference(p: Problem) -> tuple[float, float]:
    """Central finite difference of the validation loss at the exact lasso solution.

    Returns ``(fd, closed_form)``. On an interval of ``lam`` where the support and signs of
    the solution do not change, ``w_S(lam) = G_SS^{-1} (c_S - lam s_S)`` is affine in
    ``lam``, so the validation loss is exactly quadratic there and the central difference
    has no truncation error at all. Its only errors are round-off, about
    ``1e-16 |L| / h``, and the error of the inner solve divided by ``h``; both favour a
    large step, capped by the need to stay inside one support interval. A relative step
    ``h = 1e-4 lam`` gives round-off ~1e-10 relative and is checked here to leave support
    and signs unchanged on ``[lam - h, lam + h]``. ``closed_form`` is the active-set
    formula ``dw_S/dlam = -G_SS^{-1} s_S``, an independent check.
    """
    h = LASSO_FD_STEP * p.lam
    w0, w_minus, w_plus = (_lasso_exact(p, p.lam + s) for s in (0.0, -h, h))
    if not (
        np.array_equal(np.sign(w0), np.sign(w_minus))
        and np.array_equal(np.sign(w0), np.sign(w_plus))
    ):
        raise RuntimeError("lasso reference: the support changes within the FD step")
    fd = (_val_loss_np(p, w_plus) - _val_loss_np(p, w_minus)) / (2 * h)
    n = len(p.y)
    support = w0 != 0
    G = p.X.T @ p.X / n
    dw = np.zeros_like(w0)
    dw[support] = -np.linalg.solve(G[np.ix_(support, support)], np.sign(w0[support]))
    grad_w = p.X_val.T @ (p.X_val @ w0 - p.y_val) / len(p.y_val)
    return float(fd), float(grad_w @ dw)


# --------------------------------------------------------------------------- solvers


# The products are written `r @ X`, not `X.T @ r`: inside a loop, XLA's CPU backend
# materialises the transpose of X on every iteration for the latter (about 3x slower per
# step at the quick size), which would distort a comparison of differentiation methods.


def _ridge_grad(w, lam, X, y):
    """Gradient of |X w - y|^2 / (2 n) + lam |w|^2 / 2."""
    return (X @ w - y) @ X / X.shape[0] + lam * w


def _ista_map(step: float) -> Callable:
    def ista(w, lam, X, y):
        """One proximal-gradient step; the lasso solutions are its fixed points."""
        v = w - step * ((X @ w - y) @ X / X.shape[0])
        return jnp.sign(v) * jnp.maximum(jnp.abs(v) - step * lam, 0.0)

    return ista


def make_solvers(kind: str, iterations: int, step: float) -> tuple[Callable, Callable]:
    """``(implicit, unrolled)``: the same fixed-iteration loop ``solver(w0, lam, X, y)``,
    decorated for implicit differentiation or left to plain backpropagation."""
    if kind == "ridge":
        update = lambda w, lam, X, y: w - step * _ridge_grad(w, lam, X, y)
        decorate = jaxsecond.custom_root(_ridge_grad, symmetric=True)
    else:
        update = _ista_map(step)
        decorate = jaxsecond.custom_fixed_point(update)

    def solver(w0, lam, X, y):
        return jax.lax.fori_loop(0, iterations, lambda _, w: update(w, lam, X, y), w0)

    return decorate(solver), solver


def make_validation_loss(solver: Callable) -> Callable:
    """``(lam, X, y, X_val, y_val) -> validation loss`` of the inner solution."""

    def val_loss(lam, X, y, X_val, y_val):
        w = solver(jnp.zeros(X.shape[1], X.dtype), lam, X, y)
        return 0.5 * jnp.mean((X_val @ w - y_val) ** 2)

    return val_loss


def make_hypergradient(solver: Callable) -> Callable:
    """Jitted ``(lam, X, y, X_val, y_val) -> d validation loss / d lam``."""
    return jax.jit(jax.grad(make_validation_loss(solver)))


def _arguments(p: Problem, dtype) -> tuple:
    return tuple(jnp.asarray(a, dtype) for a in (p.lam, p.X, p.y, p.X_val, p.y_val))


def hypergradients(
    kind: str,
    iterations: int,
    *,
    n_train: int = 400,
    n_features: int = 200,
    n_val: int = 400,
    seed: int = 0,
    dtype=jnp.float32,
) -> dict[str, float]:
    """The core comparison without timing: implicit, unrolled and reference hypergradients."""
    p = make_problem(kind, n_train, n_features, n_val, seed)
    args = _arguments(p, dtype)
    implicit, unrolled = make_solvers(kind, iterations, p.step)
    reference = ridge_reference(p) if kind == "ridge" else lasso_reference(p)[0]
    return {
        "implicit": float(make_hypergradient(implicit)(*args)),
        "unrolled": float(make_hypergradient(unrolled)(*args)),
        "reference": reference,
    }


# --------------------------------------------------------------------------- benchmark


def _measure(fns: dict[str, Callable], args: tuple, *, rounds: int, repeats: int) -> dict:
    """Time, peak memory and value of each function; timing alternates between them in
    ``rounds`` (median over rounds of each round's median), so that a change in the load
    of a shared machine does not land on one side only."""
    samples: dict[str, list] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(_harness.time_jitted(fn, *args, repeats=repeats))
    return {
        name: {
            "median_s": float(np.median([t.median_s for t in samples[name]])),
            "compile_s": samples[name][0].compile_s,
            "memory": _harness.peak_memory_bytes(fn, *args),
            "value": float(fn(*args)),
        }
        for name, fn in fns.items()
    }


def _rel_error(value: float, reference: float) -> str:
    return f"{abs(value - reference) / abs(reference):.1e}"


def run(quick: bool) -> str:
    sizes = (
        dict(n_train=400, n_features=200, n_val=400)
        if quick
        else dict(n_train=2000, n_features=1000, n_val=2000)
    )
    rows = []
    speedups: dict[tuple[str, int], float] = {}
    derivative_speedups: dict[tuple[str, int], float | None] = {}
    memory: dict[tuple[str, str, int], int | None] = {}
    notes = []
    for kind in KINDS:
        p = make_problem(kind, **sizes)
        args = _arguments(p, jnp.float32)
        if kind == "ridge":
            reference = ridge_reference(p)
        else:
            reference, closed = lasso_reference(p)
            support = int(np.count_nonzero(_lasso_exact(p, p.lam)))
            notes.append(
                f"Lasso: lam = {p.lam:.4g} ({LASSO_LAM_FRACTION} x lam_max), "
                f"{support} of {p.X.shape[1]} coefficients active; FD reference "
                f"{reference:.10g} (step {LASSO_FD_STEP} x lam) vs active-set closed form "
                f"{closed:.10g}, relative gap {abs(reference - closed) / abs(closed):.1e}."
            )
        for iterations in ITERATIONS:
            if quick:
                rounds, repeats = (3, 1) if iterations >= 10000 else (5, 3)
            else:
                rounds, repeats = (3, 1) if iterations >= 10000 else (5, 5)
            implicit, unrolled = make_solvers(kind, iterations, p.step)
            fns = {
                "implicit": make_hypergradient(implicit),
                "unrolled": make_hypergradient(unrolled),
                # The forward solve alone: what both methods pay before differentiating.
                "forward": jax.jit(make_validation_loss(unrolled)),
            }
            res = _measure(fns, args, rounds=rounds, repeats=repeats)
            speedup = res["unrolled"]["median_s"] / res["implicit"]["median_s"]
            speedups[kind, iterations] = speedup
            forward = res["forward"]["median_s"]
            extra_implicit = res["implicit"]["median_s"] - forward
            extra_unrolled = res["unrolled"]["median_s"] - forward
            # Below ~3% of the forward time the difference is lost in timing noise.
            resolvable = extra_implicit > 0.03 * forward
            derivative_speedups[kind, iterations] = (
                extra_unrolled / extra_implicit if resolvable else None
            )
            for name in ("implicit", "unrolled"):
                memory[kind, name, iterations] = res[name]["memory"]
            rows.append(
                [
                    kind,
                    iterations,
                    _harness.fmt_seconds(res["implicit"]["median_s"]),
                    _harness.fmt_seconds(res["unrolled"]["median_s"]),
                    f"{speedup:.2f}x",
                    _harness.fmt_seconds(forward),
                    f"{_harness.fmt_seconds(max(extra_implicit, 0.0))} / "
                    f"{_harness.fmt_seconds(max(extra_unrolled, 0.0))}",
                    f"{extra_unrolled / extra_implicit:.1f}x"
                    if resolvable
                    else "n/a (implicit extra < 3% of forward)",
                    _harness.fmt_bytes(res["implicit"]["memory"]),
                    _harness.fmt_bytes(res["unrolled"]["memory"]),
                    _rel_error(res["implicit"]["value"], reference),
                    _rel_error(res["unrolled"]["value"], reference),
                    f"{_harness.fmt_seconds(res['implicit']['compile_s'])} / "
                    f"{_harness.fmt_seconds(res['unrolled']['compile_s'])}",
                ]
            )

    table = _harness.markdown_table(
        [
            "problem",
            "inner iterations",
            "implicit time",
            "unrolled time",
            "speedup (unrolled / implicit)",
            "forward solve only",
            "derivative cost beyond the forward solve (implicit / unrolled)",
            "derivative-cost speedup",
            "implicit peak memory",
            "unrolled peak memory",
            "implicit rel. error",
            "unrolled rel. error",
            "compile (implicit / unrolled)",
        ],
        rows,
    )

    verdicts = []
    all_flat = True
    for kind in KINDS:
        s = speedups[kind, GOAL_ITERATIONS]
        lo, hi = memory[kind, "implicit", ITERATIONS[0]], memory[kind, "implicit", ITERATIONS[-1]]
        unrolled_hi = memory[kind, "unrolled", ITERATIONS[-1]]
        flat = lo is not None and hi is not None and hi <= FLAT_MEMORY_RATIO * lo
        all_flat = all_flat and flat
        if lo is None or hi is None or unrolled_hi is None:
            mem_text = "n/a (no memory analysis on this backend)"
        else:
            mem_text = (
                f"{_harness.fmt_bytes(lo)} at {ITERATIONS[0]} vs {_harness.fmt_bytes(hi)} at "
                f"{ITERATIONS[-1]} iterations ({'flat: met' if flat else 'NOT flat'}; "
                f"unrolled needs {unrolled_hi / hi:.1f}x that at {ITERATIONS[-1]})"
            )
        ds = derivative_speedups[kind, GOAL_ITERATIONS]
        ds_text = (
            "not resolvable (implicit extra below timing noise)"
            if ds is None
            else f"{ds:.1f}x ({'met' if ds >= GOAL_SPEEDUP else 'NOT met'})"
        )
        verdicts.append(
            f"- {kind}: total-time speedup at {GOAL_ITERATIONS} iterations {s:.2f}x "
            f"({'met' if s >= GOAL_SPEEDUP else 'NOT met'}); speedup of the derivative "
            f"cost beyond the shared forward solve {ds_text}; implicit memory {mem_text}."
        )
    met = all(speedups[k, GOAL_ITERATIONS] >= GOAL_SPEEDUP for k in KINDS)
    n, d = sizes["n_train"], sizes["n_features"]
    return "\n".join(
        [
            f"Hypergradient d(validation loss)/d(lam) through a fixed number of inner "
            f"iterations; {n} training rows, {n} validation rows, {d} features with "
            f"correlation {FEATURE_CORRELATION}^|i-j|; ridge lam = {RIDGE_LAM} (condition "
            f"number of the ridge Hessian {_ridge_condition(sizes):.0f}). Implicit: "
            "`jaxsecond.custom_root(grad, symmetric=True)` (CG) for ridge, "
            "`jaxsecond.custom_fixed_point(ista_step)` (default solve: GMRES) for "
            "lasso. Unrolled: `jax.grad` through the same `lax.fori_loop`. Both in float32, "
            "jitted; time is the median call after compilation (median over rounds that "
            "alternate the two methods), memory XLA's compiled peak "
            "estimate. Errors are relative to a float64 reference: the closed form for ridge; "
            "for lasso a central finite difference of the validation loss at the exactly "
            "solved lasso, step h = 1e-4 x lam (inside one support interval the solution is "
            "affine in lam, so the difference has no truncation error; h is checked to keep "
            "support and signs fixed, leaving only round-off ~1e-16/h relative). Errors at "
            "100 iterations are dominated by the unconverged inner solve, not by the "
            "differentiation method.",
            "",
            table,
            "",
            *notes,
            "",
            f"Goal: implicit at least {GOAL_SPEEDUP:.0f}x faster than unrolled at "
            f"{GOAL_ITERATIONS} iterations, with memory flat in the number of iterations. "
            f"Measured: speed part {'met' if met else 'NOT met'}, memory part "
            f"{'met' if all_flat else 'NOT met'}.",
            *verdicts,
            *([] if met else ["", _WHY_NOT_TEN]),
        ]
    )


_WHY_NOT_TEN = (
    "Why the speed goal is out of reach for this kind of inner solver: both sides run the "
    "same forward iterations. Unrolled adds one backward pass over them, which costs about "
    "as much as the forward pass (one transposed product per product, plus storing and "
    "reloading every iterate); implicit adds one linear solve, here much cheaper than the "
    "forward loop. So unrolled / implicit is bounded by roughly (forward + backward) / "
    "forward, a small constant (2-3x measured above) however cheap the implicit side is; "
    "10x would need a backward pass ten times dearer than the forward one. What implicit "
    "differentiation changes by an order of magnitude is what it adds on top of the forward "
    "solve (column 'derivative-cost speedup') and memory: flat in the number of iterations, "
    "while unrolled grows linearly with it."
)


def _ridge_condition(sizes: dict) -> float:
    p = make_problem("ridge", **sizes)
    ev = np.linalg.eigvalsh(p.X.T @ p.X / len(p.y))
    return float((ev[-1] + p.lam) / (ev[0] + p.lam))


if __name__ == "__main__":
    _harness.run_main(TITLE, run, packages=PACKAGES)
