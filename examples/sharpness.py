"""Sharpness of a small MLP on scikit-learn digits during training.

A 64-32-10 tanh MLP (an equinox Module) is trained on scikit-learn's digits with
full-batch gradient descent (``optax.sgd``, no momentum), so each epoch is one
gradient step on the whole training set. Every few epochs the example measures
the curvature of the training loss on that same fixed batch (the training set),
passing the equinox model straight to :mod:`jaxsecond`'s curvature functions:

* the sharpness, i.e. the largest Hessian eigenvalue, by Lanczos
  (:func:`jaxsecond.hessian_eigenvalues`),
* the Hessian trace by Hutchinson's estimator with its standard error
  (:func:`jaxsecond.hutchinson_trace`, ``return_stderr=True``), drawn as error bars,
* the trace split by layer (``per_leaf=True``, the weight and bias traces of
  each ``eqx.nn.Linear`` summed). The same key draws the same probes, so the
  layer traces add up to the total estimate exactly.

Why plain full-batch gradient descent: for a step size ``eta`` the iteration is
stable along a direction of curvature ``lambda`` only while ``lambda < 2 / eta``,
and Cohen et al. found that training drives the sharpness up ("progressive
sharpening") until it reaches ``2 / eta`` and then hovers there while the loss
keeps falling, non-monotonically ("edge of stability"). The ``2 / eta`` line is a
fixed reference only for full-batch gradient descent: mini-batch noise keeps
SGD below it, and Adam's threshold applies to the preconditioned Hessian. The
loss is the squared error against one-hot labels, as in most of Cohen et al.'s
experiments; with cross-entropy the sharpness falls again late in training as
the margins grow, which hides the effect on a data set this easy.

At the end the example estimates the Hessian's spectral density by stochastic
Lanczos quadrature (:func:`jaxsecond.hessian_spectral_density`) and plots it on a
log scale with the top eigenvalue marked: a bulk near zero and a few outliers,
the largest sitting at the edge of stability. Runs in float64.

References: Z. Yao, A. Gholami, K. Keutzer, M. W. Mahoney, "PyHessian: Neural
Networks Through the Lens of the Hessian", IEEE BigData 2020; B. Ghorbani,
S. Krishnan, Y. Xiao, "An Investigation into Neural Net Optimization via Hessian
Eigenvalue Density", ICML 2019; J. M. Cohen, S. Kaur, Y. Li, J. Z. Kolter,
A. Talwalkar, "Gradient Descent on Neural Networks Typically Occurs at the Edge
of Stability", ICLR 2021.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

import equinox as eqx
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

# 2 / LEARNING_RATE = 11.1. The sharpness starts near 10, dips, then rises past the
# threshold within a few hundred epochs and settles just above it.
LEARNING_RATE = 0.18
WIDTH = 32
LANCZOS_ITERS = 40  # Krylov dimension for the top eigenvalue
TRACE_SAMPLES = 64  # Rademacher probes per trace estimate


def load_data(seed: int = 0, dtype=jnp.float64):
    """Digits (8x8 images, pixel values scaled to [0, 1]) split 80/20, stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(
        X / 16.0, y, test_size=0.2, random_state=seed, stratify=y
    )
    as_x = lambda a: jnp.asarray(a, dtype)
    return as_x(X_tr), jnp.asarray(y_tr), as_x(X_te), jnp.asarray(y_te)


def make_model(key, width: int = WIDTH, dtype=jnp.float64) -> eqx.nn.MLP:
    """A 64-``width``-10 MLP with a tanh hidden layer."""
    return eqx.nn.MLP(64, 10, width, depth=1, activation=jnp.tanh, dtype=dtype, key=key)


def loss_fn(model, X, y):
    """Half the squared error against one-hot labels, summed over classes, mean over X."""
    logits = jax.vmap(model)(X)
    targets = jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype)
    return 0.5 * jnp.mean(jnp.sum((logits - targets) ** 2, axis=-1))


def accuracy(model, X, y):
    return jnp.mean(jnp.argmax(jax.vmap(model)(X), axis=-1) == y)


def layer_names(model: eqx.nn.MLP) -> list[str]:
    return [
        f"layer {i + 1} ({lin.in_features}->{lin.out_features})"
        for i, lin in enumerate(model.layers)
    ]


def curvature_snapshot(
    model,
    X,
    y,
    key,
    *,
    lanczos_iters: int = LANCZOS_ITERS,
    trace_samples: int = TRACE_SAMPLES,
):
    """Sharpness, Hutchinson trace (with standard error) and per-layer traces at ``model``.

    Returns a dict of arrays: ``top_eigenvalue``, ``top_eigenvector`` (a model-shaped
    pytree), ``trace``, ``trace_stderr`` and ``layer_traces`` (one per ``eqx.nn.Linear``).
    """
    # Positional, so that every call with the same settings hits one compiled function.
    return _curvature_snapshot(model, X, y, key, lanczos_iters, trace_samples)


