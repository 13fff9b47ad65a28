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


# ------------------------------------------------------------------------- search space


def test_mixed_op_is_softmax_weighted_sum(getkey):
    ops = nas.IMAGE_OPS.select(["none", "skip_connect", "sep_conv_3x3", "avg_pool_3x3"])
    mixed = nas.MixedOp(ops, 3, key=getkey())
    x = jax.random.normal(getkey(), (3, 8, 8))
    alpha = jnp.array([0.3, -1.0, 2.0, 0.5])
    p = np.exp(np.asarray(alpha)) / np.exp(np.asarray(alpha)).sum()
    # avg pool excluding the padding: a corner averages its 2x2 neighbourhood, the
    # interior its 3x3 one.
    xn = np.asarray(x)
    pool = np.zeros_like(xn)
    for i in range(8):
        for j in range(8):
            pool[:, i, j] = xn[:, max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2].mean(axis=(1, 2))
    conv = np.asarray(mixed.ops[2](x))
    expected = p[1] * xn + p[2] * conv + p[3] * pool
    np.testing.assert_allclose(mixed(x, alpha), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mixed.ops[3](x), pool, rtol=1e-12)


def test_sep_conv_is_depthwise_then_pointwise(getkey):
    op = nas.IMAGE_OPS.select(["dil_conv_3x3"])
    sep = nas.MixedOp(op, 2, key=getkey()).ops[0]
    x = jax.random.normal(getkey(), (2, 6, 6))
    xr = np.maximum(np.asarray(x), 0)
    pad = np.pad(xr, ((0, 0), (2, 2), (2, 2)))
    dw = np.asarray(sep.depthwise)
    depth = np.zeros_like(xr)
    for c in range(2):
        for i in range(6):
            for j in range(6):
                depth[c, i, j] = np.sum(dw[c] * pad[c, i : i + 5 : 2, j : j + 5 : 2])
    out = np.einsum("oc,chw->ohw", np.asarray(sep.pointwise), depth)
    out = (out - out.mean()) / np.sqrt(out.var() + 1e-5)  # layer norm, no parameters
    np.testing.assert_allclose(sep(x), out, rtol=1e-10, atol=1e-10)


def test_cell_connects_every_node_to_all_predecessors(getkey):
    # With ops {none, skip} and alpha = 0 every edge is x / 2: node i is half the sum of
    # its predecessors, so node0 = (a + b)/2, node1 = (a + b + node0)/2, ...
    ops = nas.VECTOR_OPS.select(["none", "skip_connect"])
    cell = nas.Cell(ops, 3, 4, 5, num_nodes=3, key=getkey())
    assert len(cell.edges) == nas.num_edges(3) == 9
    s0, s1 = jax.random.normal(getkey(), (3,)), jax.random.normal(getkey(), (4,))
    a, b = cell.preprocess0(s0), cell.preprocess1(s1)
    n0 = (a + b) / 2
    n1 = (a + b + n0) / 2
    n2 = (a + b + n0 + n1) / 2
    out = cell(s0, s1, jnp.zeros((9, 2)))
    np.testing.assert_allclose(out, jnp.concatenate([n0, n1, n2]), rtol=1e-12)
    # Only the edge (node 2 <- s1) open: node 2 = s1 preprocessed, node 0, 1 = 0.
    alpha = jnp.zeros((9, 2)).at[:, 0].set(50.0).at[6, :].set(jnp.array([-50.0, 50.0]))
    np.testing.assert_allclose(cell(s0, s1, alpha), jnp.concatenate([0 * a, 0 * a, b]), atol=1e-12)


def test_network_shapes_and_parameter_counts(getkey):
    C, nodes, cells = 4, 2, 2
    net = nas.Network(
        nas.IMAGE_OPS,
        in_channels=1,
        channels=C,
        num_classes=10,
        num_cells=cells,
        num_nodes=nodes,
        key=getkey(),
    )
    alpha = net.init_arch(getkey())
    assert alpha.shape == (5, 8) and float(jnp.abs(alpha).max()) < 1e-2
    assert net(jnp.zeros((1, 8, 8)), alpha).shape == (10,)
    # sep/dil convs: k*k*C + C*C each (no bias); pools, skip, none: 0.
    edge = (9 + 25 + 9 + 25) * C + 4 * C * C
    stem = 9 * C + C
    pre = C * C + C * C  # both cell-0 inputs are the stem (C channels), 1x1, no bias
    pre += C * C + nodes * C * C  # cell 1: stem and cell 0 (nodes * C channels)
    head = nodes * C * 16 * 10 + 10  # features: 4x4 average-pooled grid
    expected = stem + pre + cells * nas.num_edges(nodes) * edge + head
    count = sum(x.size for x in jax.tree.leaves(eqx.filter(net, eqx.is_inexact_array)))
    assert count == expected


