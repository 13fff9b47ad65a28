"""Width search with RARTS vs magnitude pruning at equal parameter count, on digits.

A three-layer CNN (3x3 convolutions, ReLU, strides 1, 2, 2, global average pooling,
linear classifier) may use, per layer, one of four widths
(``CANDIDATES``). The supernet (:class:`jaxsecond.nas.WidthSearchCNN`) runs every layer
at its largest width with a softmax-weighted channel mask; RARTS
(:func:`jaxsecond.nas.rarts`, ``lam = 1``, ``beta = 1``) searches the per-layer
architecture vectors on the training/validation halves of the search set, with a size
penalty ``mu * expected_parameters / full_parameters`` added to the validation loss
(nothing else in a cross-entropy prefers fewer channels). The argmax widths are trained
from scratch on the whole training set.

Baseline at the same budget: the full-width CNN is trained, its filters of smallest
relative L1 norm are pruned (:func:`jaxsecond.nas.magnitude_prune`) until it has at most
as many parameters as the searched network, and it is fine-tuned for as many epochs as
the searched network was trained. Both are scored on the held-out test fifth.

Quick run: one seed, 150 search steps, 15 training epochs; ``--full``: 5 seeds, 600
steps, 40 epochs. float32.

References: F. Xue, Y. Qi, J. Xin, "RARTS: An Efficient First-Order Relaxed Architecture
Search Method", IEEE Access 10, 2022. H. Li, A. Kadav, I. Durdanovic, H. Samet, H. P. Graf,
"Pruning Filters for Efficient ConvNets", ICLR 2017.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxsecond import nas
from jaxsecond._registry import ExampleResult, example, script_main

matplotlib.use("Agg")
import matplotlib.pyplot as plt

CANDIDATES = ((4, 8, 12, 16), (8, 16, 24, 32), (8, 16, 24, 32))
DTYPE = jnp.float32
PENALTY = 0.5  # mu: weight of the expected parameter fraction in the validation loss
TRAIN_OPTIMIZER = optax.adam(1e-2)  # one object: the jitted training loop is reused


@dataclasses.dataclass(frozen=True)
class Config:
    seeds: tuple[int, ...]
    search_steps: int
    epochs: int
    batch_size: int = 64


QUICK = Config(seeds=(0,), search_steps=150, epochs=15)
FULL = Config(seeds=(0, 1, 2, 3, 4), search_steps=600, epochs=40)


def load_data(seed: int = 0):
    """``(search_train, search_val, train_all, test)``, as in ``rarts_digits``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).reshape(-1, 1, 8, 8)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, random_state=seed, stratify=y)
    X_a, X_b, y_a, y_b = train_test_split(
        X_tr, y_tr, test_size=0.5, random_state=seed, stratify=y_tr
    )
    pack = lambda X, y: (jnp.asarray(X, DTYPE), jnp.asarray(y, jnp.int32))
    return pack(X_a, y_a), pack(X_b, y_b), pack(X_tr, y_tr), pack(X_te, y_te)


def full_parameters() -> int:
    widths = [max(c) for c in CANDIDATES]
    return nas.count_parameters(widths, in_channels=1, num_classes=10)


def train_loss(net, arch, batch):
    X, y = batch
    logits = jax.vmap(lambda x: net(x, arch))(X)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def val_loss(net, arch, batch):
    # Cross-entropy plus the size penalty (it depends on arch only).
    return train_loss(net, arch, batch) + PENALTY * net.expected_parameters(arch) / (
        full_parameters()
    )


@functools.cache
def search_function(config: Config):
    search = nas.rarts(
        train_loss,
        val_loss,
        weight_optimizer=optax.adam(1e-2),
        arch_optimizer=optax.adam(2e-2, b1=0.5),
        lam=1.0,
        beta=1.0,
    )

    @eqx.filter_jit
    def run(state, train, val, key):
        def body(state, k):
            kt, kv = jax.random.split(k)
            it = jax.random.choice(kt, train[0].shape[0], (config.batch_size,), replace=False)
            iv = jax.random.choice(kv, val[0].shape[0], (config.batch_size,), replace=False)
            state, _ = search.step(state, (train[0][it], train[1][it]), (val[0][iv], val[1][iv]))
            return state, state.arch

        return jax.lax.scan(body, state, jax.random.split(key, config.search_steps))

    return search, run


def search_widths(seed: int, data, config: Config):
    """RARTS width search; returns ``(widths, arch history, seconds)``."""
    search, run = search_function(config)
    net = nas.WidthSearchCNN(
        CANDIDATES, in_channels=1, num_classes=10, key=jax.random.key(seed), dtype=DTYPE
    )
    start = time.perf_counter()
    state, history = run(
        search.init(net, net.init_arch()), data[0], data[1], jax.random.key(seed + 100)
    )
    jax.block_until_ready(state.arch)
    widths = nas.discretise_widths(state.arch, CANDIDATES)
    return widths, [np.asarray(h) for h in history], time.perf_counter() - start