@eqx.filter_jit
def _curvature_snapshot(model, X, y, key, lanczos_iters: int, trace_samples: int):
    fun = lambda m: loss_fn(m, X, y)
    key_eig, key_trace = jax.random.split(key)
    eigenvalues, eigenvectors = jaxsecond.hessian_eigenvalues(
        fun, model, key_eig, k=1, num_iters=lanczos_iters
    )
    trace, stderr = jaxsecond.hutchinson_trace(
        fun, model, key_trace, trace_samples, return_stderr=True
    )
    # Same key, same probes: the per-leaf quadratic forms add up to the total one.
    per_leaf = jaxsecond.hutchinson_trace(fun, model, key_trace, trace_samples, per_leaf=True)
    # Results keep the model's non-array fields (the activation functions): filter them out.
    per_layer = [eqx.filter(layer, eqx.is_array) for layer in per_leaf.layers]
    return {
        "top_eigenvalue": eigenvalues[0],
        "top_eigenvector": jax.tree.map(lambda v: v[0], eqx.filter(eigenvectors, eqx.is_array)),
        "trace": trace,
        "trace_stderr": stderr,
        "layer_traces": jnp.stack([sum(jax.tree.leaves(layer)) for layer in per_layer]),
    }


@dataclasses.dataclass
class History:
    """Training loss every epoch; curvature every ``measure_every`` epochs."""

    loss: np.ndarray  # [num_epochs + 1], the loss before each step (and after the last)
    measured_at: np.ndarray  # epochs at which the curvature was measured
    top_eigenvalue: np.ndarray
    trace: np.ndarray
    trace_stderr: np.ndarray
    layer_traces: np.ndarray  # [len(measured_at), num_layers]


def train(
    model,
    X,
    y,
    key,
    *,
    num_epochs: int,
    measure_every: int,
    learning_rate: float = LEARNING_RATE,
    lanczos_iters: int = LANCZOS_ITERS,
    trace_samples: int = TRACE_SAMPLES,
):
    """Full-batch gradient descent on ``(X, y)``, measuring curvature every few epochs.

    Returns the trained model and its :class:`History`.
    """
    optimizer = optax.sgd(learning_rate)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, opt_state):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, X, y)
        updates, opt_state = optimizer.update(grads, opt_state, model)
        return eqx.apply_updates(model, updates), opt_state, loss

    losses, snapshots, measured_at = [], [], []
    for epoch in tqdm(range(num_epochs + 1), desc="training", leave=False, disable=None):
        if epoch % measure_every == 0 or epoch == num_epochs:
            snap = curvature_snapshot(
                model,
                X,
                y,
                jax.random.fold_in(key, epoch),
                lanczos_iters=lanczos_iters,
                trace_samples=trace_samples,
            )
            snapshots.append({k: np.asarray(v) for k, v in snap.items() if k != "top_eigenvector"})
            measured_at.append(epoch)
        if epoch == num_epochs:
            losses.append(float(loss_fn(model, X, y)))
            break
        model, opt_state, loss = step(model, opt_state)
        losses.append(float(loss))
    stack = lambda name: np.stack([s[name] for s in snapshots])
    history = History(
        loss=np.asarray(losses),
        measured_at=np.asarray(measured_at),
        top_eigenvalue=stack("top_eigenvalue"),
        trace=stack("trace"),
        trace_stderr=stack("trace_stderr"),
        layer_traces=stack("layer_traces"),
    )
    return model, history


def spectral_density(model, X, y, key, *, num_probes: int, num_iters: int, num_points: int = 600):
    """``(grid, density)`` of the training-loss Hessian by stochastic Lanczos quadrature."""
    fun = lambda m: loss_fn(m, X, y)
    return jaxsecond.hessian_spectral_density(
        fun, model, key, num_probes=num_probes, num_iters=num_iters, num_points=num_points
    )


