"""Hypergradients of sparse logistic regression through its proximal-gradient fixed point.

l1-regularised logistic regression on scikit-learn's bundled breast-cancer data,

    min_{w, b}  mean_i log(1 + exp(-s_i (x_i . w + b))) + lambda ||w||_1,   s_i = +-1,

is solved by proximal gradient descent (FISTA with adaptive restart) whose prox is
:func:`jaxsecond.prox.prox_lasso`, applied to the pytree ``{"w": w, "b": b}`` with the
per-leaf strengths ``{"w": lambda, "b": 0}`` so that the intercept is not penalised.
The solutions are the fixed points of the proximal-gradient map, so decorating the
solver with ``custom_root(proximal_gradient_condition(logistic_loss, prox_lasso))``
gives the derivative of the solution with respect to ``lambda`` by the implicit
function theorem, although the objective is not differentiable: soft thresholding is
differentiable almost everywhere, and its Jacobian (zero off the support) is all the
theorem needs. The derivative of the held-out loss with respect to ``log(lambda)`` is
checked against central finite differences, drawn as tangents on the held-out loss
curve next to the support size, and used for a few steps of gradient descent on
``log(lambda)``. Runs in float64.

Reference: M. Blondel, Q. Berthet, M. Cuturi, R. Frostig, S. Hoyer,
F. Llinares-López, F. Pedregosa, J.-P. Vert, "Efficient and Modular Implicit
Differentiation", NeurIPS 2022 (proximal-gradient fixed points, Section 2.2).
"""

from __future__ import annotations

import pathlib
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

import jaxsecond
from jaxsecond._registry import ExampleResult, example, script_main
from jaxsecond.implicit import proximal_gradient_condition
from jaxsecond.prox import prox_lasso

matplotlib.use("Agg")
import matplotlib.pyplot as plt

INNER_TOL = 1e-13  # max-norm change of the coefficients between iterations at which to stop
INNER_MAX_ITERS = 50_000
INITIAL_LOG_L1REG = -1.8  # a very sparse model: the tuning has to loosen it
FD_POINT = -3.7  # generic: no coefficient enters the support within +-FD_EPS
FD_EPS = 1e-5


def load_data(n_train: int = 100, seed: int = 0):
    """Breast-cancer data split into ``(X_train, y_train, X_val, y_val)``.

    Features standardised with the training statistics, labels in {0, 1}. A small
    training set (100 of 569 tumours) leaves room for the penalty to help.
    """
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    perm = np.random.default_rng(seed).permutation(len(X))
    tr, va = perm[:n_train], perm[n_train:]
    mean, std = X[tr].mean(0), X[tr].std(0)
    X = (X - mean) / std
    return tuple(jnp.asarray(a) for a in (X[tr], y[tr].astype(float), X[va], y[va].astype(float)))


def logistic_loss(params, X, y):
    """Mean logistic loss of the linear model ``X w + b`` for labels ``y`` in {0, 1}."""
    logits = X @ params["w"] + params["b"]
    # softplus(z) - y z = -log sigmoid(+-z), computed stably.
    return jnp.mean(jax.nn.softplus(logits) - y * logits)


def l1_strengths(l1reg):
    """Per-leaf penalty for ``prox_lasso``: the intercept is left unpenalised."""
    return {"w": l1reg, "b": jnp.zeros_like(l1reg)}


# Zero exactly at the solutions, for any step. The implicit linear system has 31
# unknowns and is solved densely (LU), so its conditioning hardly matters: step 1.
logreg_optimality = proximal_gradient_condition(logistic_loss, prox_lasso, 1.0)


@jaxsecond.custom_root(logreg_optimality)
def sparse_logreg_solver(params0, l1reg_tree, X, y):
    """FISTA with adaptive restart until successive iterates agree to ``INNER_TOL``.

    ``params0=None`` starts from zero. ``l1reg_tree`` is ``l1_strengths(lambda)``.
    """
    if params0 is None:
        params0 = {"w": jnp.zeros(X.shape[1], X.dtype), "b": jnp.zeros((), X.dtype)}
    # Step 1/L, L = ||[X, 1]||_2^2 / (4 n) bounds the logistic loss's curvature. Only
    # the solver uses it, so it is not a source of derivative.
    design = jnp.concatenate([X, jnp.ones((X.shape[0], 1), X.dtype)], axis=1)
    step = 4 * X.shape[0] / jnp.linalg.norm(design, 2) ** 2
    grad = jax.grad(logistic_loss)
    tree = jax.tree.map

    def prox_step(z):
        g = grad(z, X, y)
        return prox_lasso(tree(lambda a, b: a - step * b, z, g), l1reg_tree, step)

    def cond(state):
        _, _, change, k, _ = state
        return (change > INNER_TOL) & (k < INNER_MAX_ITERS)

    def body(state):
        p, z, _, k, t = state
        p_next = prox_step(z)
        diff = tree(jnp.subtract, p_next, p)
        # Restart (O'Donoghue & Candes) when the momentum points uphill.
        leaves = map(jax.tree.leaves, (z, p_next, diff))
        uphill = sum(jnp.vdot(a - b, d) for a, b, d in zip(*leaves, strict=True))
        t = jnp.where(uphill > 0, 1.0, t)
        t_next = (1 + jnp.sqrt(1 + 4 * t * t)) / 2
        z_next = tree(lambda a, d: a + ((t - 1) / t_next) * d, p_next, diff)
        change = jnp.max(jnp.concatenate([jnp.abs(d).ravel() for d in jax.tree.leaves(diff)]))
        return p_next, z_next, change, k + 1, t_next

    one = jnp.asarray(1.0, X.dtype)
    init = (params0, params0, jnp.asarray(jnp.inf, X.dtype), 0, one)
    params, *_ = jax.lax.while_loop(cond, body, init)
    return params


