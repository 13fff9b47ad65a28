"""AdaHessian, Adam and SGD with momentum training a small CNN on scikit-learn digits.

A convolutional network (an equinox Module: 3x3 convolution to 8 channels, ReLU, 3x3
convolution to 16 channels with stride 2, ReLU, linear layer to 10 classes; 3,818
parameters) is trained on scikit-learn's digits (8x8 grey images, split 80/20,
stratified) by three optimizers:

* AdaHessian (:func:`jaxsecond.adahessian`), which divides the momentum of the gradient
  by a running root mean square of the Hessian diagonal, estimated by Hutchinson's method
  with one Rademacher probe per step. The diagonal of the 4-D convolution kernels is
  averaged over the kernel's two spatial axes (``spatial_average="oihw"``), as in the
  paper. Each step gets the loss, the gradient and the diagonal estimate from one
  forward-over-reverse pass (:func:`jaxsecond.value_grad_and_hessian_diagonal`) and
  passes the estimate to the optimizer (``update(..., hessian_diagonal=...)``);
* Adam (``optax.adam``);
* SGD with heavy-ball momentum 0.9 (``optax.sgd``).

Every optimizer sees the same data: for each seed the initial network and the order of
the mini-batches (64 images, reshuffled every epoch) depend only on the seed, so the
three runs of one seed differ only in the optimizer. Three seeds each; the figure shows
the loss on the whole training set and the test accuracy after every epoch, the line
being the mean over seeds and the band the range (minimum to maximum).

Learning rates. AdaHessian uses the paper's default, 0.15 (with ``b1 = 0.9``,
``b2 = 0.999``, ``eps = 1e-4``, Hessian power 1), untuned. Adam (1e-2; grid 3e-4 to 3e-2)
and SGD (0.03; grid 0.01 to 0.3) were each the best of a grid by
:func:`tune_learning_rates`: one seed, the quick number of epochs, the loss after the last
epoch on a validation fifth held out from the training set (the test set was not looked
at); AdamW, in the benchmark, reuses Adam's. The sweep favours the baselines, which had
the choice, over AdaHessian, which did not; ``tune_learning_rates()`` also sweeps
AdaHessian for reference (its value in the comparison stays the paper's).

The quick run trains 8 epochs (176 steps); ``--full`` trains 40. Runs in float32.

Reference: Z. Yao, A. Gholami, S. Shen, M. Mustafa, K. Keutzer, M. W. Mahoney,
"ADAHESSIAN: An Adaptive Second Order Optimizer for Machine Learning", AAAI 2021.
"""

from __future__ import annotations

import functools
import pathlib
import time
from typing import NamedTuple

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

OPTIMIZERS = ("adahessian", "adam", "sgd")  # in the figure, in this order
LABELS = {
    "adahessian": "AdaHessian",
    "adam": "Adam",
    "adamw": "AdamW",
    "sgd": "SGD (momentum 0.9)",
}
LEARNING_RATES = {"adahessian": 0.15, "adam": 1e-2, "adamw": 1e-2, "sgd": 0.03}
TUNING_GRID = {
    "adahessian": (0.03, 0.05, 0.1, 0.15, 0.3),
    "adam": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2),
    "sgd": (0.01, 0.03, 0.1, 0.3),
}
MOMENTUM = 0.9  # SGD's heavy-ball momentum
WEIGHT_DECAY = 1e-4  # AdamW's decoupled weight decay (optax's default), used by the benchmark
BATCH_SIZE = 64
SEEDS = (0, 1, 2)
QUICK_EPOCHS = 8
TOUR_EPOCHS = 4  # one seed: the default tour's size
FULL_EPOCHS = 40
DTYPE = jnp.float32


# --------------------------------------------------------------------------- data, model


