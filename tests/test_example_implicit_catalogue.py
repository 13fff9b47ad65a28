"""The optimality-condition catalogue examples: SVM dual, sparse coding, sparse logreg.

Each example runs once at quick size; the test reads its headline numbers (implicit
derivative against central finite differences, outer loss before and after) and then
checks a piece of its solution with the programs it already compiled.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import headline_numbers, load_example

# One worker runs the whole module (pytest -n 2 --dist loadgroup).
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("example_implicit_catalogue")]

NUMBER = r"([0-9.]+(?:e[+-]?[0-9]+)?)"


def assert_figure(result, out: pathlib.Path, name: str):
    assert result.summary and result.key_figure
    assert [pathlib.Path(f).name for f in result.figures] == [name]
    # A blank or failed plot compresses to a few kB; the real ones are > 50 kB.
    assert (out / name).stat().st_size > 10_000


def test_svm_hyperparameter(tmp_path):
    svm = load_example("svm_hyperparameter")
    result = svm.run(tmp_path)
    assert_figure(result, tmp_path, "svm_hyperparameter.png")
    (rel_err,) = headline_numbers(result.key_figure, rf"rel\. err {NUMBER}")
    # Dual converged to 1e-12, eps = 1e-4: solver noise ~1e-8, truncation ~1e-8.
    assert rel_err < 1e-6
    before, after = headline_numbers(result.summary, rf"validation loss {NUMBER} -> {NUMBER}")
    assert after < 0.8 * before  # over-regularised start; the minimum is ~35% lower
    acc_before, acc_after = headline_numbers(result.key_figure, rf"accuracy {NUMBER} -> {NUMBER}")
    assert acc_after > acc_before

    # The dual returned with the loss is feasible (rows on the simplex) and a fixed point.
    with jax.enable_x64(True):
        data = svm.load_data()
        log_lam = jnp.asarray(-2.0, data[0].dtype)
        (_, (beta, _)), _ = svm.value_and_hypergradient(log_lam, data, data[1])
        np.testing.assert_allclose(beta.sum(axis=1), 1.0, atol=1e-12)
        assert float(beta.min()) >= 0.0
        residual = svm.svm_optimality(beta, None, jnp.exp(log_lam), data[0], data[1])
        assert float(jnp.max(jnp.abs(residual))) < 1e-10
        # Some but not all examples are support vectors (rows other than their label).
        sv = jnp.any((beta > 0) & (data[1] == 0), axis=1)
        assert 0 < int(sv.sum()) < beta.shape[0]


def test_sparse_logreg(tmp_path):
    logreg = load_example("sparse_logreg")
    result = logreg.run(tmp_path)
    assert_figure(result, tmp_path, "sparse_logreg.png")
    (rel_err,) = headline_numbers(result.key_figure, rf"rel\. err {NUMBER}")
    # Solve converged to 1e-13, eps = 1e-5, LU on 31 unknowns: ~1e-8 at worst.
    assert rel_err < 1e-7
    before, after = headline_numbers(result.summary, rf"held-out loss {NUMBER} -> {NUMBER}")
    assert after < 0.5 * before  # the start is far too sparse (loss ~0.34, optimum ~0.10)
    (tuned,) = headline_numbers(result.key_figure, r"tuned log\(lambda\) = (-?[0-9.]+)")
    assert -6.0 < tuned < -3.5  # the held-out loss is lowest near log(lambda) = -4.7

    # Sparse, and zero coefficients exactly where |gradient| <= lambda (the lasso KKT).
    with jax.enable_x64(True):
        X, y, _, _ = data = logreg.load_data()
        t = jnp.asarray(-3.0, X.dtype)
        (_, params), _ = logreg.value_and_hypergradient(t, data)
        grad_w = jax.grad(logreg.logistic_loss)(params, X, y)["w"]
        off = params["w"] == 0
        assert 0 < int(off.sum()) < X.shape[1]
        assert float(jnp.max(jnp.abs(grad_w[off]))) <= float(jnp.exp(t))
        on = ~off
        np.testing.assert_allclose(
            grad_w[on], -jnp.exp(t) * jnp.sign(params["w"][on]), rtol=0, atol=1e-10
        )


def test_sparse_coding(tmp_path):
    coding = load_example("sparse_coding")
    result = coding.run(tmp_path)
    assert_figure(result, tmp_path, "sparse_coding.png")
    (rel_err,) = headline_numbers(result.key_figure, rf"rel\. err {NUMBER}")
    # Codes converged to ~1e-12, eps = 1e-6 (below the nearest lasso kink): ~1e-6 at worst.
    assert rel_err < 1e-5
    before, after = headline_numbers(result.summary, rf"training loss {NUMBER} -> {NUMBER}")
    assert after < 0.5 * before  # from log(10) at the zero classifier
    held_before, held_after = headline_numbers(
        result.key_figure, rf"held-out loss {NUMBER} -> {NUMBER}"
    )
    assert held_after < 0.5 * held_before
    (accuracy,) = headline_numbers(result.summary, rf"held-out accuracy {NUMBER}")
    assert accuracy > 0.8  # 10 classes: chance is 0.1
