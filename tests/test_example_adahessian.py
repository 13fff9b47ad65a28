"""The AdaHessian digits example: its data, model and batching, short training runs, and its run.

The example trains in float32 whatever the x64 setting (it casts its data and builds its
model in float32); conftest's float64 default does not reach it. The run test shortens
the quick run (fewer epochs and seeds) by patching the module's constants; the compiled
epoch functions are cached per optimizer, so it reuses those of the training test.
"""

from __future__ import annotations

import pathlib
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import load_example

# One worker runs the whole module: its module-scoped fixtures and cached references are
# computed once (pytest -n 2 --dist loadgroup).
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("example_adahessian")]

SHORT_EPOCHS = 3


@pytest.fixture(scope="module")
def ex():
    return load_example("adahessian_digits")


@pytest.fixture(scope="module")
def data(ex):
    return ex.load_data()


@pytest.fixture(scope="module")
def short_runs(ex, data):
    """Every optimizer of the figure, seed 0, ``SHORT_EPOCHS`` epochs."""
    return {name: ex.train(name, 0, data, num_epochs=SHORT_EPOCHS)[1] for name in ex.OPTIMIZERS}


def test_data_split(ex, data):
    X_tr, y_tr, X_te, y_te = data
    assert X_tr.shape == (1437, 1, 8, 8) and X_te.shape == (360, 1, 8, 8)
    assert y_tr.shape == (1437,) and y_te.shape == (360,)
    assert X_tr.dtype == X_te.dtype == jnp.float32
    assert float(X_tr.min()) == 0.0 and float(X_tr.max()) == 1.0
    # Stratified: every class holds 8-12% of the test set (the full set: 9.9-10.1%).
    counts = np.bincount(np.asarray(y_te), minlength=10)
    assert counts.min() >= 0.08 * len(y_te) and counts.max() <= 0.12 * len(y_te), counts
    # The validation split for tuning is carved out of the training set only.
    V_tr, vy_tr, V_va, vy_va = ex.load_data(validation=True)
    assert V_tr.shape[0] + V_va.shape[0] == X_tr.shape[0]
    assert vy_tr.shape == (V_tr.shape[0],) and vy_va.shape == (V_va.shape[0],)
    train_rows = {row.tobytes() for row in np.asarray(X_tr).reshape(len(X_tr), -1)}
    for row in np.asarray(V_va).reshape(len(V_va), -1):
        assert row.tobytes() in train_rows


def test_model_shapes(ex, data):
    model = ex.CNN(jax.random.key(0))
    # 8*1*9 + 8 + 16*8*9 + 16 + 256*10 + 10, as the docstring says.
    assert ex.num_parameters(model) == 3818
    assert "3,818 parameters" in " ".join(ex.__doc__.split())
    # The convolution kernels are OIHW: AdaHessian's spatial_average="oihw" averages the
    # last two axes, the 3x3 window.
    assert model.conv1.weight.shape == (8, 1, 3, 3)
    assert model.conv2.weight.shape == (16, 8, 3, 3)
    logits = jax.vmap(model)(data[0][:5])
    assert logits.shape == (5, 10) and logits.dtype == jnp.float32
    params = eqx.filter(model, eqx.is_inexact_array)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))


def test_batches_depend_on_seed_and_epoch_only(ex):
    # The comparison is fair only if each optimizer sees the same batches in the same order:
    # the batch order is a function of (seed, epoch), and every batch is distinct examples.
    a = np.asarray(ex.batch_indices(ex.epoch_keys(0, 3)[0], 1437))
    b = np.asarray(ex.batch_indices(ex.epoch_keys(0, 3)[0], 1437))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (1437 // ex.BATCH_SIZE, ex.BATCH_SIZE)
    assert len(np.unique(a)) == a.size and a.min() >= 0 and a.max() < 1437
    other_epoch = np.asarray(ex.batch_indices(ex.epoch_keys(0, 4)[0], 1437))
    other_seed = np.asarray(ex.batch_indices(ex.epoch_keys(1, 3)[0], 1437))
    assert not np.array_equal(a, other_epoch) and not np.array_equal(a, other_seed)
    # Shuffle and probe keys of one epoch are different streams.
    shuffle, probe = ex.epoch_keys(0, 3)
    assert not np.array_equal(jax.random.key_data(shuffle), jax.random.key_data(probe))


def test_every_optimizer_beats_chance(ex, short_runs):
    # Chance is 10%. After three epochs (66 steps) each optimizer at its chosen learning rate
    # reaches ~85-95% on the held-out test set; 70% is far above chance and still fails
    # for a wrongly wired update (e.g. a sign error, or the diagonal of the wrong leaves).
    for name, h in short_runs.items():
        assert h.test_accuracy.shape == (SHORT_EPOCHS + 1,)
        assert h.test_accuracy[0] < 0.3, (name, h.test_accuracy)  # an untrained network
        assert h.test_accuracy[-1] > 0.7, (name, h.test_accuracy)
        assert np.all(np.isfinite(h.train_loss)) and np.all(np.isfinite(h.batch_loss))


def test_adahessian_training_loss_decreases(ex, short_runs):
    h = short_runs["adahessian"]
    assert h.batch_loss.shape == (SHORT_EPOCHS, 1437 // ex.BATCH_SIZE)
    # Start: log(10) = 2.30 for an untrained 10-class network.
    assert abs(h.train_loss[0] - np.log(10)) < 0.1
    # The loss on the whole training set falls every epoch here, and overall by > 4x.
    assert np.all(np.diff(h.train_loss) < 0), h.train_loss
    assert h.train_loss[-1] < 0.25 * h.train_loss[0], h.train_loss
    # The mini-batch losses fall too: the last epoch's mean is below the first's.
    assert h.batch_loss[-1].mean() < h.batch_loss[0].mean()


def test_same_initial_network_for_every_optimizer(short_runs):
    # Same seed, same initial network: the loss before training agrees exactly.
    initial = {name: h.train_loss[0] for name, h in short_runs.items()}
    assert len(set(initial.values())) == 1, initial


def test_summary_statistics(ex):
    runs = [
        ex.History(np.array([2.0, 0.5]), np.array([0.1, acc]), np.zeros((1, 2)), 0.0)
        for acc in (0.9, 0.95, 0.97)
    ]
    stats = ex.summarize({"adam": runs})["adam"]
    assert stats["accuracy_mean"] == pytest.approx(0.94)
    assert stats["accuracy_min"] == 0.9 and stats["accuracy_max"] == 0.97
    assert stats["loss_mean"] == 0.5


def test_run_writes_figure_and_headline(ex, tmp_path, monkeypatch, short_runs):
    monkeypatch.setattr(ex, "QUICK_EPOCHS", 2)
    monkeypatch.setattr(ex, "SEEDS", (0, 1))
    result = ex.run(tmp_path)
    png = tmp_path / "adahessian_digits.png"
    assert result.figures == (png,)
    assert png.is_file() and png.stat().st_size > 10_000
    assert "3818-parameter CNN" in result.summary and "2 seeds each" in result.summary
    for name in ex.OPTIMIZERS:
        label = re.escape(ex.LABELS[name])
        match = re.search(label + r" ([0-9.]+)% \(([0-9.]+)-([0-9.]+)\)", result.key_figure)
        assert match, (name, result.key_figure)
        mean, lo, hi = (float(g) for g in match.groups())
        assert lo <= mean <= hi
        assert mean > 60.0, (name, result.key_figure)  # two epochs: far above 10% chance
    assert pathlib.Path(result.figures[0]).suffix == ".png"