def plot_history(history: History, names, learning_rate: float, path: pathlib.Path):
    threshold = 2.0 / learning_rate
    epochs = history.measured_at
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    ax = axes[0, 0]
    ax.semilogy(np.arange(len(history.loss)), history.loss)
    ax.set_ylabel("training loss")
    ax.set_title("full-batch gradient descent")
    ax = axes[0, 1]
    ax.plot(epochs, history.top_eigenvalue, "o-", ms=3, label="top eigenvalue (Lanczos)")
    ax.axhline(threshold, color="C3", ls="--", label=f"2 / learning rate = {threshold:.3g}")
    ax.set_ylabel("sharpness")
    ax.set_title("edge of stability")
    ax.legend()
    ax = axes[1, 0]
    ax.errorbar(
        epochs,
        history.trace,
        yerr=history.trace_stderr,
        fmt="o-",
        ms=3,
        capsize=2,
        label="Hutchinson estimate +- 1 std. error",
    )
    ax.set_ylabel("Hessian trace")
    ax.set_xlabel("epoch")
    ax.legend()
    ax = axes[1, 1]
    for i, name in enumerate(names):
        ax.plot(epochs, history.layer_traces[:, i], "o-", ms=3, label=name)
    ax.set_ylabel("Hessian trace per layer")
    ax.set_xlabel("epoch")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_density(grid, density, top_eigenvalue: float, learning_rate: float, path):
    grid, density = np.asarray(grid), np.asarray(density)
    # The log axis cannot show zeros: draw the density from a floor well below its peak.
    floor = 1e-7 * density.max()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.semilogy(grid, np.maximum(density, floor))
    ax.axvline(
        top_eigenvalue, color="C1", ls="-", lw=1, label=f"top eigenvalue {top_eigenvalue:.3g}"
    )
    ax.axvline(2.0 / learning_rate, color="C3", ls="--", lw=1, label="2 / learning rate")
    ax.set_ylim(bottom=floor)
    ax.set_xlabel("Hessian eigenvalue")
    ax.set_ylabel("spectral density")
    ax.set_title("stochastic Lanczos quadrature at the end of training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@example(
    "sharpness",
    area="curvature",
    description="Sharpness, Hessian trace and spectral density of an MLP trained on digits.",
    tour=True,
)
def run(out: pathlib.Path, full: bool = False, *, tour: bool = False) -> ExampleResult:
    """Sharpness of a small MLP on scikit-learn digits during training."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # The tour stops soon after the sharpness first reaches 2/lr (about epoch 360).
    num_epochs, measure_every = (3000, 25) if full else ((400, 40) if tour else (800, 40))
    num_probes, density_iters = (16, 80) if full else ((2, 30) if tour else (4, 40))
    with jax.enable_x64(True):
        X_tr, y_tr, X_te, y_te = load_data()
        model = make_model(jax.random.key(0))
        key_curv, key_density = jax.random.split(jax.random.key(1))
        model, history = train(
            model,
            X_tr,
            y_tr,
            key_curv,
            num_epochs=num_epochs,
            measure_every=measure_every,
            trace_samples=4 * TRACE_SAMPLES if full else TRACE_SAMPLES,
        )
        test_acc = float(accuracy(model, X_te, y_te))
        grid, density = spectral_density(
            model, X_tr, y_tr, key_density, num_probes=num_probes, num_iters=density_iters
        )
    names = layer_names(model)
    path_history = out / "sharpness.png"
    plot_history(history, names, LEARNING_RATE, path_history)
    top = float(history.top_eigenvalue[-1])
    path_density = out / "sharpness_spectrum.png"
    plot_density(grid, density, top, LEARNING_RATE, path_density)

    peak = int(np.argmax(history.top_eigenvalue))
    # At the edge of stability the sharpness oscillates about its level: report the mean
    # over the last quarter of training rather than one measurement.
    late = history.measured_at >= 0.75 * num_epochs
    late_sharpness = float(np.mean(history.top_eigenvalue[late]))
    layers = ", ".join(
        f"{name.split(' (')[0]} {t:.3g}"
        for name, t in zip(names, history.layer_traces[-1], strict=True)
    )
    return ExampleResult(
        summary=(
            f"Trained a 64-{WIDTH}-10 MLP on digits by full-batch gradient descent for "
            f"{num_epochs} epochs, tracking its Hessian ({time.perf_counter() - start:.1f} s)."
        ),
        key_figure=(
            f"sharpness {late_sharpness:.3g} (mean over the last {num_epochs // 4} epochs) "
            f"vs 2/lr = {2.0 / LEARNING_RATE:.3g} "
            f"(peak {history.top_eigenvalue[peak]:.3g} at epoch {history.measured_at[peak]}); "
            f"trace {history.trace[-1]:.4g} +- {history.trace_stderr[-1]:.2g} ({layers}); "
            f"loss {history.loss[0]:.3f} -> {history.loss[-1]:.3f}; "
            f"test accuracy {100 * test_acc:.1f}%"
        ),
        figures=(path_history, path_density),
    )


if __name__ == "__main__":
    script_main(run)
