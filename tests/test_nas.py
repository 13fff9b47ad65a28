"""Architecture search: RARTS and DARTS against closed forms and hand computations, the
search space (mixed ops, cells, genotypes), width search, bad input.

The toy problem is DARTS's Fig. 2 (Liu et al., 2019):

    L_val(w, a) = a w - 2a + 1,   L_train(w, a) = w^2 - 2aw + a^2 = (w - a)^2,

bilevel optimum (a, w) = (1, 1), start (2, -2). Fixed points of each method, derived by
hand (every Gauss-Seidel sweep with positive steps is stationary exactly where the
block gradients vanish):

* DARTS first order: w = a (weight step) and grad_a L_val(w, a) = w - 2 = 0, so a = 2.
* DARTS second order: w' = w - 2 xi (w - a) = a at w = a, and the architecture gradient
  is (w' - 2) - xi * d2L_train/(da dw) * dL_val/dw' = (w' - 2) - xi * (-2) * a, zero
  at a - 2 + 2 xi a = 0: a = 2 / (1 + 2 xi).
* RARTS: grad_y: a + beta (y - w) = 0, so y - w = -a/beta; grad_w: 2 lam (w - a) -
  beta (y - w) = 0, so w = a (1 - 1/(2 lam)); grad_a: (y - 2) + 2 lam (a - w) = 0, i.e.
  y - 2 + a = 0 with y = a (1 - 1/(2 lam) - 1/beta): a = 2 / (2 - 1/(2 lam) - 1/beta).

These agree with the issue's formulae. Learning rates are chosen from the spectral
radius of each linear sweep (see ``rarts_rates``).
"""

from __future__ import annotations

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsecond.nas as nas
from tests.helpers import finite_difference_grad

# ------------------------------------------------------------------------- toy problem


def toy_val(w, a, batch):
    del batch
    return a * w - 2 * a + 1


def toy_train(w, a, batch):
    del batch
    return w**2 - 2 * a * w + a**2


def run_steps(search, state, num_steps):
    @jax.jit
    def go(state):
        def body(s, _):
            return search.step(s, None, None)[0], None

        return jax.lax.scan(body, state, length=num_steps)[0]

    return go(state)


def toy_start(search):
    return search.init(jnp.array(-2.0), jnp.array(2.0))


def test_toy_darts_first_order_converges_to_wrong_answer():
    search = nas.darts(
        toy_train, toy_val, weight_optimizer=optax.sgd(0.5), arch_optimizer=optax.sgd(0.9), order=1
    )
    state = run_steps(search, toy_start(search), 400)
    assert abs(float(state.arch) - 2.0) < 1e-6
    assert abs(float(state.weights) - 2.0) < 1e-6