def test_genotype_from_hand_set_alpha():
    ops = nas.IMAGE_OPS.select(["none", "skip_connect", "sep_conv_3x3", "max_pool_3x3"])
    # 3 nodes: edges 0-1 (node 0), 2-4 (node 1), 5-8 (node 2).
    alpha = np.zeros((9, 4))
    alpha[0] = [0, 0, 3, 0]  # node 0 <- 0: sep_conv (weight 0.87)
    alpha[1] = [0, 1, 0, 0]  # node 0 <- 1: skip (0.48)
    alpha[2] = [9, 0, 0, 1]  # node 1 <- 0: none dominates; best other op max_pool (3e-4)
    alpha[3] = [0, 2, 0, 0]  # node 1 <- 1: skip (0.71)
    alpha[4] = [0, 0, 0, 0.5]  # node 1 <- node 0: max_pool (0.35)
    alpha[5] = [0, 0, 1, 0]  # node 2 <- 0: sep_conv (0.48)
    alpha[6] = [5, 0, 0, 0]  # node 2 <- 1: none dominates (0.007)
    alpha[7] = [0, 0, 0, 4]  # node 2 <- node 0: max_pool (0.95)
    alpha[8] = [-3, 2, 2, 2]  # node 2 <- node 1: three-way tie, the first (skip) (0.33)
    g = nas.discretise(jnp.asarray(alpha), ops)
    assert g == nas.Genotype(
        "image",
        (
            (("sep_conv_3x3", 0), ("skip_connect", 1)),
            (("skip_connect", 1), ("max_pool_3x3", 2)),
            (("max_pool_3x3", 2), ("sep_conv_3x3", 0)),
        ),
    )
    assert g.num_nodes == 3 and g.ops().count("max_pool_3x3") == 2


def test_genotype_json_round_trip_and_discrete_network(getkey):
    g = nas.Genotype(
        "image",
        (
            (("sep_conv_5x5", 0), ("skip_connect", 1)),
            (("dil_conv_3x3", 2), ("avg_pool_3x3", 0)),
            (("max_pool_3x3", 3), ("sep_conv_3x3", 2)),
        ),
    )
    text = g.to_json()
    assert nas.Genotype.from_json(text) == g
    assert '"sep_conv_5x5"' in text
    C = 4
    net = nas.DiscreteNetwork(
        nas.Genotype.from_json(text),
        in_channels=1,
        channels=C,
        num_classes=10,
        num_cells=2,
        key=getkey(),
    )
    out = jax.vmap(net)(jnp.zeros((5, 1, 8, 8)))
    assert out.shape == (5, 10)
    # sep_conv_5x5, dil_conv_3x3, sep_conv_3x3 per cell: k*k*C + C*C each.
    per_cell_ops = (25 + 9 + 9) * C + 3 * C * C
    pre = (C * C + C * C) + (C * C + 3 * C * C)
    expected = 9 * C + C + pre + 2 * per_cell_ops + 3 * C * 16 * 10 + 10
    count = sum(x.size for x in jax.tree.leaves(eqx.filter(net, eqx.is_inexact_array)))
    assert count == expected
    # The vector op set builds an MLP cell network the same way.
    gv = nas.Genotype("vector", ((("linear_relu", 0), ("linear", 1)),))
    mlp = nas.DiscreteNetwork(gv, in_channels=6, channels=5, num_classes=3, key=getkey())
    assert mlp(jnp.zeros(6)).shape == (3,)


