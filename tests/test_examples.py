"""The implicit-differentiation examples: their derivatives against references, and their runs.

Each example exposes the pieces checked here (hypergradients, tangents, losses).
The fast tests compare implicit derivatives with closed forms, unrolled
iterations or finite differences in float64 (conftest turns x64 on); the
``run`` tests execute an example at quick size and check its figure and headline.
"""

from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import load_example, rel_err

# One worker runs the whole module: its module-scoped fixtures and cached references are
# computed once (pytest -n 2 --dist loadgroup).
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("examples")]


def assert_ran(result, out: pathlib.Path, expected_png: str):
    assert result.figures, "the example wrote no figure"
    for fig in result.figures:
        assert pathlib.Path(fig).is_file() and pathlib.Path(fig).stat().st_size > 10_000
    assert (out / expected_png).is_file()
    assert result.summary and result.key_figure


def headline_number(key_figure: str, pattern: str) -> float:
    match = re.search(pattern, key_figure)
    assert match, f"{pattern!r} not found in {key_figure!r}"
    return float(match.group(1))


# ----------------------------------------------------------------------------- ridge


def test_ridge_hypergradients_agree():
    ridge = load_example("ridge_hyperparameter")
    data = ridge.load_data()
    log_lam = jnp.asarray(ridge.INITIAL_LOG_LAM)
    g = ridge.hypergradients(log_lam, data, unroll_steps=300)
    ref = float(g["closed_form"])
    # Inner gradient norm <= 1e-12 with curvature >= lambda = e leaves a solution
    # error ~1e-12 and CG is run to 1e-12: agreement to ~1e-10 is expected.
    assert abs(float(g["implicit"]) - ref) <= 1e-9 * abs(ref)
    # 300 gradient steps contract the error by (1 - mu/L)^300 ~ 1e-25 here.
    assert abs(float(g["unrolled"]) - ref) <= 1e-9 * abs(ref)
    # Two steps are far from converged, so unrolling them must be visibly wrong:
    # this guards against the comparison being vacuous.
    few = ridge.hypergradients(log_lam, data, unroll_steps=2)
    assert abs(float(few["unrolled"]) - ref) > 1e-2 * abs(ref)
    # And the implicit derivative also matches where the penalty is small (cond ~500).
    small = ridge.hypergradients(jnp.asarray(-4.0), data, unroll_steps=1)
    assert abs(float(small["implicit"]) - float(small["closed_form"])) <= 1e-7 * abs(
        float(small["closed_form"])
    )


def test_ridge_tuning_reaches_closed_form_optimum():
    ridge = load_example("ridge_hyperparameter")
    data = ridge.load_data()
    log_lams, losses = ridge.tune(data, num_steps=30)
    X, y, X_val, y_val = data
    grid = jnp.linspace(-6.0, 2.0, 801)
    curve = jax.vmap(
        lambda t: ridge.validation_loss(ridge.closed_form_solution(t, X, y), X_val, y_val)
    )(grid)
    best = float(grid[jnp.argmin(curve)])
    assert losses[-1] < losses[0]
    # The validation loss is flat near its minimum; 0.3 in log(lambda) is ~1e-5 in loss.
    assert abs(log_lams[-1] - best) < 0.3
    assert losses[-1] - float(curve.min()) < 1e-4


def test_ridge_run(tmp_path):
    ridge = load_example("ridge_hyperparameter")
    result = ridge.run(tmp_path)
    assert_ran(result, tmp_path, "ridge_hyperparameter.png")
    assert headline_number(result.key_figure, r"rel\. error ([0-9.e+-]+) ") < 1e-9
    lam = headline_number(result.key_figure, r"tuned lambda = ([0-9.e+-]+)")
    assert 0.01 < lam < 0.5  # the closed-form optimum is lambda ~ 0.075


# ----------------------------------------------------------------------------- lasso


