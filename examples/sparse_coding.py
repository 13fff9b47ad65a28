"""Task-driven dictionary learning: gradients through lasso codes, by implicit differentiation.

Each image ``x`` (scikit-learn's bundled 8x8 digits, normalised to unit length) is
encoded by its sparse code over a dictionary ``D`` of unit-norm atoms,

    a(x; D) = argmin_a  1/2 ||x - D a||^2 + lambda ||a||_1,

computed by FISTA (with adaptive restart) whose prox is
:func:`jaxsecond.prox.prox_lasso`. A multinomial logistic regression then predicts the
digit from the code. In task-driven dictionary learning (Mairal, Bach and Ponce 2012)
the dictionary is trained for that downstream loss, which needs the derivative of the
codes with respect to ``D``. The codes are fixed points of the proximal-gradient map,
so decorating the solver with ``custom_root(proximal_gradient_condition(...))`` gives
it by the implicit function theorem: on the support of the code it is the derivative
of the restricted least-squares solution, off it zero. No iteration is unrolled.

The dictionary (starting from random training images) and the classifier are trained
jointly by Adam on the training cross-entropy; each step warm-starts the lasso solves
from the previous codes (the starting point gets no derivative). A directional
derivative of the loss with respect to the dictionary is checked against central
finite differences. Runs in float64.

References: J. Mairal, F. Bach, J. Ponce, "Task-Driven Dictionary Learning", IEEE
TPAMI 2012. M. Blondel, Q. Berthet, M. Cuturi, R. Frostig, S. Hoyer,
F. Llinares-López, F. Pedregosa, J.-P. Vert, "Efficient and Modular Implicit
Differentiation", NeurIPS 2022 (task-driven dictionary learning, Section 4).
"""

from __future__ import annotations

import pathlib
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

import jaxsecond
from jaxsecond._registry import ExampleResult, example, script_main
from jaxsecond.implicit import proximal_gradient_condition
from jaxsecond.prox import prox_lasso

matplotlib.use("Agg")
import matplotlib.pyplot as plt

L1REG = 0.15  # lasso penalty of the codes (images have unit norm)
L2REG = 1e-3  # ridge penalty of the classifier
INNER_TOL = 1e-12  # max-norm change of a code between iterations at which to stop
INNER_MAX_ITERS = 5_000
FD_EPS = 1e-6