def test_search_space_bad_input(getkey):
    with pytest.raises(ValueError, match="empty"):
        nas.OpSet("image", ())
    with pytest.raises(ValueError, match="empty"):
        nas.IMAGE_OPS.select([])
    with pytest.raises(ValueError, match="not image ops"):
        nas.OpSet("image", ("none", "linear"))
    with pytest.raises(ValueError, match="other than 'none'"):
        nas.discretise(jnp.zeros((2, 1)), nas.IMAGE_OPS.select(["none"]))
    with pytest.raises(ValueError, match="alpha must have shape"):
        nas.discretise(jnp.zeros((5, 3)), nas.IMAGE_OPS)
    with pytest.raises(ValueError, match="edge count"):
        nas.discretise(jnp.zeros((4, 8)), nas.IMAGE_OPS)
    with pytest.raises(ValueError, match="predecessor"):
        nas.Genotype("image", ((("skip_connect", 2),),))
    with pytest.raises(ValueError, match="none"):
        nas.Genotype("image", ((("none", 0),),))
    with pytest.raises(ValueError, match="keys"):
        nas.Genotype.from_json('{"nodes": []}')
    with pytest.raises(ValueError, match="num_nodes"):
        nas.Network(
            nas.IMAGE_OPS, in_channels=1, channels=4, num_classes=10, num_nodes=0, key=getkey()
        )


# ------------------------------------------------------------------------- width search


def test_width_masks_and_parameter_counts(getkey):
    np.testing.assert_allclose(
        nas.channel_mask(jnp.log(jnp.array([0.25, 0.75])), (2, 4)), [1, 1, 0.75, 0.75]
    )
    net = nas.WidthSearchCNN(((2, 4), (3, 6)), in_channels=1, num_classes=10, key=getkey())
    assert nas.count_parameters((4, 6), in_channels=1, num_classes=10) == (
        9 * 4 + 4 + 9 * 4 * 6 + 6 + 6 * 10 + 10
    )
    # Expected parameters: the counts of the expected widths (one-hot: exact).
    one_hot = (jnp.array([-50.0, 50.0]), jnp.array([50.0, -50.0]))
    assert float(net.expected_parameters(one_hot)) == pytest.approx(
        nas.count_parameters((4, 3), in_channels=1, num_classes=10)
    )
    assert nas.discretise_widths(one_hot, net.candidates) == (4, 3)
    # One-hot alpha on widths (4, 3) = the full network with channels 3..5 of layer 2 off.
    x = jax.random.normal(getkey(), (1, 8, 8))
    sub_alpha = net(x, one_hot)
    h = jax.nn.relu(net.supernet.convs[0](x))
    h = jax.nn.relu(net.supernet.convs[1](h)).at[3:].set(0)
    np.testing.assert_allclose(sub_alpha, net.supernet.head(h.mean(axis=(1, 2))), atol=1e-12)
    with pytest.raises(ValueError, match="empty"):
        nas.WidthSearchCNN(((2, 4), ()), in_channels=1, num_classes=10, key=getkey())


def test_magnitude_prune_keeps_largest_filters(getkey):
    model = nas.CNN((4, 6), in_channels=1, num_classes=3, key=getkey())
    # Layer 0 filters scaled 1..4, layer 1 filters scaled 1..6: the smallest go first.
    w0 = jnp.ones_like(model.convs[0].weight) * jnp.arange(1.0, 5.0)[:, None, None, None]
    w1 = jnp.ones_like(model.convs[1].weight) * jnp.arange(1.0, 7.0)[:, None, None, None]
    model = eqx.tree_at(lambda m: (m.convs[0].weight, m.convs[1].weight), model, (w0, w1))
    target = nas.count_parameters((3, 4), in_channels=1, num_classes=3)
    pruned = nas.magnitude_prune(model, target)
    # Relative scores: layer 0 filters 0.4, 0.8, 1.2, 1.6; layer 1: 2/7, 4/7, ...; removal
    # order 2/7 (l1 c0), 0.4 (l0 c0), 4/7 (l1 c1) reaches widths (3, 4) = the target.
    assert pruned.widths == (3, 4)
    count = sum(x.size for x in jax.tree.leaves(eqx.filter(pruned, eqx.is_inexact_array)))
    assert count == target
    np.testing.assert_array_equal(pruned.convs[0].weight, w0[1:])
    np.testing.assert_array_equal(pruned.convs[1].weight, w1[2:][:, 1:])
    np.testing.assert_array_equal(pruned.head.weight, model.head.weight[:, 2:])
    assert pruned(jnp.zeros((1, 8, 8))).shape == (3,)
    with pytest.raises(ValueError, match="num_parameters"):
        nas.magnitude_prune(model, 10)