def test_lasso_hypergradient_matches_finite_differences():
    lasso = load_example("lasso_proximal")
    data = lasso.load_data()
    # A dense, a mid and a sparse solution (about 9, 7 and 4 nonzero coefficients).
    points = jnp.array([[-4.6, -3.0], [-3.1, -2.0], [-1.6, -3.5]])
    implicit = lasso.implicit_hypergradient(points, data)
    fd = lasso.finite_difference_hypergradient(points, data)
    # See finite_difference_hypergradient: the FD error is far below 1e-6 relative.
    np.testing.assert_allclose(implicit, fd, rtol=1e-6, atol=1e-9)
    # Both hyperparameters matter at these points, so the check is not about zeros.
    assert np.all(np.abs(np.asarray(fd)) > 1e-4)


def test_lasso_solver_is_a_sparse_fixed_point():
    lasso = load_example("lasso_proximal")
    X, y, _, _ = lasso.load_data()
    log_lams = jnp.array([-1.6, -3.5])
    w = lasso.elastic_net_solver(jnp.zeros(X.shape[1]), log_lams, X, y)
    step = lasso.proximal_gradient_map(w, log_lams, X, y)
    assert float(jnp.max(jnp.abs(step - w))) < 1e-12
    assert 0 < int(jnp.sum(w != 0)) < X.shape[1]


def test_lasso_run(tmp_path):
    lasso = load_example("lasso_proximal")
    result = lasso.run(tmp_path)
    assert_ran(result, tmp_path, "lasso_proximal.png")
    assert headline_number(result.key_figure, r"rel\. error ([0-9.e+-]+)") < 1e-6


# ----------------------------------------------------------------------------- DEQ


def test_deq_implicit_gradient_matches_unrolled():
    deq = load_example("deep_equilibrium")
    X_tr, y_tr, _, _ = deq.load_data()
    X, y = jnp.asarray(X_tr[:24]), jnp.asarray(y_tr[:24])
    params = deq.init_params(jax.random.key(1), hidden=16, dtype=jnp.float64)
    params["W"] = 3.0 * params["W"]  # well above the cap, so the rescaling is exercised
    # Both gradients jitted: eager, each would be many small dispatches and compiles.
    implicit = jax.jit(jax.grad(lambda p: deq.loss_fn(p, X, y, tol=1e-13)[0]))(params)
    # The layer is a 0.9-contraction: 400 unrolled iterations are exact to ~0.9^400.
    unrolled = jax.jit(jax.grad(lambda p: deq.unrolled_loss(p, X, y, num_iters=400)))(params)
    for name in params:
        assert rel_err(implicit[name], unrolled[name]) < 1e-8, name


def test_deq_weight_is_contractive():
    deq = load_example("deep_equilibrium")
    W = 5.0 * jax.random.normal(jax.random.key(2), (32, 32))
    sigma = np.linalg.norm(np.asarray(deq.contractive(W)), 2)
    assert sigma < 1.0  # what the fixed point's existence and uniqueness need
    assert abs(sigma - deq.MAX_SPECTRAL_NORM) < 0.05
    small = 0.01 * W  # already contractive: left untouched
    np.testing.assert_allclose(deq.contractive(small), small, rtol=1e-12)


def test_deq_run(tmp_path):
    deq = load_example("deep_equilibrium")
    result = deq.run(tmp_path)
    assert_ran(result, tmp_path, "deep_equilibrium.png")
    # A linear classifier gets ~95% on digits; the trained DEQ should not be worse by much.
    assert headline_number(result.key_figure, r"test accuracy ([0-9.]+)%") > 90.0


# ----------------------------------------------------------------------------- distillation