def load_data(n_train: int = 300, n_val: int = 500, seed: int = 0):
    """Digits as unit-norm pixel vectors: ``(X_train, y_train, X_val, y_val)``."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    perm = np.random.default_rng(seed).permutation(len(X))
    tr, va = perm[:n_train], perm[n_train : n_train + n_val]
    return jnp.asarray(X[tr]), jnp.asarray(y[tr]), jnp.asarray(X[va]), jnp.asarray(y[va])


def init_params(X_train, num_atoms: int, num_classes: int = 10, seed: int = 0):
    """Dictionary from ``num_atoms`` random training images; a zero classifier."""
    idx = np.random.default_rng(seed).choice(X_train.shape[0], num_atoms, replace=False)
    return {
        "V": X_train[idx].T,  # (pixels, atoms): unnormalised atoms
        "W": jnp.zeros((num_atoms, num_classes), X_train.dtype),
        "b": jnp.zeros(num_classes, X_train.dtype),
    }


def dictionary(V):
    """Unit-norm atoms: without the constraint, the lasso would shrink to zero codes on
    ever longer atoms."""
    return V / jnp.linalg.norm(V, axis=0, keepdims=True)


def reconstruction_loss(code, D, x):
    return 0.5 * jnp.sum((x - D @ code) ** 2)


# Zero exactly at the lasso solution, for any step. The implicit system is dense LU on
# num_atoms unknowns per image, so its conditioning hardly matters: step 1.
lasso_optimality = proximal_gradient_condition(reconstruction_loss, prox_lasso, 1.0)


@jaxsecond.custom_root(lasso_optimality)
def sparse_code(code0, l1reg, D, x):
    """FISTA with adaptive restart until successive iterates agree to ``INNER_TOL``."""
    step = 1.0 / jnp.linalg.norm(D, 2) ** 2  # 1 / Lipschitz constant; solver-only

    def cond(state):
        _, _, change, k, _ = state
        return (change > INNER_TOL) & (k < INNER_MAX_ITERS)

    def body(state):
        a, z, _, k, t = state
        a_next = prox_lasso(z - step * (D.T @ (D @ z - x)), l1reg, step)
        # Restart (O'Donoghue & Candes) when the momentum points uphill.
        t = jnp.where(jnp.vdot(z - a_next, a_next - a) > 0, 1.0, t)
        t_next = (1 + jnp.sqrt(1 + 4 * t * t)) / 2
        z_next = a_next + ((t - 1) / t_next) * (a_next - a)
        return a_next, z_next, jnp.max(jnp.abs(a_next - a)), k + 1, t_next

    one = jnp.asarray(1.0, x.dtype)
    code, *_ = jax.lax.while_loop(cond, body, (code0, code0, jnp.inf * one, 0, one))
    return code


# One image per call; vmap batches the solves and their implicit linear systems.
sparse_codes = jax.vmap(sparse_code, in_axes=(0, None, None, 0))


def task_loss(params, codes0, X, y):
    """Cross-entropy of the classifier on the codes, plus its ridge penalty.

    Returns ``(loss, aux)`` with aux the codes (to warm-start the next solve), the
    cross-entropy alone and the accuracy.
    """
    codes = sparse_codes(codes0, L1REG, dictionary(params["V"]), X)
    logits = codes @ params["W"] + params["b"]
    true_logit = jnp.take_along_axis(logits, y[:, None], 1)[:, 0]
    ce = jnp.mean(jax.nn.logsumexp(logits, axis=1) - true_logit)
    accuracy = jnp.mean(jnp.argmax(logits, axis=1) == y)
    loss = ce + 0.5 * L2REG * jnp.sum(params["W"] ** 2)
    return loss, {"codes": codes, "ce": ce, "accuracy": accuracy}


# One compiled program serves training, evaluation (on a held-out set of the same size)
# and the finite-difference check: each extra program would cost seconds to compile.
loss_and_grad = jax.jit(jax.value_and_grad(task_loss, has_aux=True))


def evaluate(params, X, y):
    """Held-out ``(cross-entropy, accuracy, fraction of nonzero code entries)``."""
    codes0 = jnp.zeros((X.shape[0], params["V"].shape[1]), X.dtype)
    (_, aux), _ = loss_and_grad(params, codes0, X, y)
    return float(aux["ce"]), float(aux["accuracy"]), float(jnp.mean(aux["codes"] != 0))


def dictionary_directional_derivative(params, X, y, direction, eps: float = FD_EPS):
    """``<d loss / d V, direction>`` by the implicit gradient and by central differences.

    The loss has a kink wherever a code coordinate crosses the lasso threshold, and
    among thousands of code entries some sit within ~1e-5 of it: eps must stay below
    that. The codes are converged to ~1e-12, so solver noise in the difference is
    ~1e-12 / eps ~ 1e-6 at worst (much less in practice) and truncation ~eps^2.
    """
    codes0 = jnp.zeros((X.shape[0], params["V"].shape[1]), X.dtype)
    (_, _), grads = loss_and_grad(params, codes0, X, y)
    implicit = jnp.vdot(grads["V"], direction)
    shifted = lambda h: {**params, "V": params["V"] + h * direction}
    (plus, _), _ = loss_and_grad(shifted(eps), codes0, X, y)
    (minus, _), _ = loss_and_grad(shifted(-eps), codes0, X, y)
    return float(implicit), float((plus - minus) / (2 * eps))


def train(params, data, num_steps: int, lr_dictionary: float = 3e-3, lr_classifier: float = 0.1):
    """Adam on dictionary and classifier; returns final params and the loss per step.

    The dictionary gets a small step: its unit-norm atoms have entries ~0.1, and a
    large Adam step would replace them by noise before the classifier has caught up.
    """
    X, y, _, _ = data
    optimizer = optax.multi_transform(
        {"dictionary": optax.adam(lr_dictionary), "classifier": optax.adam(lr_classifier)},
        {"V": "dictionary", "W": "classifier", "b": "classifier"},
    )

    @jax.jit
    def update(params, opt_state, grads):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = optimizer.init(params)
    codes = jnp.zeros((X.shape[0], params["V"].shape[1]), X.dtype)
    losses = []
    for _ in range(num_steps):
        # The previous codes warm-start the lasso solves: the dictionary moves little.
        (loss, aux), grads = loss_and_grad(params, codes, X, y)
        params, opt_state = update(params, opt_state, grads)
        codes = aux["codes"]
        losses.append(float(loss))
    return params, np.array(losses)


def _plot_atoms(ax, V, title):
    D = V / np.linalg.norm(V, axis=0, keepdims=True)
    k = D.shape[1]
    cols = 8
    rows = -(-k // cols)
    canvas = np.full((rows * 9 - 1, cols * 9 - 1), np.nan)
    for j in range(k):
        r, c = divmod(j, cols)
        atom = D[:, j].reshape(8, 8)
        canvas[r * 9 : r * 9 + 8, c * 9 : c * 9 + 8] = atom / np.abs(atom).max()
    ax.imshow(canvas, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_title(title)
    ax.axis("off")


@example(
    "sparse_coding",
    area="implicit",
    description="Task-driven dictionary learning through lasso codes (prox_lasso, FISTA).",
)
def run(out: pathlib.Path, full: bool = False) -> ExampleResult:
    """Learn a dictionary for digit classification through implicitly differentiated codes."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with jax.enable_x64(True):
        n = 1000 if full else 300
        data = load_data(n_train=n, n_val=n)
        X, y, X_val, y_val = data
        params0 = init_params(X, num_atoms=48 if full else 24)
        key_v, key_w = jax.random.split(jax.random.key(0))
        direction = jax.random.normal(key_v, params0["V"].shape, X.dtype)
        # At a random classifier (at W = 0 the loss would not depend on the dictionary).
        probe = {**params0, "W": jax.random.normal(key_w, params0["W"].shape, X.dtype)}
        implicit, fd = dictionary_directional_derivative(probe, X, y, direction)
        rel_err = abs(implicit - fd) / abs(fd)
        before = evaluate(params0, X_val, y_val)
        params, losses = train(params0, data, num_steps=300 if full else 40)
        after = evaluate(params, X_val, y_val)
        V0, V = np.asarray(params0["V"]), np.asarray(params["V"])

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6), gridspec_kw={"width_ratios": [1, 1, 1.1]})
    _plot_atoms(axes[0], V0, "initial atoms (training images)")
    _plot_atoms(axes[1], V, "learned atoms")
    axes[2].plot(np.arange(1, len(losses) + 1), losses, color="C0")
    axes[2].set_xlabel("Adam step")
    axes[2].set_ylabel("training cross-entropy (+ ridge)")
    axes[2].set_title(f"held-out accuracy {after[1]:.3f}, codes {100 * after[2]:.0f}% nonzero")
    fig.tight_layout()
    path = out / "sparse_coding.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)

    return ExampleResult(
        summary=(
            f"Task-driven dictionary learning: training loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
            f"held-out accuracy {after[1]:.3f} over {len(losses)} steps "
            f"({time.perf_counter() - start:.1f} s)."
        ),
        key_figure=(
            f"dictionary directional derivative vs finite differences: rel. err {rel_err:.1e}; "
            f"held-out loss {before[0]:.3f} -> {after[0]:.3f}"
        ),
        figures=(path,),
    )


if __name__ == "__main__":
    script_main(run)