@pytest.mark.parametrize("xi", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("hvp", ["exact", "finite_difference"])
def test_toy_darts_second_order_limit(xi, hvp):
    search = nas.darts(
        toy_train,
        toy_val,
        weight_optimizer=optax.sgd(0.45),
        arch_optimizer=optax.sgd(0.5),
        order=2,
        xi=xi,
        hvp=hvp,
    )
    state = run_steps(search, toy_start(search), 2000)
    expected = 2 / (1 + 2 * xi)
    assert abs(float(state.arch) - expected) < 1e-6, (float(state.arch), expected)
    assert abs(float(state.weights) - expected) < 1e-6


def rarts_rates(lam, beta):
    """Step sizes with a contracting Gauss-Seidel sweep: the w and y blocks just under
    1 / curvature (2 lam + beta and beta), alpha ~ 1 / lam (found by scanning the spectral
    radius of the linear sweep; about 13 lam sweeps per factor 1e-10)."""
    return 0.99 / (2 * lam + beta), 0.99 / beta, 1.0 / lam


def rarts_toy_limit(lam, beta, num_steps):
    lr_w, lr_y, lr_a = rarts_rates(lam, beta)
    search = nas.rarts(
        toy_train,
        toy_val,
        weight_optimizer=optax.sgd(lr_w),
        val_weight_optimizer=optax.sgd(lr_y),
        arch_optimizer=optax.sgd(lr_a),
        lam=lam,
        beta=beta,
    )
    state = run_steps(search, toy_start(search), num_steps)
    a = 2 / (2 - 1 / (2 * lam) - 1 / beta)
    assert abs(float(state.arch) - a) < 1e-6, (lam, beta, float(state.arch), a)
    assert abs(float(state.weights) - a * (1 - 1 / (2 * lam))) < 1e-6
    assert abs(float(state.val_weights) - a * (1 - 1 / (2 * lam) - 1 / beta)) < 1e-6
    return float(state.arch)


def test_toy_rarts_limit_approaches_bilevel_optimum():
    # The value: lam = 10, beta = 100 gives 2 / 1.94 = 1.0309...
    assert rarts_toy_limit(10.0, 100.0, 2000) == pytest.approx(1.0309278, abs=1e-6)
    # As lam and beta grow the limit tends to the bilevel optimum a = 1.
    limits = [rarts_toy_limit(lam, 10 * lam, int(150 * lam) + 2000) for lam in (1.0, 10.0, 100.0)]
    gaps = [abs(a - 1) for a in limits]
    assert all(b < 0.2 * a for a, b in itertools.pairwise(gaps)), limits
    assert gaps[-1] < 4e-3


@pytest.mark.slow
def test_toy_rarts_limit_large_lam():
    a = rarts_toy_limit(1000.0, 10_000.0, 200_000)
    assert abs(a - 1) < 4e-4


# ------------------------------------------------------------------------- tiny network


def tiny_forward(params, arch, x):
    """Two candidate ops on one edge, mixed by softmax(arch)."""
    z = x @ params["W"].T + params["b"]
    p = jax.nn.softmax(arch)
    return p[0] * jnp.tanh(z) + p[1] * z


def tiny_loss(params, arch, batch):
    x, t = batch
    return jnp.mean((tiny_forward(params, arch, x) - t) ** 2)


def tiny_problem(getkey):
    params = {
        "W": jax.random.normal(getkey(), (3, 2)),
        "b": jax.random.normal(getkey(), (3,)),
    }
    arch = jax.random.normal(getkey(), (2,))
    train = (jax.random.normal(getkey(), (5, 2)), jax.random.normal(getkey(), (5, 3)))
    val = (jax.random.normal(getkey(), (4, 2)), jax.random.normal(getkey(), (4, 3)))
    return params, arch, train, val


def fd_grad_dict(fun, params):
    """Central-difference gradient of ``fun(params)`` w.r.t. a dict of arrays."""
    out = {}
    for name, value in params.items():
        out[name] = finite_difference_grad(lambda v, n=name: fun({**params, n: v}), value)
    return out


def sub(x, scale, g):
    return jax.tree.map(lambda a, b: a - scale * b, x, g)


def sq_dist(y, w):
    return 0.5 * sum(float(jnp.sum((y[k] - w[k]) ** 2)) for k in y)


def assert_dict_close(a, b, rtol=1e-7, atol=1e-9):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=rtol, atol=atol)


def test_rarts_two_steps_by_hand(getkey):
    params, arch, train, val = tiny_problem(getkey)
    lam, beta, lr_w, lr_y, lr_a, mom = 0.7, 3.0, 0.1, 0.05, 0.3, 0.9
    search = nas.rarts(
        tiny_loss,
        tiny_loss,
        weight_optimizer=optax.sgd(lr_w, momentum=mom),
        val_weight_optimizer=optax.sgd(lr_y, momentum=mom),
        arch_optimizer=optax.sgd(lr_a, momentum=mom),
        lam=lam,
        beta=beta,
    )
    state = search.init(params, arch)
    # Start y away from w, so the coupling term matters.
    y0 = jax.tree.map(lambda v: v + 0.1 * jax.random.normal(getkey(), v.shape), params)
    state = state._replace(val_weights=y0)
    zeros = jax.tree.map(jnp.zeros_like, (params, params, arch))

    @jax.jit
    def by_hand(w, y, a, velocities):
        # The sweep's equations, with finite-difference gradients and heavy-ball momentum
        # (v <- mom v + g, p <- p - lr v; v starts at 0).
        vw, vy, va = velocities

        def w_objective(p):
            return lam * tiny_loss(p, a, train) + beta * 0.5 * sum(
                jnp.sum((y[k] - p[k]) ** 2) for k in p
            )

        gw = fd_grad_dict(w_objective, w)
        vw = jax.tree.map(lambda v, g: mom * v + g, vw, gw)
        w_new = sub(w, lr_w, vw)

        def y_objective(p):
            return tiny_loss(p, a, val) + beta * 0.5 * sum(
                jnp.sum((p[k] - w_new[k]) ** 2) for k in p
            )

        gy = fd_grad_dict(y_objective, y)
        vy = jax.tree.map(lambda v, g: mom * v + g, vy, gy)
        y_new = sub(y, lr_y, vy)
        ga = finite_difference_grad(
            lambda b: tiny_loss(y_new, b, val) + lam * tiny_loss(w_new, b, train), a
        )
        va = mom * va + ga
        a_new = a - lr_a * va
        return w_new, y_new, a_new, (vw, vy, va), (gw, ga)

    w, y, a, velocities = params, y0, arch, zeros
    step = jax.jit(search.step)
    for _ in range(2):
        state, metrics = step(state, train, val)
        w_new, y_new, a_new, velocities, (gw, ga) = by_hand(w, y, a, velocities)
        # Second step: w, y, a carry the finite differences' ~1e-10 error.
        assert metrics["train_loss"] == pytest.approx(float(tiny_loss(w, a, train)), rel=1e-8)
        assert metrics["val_loss"] == pytest.approx(float(tiny_loss(y, a, val)), rel=1e-8)
        assert metrics["distance"] == pytest.approx(np.sqrt(2 * sq_dist(y, w)), rel=1e-8)
        gw_norm = np.sqrt(sum(float(jnp.sum(g**2)) for g in gw.values()))
        assert metrics["weight_grad_norm"] == pytest.approx(gw_norm, rel=1e-7)
        assert metrics["arch_grad_norm"] == pytest.approx(float(jnp.linalg.norm(ga)), rel=1e-7)
        w, y, a = w_new, y_new, a_new
        assert_dict_close(state.weights, w)
        assert_dict_close(state.val_weights, y)
        np.testing.assert_allclose(state.arch, a, rtol=1e-7, atol=1e-9)
    assert int(state.count) == 2


