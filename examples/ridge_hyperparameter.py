"""Tune the ridge penalty by gradient descent on the validation loss.

The inner problem is ridge regression on scikit-learn's bundled diabetes data,
solved by plain gradient descent. Decorating that solver with
:func:`jaxsecond.custom_root` (optimality condition: the gradient of the ridge
objective is zero; ``symmetric=True`` because that gradient's Jacobian is the
positive definite ridge Hessian, so conjugate gradients can do the linear solve)
makes ``jax.grad`` of the validation loss return the hypergradient through the
implicit function theorem, without backpropagating through the iterations.

At the initial penalty the example compares three hypergradients:

* implicit: through the decorated solver,
* closed form: differentiating ``solve(X^T X / n + lambda I, X^T y / n)``,
* unrolled: backpropagating through a fixed number of gradient-descent steps,

then tunes ``log(lambda)`` by gradient descent and plots the validation loss.
Runs in float64.

Reference: M. Blondel, Q. Berthet, M. Cuturi, R. Frostig, S. Hoyer,
F. Llinares-López, F. Pedregosa, J.-P. Vert, "Efficient and Modular Implicit
Differentiation", NeurIPS 2022.
"""

from __future__ import annotations

import functools
import pathlib
import time

import jax
import jax.numpy as jnp
import lineax as lx
import matplotlib
import numpy as np
from tqdm.auto import tqdm

import jaxsecond
from jaxsecond._registry import ExampleResult, example, script_main

matplotlib.use("Agg")
import matplotlib.pyplot as plt

INITIAL_LOG_LAM = 1.0
INNER_TOL = 1e-12  # gradient-norm stopping rule of the inner solver
INNER_MAX_STEPS = 200_000


def load_data(n_train: int = 150, seed: int = 0):
    """Standardised diabetes data split into (X_train, y_train, X_val, y_val).

    A small training set (150 of 442 patients) makes the penalty matter.
    """
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    perm = np.random.default_rng(seed).permutation(len(X))
    tr, va = perm[:n_train], perm[n_train:]
    return tuple(jnp.asarray(a) for a in (X[tr], y[tr], X[va], y[va]))


def ridge_objective(w, log_lam, X, y):
    """Mean squared error plus ``exp(log_lam) / 2 * ||w||^2``."""
    residual = X @ w - y
    return 0.5 * jnp.mean(residual**2) + 0.5 * jnp.exp(log_lam) * jnp.sum(w**2)


# Zero exactly at the ridge solution; its Jacobian in w is the (SPD) ridge Hessian.
ridge_optimality = jax.grad(ridge_objective)


def _step_size(log_lam, X):
    # 1 / Lipschitz constant of the gradient: ||X||_2^2 / n + lambda.
    return 1.0 / (jnp.linalg.norm(X, 2) ** 2 / X.shape[0] + jnp.exp(log_lam))


def gd_unrolled(w0, log_lam, X, y, num_steps: int):
    """``num_steps`` of gradient descent; differentiable by backprop through the loop."""
    eta = _step_size(log_lam, X)
    body = lambda _, w: w - eta * ridge_optimality(w, log_lam, X, y)
    return jax.lax.fori_loop(0, num_steps, body, w0)


@jaxsecond.custom_root(
    ridge_optimality, symmetric=True, solve=lx.CG(rtol=1e-12, atol=1e-12, max_steps=1000)
)
def ridge_solver(w0, log_lam, X, y):
    """Gradient descent until the gradient norm drops below INNER_TOL.

    A while_loop cannot be reverse-differentiated, and need not be: custom_root
    supplies the derivative from the optimality condition instead.
    """
    eta = _step_size(log_lam, X)

    def cond(state):
        _, g, k = state
        return (jnp.linalg.norm(g) > INNER_TOL) & (k < INNER_MAX_STEPS)

    def body(state):
        w, g, k = state
        w = w - eta * g
        return w, ridge_optimality(w, log_lam, X, y), k + 1

    g0 = ridge_optimality(w0, log_lam, X, y)
    w, _, _ = jax.lax.while_loop(cond, body, (w0, g0, 0))
    return w


def closed_form_solution(log_lam, X, y):
    """Normal equations ``(X^T X / n + lambda I) w = X^T y / n``."""
    n, d = X.shape
    A = X.T @ X / n + jnp.exp(log_lam) * jnp.eye(d, dtype=X.dtype)
    return jnp.linalg.solve(A, X.T @ y / n)


def validation_loss(w, X_val, y_val):
    return 0.5 * jnp.mean((X_val @ w - y_val) ** 2)


@functools.partial(jax.jit, static_argnames="num_steps")
def unrolled_hypergradient(log_lam, data, num_steps: int):
    """Backpropagation through ``num_steps`` gradient-descent steps from w = 0."""
    X, y, X_val, y_val = data
    w0 = jnp.zeros(X.shape[1], X.dtype)
    loss = lambda t: validation_loss(gd_unrolled(w0, t, X, y, num_steps), X_val, y_val)
    return jax.grad(loss)(log_lam)


@jax.jit
def implicit_hypergradient(log_lam, data):
    """Through the custom_root-decorated solver (implicit function theorem)."""
    X, y, X_val, y_val = data
    w0 = jnp.zeros(X.shape[1], X.dtype)
    loss = lambda t: validation_loss(ridge_solver(w0, t, X, y), X_val, y_val)
    return jax.grad(loss)(log_lam)