def train(model, data, config: Config, seed: int):
    _, _, (X, y), _ = data
    model, _ = nas.train_classifier(
        model,
        X,
        y,
        optimizer=TRAIN_OPTIMIZER,
        num_epochs=config.epochs,
        batch_size=config.batch_size,
        key=jax.random.key(seed + 200),
    )
    return model


def num_parameters(model) -> int:
    return int(sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))))


@dataclasses.dataclass
class WidthResult:
    seed: int
    searched_widths: tuple[int, ...]
    searched_params: int
    searched_accuracy: float
    pruned_widths: tuple[int, ...]
    pruned_params: int
    pruned_accuracy: float
    full_accuracy: float
    search_seconds: float
    history: list  # per layer, [steps, candidates]


def run_seed(seed: int, config: Config) -> WidthResult:
    data = load_data(seed)
    X_te, y_te = data[3]
    widths, history, seconds = search_widths(seed, data, config)
    key = jax.random.key(seed + 300)
    searched = train(
        nas.CNN(widths, in_channels=1, num_classes=10, key=key, dtype=DTYPE), data, config, seed
    )
    full_widths = [max(c) for c in CANDIDATES]
    full = train(
        nas.CNN(full_widths, in_channels=1, num_classes=10, key=key, dtype=DTYPE),
        data,
        config,
        seed,
    )
    pruned = nas.magnitude_prune(full, num_parameters(searched))
    pruned = train(pruned, data, config, seed)  # fine-tune
    return WidthResult(
        seed=seed,
        searched_widths=widths,
        searched_params=num_parameters(searched),
        searched_accuracy=float(nas.accuracy(searched, X_te, y_te)),
        pruned_widths=pruned.widths,
        pruned_params=num_parameters(pruned),
        pruned_accuracy=float(nas.accuracy(pruned, X_te, y_te)),
        full_accuracy=float(nas.accuracy(full, X_te, y_te)),
        search_seconds=seconds,
        history=history,
    )


def plot(results: list[WidthResult], path: pathlib.Path) -> None:
    fig, axes = plt.subplots(1, len(CANDIDATES) + 1, figsize=(4.5 * (len(CANDIDATES) + 1), 4))
    r0 = results[0]
    for layer, (ax, cands) in enumerate(zip(axes, CANDIDATES, strict=False)):
        probs = np.asarray(jax.nn.softmax(jnp.asarray(r0.history[layer]), axis=-1))
        for k, c in enumerate(cands):
            ax.plot(probs[:, k], label=f"{c} channels")
        ax.set_title(f"layer {layer + 1} (seed {r0.seed})")
        ax.set_xlabel("search step")
        ax.set_ylabel("softmax(alpha)")
        ax.legend(fontsize=8)
    ax = axes[-1]
    x = np.arange(len(results))
    ax.bar(x - 0.2, [100 * r.searched_accuracy for r in results], 0.4, label="RARTS widths")
    ax.bar(x + 0.2, [100 * r.pruned_accuracy for r in results], 0.4, label="magnitude pruning")
    ax.set_xticks(x, [f"seed {r.seed}" for r in results])
    lo = min(min(r.searched_accuracy, r.pruned_accuracy) for r in results)
    ax.set_ylim(max(0.0, 100 * lo - 5), 100)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("equal parameter budget")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@example(
    "width_search",
    area="nas",
    description="Width search on digits: RARTS-chosen widths vs magnitude pruning.",
)
def run(out: pathlib.Path, full: bool = False) -> ExampleResult:
    """Width search with RARTS vs magnitude pruning at equal parameter count."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    config = FULL if full else QUICK
    results = [
        run_seed(seed, config) for seed in tqdm(config.seeds, desc="width search", leave=False)
    ]
    path = out / "width_search.png"
    plot(results, path)
    mean = lambda f: float(np.mean([f(r) for r in results]))
    return ExampleResult(
        summary=(
            f"Searched per-layer widths of a 3-layer CNN on digits with RARTS "
            f"({config.search_steps} steps, {len(config.seeds)} seed(s)) and compared with "
            f"filter magnitude pruning of the full {full_parameters()}-parameter CNN at the "
            f"same budget ({time.perf_counter() - start:.1f} s)."
        ),
        key_figure=(
            f"RARTS widths {results[0].searched_widths} "
            f"({mean(lambda r: r.searched_params):.0f} params): "
            f"{100 * mean(lambda r: r.searched_accuracy):.1f}% test accuracy; magnitude "
            f"pruning {results[0].pruned_widths} ({mean(lambda r: r.pruned_params):.0f} "
            f"params): {100 * mean(lambda r: r.pruned_accuracy):.1f}%; full width: "
            f"{100 * mean(lambda r: r.full_accuracy):.1f}%"
        ),
        figures=(path,),
    )


if __name__ == "__main__":
    script_main(run)