@pytest.mark.parametrize("order", [1, 2])
def test_darts_one_step_by_hand(getkey, order):
    params, arch, train, val = tiny_problem(getkey)
    xi, lr_w, lr_a = 0.3, 0.1, 0.2
    kwargs = {"xi": xi} if order == 2 else {}
    search = nas.darts(
        tiny_loss,
        tiny_loss,
        weight_optimizer=optax.sgd(lr_w),
        arch_optimizer=optax.sgd(lr_a),
        order=order,
        **kwargs,
    )
    state, metrics = jax.jit(search.step)(search.init(params, arch), train, val)
    xi_eff = xi if order == 2 else 0.0

    def unrolled_val(b):
        # L_val(w'(b), b) with w'(b) = w - xi grad_w L_train(w, b): its total derivative
        # in b is the second-order architecture gradient.
        g = jax.grad(tiny_loss)(params, b, train)
        return tiny_loss(sub(params, xi_eff, g), b, val)

    if order == 1:
        ga = finite_difference_grad(lambda b: tiny_loss(params, b, val), arch)
    else:
        ga = finite_difference_grad(unrolled_val, arch)
    a_new = arch - lr_a * ga
    gw = fd_grad_dict(lambda p: tiny_loss(p, a_new, train), params)
    w_new = sub(params, lr_w, gw)
    np.testing.assert_allclose(state.arch, a_new, rtol=1e-7, atol=1e-9)
    assert_dict_close(state.weights, w_new)
    assert metrics["val_loss"] == pytest.approx(float(unrolled_val(arch)), rel=1e-12)
    # a_new carries the finite difference's ~1e-10 error.
    assert metrics["train_loss"] == pytest.approx(float(tiny_loss(params, a_new, train)), rel=1e-8)
    # The first-order gradient differs from the second-order one here (a non-vacuous check).
    if order == 2:
        g1 = finite_difference_grad(lambda b: tiny_loss(params, b, val), arch)
        assert float(jnp.max(jnp.abs(g1 - ga))) > 1e-3


