"""Dataset distillation: ten synthetic digits that teach a classifier.

We learn one synthetic 8x8 image per class such that multinomial logistic
regression (with an L2 penalty) trained on those ten images alone classifies
the real digits (scikit-learn's ``load_digits``) well. This is a bilevel
problem: the inner problem fits the classifier to the synthetic images, the
outer problem moves the images to lower the classifier's loss on the real
training images. The inner solver (gradient descent to a gradient-norm
tolerance) is decorated with :func:`jaxsecond.custom_root` on the gradient of
the inner objective; ``symmetric=True`` because that gradient's Jacobian is the
inner Hessian, positive definite thanks to the L2 penalty, so conjugate
gradients solve the implicit linear system. Runs in float32.

Reference: M. Blondel, Q. Berthet, M. Cuturi, R. Frostig, S. Hoyer,
F. Llinares-López, F. Pedregosa, J.-P. Vert, "Efficient and Modular Implicit
Differentiation", NeurIPS 2022 (dataset distillation experiment); T. Wang,
J.-Y. Zhu, A. Torralba, A. A. Efros, "Dataset Distillation", 2018.
"""

from __future__ import annotations

import functools
import pathlib
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from tqdm.auto import tqdm

import jaxsecond
from jaxsecond._registry import ExampleResult, example, script_main

matplotlib.use("Agg")
import matplotlib.pyplot as plt

NUM_CLASSES = 10
# Inner ridge penalty: makes the inner problem strongly convex. The data term is a
# sum (not a mean) over the ten images, which scales the Hessian up tenfold at the
# same solution as a mean with L2 / 10. That matters in float32: lineax's CG treats
# p^T H p below ~100 n eps r^T r as a breakdown (NaN), so the smallest Hessian
# eigenvalue (here L2) must stay well above 100 * 650 * 1.2e-7 ~ 8e-3.
L2 = 1e-1
INNER_TOL = 1e-4  # inner gradient-norm tolerance (float32 noise floor is ~1e-6)
INNER_MAX_STEPS = 20_000