def test_distillation_hypergradient_matches_finite_differences():
    dist = load_example("dataset_distillation")
    X_tr, y_tr, _, _ = dist.load_data(dtype=np.float64)
    X, y = X_tr[:200], y_tr[:200]
    key_a, key_b = jax.random.split(jax.random.key(3))
    image_logits = jax.random.normal(key_a, (10, 64), jnp.float64)
    direction = jax.random.normal(key_b, (10, 64), jnp.float64)
    # Jitted: compiled once for both difference points (eager: traced and run op by op).
    loss = jax.jit(lambda z: dist.outer_loss(z, X, y, tol=1e-12)[0])
    directional = jnp.vdot(jax.jit(jax.grad(loss))(image_logits), direction)
    eps = 1e-5
    fd = (loss(image_logits + eps * direction) - loss(image_logits - eps * direction)) / (2 * eps)
    # Inner gradient norm <= 1e-12 with strong convexity L2 = 0.1 bounds the solution
    # error by 1e-11, i.e. ~1e-6 after dividing by eps; truncation is ~eps^2.
    assert abs(float(directional) - float(fd)) <= 1e-5 * abs(float(fd))


def test_distillation_run(tmp_path):
    dist = load_example("dataset_distillation")
    result = dist.run(tmp_path)
    assert_ran(result, tmp_path, "dataset_distillation.png")
    learned = headline_number(result.key_figure, r"test accuracy ([0-9.]+)%")
    class_means = headline_number(result.key_figure, r"class means: ([0-9.]+)%")
    # Ten learned images must teach the classifier better than the ten class means.
    assert learned > class_means
    assert learned > 85.0


# ----------------------------------------------------------------------------- MD


@pytest.fixture(scope="module")
def small_packing():
    md = load_example("molecular_dynamics")
    system = md.make_system(jax.random.key(4), 16)
    sigma = jnp.asarray(1.0)
    return md, system, sigma


def test_md_tangent_matches_finite_differences(small_packing):
    md, system, sigma = small_packing
    x_star, tangent = md.solution_tangent(system.anchor, sigma, system)
    assert float(jnp.max(jnp.abs(md.energy_gradient(x_star, sigma, system)))) < 1e-11
    fd = md.finite_difference_tangent(x_star, sigma, system)
    # Forces below 1e-12 over Hessian eigenvalues >= TETHER = 1e-3 give position
    # errors <= 1e-9, i.e. <= 1e-4 after dividing by h = 1e-5 (typically ~1e-6).
    assert rel_err(tangent, fd) < 1e-4
    # The packing really responds to the diameter (not a trivial zero tangent).
    assert float(jnp.linalg.norm(fd)) > 1e-2


def test_md_reverse_mode_matches_finite_differences(small_packing):
    md, system, sigma = small_packing
    x0 = system.anchor

    @jax.jit  # compiled once for both difference points
    def observable(s, start):
        return md.mean_squared_displacement(md.relax(start, s, system), system)

    grad = jax.jit(jax.grad(observable))(sigma, x0)
    x_star = md.relax(x0, sigma, system)
    h = 1e-5
    # Warm-started at x* so both sides stay in x*'s basin.
    fd = (observable(sigma + h, x_star) - observable(sigma - h, x_star)) / (2 * h)
    assert abs(float(grad) - float(fd)) < 1e-4 * abs(float(fd))


def test_md_memory_unrolled_grows_implicit_flat(small_packing):
    md, system, sigma = small_packing
    short = md.reverse_mode_memory(system, sigma, 50)
    long = md.reverse_mode_memory(system, sigma, 200)
    # Unrolled reverse mode stores each step's residuals: 4x steps, ~4x memory.
    assert long["unrolled"] > 2.5 * short["unrolled"]
    # Implicit does not store the iterations at all.
    assert long["implicit"] <= 1.1 * short["implicit"] + 1024
    assert long["implicit"] < long["unrolled"] / 10


@pytest.mark.slow  # the whole quick run, as `jaxsecond tour` does; its parts are tested above
def test_md_run(tmp_path):
    md = load_example("molecular_dynamics")
    result = md.run(tmp_path)
    assert_ran(result, tmp_path, "molecular_dynamics.png")
    assert headline_number(result.key_figure, r"rel\. error ([0-9.e+-]+)") < 1e-4
    unrolled = headline_number(result.key_figure, r"unrolled ([0-9.]+) MiB")
    implicit = headline_number(result.key_figure, r"implicit ([0-9.]+) MiB")
    assert unrolled > 10 * implicit