def test_darts_finite_difference_matches_paper_formula(getkey):
    params, arch, train, val = tiny_problem(getkey)
    xi, lr_a = 0.3, 0.2
    search = nas.darts(
        tiny_loss,
        tiny_loss,
        weight_optimizer=optax.sgd(0.0),
        arch_optimizer=optax.sgd(lr_a),
        order=2,
        xi=xi,
        hvp="finite_difference",
    )
    state, _ = jax.jit(search.step)(search.init(params, arch), train, val)
    # Paper: v = grad_w' L_val(w', a), eps = 0.01 / ||v||, mixed term by central difference.
    w_virtual = sub(params, xi, jax.grad(tiny_loss)(params, arch, train))
    v = jax.grad(tiny_loss)(w_virtual, arch, val)
    eps = 0.01 / np.sqrt(sum(float(jnp.sum(x**2)) for x in v.values()))
    ga_train = jax.grad(tiny_loss, argnums=1)
    mixed = (
        ga_train(sub(params, -eps, v), arch, train) - ga_train(sub(params, eps, v), arch, train)
    ) / (2 * eps)
    ga = jax.grad(tiny_loss, argnums=1)(w_virtual, arch, val) - xi * mixed
    np.testing.assert_allclose(state.arch, arch - lr_a * ga, rtol=1e-10, atol=1e-12)
    # And it approximates the exact unrolled gradient to O(eps^2).
    exact = nas.darts(
        tiny_loss,
        tiny_loss,
        weight_optimizer=optax.sgd(0.0),
        arch_optimizer=optax.sgd(lr_a),
        order=2,
        xi=xi,
    )
    state_exact, _ = jax.jit(exact.step)(exact.init(params, arch), train, val)
    np.testing.assert_allclose(state.arch, state_exact.arch, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------- jit, determinism


def make_searches():
    return {
        "rarts": nas.rarts(
            tiny_loss,
            tiny_loss,
            weight_optimizer=optax.adam(1e-2),
            arch_optimizer=optax.adam(3e-3),
            lam=1.0,
            beta=2.0,
        ),
        "darts1": nas.darts(
            tiny_loss,
            tiny_loss,
            weight_optimizer=optax.adam(1e-2),
            arch_optimizer=optax.adam(3e-3),
        ),
        "darts2": nas.darts(
            tiny_loss,
            tiny_loss,
            weight_optimizer=optax.adam(1e-2),
            arch_optimizer=optax.adam(3e-3),
            order=2,
            xi=0.01,
        ),
    }


@pytest.mark.parametrize("name", ["rarts", "darts1", "darts2"])
def test_jit_matches_eager_and_is_deterministic(getkey, name):
    params, arch, _, _ = tiny_problem(getkey)
    search = make_searches()[name]
    data_key = getkey()

    def batches(i):
        k1, k2, k3, k4 = jax.random.split(jax.random.fold_in(data_key, i), 4)
        return (
            (jax.random.normal(k1, (5, 2)), jax.random.normal(k2, (5, 3))),
            (jax.random.normal(k3, (4, 2)), jax.random.normal(k4, (4, 3))),
        )

    def run(step):
        state = search.init(params, arch)
        for i in range(3):
            state, metrics = step(state, *batches(i))
        return state, metrics

    jitted = jax.jit(search.step)
    s1, m1 = run(jitted)
    s2, m2 = run(jitted)
    s3, m3 = run(search.step)
    # Same keys, same result, to the bit; eager agrees to round-off.
    for a, b in zip(jax.tree.leaves((s1, m1)), jax.tree.leaves((s2, m2)), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves((s1, m1)), jax.tree.leaves((s3, m3)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert set(m1) >= {"train_loss", "val_loss", "weight_grad_norm", "arch_grad_norm"}
    assert all(np.shape(v) == () for v in m1.values())
    assert not np.allclose(s1.arch, arch)  # the architecture moved


class TinyModule(eqx.Module):
    W: jax.Array
    b: jax.Array
    activation: callable = eqx.field(static=False)


@pytest.mark.parametrize("name", ["rarts", "darts2"])
def test_equinox_module_weights_and_float32(float32, getkey, name):
    # Weights as an equinox Module with a function field (held fixed), a tuple as arch,
    # float32 throughout: dtypes are kept.
    model = TinyModule(jax.random.normal(getkey(), (3, 2)), jnp.zeros(3), jax.nn.tanh)
    arch = (jnp.zeros(2), jnp.ones(()))

    def loss(m, arch, batch):
        x, t = batch
        p = jax.nn.softmax(arch[0])
        z = x @ m.W.T + m.b
        return arch[1] ** 2 * jnp.mean((p[0] * m.activation(z) + p[1] * z - t) ** 2)

    opts = {"weight_optimizer": optax.sgd(0.1), "arch_optimizer": optax.sgd(0.1)}
    if name == "rarts":
        search = nas.rarts(loss, loss, lam=1.0, beta=1.0, **opts)
    else:
        search = nas.darts(loss, loss, order=2, xi=0.1, **opts)
    batch = (jnp.ones((4, 2)), jnp.zeros((4, 3)))
    state, metrics = eqx.filter_jit(search.step)(search.init(model, arch), batch, batch)
    assert state.weights.activation is jax.nn.tanh
    assert state.weights.W.dtype == jnp.float32 and state.arch[1].dtype == jnp.float32
    assert metrics["train_loss"].dtype == jnp.float32
    assert not np.allclose(state.weights.W, model.W)


# ------------------------------------------------------------------------- bad input


def test_bad_hyperparameters():
    opts = {"weight_optimizer": optax.sgd(0.1), "arch_optimizer": optax.sgd(0.1)}
    for lam in (0.0, -1.0):
        with pytest.raises(ValueError, match="lam"):
            nas.rarts(toy_train, toy_val, lam=lam, beta=1.0, **opts)
    for beta in (0.0, -2.0):
        with pytest.raises(ValueError, match="beta"):
            nas.rarts(toy_train, toy_val, lam=1.0, beta=beta, **opts)
    with pytest.raises(TypeError, match="lam"):
        nas.rarts(toy_train, toy_val, lam="big", beta=1.0, **opts)
    with pytest.raises(ValueError, match="order"):
        nas.darts(toy_train, toy_val, order=3, **opts)
    with pytest.raises(ValueError, match="xi"):
        nas.darts(toy_train, toy_val, order=2, **opts)
    with pytest.raises(ValueError, match="xi"):
        nas.darts(toy_train, toy_val, order=2, xi=-0.1, **opts)
    with pytest.raises(ValueError, match="xi"):
        nas.darts(toy_train, toy_val, order=1, xi=0.1, **opts)
    with pytest.raises(ValueError, match="hvp"):
        nas.darts(toy_train, toy_val, order=2, xi=0.1, hvp="approx", **opts)
    with pytest.raises(TypeError, match="weight_optimizer"):
        nas.darts(toy_train, toy_val, weight_optimizer=0.1, arch_optimizer=optax.sgd(0.1))
    with pytest.raises(TypeError, match="train_loss"):
        nas.darts(None, toy_val, **opts)


def test_mismatched_optimizer_state(getkey):
    params, arch, train, val = tiny_problem(getkey)
    search = nas.rarts(
        tiny_loss,
        tiny_loss,
        weight_optimizer=optax.adam(1e-2),
        arch_optimizer=optax.adam(1e-2),
        lam=1.0,
        beta=1.0,
    )
    state = search.init(params, arch)
    # An optimizer state built for other weights: a wrong shape, and a wrong structure.
    other = {"W": jnp.zeros((3, 1)), "b": jnp.zeros(3)}
    with pytest.raises(ValueError, match="weight_opt_state"):
        search.step(state._replace(weight_opt_state=optax.adam(1e-2).init(other)), train, val)
    with pytest.raises(ValueError, match="val_weight_opt_state"):
        search.step(
            state._replace(val_weight_opt_state=optax.adam(1e-2).init({"W": params["W"]})),
            train,
            val,
        )
    with pytest.raises(ValueError, match="arch_opt_state"):
        search.step(state._replace(arch_opt_state=optax.adam(1e-2).init(jnp.zeros(3))), train, val)
    # Weights replaced by others of another shape: the state no longer fits them.
    with pytest.raises(ValueError, match="weight_opt_state"):
        search.step(state._replace(weights=other, val_weights=other), train, val)
    with pytest.raises(ValueError, match="val_weights"):
        search.step(state._replace(val_weights={"W": params["W"]}), train, val)
    darts = nas.darts(
        tiny_loss, tiny_loss, weight_optimizer=optax.adam(1e-2), arch_optimizer=optax.adam(1e-2)
    )
    dstate = darts.init(params, arch)
    with pytest.raises(ValueError, match="weight_opt_state"):
        darts.step(dstate._replace(weight_opt_state=optax.adam(1e-2).init(other)), train, val)


def test_bad_losses_and_inputs(getkey):
    params, arch, train, val = tiny_problem(getkey)
    search = nas.darts(
        lambda w, a, b: tiny_forward(w, a, b[0]),  # not a scalar
        tiny_loss,
        weight_optimizer=optax.sgd(0.1),
        arch_optimizer=optax.sgd(0.1),
    )
    with pytest.raises(ValueError, match="train_loss must return a scalar"):
        search.step(search.init(params, arch), train, val)
    with pytest.raises(TypeError, match="arch"):
        search.init(params, {"not_float": jnp.arange(3)})