def load_data(seed: int = 0, *, validation: bool = False):
    """Digits as ``[N, 1, 8, 8]`` float32 images in [0, 1] with integer labels.

    Returns ``(X_train, y_train, X_test, y_test)``: a stratified 80/20 split. With
    ``validation=True`` the test set is replaced by a stratified fifth of the training
    set (and the training set by the rest), for choosing learning rates.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).reshape(-1, 1, 8, 8)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, random_state=seed, stratify=y)
    if validation:
        X_tr, X_te, y_tr, y_te = train_test_split(
            X_tr, y_tr, test_size=0.2, random_state=seed, stratify=y_tr
        )
    as_x = lambda a: jnp.asarray(a, DTYPE)
    as_y = lambda a: jnp.asarray(a, jnp.int32)
    return as_x(X_tr), as_y(y_tr), as_x(X_te), as_y(y_te)


class CNN(eqx.Module):
    """conv 3x3 (1 -> 8) - ReLU - conv 3x3 stride 2 (8 -> 16) - ReLU - linear (256 -> 10)."""

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __init__(self, key, dtype=DTYPE):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, 8, 3, padding=1, dtype=dtype, key=k1)
        self.conv2 = eqx.nn.Conv2d(8, 16, 3, stride=2, padding=1, dtype=dtype, key=k2)
        self.head = eqx.nn.Linear(16 * 4 * 4, 10, dtype=dtype, key=k3)

    def __call__(self, x):  # x: [1, 8, 8] -> logits [10]
        x = jax.nn.relu(self.conv1(x))
        x = jax.nn.relu(self.conv2(x))
        return self.head(x.reshape(-1))


def num_parameters(model) -> int:
    return int(sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))))


def loss_fn(model, X, y):
    """Mean softmax cross-entropy of ``model`` on the batch ``(X, y)``."""
    logits = jax.vmap(model)(X)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


@eqx.filter_jit
def evaluate(model, X, y):
    """``(loss, accuracy)`` of ``model`` on ``(X, y)``."""
    logits = jax.vmap(model)(X)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    return loss, jnp.mean(jnp.argmax(logits, axis=-1) == y)


# --------------------------------------------------------------------------- optimizers


def make_optimizer(name: str, learning_rate: float | None = None):
    """The optax optimizer ``name`` (a key of ``LABELS``) at ``learning_rate`` (default:
    ``LEARNING_RATES[name]``)."""
    lr = LEARNING_RATES[name] if learning_rate is None else learning_rate
    if name == "adahessian":
        return jaxsecond.adahessian(lr, spatial_average="oihw")
    if name == "adam":
        return optax.adam(lr)
    if name == "adamw":
        return optax.adamw(lr, weight_decay=WEIGHT_DECAY)
    if name == "sgd":
        return optax.sgd(lr, momentum=MOMENTUM)
    raise ValueError(f"make_optimizer: name must be one of {sorted(LABELS)}, got {name!r}")


def epoch_keys(seed: int, epoch: int):
    """``(shuffle key, probe key)`` of one epoch: they depend on the seed and epoch only."""
    return jax.random.split(jax.random.fold_in(jax.random.key(seed), epoch))


def batch_indices(key, num_examples: int, batch_size: int = BATCH_SIZE):
    """A random permutation cut into ``[num_batches, batch_size]`` (the remainder dropped)."""
    num_batches = num_examples // batch_size
    perm = jax.random.permutation(key, num_examples)
    return perm[: num_batches * batch_size].reshape(num_batches, batch_size)


@functools.cache
def epoch_function(name: str, learning_rate: float, batch_size: int = BATCH_SIZE):
    """Jitted ``(model, opt_state, X, y, shuffle_key, probe_key) -> (model, opt_state,
    batch_losses)``: one pass over ``(X, y)`` in shuffled mini-batches, as one ``lax.scan``.

    Cached, so that every seed (and the test suite) reuses one compiled function per
    optimizer and learning rate.
    """
    optimizer = make_optimizer(name, learning_rate)

    @eqx.filter_jit
    def run_epoch(model, opt_state, X, y, shuffle_key, probe_key):
        params, static = eqx.partition(model, eqx.is_inexact_array)
        batches = batch_indices(shuffle_key, X.shape[0], batch_size)
        probe_keys = jax.random.split(probe_key, batches.shape[0])

        def step(carry, inputs):
            params, opt_state = carry
            idx, key = inputs
            Xb, yb = X[idx], y[idx]
            fun = lambda p: loss_fn(eqx.combine(p, static), Xb, yb)
            if name == "adahessian":
                # Loss, gradient and Hutchinson diagonal from one forward-over-reverse pass.
                loss, grads, diag = jaxsecond.value_grad_and_hessian_diagonal(fun)(params, key)
                updates, opt_state = optimizer.update(
                    grads, opt_state, params, hessian_diagonal=diag
                )
            else:
                loss, grads = jax.value_and_grad(fun)(params)
                updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (batches, probe_keys))
        return eqx.combine(params, static), opt_state, losses

    return optimizer, run_epoch


class History(NamedTuple):
    """One training run (a NamedTuple, so the module also works loaded from its file
    path, outside any package). Index 0 of ``train_loss`` and ``test_accuracy`` is before
    training; index ``e`` is after epoch ``e``."""

    train_loss: np.ndarray  # [num_epochs + 1], loss on the whole training set
    test_accuracy: np.ndarray  # [num_epochs + 1]
    batch_loss: np.ndarray  # [num_epochs, num_batches], the loss of each step's mini-batch
    seconds: float  # wall clock of the whole run, compilation included


def train(
    name: str,
    seed: int,
    data,
    *,
    num_epochs: int,
    learning_rate: float | None = None,
    batch_size: int = BATCH_SIZE,
):
    """Train a fresh :class:`CNN` (initialised from ``seed``) with optimizer ``name``.

    ``data`` is ``(X_train, y_train, X_test, y_test)``. Returns ``(model, History)``.
    """
    start = time.perf_counter()
    lr = LEARNING_RATES[name] if learning_rate is None else learning_rate
    optimizer, run_epoch = epoch_function(name, float(lr), batch_size)
    X_tr, y_tr, X_te, y_te = data
    model = CNN(jax.random.key(seed))
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    train_loss, test_acc, batch_loss = [], [], []

    def record(model):
        train_loss.append(float(evaluate(model, X_tr, y_tr)[0]))
        test_acc.append(float(evaluate(model, X_te, y_te)[1]))

    record(model)
    for epoch in range(num_epochs):
        shuffle_key, probe_key = epoch_keys(seed, epoch)
        model, opt_state, losses = run_epoch(model, opt_state, X_tr, y_tr, shuffle_key, probe_key)
        batch_loss.append(np.asarray(losses))
        record(model)
    history = History(
        train_loss=np.asarray(train_loss),
        test_accuracy=np.asarray(test_acc),
        batch_loss=np.stack(batch_loss),
        seconds=time.perf_counter() - start,
    )
    return model, history


def train_all(names, seeds, data, *, num_epochs: int, progress: bool = True):
    """``{name: [History per seed]}``, all with the same data, batches and epochs."""
    runs = [(name, seed) for name in names for seed in seeds]
    histories: dict[str, list[History]] = {name: [] for name in names}
    for name, seed in tqdm(runs, desc="training", leave=False, disable=None if progress else True):
        histories[name].append(train(name, seed, data, num_epochs=num_epochs)[1])
    return histories


def tune_learning_rates(
    grid: dict | None = None, *, num_epochs: int = QUICK_EPOCHS, seed: int = 0, verbose=True
):
    """``{name: {learning rate: validation loss}}`` on a validation split held out from
    the training set (one seed, ``num_epochs`` epochs).

    The value returned per learning rate is the loss on the validation fifth after the last
    epoch (NaN when training diverged). This is how ``LEARNING_RATES`` of Adam and SGD
    were chosen; it never touches the test set.
    """
    grid = TUNING_GRID if grid is None else grid
    data = load_data(validation=True)
    results: dict[str, dict[float, float]] = {}
    for name, rates in grid.items():
        results[name] = {}
        for lr in rates:
            model, _ = train(name, seed, data, num_epochs=num_epochs, learning_rate=lr)
            results[name][lr] = float(evaluate(model, data[2], data[3])[0])
        if verbose:
            best = min(results[name], key=lambda r: np.nan_to_num(results[name][r], nan=np.inf))
            cells = ", ".join(f"{lr:g}: {v:.3f}" for lr, v in results[name].items())
            print(f"{name}: validation loss {cells}; best {best:g}")
    return results


# --------------------------------------------------------------------------- summary, figure


def summarize(histories: dict[str, list[History]]) -> dict[str, dict[str, float]]:
    """Per optimizer: mean, min and max over seeds of the final test accuracy and training
    loss."""
    out = {}
    for name, runs in histories.items():
        acc = np.array([h.test_accuracy[-1] for h in runs])
        loss = np.array([h.train_loss[-1] for h in runs])
        out[name] = {
            "accuracy_mean": float(acc.mean()),
            "accuracy_min": float(acc.min()),
            "accuracy_max": float(acc.max()),
            "loss_mean": float(loss.mean()),
            "loss_min": float(loss.min()),
            "loss_max": float(loss.max()),
        }
    return out


def plot(histories: dict[str, list[History]], path: pathlib.Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (name, runs) in enumerate(histories.items()):
        color = f"C{i}"
        for ax, field in zip(axes, ("train_loss", "test_accuracy"), strict=True):
            values = np.stack([getattr(h, field) for h in runs])
            scale = 100.0 if field == "test_accuracy" else 1.0
            epochs = np.arange(values.shape[1])
            ax.plot(epochs, scale * values.mean(0), color=color, label=LABELS[name])
            ax.fill_between(
                epochs, scale * values.min(0), scale * values.max(0), color=color, alpha=0.25
            )
    num_seeds = len(next(iter(histories.values())))
    axes[0].set_yscale("log")
    axes[0].set_ylabel("training loss (whole training set)")
    axes[1].set_ylabel("test accuracy (%)")
    axes[1].set_ylim(bottom=max(0.0, axes[1].get_ylim()[0]), top=100.0)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend()
    axes[0].set_title(f"mean over {num_seeds} seeds, band: min to max")
    axes[1].set_title("digits, CNN conv3x3(8)-conv3x3/2(16)-linear(10)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@example(
    "adahessian_digits",
    area="optim",
    description="AdaHessian vs Adam vs SGD on a small CNN on digits (accuracy, loss curves).",
    tour=True,
)
def run(out: pathlib.Path, full: bool = False, *, tour: bool = False) -> ExampleResult:
    """AdaHessian, Adam and SGD with momentum training a small CNN on digits."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    num_epochs = FULL_EPOCHS if full else (TOUR_EPOCHS if tour else QUICK_EPOCHS)
    seeds = SEEDS[:1] if tour else SEEDS
    data = load_data()
    histories = train_all(OPTIMIZERS, seeds, data, num_epochs=num_epochs)
    path = out / "adahessian_digits.png"
    plot(histories, path)
    stats = summarize(histories)
    cells = "; ".join(
        f"{LABELS[name]} {100 * s['accuracy_mean']:.1f}% "
        f"({100 * s['accuracy_min']:.1f}-{100 * s['accuracy_max']:.1f}), "
        f"loss {s['loss_mean']:.3f}"
        for name, s in stats.items()
    )
    steps = num_epochs * (data[0].shape[0] // BATCH_SIZE)
    seed_count = f"{len(seeds)} seed" + ("s" if len(seeds) > 1 else "")
    return ExampleResult(
        summary=(
            f"Trained a {num_parameters(CNN(jax.random.key(0)))}-parameter CNN on digits with "
            f"AdaHessian, Adam and SGD, {seed_count} each, {num_epochs} epochs "
            f"({steps} steps) of batches of {BATCH_SIZE} ({time.perf_counter() - start:.1f} s)."
        ),
        key_figure=(
            f"test accuracy after {num_epochs} epochs, mean (min-max) over {seed_count}, "
            f"and final training loss: {cells}"
        ),
        figures=(path,),
    )


if __name__ == "__main__":
    script_main(run)