@jax.jit
def closed_form_hypergradient(log_lam, data):
    """Through jnp.linalg.solve of the normal equations (the reference)."""
    X, y, X_val, y_val = data
    loss = lambda t: validation_loss(closed_form_solution(t, X, y), X_val, y_val)
    return jax.grad(loss)(log_lam)


def hypergradients(log_lam, data, unroll_steps: int = 20):
    """d(validation loss)/d(log lambda) three ways: implicit, closed form, unrolled."""
    return {
        "implicit": implicit_hypergradient(log_lam, data),
        "closed_form": closed_form_hypergradient(log_lam, data),
        "unrolled": unrolled_hypergradient(log_lam, data, unroll_steps),
    }


def tune(data, num_steps: int, learning_rate: float = 20.0, log_lam0: float = INITIAL_LOG_LAM):
    """Gradient descent on log(lambda); returns the log-lambda and val-loss histories."""
    X, y, X_val, y_val = data

    @jax.jit
    def outer_step(log_lam, w_warm):
        def loss(t):
            w = ridge_solver(w_warm, t, X, y)
            return validation_loss(w, X_val, y_val), w

        (value, w), g = jax.value_and_grad(loss, has_aux=True)(log_lam)
        return log_lam - learning_rate * g, w, value

    log_lam = jnp.asarray(log_lam0, X.dtype)
    # Warm-starting the inner solver at the previous solution is free: the
    # implicit derivative does not depend on where the iterations started.
    w = jnp.zeros(X.shape[1], X.dtype)
    log_lams, losses = [], []
    for _ in tqdm(range(num_steps), desc="outer steps", leave=False, disable=None):
        log_lams.append(float(log_lam))
        log_lam, w, value = outer_step(log_lam, w)
        losses.append(float(value))
    log_lams.append(float(log_lam))
    losses.append(float(validation_loss(ridge_solver(w, log_lam, X, y), X_val, y_val)))
    return np.array(log_lams), np.array(losses)


@example(
    "ridge_hyperparameter",
    area="implicit",
    description="Tune the ridge penalty on diabetes data by implicit hypergradients.",
)
def run(out: pathlib.Path, full: bool = False) -> ExampleResult:
    """Ridge penalty tuning with implicit, closed-form and unrolled hypergradients."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with jax.enable_x64(True):
        data = load_data()
        log_lam0 = jnp.asarray(INITIAL_LOG_LAM)
        grads = hypergradients(log_lam0, data, unroll_steps=20)
        ref = float(grads["closed_form"])
        rel_implicit = abs(float(grads["implicit"]) - ref) / abs(ref)

        # Unrolled error shrinks only as fast as the inner iterations converge.
        unroll_counts = [2, 5, 10, 20, 50, 100, 200]
        rel_unrolled = [
            abs(float(unrolled_hypergradient(log_lam0, data, k)) - ref) / abs(ref)
            for k in unroll_counts
        ]

        log_lams, losses = tune(data, num_steps=150 if full else 40)

        # Dense sweep of the closed-form validation loss, for the picture only.
        X, y, X_val, y_val = data
        grid = jnp.linspace(-6.0, 2.0, 200)
        curve = jax.vmap(lambda t: validation_loss(closed_form_solution(t, X, y), X_val, y_val))(
            grid
        )

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(losses, marker="o", ms=3)
    axes[0].set_xlabel("outer step")
    axes[0].set_ylabel("validation loss")
    axes[0].set_title("gradient descent on log(lambda)")
    axes[1].plot(np.asarray(grid), np.asarray(curve), color="0.6", label="closed-form sweep")
    axes[1].plot(log_lams, losses, "o-", ms=3, label="outer iterates")
    axes[1].set_xlabel("log(lambda)")
    axes[1].set_ylabel("validation loss")
    axes[1].legend()
    # Errors below double-precision resolution are drawn at the 1e-16 floor.
    floor = lambda e: np.maximum(e, 1e-16)
    axes[2].loglog(unroll_counts, floor(rel_unrolled), "o-", label="unrolled gradient descent")
    axes[2].axhline(floor(rel_implicit), color="C3", ls="--", label="implicit (custom_root)")
    axes[2].set_xlabel("inner iterations backpropagated through")
    axes[2].set_ylabel("relative error vs closed form")
    axes[2].set_title(f"hypergradient at log(lambda) = {INITIAL_LOG_LAM}")
    axes[2].legend()
    fig.tight_layout()
    path = out / "ridge_hyperparameter.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)

    lam = float(np.exp(log_lams[-1]))
    return ExampleResult(
        summary=(
            f"Tuned the ridge penalty on diabetes by implicit hypergradients "
            f"({len(losses) - 1} outer steps, {time.perf_counter() - start:.1f} s)."
        ),
        key_figure=(
            f"implicit vs closed-form hypergradient rel. error {rel_implicit:.1e} "
            f"(unrolled, 20 steps: {rel_unrolled[unroll_counts.index(20)]:.1e}); "
            f"tuned lambda = {lam:.3g}, val loss {losses[0]:.4f} -> {losses[-1]:.4f}"
        ),
        figures=(path,),
    )


if __name__ == "__main__":
    script_main(run)
