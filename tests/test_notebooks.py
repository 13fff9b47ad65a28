"""Execute every notebook in ``notebooks/`` and check the numbers each one reports.

Each notebook ends with a cell printing one line ``RESULT {json}``; the test runs the
notebook in a fresh kernel (working directory: a temporary folder, matplotlib without a
display), fails on any cell error, and checks values in that line that could be wrong.
One test per notebook, so that ``pytest -n`` spreads them over workers.
"""

from __future__ import annotations

import json
import math
import os
import pathlib

import pytest

pytestmark = pytest.mark.integration

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT_S = 120


def execute(name: str, tmp_path) -> dict:
    """Run ``notebooks/<name>.ipynb`` and return the parsed ``RESULT`` line."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    # The kernel inherits this process's environment: no display for matplotlib, and
    # no float64 default leaking in (each notebook sets its own precision).
    env = {**os.environ, "MPLBACKEND": "Agg"}
    env.pop("JAX_ENABLE_X64", None)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env=env)  # passed on to the kernel's launch
    # A cell's stdout may arrive in several stream outputs, split anywhere (print writes
    # its arguments one by one, and the kernel flushes on a timer): join them first.
    stdout = "".join(
        output.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "stream" and output.get("name") == "stdout"
    )
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, f"{name}: expected one RESULT line, got {lines}"
    return json.loads(lines[0][len("RESULT ") :])


def check_implicit(r):
    # Implicit derivatives of the ridge validation loss against the closed form.
    assert r["grad_rel_err"] < 1e-8
    assert r["jvp_rel_err"] < 1e-8
    assert r["hessian_rel_err"] < 1e-6
    # Newton on log(lambda) reaches a stationary point of the closed-form loss.
    assert abs(r["closed_form_grad_at_star"]) < 1e-8
    assert -3.0 < r["log_lam_star"] < 2.0


def check_curvature(r):
    assert r["hvp_rel_err"] < 1e-10
    # Pooled Hutchinson trace within 3 standard errors of the exact trace.
    assert r["trace_stderr"] > 0
    assert abs(r["trace_estimate"] - r["trace_exact"]) < 3 * r["trace_stderr"]
    assert r["diag_within_3se"] > 0.95
    assert r["eig_rel_err"] < 1e-6


def check_diffeq(r):
    assert r["ode_grad_rel_err"] < 1e-10
    assert r["sde_grad_rel_err"] < 1e-10
    rev_small, rev_large = r["reversible_temp_bytes"]
    all_small, all_large = r["storeall_temp_bytes"]
    # Reversible: flat in the number of steps; StoreAll: grows with it.
    assert rev_large <= 1.2 * rev_small
    assert all_large >= 5 * all_small


def check_adahessian(r):
    for name, final in r["final_loss"].items():
        assert math.isfinite(final), name
        assert final < 0.1 * r["initial_loss"], (name, final)
    for name, acc in r["test_accuracy"].items():
        assert acc > 0.9, (name, acc)
    assert r["toy_final"]["AdaHessian"] < 1e-2


def check_nas(r):
    assert abs(r["darts1_a"] - 2.0) < 1e-6
    assert abs(r["darts2_a"] - r["darts2_limit"]) < 1e-6
    # RARTS: a = 2 / (2 - 1/(2 lam) - 1/beta) at lam = 10, beta = 100.
    assert abs(r["rarts_limit"] - 2 / (2 - 1 / 20 - 1 / 100)) < 1e-12
    assert abs(r["rarts_a"] - r["rarts_limit"]) < 1e-6
    for gap, limit in zip(r["rarts_gaps"], r["rarts_gap_limits"], strict=True):
        assert abs(gap - limit) < 1e-6
    assert r["rarts_gaps"][-1] < 4e-3


def check_hashgrid(r):
    # The Eikonal residual mean | |grad f| - 1 | drops from ~1 (a near-constant field).
    assert r["eikonal_residual_before"] > 0.5
    assert r["eikonal_residual_after"] < 0.15
    assert r["num_curves"] == 2  # the disc and the rectangle
    assert r["curve_error_mean"] < 5e-3  # in units of the unit square
    assert r["sdf_error_mean"] < 5e-2


CASES = {
    "01_implicit_differentiation": check_implicit,
    "02_curvature": check_curvature,
    "03_ode_sde_gradients": check_diffeq,
    "04_adahessian": check_adahessian,
    "05_architecture_search": check_nas,
    "06_hashgrid_eikonal": check_hashgrid,
}


def test_every_notebook_is_tested():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(CASES)


def test_notebooks_are_committed_without_outputs():
    for name in CASES:
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.get("outputs"), f"{name}: strip the outputs before committing"
                assert cell.get("execution_count") is None, name


# The default run executes two notebooks; the other four (whose areas are covered by
# their own tests, examples and docstring examples) run with `pytest -m slow`, to keep
# CI within its time budget.
SLOW_NOTEBOOKS = {"02_curvature", "03_ode_sde_gradients", "04_adahessian", "06_hashgrid_eikonal"}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_NOTEBOOKS else n for n in sorted(CASES)],
)
def test_notebook_runs(name, tmp_path):
    CASES[name](execute(name, tmp_path))
