"""The architecture-search examples: short searches that must find something useful.

Each test shortens the example's quick configuration (fewer steps and epochs); the
checks are ones a wrongly wired search or retraining would fail: a valid genotype (or
widths among the candidates) and test accuracy far above the 10% of chance.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from jaxsecond import nas
from tests.helpers import load_example

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rd():
    return load_example("rarts_digits")


@pytest.fixture(scope="module")
def ws():
    return load_example("width_search")


def test_rarts_digits_data_split(rd):
    (Xa, ya), (Xb, yb), (X, y), (Xt, yt) = rd.load_data(0)
    assert len(ya) + len(yb) == len(y) and len(yt) == len(Xt)
    assert Xa.shape[1:] == (1, 8, 8) and len(Xa) + len(Xb) == len(X) == 1437
    assert len(Xt) == 360
    # The search splits are disjoint and together the retraining set.
    rows = lambda A: {r.tobytes() for r in np.asarray(A).reshape(len(A), -1)}
    assert rows(Xa) | rows(Xb) == rows(X)


@pytest.mark.slow  # search plus retraining; test_nas covers the search steps themselves
def test_rarts_search_finds_a_cell_that_beats_chance(rd):
    config = dataclasses.replace(rd.QUICK, search_steps=80, retrain_epochs=6)
    data = rd.load_data(0)
    genotype, alphas, seconds, _ = rd.run_search("rarts", 0, data, config)
    # A valid genotype: two inputs per node, each from a predecessor, no 'none'.
    assert genotype.num_nodes == config.num_nodes
    for i, node in enumerate(genotype.nodes):
        assert len(node) == 2 and all(0 <= j < i + 2 for _, j in node)
        assert all(op in config.ops and op != "none" for op, _ in node)
    assert nas.Genotype.from_json(genotype.to_json()) == genotype
    assert alphas.shape == (80, nas.num_edges(config.num_nodes), len(config.ops))
    assert np.all(np.isfinite(alphas)) and not np.allclose(alphas[0], alphas[-1])
    assert seconds > 0
    # Chance is 10%; a cell retrained 6 epochs reaches ~90% here.
    assert rd.retrain(genotype, 0, data, config) > 0.6


@pytest.mark.slow
def test_rarts_digits_run(rd, tmp_path):
    result = rd.run(tmp_path)
    assert (tmp_path / "rarts_digits.png").stat().st_size > 10_000
    assert "RARTS" in result.key_figure and (tmp_path / "rarts_digits.md").is_file()


@pytest.mark.slow  # two trainings and a fine-tune (~50 s); the search itself: test_nas
def test_width_search_and_pruning(ws):
    config = dataclasses.replace(ws.QUICK, search_steps=40, epochs=4)
    result = ws.run_seed(0, config)
    widths, history = result.searched_widths, result.history
    assert all(w in c for w, c in zip(widths, ws.CANDIDATES, strict=True))
    assert len(history) == len(ws.CANDIDATES) and history[0].shape == (40, 4)
    # The size penalty pushes every layer's weights away from uniform.
    assert all(not np.allclose(h[-1], h[0]) for h in history)
    assert result.searched_params == nas.count_parameters(widths, in_channels=1, num_classes=10)
    assert result.pruned_params <= result.searched_params
    assert result.searched_accuracy > 0.5 and result.pruned_accuracy > 0.5