def heldout_loss(log_l1reg, data):
    """Held-out logistic loss at ``lambda = exp(log_l1reg)``; aux = the coefficients."""
    X, y, X_val, y_val = data
    params = sparse_logreg_solver(None, l1_strengths(jnp.exp(log_l1reg)), X, y)
    return logistic_loss(params, X_val, y_val), params


# One compiled program serves the sweep, the tangents, the tuning and the differences.
value_and_hypergradient = jax.jit(jax.value_and_grad(heldout_loss, has_aux=True))


def finite_difference(log_l1reg, data, eps: float = FD_EPS):
    """Central difference of the held-out loss in ``log(lambda)``.

    With the solve converged to 1e-13, solver noise contributes ~1e-13 / eps ~ 1e-8 and
    truncation ~eps^2 ~ 1e-10 (where the support does not change within +-eps), so
    agreement to ~1e-7 relative is expected.
    """
    (plus, _), _ = value_and_hypergradient(log_l1reg + eps, data)
    (minus, _), _ = value_and_hypergradient(log_l1reg - eps, data)
    return (plus - minus) / (2 * eps)


def tune(data, log_l1reg0: float = INITIAL_LOG_L1REG, num_steps: int = 10, lr: float = 8.0):
    """Gradient descent on ``log(lambda)``; returns the visited values and their losses."""
    log_l1reg = jnp.asarray(log_l1reg0, data[0].dtype)
    log_l1regs, losses = [], []
    for _ in range(num_steps + 1):
        (loss, _), g = value_and_hypergradient(log_l1reg, data)
        log_l1regs.append(float(log_l1reg))
        losses.append(float(loss))
        log_l1reg = log_l1reg - lr * g
    return np.array(log_l1regs), np.array(losses)


@example(
    "sparse_logreg",
    area="implicit",
    description="Sparse logistic regression: held-out-loss hypergradient through prox_lasso.",
)
def run(out: pathlib.Path, full: bool = False) -> ExampleResult:
    """Hypergradients of l1-logistic regression through its proximal-gradient fixed point."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with jax.enable_x64(True):
        data = load_data()
        # Strongly typed float64 scalars throughout: a weakly typed one (a Python
        # float) would compile the program a second time.
        scalar = lambda t: jnp.asarray(t, data[0].dtype)
        (_, _), implicit = value_and_hypergradient(scalar(FD_POINT), data)
        fd = finite_difference(scalar(FD_POINT), data)
        rel_err = float(abs(implicit - fd) / abs(fd))

        sweep = np.linspace(-6.0, -1.0, 201 if full else 51)
        at_sweep = [value_and_hypergradient(scalar(t), data) for t in sweep]
        curve = np.array([float(v) for (v, _), _ in at_sweep])
        slopes = np.array([float(g) for _, g in at_sweep])
        support = np.array([int(jnp.sum(p["w"] != 0)) for (_, p), _ in at_sweep])
        log_l1regs, losses = tune(data, num_steps=30 if full else 10)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(sweep, curve, color="0.5", label="held-out loss")
    for n, i in enumerate(range(0, len(sweep), len(sweep) // 8)):
        t, v, g = sweep[i], curve[i], slopes[i]
        xs = np.array([t - 0.25, t + 0.25])
        label = "implicit hypergradient (tangent)" if n == 0 else None
        axes[0].plot(xs, v + g * (xs - t), color="C3", lw=2, label=label)
        axes[0].plot([t], [v], "o", color="C3", ms=4)
    axes[0].plot(log_l1regs, losses, ".-", color="C0", lw=0.8, label="gradient descent")
    axes[0].set_xlabel("log(lambda)")
    axes[0].set_ylabel("held-out logistic loss")
    axes[0].set_title("l1-logistic regression, breast cancer")
    axes[0].legend()
    axes[1].step(sweep, support, where="mid", color="C2")
    axes[1].set_xlabel("log(lambda)")
    axes[1].set_ylabel("support size (nonzero coefficients)")
    axes[1].set_title(f"sparsity (of {data[0].shape[1]} features)")
    fig.tight_layout()
    path = out / "sparse_logreg.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)

    best = int(np.argmin(losses))
    return ExampleResult(
        summary=(
            f"Sparse logistic regression: held-out loss {losses[0]:.4f} -> {losses[best]:.4f} "
            f"by {len(losses) - 1} hypergradient steps on log(lambda) "
            f"({time.perf_counter() - start:.1f} s)."
        ),
        key_figure=(
            f"hypergradient vs finite differences: rel. err {rel_err:.1e}; "
            f"tuned log(lambda) = {log_l1regs[best]:.2f}"
        ),
        figures=(path,),
    )


if __name__ == "__main__":
    script_main(run)
