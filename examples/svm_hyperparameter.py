"""Tune a multiclass SVM's regularisation through its dual, by implicit differentiation.

The multiclass linear SVM of Crammer and Singer,

    min_W  lambda / 2 ||W||_F^2 + sum_i max_j [1 - delta_{j y_i} + (w_j - w_{y_i}) . x_i],

is solved through its dual: one probability simplex per training example,
``beta in R^{n x k}`` with ``beta_i in Delta^k``, and (multiplied by ``lambda``)

    min_beta  1/2 ||X^T (Y - beta)||_F^2 + lambda <beta, Y>,   W = X^T (Y - beta) / lambda,

where ``Y`` is the one-hot label matrix. Projected gradient descent (accelerated, with
adaptive restart) solves it, the projection being
:func:`jaxsecond.projection.projection_simplex` applied to each row. Its solutions are
the fixed points of the projected-gradient map, so decorating the solver with
``custom_root(projected_gradient_condition(dual_objective, row_simplex_projection))``
makes ``jax.grad`` of a validation loss return the hypergradient with respect to
``log(lambda)`` from the implicit function theorem. The simplex projection is
piecewise linear; its Jacobian on the support is all the theorem needs.

The data are scikit-learn's bundled 8x8 digits, standardised, with 150 training images
of which 20% carry a wrong label, so that the regularisation has something to do. The
validation loss is the same multiclass hinge loss the SVM trains on, on the remaining
images. The example checks the hypergradient against central finite differences, draws
it as tangents on the validation-loss curve, and tunes ``log(lambda)`` by gradient
descent (the dual solution of one step warm-starts the next). Runs in float64.

References: K. Crammer, Y. Singer, "On the Algorithmic Implementation of Multiclass
Kernel-based Vector Machines", JMLR 2001. M. Blondel, Q. Berthet, M. Cuturi, R. Frostig,
S. Hoyer, F. Llinares-López, F. Pedregosa, J.-P. Vert, "Efficient and Modular Implicit
Differentiation", NeurIPS 2022 (multiclass SVM experiment, Section 4).
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
from jaxsecond.implicit import projected_gradient_condition
from jaxsecond.projection import projection_simplex

matplotlib.use("Agg")
import matplotlib.pyplot as plt

INNER_TOL = 1e-12  # max-norm change of the dual between iterations at which to stop
INNER_MAX_ITERS = 20_000
INITIAL_LOG_LAM = 0.5  # over-regularised start for the tuning
FD_POINT = -1.5  # where the hypergradient is checked against finite differences
FD_EPS = 1e-4


def load_data(n_train: int = 150, label_noise: float = 0.2, seed: int = 0):
    """Digits split into ``(X_train, Y_train, X_val, y_val)``, standardised with the
    training statistics; ``Y_train`` is one-hot with a fraction ``label_noise`` of wrong
    labels (drawn with ``seed``).

    The features are also divided by the spectral norm of the training design, so that
    the dual objective's gradient is 1-Lipschitz and a unit step is safe whatever
    ``lambda`` is. A global feature scale only shifts ``log(lambda)``.
    """
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(X))
    tr, va = perm[:n_train], perm[n_train:]
    mean, std = X[tr].mean(0), X[tr].std(0)
    std[std == 0] = 1.0  # pixels that are blank on every training image
    X = (X - mean) / std
    X = X / np.linalg.norm(X[tr], 2)
    k = int(y.max()) + 1
    y_train = y[tr].copy()
    flip = rng.random(n_train) < label_noise
    y_train[flip] = (y_train[flip] + rng.integers(1, k, int(flip.sum()))) % k
    Y_train = np.eye(k)[y_train]
    return tuple(jnp.asarray(a) for a in (X[tr], Y_train, X[va], y[va]))


def dual_objective(beta, lam, X, Y):
    """``lambda`` times the (negated) Crammer-Singer dual, up to a constant."""
    V = X.T @ (Y - beta)
    return 0.5 * jnp.vdot(V, V) + lam * jnp.vdot(beta, Y)


def row_simplex_projection(beta, hyperparams_proj=None):
    """Project each row of ``beta`` onto the probability simplex (the dual's domain)."""
    del hyperparams_proj
    return jax.vmap(projection_simplex)(beta)


# Zero exactly at the dual solutions. Step 1 = 1 / Lipschitz constant (see load_data):
# the root set does not depend on the step, but the linear system is best conditioned
# near it.
svm_optimality = projected_gradient_condition(dual_objective, row_simplex_projection, 1.0)


@jaxsecond.custom_root(svm_optimality)
def svm_dual_solver(beta0, hyperparams_proj, lam, X, Y):
    """Accelerated projected gradient with adaptive restart, until successive iterates
    agree to ``INNER_TOL``. ``beta0=None`` starts from ``Y`` (that is ``W = 0``)."""
    beta0 = Y if beta0 is None else beta0
    grad = jax.grad(dual_objective)

    def cond(state):
        _, _, change, k, _ = state
        return (change > INNER_TOL) & (k < INNER_MAX_ITERS)

    def body(state):
        beta, z, _, k, t = state
        beta_next = row_simplex_projection(z - grad(z, lam, X, Y), hyperparams_proj)
        # O'Donoghue & Candes restart: drop the momentum when it points uphill. Plain
        # FISTA oscillates for thousands of iterations on this ill-conditioned dual.
        t = jnp.where(jnp.vdot(z - beta_next, beta_next - beta) > 0, 1.0, t)
        t_next = (1 + jnp.sqrt(1 + 4 * t * t)) / 2
        z_next = beta_next + ((t - 1) / t_next) * (beta_next - beta)
        change = jnp.max(jnp.abs(beta_next - beta))
        return beta_next, z_next, change, k + 1, t_next

    init = (beta0, beta0, jnp.asarray(jnp.inf, beta0.dtype), 0, jnp.asarray(1.0, beta0.dtype))
    beta, *_ = jax.lax.while_loop(cond, body, init)
    return beta


def primal_weights(beta, lam, X, Y):
    """``W = X^T (Y - beta) / lambda``: the primal solution from the dual one."""
    return X.T @ (Y - beta) / lam


def multiclass_hinge(scores, labels):
    """Mean Crammer-Singer hinge loss ``max_j (s_j + 1 - delta_{j y}) - s_y``."""
    onehot = jax.nn.one_hot(labels, scores.shape[1], dtype=scores.dtype)
    true_score = jnp.sum(scores * onehot, axis=1)
    return jnp.mean(jnp.max(scores + 1.0 - onehot, axis=1) - true_score)


def validation_loss(log_lam, data, beta0):
    """Validation hinge loss at ``lambda = exp(log_lam)``; aux = (dual solution, accuracy)."""
    X, Y, X_val, y_val = data
    lam = jnp.exp(log_lam)
    beta = svm_dual_solver(beta0, None, lam, X, Y)
    scores = X_val @ primal_weights(beta, lam, X, Y)
    accuracy = jnp.mean(jnp.argmax(scores, axis=1) == y_val)
    return multiclass_hinge(scores, y_val), (beta, accuracy)


# One compiled program serves the tuning steps, the tangents and the finite differences.
value_and_hypergradient = jax.jit(jax.value_and_grad(validation_loss, has_aux=True))


def finite_difference(log_lam, data, eps: float = FD_EPS):
    """Central difference of the validation loss in ``log(lambda)``.

    With the dual converged to 1e-12, the solver noise in the difference is
    ~1e-12 / eps ~ 1e-8 (times the sensitivity of the loss to the dual), and the
    truncation error ~eps^2, so a relative agreement near 1e-6 or better is expected at
    a point where the support of the dual does not change within +-eps.
    """
    beta0 = data[1]
    (plus, _), _ = value_and_hypergradient(log_lam + eps, data, beta0)
    (minus, _), _ = value_and_hypergradient(log_lam - eps, data, beta0)
    return (plus - minus) / (2 * eps)


def tune(data, log_lam0: float = INITIAL_LOG_LAM, num_steps: int = 15, lr: float = 4.0):
    """Gradient descent on ``log(lambda)``; returns the visited values and their losses."""
    log_lam = jnp.asarray(log_lam0, data[0].dtype)
    beta = data[1]
    log_lams, losses, accuracies = [], [], []
    for _ in range(num_steps + 1):
        (loss, (beta, acc)), g = value_and_hypergradient(log_lam, data, beta)
        log_lams.append(float(log_lam))
        losses.append(float(loss))
        accuracies.append(float(acc))
        log_lam = log_lam - lr * g
    return np.array(log_lams), np.array(losses), np.array(accuracies)


@example(
    "svm_hyperparameter",
    area="implicit",
    description="Multiclass SVM regularisation tuned through its simplex-constrained dual.",
)
def run(out: pathlib.Path, full: bool = False) -> ExampleResult:
    """Tune a Crammer-Singer SVM's lambda by implicit differentiation of its dual."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with jax.enable_x64(True):
        data = load_data(n_train=300 if full else 150)
        cold = data[1]  # starting dual for a fresh solve
        # Every call passes a strongly typed float64 scalar: a weakly typed one (from a
        # Python float) would compile the program a second time.
        scalar = lambda t: jnp.asarray(t, data[0].dtype)
        (_, _), implicit = value_and_hypergradient(scalar(FD_POINT), data, cold)
        fd = finite_difference(scalar(FD_POINT), data)
        rel_err = float(abs(implicit - fd) / abs(fd))

        # The sweep reuses the compiled value-and-gradient program: a second, vmapped
        # program would cost more to compile than the few solves it batches.
        # Below lambda ~ e^-5 the faces of the dual grow flat directions: the solve and
        # the linear system slow down, and the loss only rises further.
        sweep = np.linspace(-5.0, 1.0, 49 if full else 13)
        at_sweep = [value_and_hypergradient(scalar(t), data, cold) for t in sweep]
        curve = np.array([float(v) for (v, _), _ in at_sweep])
        slopes = np.array([float(g) for _, g in at_sweep])
        log_lams, losses, accuracies = tune(data, num_steps=40 if full else 12)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(sweep, curve, color="0.5", label="validation loss")
    for i in range(0, len(sweep), 2):  # every other sweep point, for legibility
        t, v, g = sweep[i], curve[i], slopes[i]
        xs = np.array([t - 0.3, t + 0.3])
        label = "implicit hypergradient (tangent)" if i == 0 else None
        axes[0].plot(xs, v + g * (xs - t), color="C3", lw=2, label=label)
        axes[0].plot([t], [v], "o", color="C3", ms=4)
    axes[0].plot(log_lams, losses, ".-", color="C0", ms=5, lw=0.8, label="tuning trajectory")
    axes[0].set_xlabel("log(lambda)")
    axes[0].set_ylabel("validation hinge loss")
    axes[0].set_title("Crammer-Singer SVM on digits (20% label noise)")
    axes[0].legend()
    axes[1].plot(losses, "o-", color="C0", label="validation loss")
    axes[1].set_xlabel("gradient step")
    axes[1].set_ylabel("validation hinge loss")
    twin = axes[1].twinx()
    twin.plot(log_lams, "s--", color="C2", ms=4, label="log(lambda)")
    twin.set_ylabel("log(lambda)")
    axes[1].set_title(f"tuning: accuracy {accuracies[0]:.3f} -> {accuracies[-1]:.3f}")
    axes[1].legend(loc="upper right")
    twin.legend(loc="center right")
    fig.tight_layout()
    path = out / "svm_hyperparameter.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)

    return ExampleResult(
        summary=(
            f"Multiclass SVM: validation loss {losses[0]:.3f} -> {losses[-1]:.3f} over "
            f"{len(losses) - 1} hypergradient steps, log(lambda) {log_lams[0]:.2f} -> "
            f"{log_lams[-1]:.2f} ({time.perf_counter() - start:.1f} s)."
        ),
        key_figure=(
            f"hypergradient vs finite differences: rel. err {rel_err:.1e}; "
            f"validation accuracy {accuracies[0]:.3f} -> {accuracies[-1]:.3f}"
        ),
        figures=(path,),
    )


if __name__ == "__main__":
    script_main(run)