def load_data(seed: int = 0, dtype=np.float32):
    """Digits with pixels scaled to [0, 1], split 80/20 (stratified)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(
        (X / 16.0).astype(dtype), y, test_size=0.2, random_state=seed, stratify=y
    )
    return tuple(jnp.asarray(a) for a in (X_tr, y_tr, X_te, y_te))


def images_from_logits(image_logits):
    # A sigmoid keeps the synthetic pixels in the real data's range [0, 1];
    # it also bounds the inner problem's curvature (see _step_size).
    return jax.nn.sigmoid(image_logits)


def _logits(params, X):
    W, b = params
    return X @ W + b


def inner_objective(params, images):
    """Summed cross-entropy on the synthetic images (label k for image k) + L2 / 2 ||params||^2."""
    labels = jnp.arange(NUM_CLASSES)
    ce = optax.softmax_cross_entropy_with_integer_labels(_logits(params, images), labels)
    return ce.sum() + 0.5 * L2 * sum(jnp.sum(p**2) for p in params)


inner_optimality = jax.grad(inner_objective)


def _step_size(images):
    # Hessian of the summed cross-entropy <= ||[X, 1]||_2^2 / 2 (softmax curvature <= 1/2).
    Xb = jnp.concatenate([images, jnp.ones((images.shape[0], 1), images.dtype)], axis=1)
    return 1.0 / (0.5 * jnp.linalg.norm(Xb, 2) ** 2 + L2)


@functools.cache
def make_inner_solver(tol: float = INNER_TOL, max_steps: int = INNER_MAX_STEPS):
    """Inner solver with a given gradient-norm tolerance, decorated with custom_root."""

    @jaxsecond.custom_root(inner_optimality, symmetric=True)
    def inner_solver(init_params, images):
        """Gradient descent with heavy-ball momentum until the gradient norm < tol."""
        eta = _step_size(images)
        # Polyak's momentum for a strongly convex problem of condition number L / L2.
        kappa = 1.0 / (eta * L2)
        beta = ((jnp.sqrt(kappa) - 1) / (jnp.sqrt(kappa) + 1)) ** 2
        grad_norm = lambda g: jnp.sqrt(sum(jnp.sum(x**2) for x in g))

        def cond(state):
            _, _, g, k = state
            return (grad_norm(g) > tol) & (k < max_steps)

        def body(state):
            p, p_prev, g, k = state
            p_next = jax.tree.map(lambda x, xp, gx: x - eta * gx + beta * (x - xp), p, p_prev, g)
            return p_next, p, inner_optimality(p_next, images), k + 1

        g0 = inner_optimality(init_params, images)
        params, _, _, _ = jax.lax.while_loop(cond, body, (init_params, init_params, g0, 0))
        return params

    return inner_solver


def zero_params(dim: int, dtype):
    return (jnp.zeros((dim, NUM_CLASSES), dtype), jnp.zeros(NUM_CLASSES, dtype))


def outer_loss(image_logits, X, y, init_params=None, tol: float = INNER_TOL):
    """Cross-entropy on real images of the classifier fitted to the synthetic ones."""
    images = images_from_logits(image_logits)
    if init_params is None:
        init_params = zero_params(images.shape[1], images.dtype)
    params = make_inner_solver(tol)(init_params, images)
    ce = optax.softmax_cross_entropy_with_integer_labels(_logits(params, X), y).mean()
    return ce, params


def fit_and_score(images, X_test, y_test):
    """Test accuracy of logistic regression trained on ``images`` (one per class)."""
    params = make_inner_solver()(zero_params(images.shape[1], images.dtype), images)
    return jnp.mean(jnp.argmax(_logits(params, X_test), -1) == y_test)


def distill(data, *, num_steps: int, learning_rate: float = 0.1, seed: int = 0):
    X_tr, y_tr = data[:2]
    dim = X_tr.shape[1]
    image_logits = 0.1 * jax.random.normal(jax.random.key(seed), (NUM_CLASSES, dim), X_tr.dtype)
    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(image_logits)

    @jax.jit
    def step(image_logits, opt_state, warm):
        # Warm start the inner solver at the previous classifier: the outer step
        # moves the images only a little, and the implicit gradient does not care
        # where the inner iterations started.
        (loss, params), g = jax.value_and_grad(outer_loss, has_aux=True)(
            image_logits, X_tr, y_tr, warm
        )
        updates, opt_state = optimizer.update(g, opt_state)
        return optax.apply_updates(image_logits, updates), opt_state, params, loss

    warm = zero_params(dim, X_tr.dtype)
    losses = []
    for _ in tqdm(range(num_steps), desc="distillation", leave=False, disable=None):
        image_logits, opt_state, warm, loss = step(image_logits, opt_state, warm)
        losses.append(float(loss))
    return image_logits, np.array(losses)


@example(
    "dataset_distillation",
    area="implicit",
    description="Learn one synthetic digit per class; logistic regression on them via custom_root.",
)
def run(out: pathlib.Path, full: bool = False) -> ExampleResult:
    """Distil digits into ten synthetic images with implicit hypergradients."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = load_data()
    X_tr, y_tr, X_te, y_te = data
    num_steps = 1000 if full else 200
    image_logits, losses = distill(data, num_steps=num_steps)
    images = images_from_logits(image_logits)
    score = jax.jit(fit_and_score)
    test_acc = float(score(images, X_te, y_te))
    # Baselines with the same classifier: one real training image per class, and
    # the per-class mean image.
    first = np.array([int(np.flatnonzero(np.asarray(y_tr) == c)[0]) for c in range(NUM_CLASSES)])
    real_acc = float(score(X_tr[first], X_te, y_te))
    means = jnp.stack([X_tr[y_tr == c].mean(0) for c in range(NUM_CLASSES)])
    mean_acc = float(score(means, X_te, y_te))
    elapsed = time.perf_counter() - start

    fig = plt.figure(figsize=(12, 4))
    grid = fig.add_gridspec(2, 8)
    for c in range(NUM_CLASSES):
        ax = fig.add_subplot(grid[c // 5, c % 5])
        # Contrast stretched per image: the learned pixels stay near mid-grey.
        ax.imshow(np.asarray(images[c]).reshape(8, 8), cmap="gray_r")
        ax.set_title(str(c))
        ax.axis("off")
    ax = fig.add_subplot(grid[:, 5:])
    ax.plot(losses)
    ax.set_xlabel("outer step")
    ax.set_ylabel("cross-entropy on real training digits")
    ax.set_title(f"test accuracy {test_acc:.1%} from 10 images")
    fig.tight_layout()
    path = out / "dataset_distillation.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)

    return ExampleResult(
        summary=(
            f"Distilled digits into 10 synthetic images by {num_steps} implicit-gradient steps "
            f"({elapsed:.1f} s)."
        ),
        key_figure=(
            f"test accuracy {test_acc:.1%} (one real image per class: {real_acc:.1%}, "
            f"class means: {mean_acc:.1%})"
        ),
        figures=(path,),
    )


if __name__ == "__main__":
    script_main(run)
