"""The composition matrix: every inner transform of jaxsecond inside every outer one.

Each inner is a map ``p -> inner(p)`` from ``R^3`` to ``R^3`` built on one of the
library's transforms, paired with an independent reference computing the same function
with plain JAX:

* ``custom_root``: ridge weights with per-coordinate penalties ``exp(p)``, solved by a
  black-box solve; reference ``jnp.linalg.solve`` differentiated directly.
* ``custom_fixed_point``: an equilibrium layer ``z = tanh(W z + p)``; reference the
  fixed-point iteration unrolled (a contraction of rate 0.3: 100 iterations converge to
  round-off, derivatives included).
* ``odeint`` with each adjoint: ``dy/dt = tanh(W y + p) - 0.3 y``; reference the same
  RK4 steps written out as a plain ``fori_loop`` (the reversible solver: the same
  discretisation with ``StoreAll``, which differentiates the plain loop).
* ``HashGridEncoding`` (xla, and pallas in the interpreter): features at a point that
  moves with ``p``, through a small head; reference multilinear interpolation of the
  same tables with ``jax.scipy.ndimage.map_coordinates`` (dense levels only, so the
  reference needs no hashing).

Each outer turns an inner into numbers: ``jax.grad``, ``jax.jvp``, a Hessian-vector
product (forward-over-reverse), ``jax.vmap`` of a gradient, ``jax.jit`` of a gradient,
one AdaHessian step (its Hutchinson probe needs a Hessian-vector product through the
inner), one RARTS step (three gradient blocks through the inner) and an outer
``custom_root`` whose optimality condition calls the inner (so its linear solve takes
the inner's Jacobian, and its own derivatives need the inner's second derivatives).
Every cell compares the outer applied to the inner with the outer applied to the
reference, in float64. The outers that run a training step (AdaHessian, RARTS) jit it, as
a training loop does, and the outer ``custom_root`` is jitted too: one compilation per
cell instead of one per eager step (grad, jvp, hvp and vmap stay eager). References are
shared between inners that have the same one.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.ndimage
import numpy as np
import optax
import pytest

import jaxsecond as js
from jaxsecond.nas import rarts
from tests.helpers import assert_tree_allclose

# One worker runs the whole module: its module-scoped fixtures and cached references are
# computed once (pytest -n 2 --dist loadgroup).
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("composition")]

N = 3
_RNG = np.random.default_rng(0)
X = jnp.asarray(_RNG.normal(size=(10, N)))
Y = jnp.asarray(_RNG.normal(size=10))
W = jnp.asarray(0.3 * _RNG.normal(size=(N, N)) / np.sqrt(N))
P0 = jnp.array([0.3, -0.2, 0.1])
V = jnp.array([1.0, -0.5, 0.25])

# ------------------------------------------------------------------- inners


def _ridge_optimality(w, p):
    return X.T @ (X @ w - Y) + jnp.exp(p) * w


@js.custom_root(_ridge_optimality)
def _ridge(w0, p):
    # A black box for the decorator: its steps are never differentiated.
    return jnp.linalg.solve(X.T @ X + jnp.diag(jnp.exp(jax.lax.stop_gradient(p))), X.T @ Y)


def root_inner(p):
    return _ridge(jnp.zeros(N), p)


def root_reference(p):
    return jnp.linalg.solve(X.T @ X + jnp.diag(jnp.exp(p)), X.T @ Y)


def _layer(z, p):
    return jnp.tanh(W @ z + p)


def _iterate(p, n=100):
    return jax.lax.fori_loop(0, n, lambda _, z: _layer(z, p), jnp.zeros(N))


_equilibrium = js.custom_fixed_point(_layer)(lambda z0, p: _iterate(jax.lax.stop_gradient(p)))


def fixed_point_inner(p):
    return _equilibrium(jnp.zeros(N), p)


def fixed_point_reference(p):
    return _iterate(p)


def _field(t, y, p):
    return jnp.tanh(W @ y + p) - 0.3 * y


def _ode(adjoint, solver):
    def inner(p):
        ts = np.array([0.0, 0.5, 1.0])  # concrete under jit: dt0 sets the step count
        ys = js.odeint(_field, jnp.ones(N), ts, p, solver=solver, adjoint=adjoint, dt0=0.05)
        return ys[-1]

    return inner


def rk4_reference(p, dt=0.05, num_steps=20):
    # What odeint(..., solver=RK4(), dt0=0.05) computes on [0, 1]: 20 classical RK4
    # steps (the field does not depend on t), differentiated as a plain loop.
    def step(_, y):
        k1 = _field(0.0, y, p)
        k2 = _field(0.0, y + 0.5 * dt * k1, p)
        k3 = _field(0.0, y + 0.5 * dt * k2, p)
        k4 = _field(0.0, y + dt * k3, p)
        return y + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    return jax.lax.fori_loop(0, num_steps, step, jnp.ones(N))


_ENCODING = js.HashGridEncoding(
    dim=3,
    num_levels=2,
    features_per_level=2,
    log2_hashmap_size=12,
    base_resolution=4,
    max_resolution=8,
    backend="xla",
    dtype=jnp.float64,
    key=jax.random.key(0),
)
_ENCODING = eqx.tree_at(
    lambda e: e.tables, _ENCODING, jax.random.normal(jax.random.key(1), _ENCODING.tables.shape)
)
_HEAD = jnp.asarray(_RNG.normal(size=(N, _ENCODING.out_size)))
_CENTRE = jnp.array([0.41, 0.53, 0.37])


def _point(p):
    # A small move: every cell's point stays inside its grid cells (smooth there).
    return _CENTRE + 0.01 * jnp.tanh(p)


def _hashgrid_inner(backend):
    enc = _ENCODING.with_backend(backend)
    return lambda p: _HEAD @ jnp.tanh(enc(_point(p)))


def hashgrid_reference(p):
    config, tables = _ENCODING.config, _ENCODING.tables
    assert not any(config.hashed)  # the reference indexes dense levels only
    x = _point(p)
    features = []
    for level in range(config.num_levels):
        res = config.resolutions[level]
        # Row v0 + v1 res + v2 res^2 is vertex (v0, v1, v2): axes reversed by the reshape.
        grid = tables[level, : res**3].reshape(res, res, res, -1).transpose(2, 1, 0, 3)
        coords = x * config.scales[level] + 0.5
        for f in range(grid.shape[-1]):
            features.append(jax.scipy.ndimage.map_coordinates(grid[..., f], list(coords), order=1))
    return _HEAD @ jnp.tanh(jnp.stack(features))


# name -> (inner, reference, relative tolerance and why)
EXACT = 1e-8  # same mathematics, different arithmetic (linear solves, loops): round-off
INNERS = {
    "custom_root": (root_inner, root_reference, EXACT),
    "custom_fixed_point": (fixed_point_inner, fixed_point_reference, EXACT),
    "odeint-StoreAll": (_ode(js.StoreAll(), js.RK4()), rk4_reference, EXACT),
    "odeint-Checkpointed": (_ode(js.Checkpointed(3), js.RK4()), rk4_reference, EXACT),
    "odeint-ReversibleAdjoint": (
        _ode(js.ReversibleAdjoint(), js.Reversible(js.RK4())),
        _ode(js.StoreAll(), js.Reversible(js.RK4())),
        EXACT,
    ),
    # The continuous adjoint is approximate: its reverse pass differs from the discrete
    # gradient by the O(h^4) RK4 error of the adjoint equation at h = 0.05 (~1e-7).
    "odeint-BacksolveAdjoint": (_ode(js.BacksolveAdjoint(), js.RK4()), rk4_reference, 1e-5),
    "HashGridEncoding-xla": (_hashgrid_inner("xla"), hashgrid_reference, EXACT),
    "HashGridEncoding-pallas": (_hashgrid_inner("pallas"), hashgrid_reference, EXACT),
}

# ------------------------------------------------------------------- outers


def _loss(inner):
    def loss(p):
        z = inner(p)  # once: each call is another solve to trace and compile
        return jnp.sum(z**2) + jnp.sum(z * V)

    return loss


def outer_grad(inner):
    return jax.grad(_loss(inner))(P0)


def outer_jvp(inner):
    return jax.jvp(inner, (P0,), (V,))


def outer_hvp(inner):
    return js.hvp(_loss(inner), P0, V)


def outer_vmap(inner):
    batch = jnp.stack([P0, -P0, 0.5 * P0])
    return jax.vmap(jax.grad(_loss(inner)))(batch)


def outer_jit(inner):
    return jax.jit(jax.grad(_loss(inner)))(P0)


def outer_adahessian(inner):
    # A large learning rate so the step depends visibly on the Hessian estimate.
    opt = js.adahessian(learning_rate=0.5)
    estimate = jax.jit(js.value_grad_and_hessian_diagonal(_loss(inner)))
    state = opt.init(P0)
    params = P0
    for i in range(2):
        _, grad, diag = estimate(params, jax.random.key(i))
        updates, state = opt.update(grad, state, params, hessian_diagonal=diag)
        params = optax.apply_updates(params, updates)
    return params


def outer_rarts(inner):
    train_loss = lambda w, a, batch: jnp.sum((inner(w) - batch) ** 2) * (1 + a**2)
    val_loss = lambda w, a, batch: jnp.sum(inner(w + a) ** 2) + 0.1 * jnp.sum(batch * w)
    search = rarts(
        train_loss,
        val_loss,
        weight_optimizer=optax.sgd(0.1),
        arch_optimizer=optax.sgd(0.1),
        lam=2.0,
        beta=5.0,
    )
    state = search.init(P0, jnp.array(0.2))
    step = jax.jit(search.step)
    for _ in range(2):
        state, _ = step(state, V, -V)
    return state.weights, state.val_weights, state.arch


def outer_custom_root(inner):
    # u = 0.5 tanh(inner(p) + 0.3 u): a contraction in u (rate 0.15).
    def optimality(u, p):
        return u - 0.5 * jnp.tanh(inner(p) + 0.3 * u)

    @js.custom_root(optimality)
    def solve(u0, p):
        z = inner(jax.lax.stop_gradient(p))  # the solver's own steps: a black box
        body = lambda _, u: 0.5 * jnp.tanh(z + 0.3 * u)
        return jax.lax.fori_loop(0, 60, body, u0)

    def outer_loss(p):
        return jnp.sum(solve(jnp.zeros(N), p) ** 2)

    return jax.jit(lambda p: (jax.grad(outer_loss)(p), js.hvp(outer_loss, p, V)))(P0)


def _outer_custom_root_reference(reference):
    def outer_loss(p):
        z = reference(p)
        body = lambda _, u: 0.5 * jnp.tanh(z + 0.3 * u)
        return jnp.sum(jax.lax.fori_loop(0, 60, body, jnp.zeros(N)) ** 2)

    return jax.jit(lambda p: (jax.grad(outer_loss)(p), js.hvp(outer_loss, p, V)))(P0)


OUTERS = {
    "grad": outer_grad,
    "jvp": outer_jvp,
    "hvp": outer_hvp,
    "vmap": outer_vmap,
    "jit": outer_jit,
    "adahessian": outer_adahessian,
    "rarts": outer_rarts,
    "custom_root": outer_custom_root,
}


def _reference(inner_name, outer_name):
    return _reference_of(INNERS[inner_name][1], outer_name)


@functools.cache
def _reference_of(reference, outer_name):
    # Keyed on the reference itself: inners with the same reference share its result.
    if outer_name == "custom_root":
        return _outer_custom_root_reference(reference)
    return OUTERS[outer_name](reference)


@pytest.mark.parametrize("outer_name", list(OUTERS))
@pytest.mark.parametrize(
    "inner_name",
    # Two rows run with the slow tests: the Pallas kernels in the interpreter equal the
    # XLA path to second order (test_hashgrid.py), and fixed-step Checkpointed
    # differentiates the same loop as StoreAll (test_diffeq.py checks them equal).
    [
        pytest.param(n, marks=pytest.mark.slow) if n.endswith(("pallas", "Checkpointed")) else n
        for n in INNERS
    ],
)
def test_composition(inner_name, outer_name):
    inner, _, rtol = INNERS[inner_name]
    ours = OUTERS[outer_name](inner)
    ref = _reference(inner_name, outer_name)
    assert_tree_allclose(ours, ref, rtol=rtol, atol=rtol * 1e-2)
