"""Data parallelism: the sharded steps equal the single-device computation.

The 8-device checks run in a subprocess (the host-device count is fixed when JAX starts);
the 1-device mesh and argument checks run here.
"""

import doctest
import functools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

import jaxsecond
from jaxsecond.parallel import (
    data_parallel_adahessian_step,
    data_parallel_rarts,
    replicate,
    shard_batch,
)

# One worker runs the whole module: its module-scoped fixtures and cached references are
# computed once (pytest -n 2 --dist loadgroup).
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("parallel")]

# Shared by this process and the subprocess: a tiny model, its data, the references.
COMMON = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax
    import jaxsecond
    from jaxsecond.nas import darts, rarts

    def mlp(p, x):
        return jnp.tanh(x @ p["W"] + p["b"]) @ p["v"]

    def loss(p, batch):
        x, y = batch
        return jnp.mean((mlp(p, x) - y) ** 2)

    def search_loss(w, a, batch):
        # Two candidate activations mixed by softmax(a), DARTS style.
        x, y = batch
        z = x @ w["W"]
        mix = jax.nn.softmax(a)
        h = mix[0] * jnp.tanh(z) + mix[1] * jnp.sin(z)
        return jnp.mean((h @ w["v"] - y) ** 2)

    def data(key, n):
        kx, kn = jax.random.split(key)
        x = jax.random.normal(kx, (n, 3))
        return x, jnp.sin(x @ jnp.array([1.0, -2.0, 0.5])) + 0.1 * jax.random.normal(kn, (n,))

    def params(key):
        k1, k2 = jax.random.split(key)
        return {"W": 0.5 * jax.random.normal(k1, (3, 4)), "b": jnp.zeros(4),
                "v": 0.5 * jax.random.normal(k2, (4,))}

    def recorder():
        # An optimizer linear in the gradient and the estimate that keeps both in its
        # state: a scale error in either shows in full (AdaHessian's ratio m / sqrt(v)
        # would hide a common factor).
        def init(p):
            zeros = jax.tree.map(jnp.zeros_like, p)
            return (zeros, zeros)

        def update(grads, state, params=None, *, hessian_diagonal, **extra):
            step = jax.tree.map(lambda g, d: -0.1 * g - 0.01 * d, grads, hessian_diagonal)
            return step, (grads, hessian_diagonal)

        return optax.GradientTransformationExtraArgs(init, update)

    def reference_adahessian_step(optimizer, num_shards):
        # Single device, whole batch: the gradient of the full-batch loss; the estimate
        # is the mean over shards i of shard i's estimate with probes from fold_in(key, i).
        @jax.jit
        def step(p, state, batch, key):
            shards = jax.tree.map(lambda x: x.reshape(num_shards, -1, *x.shape[1:]), batch)

            def shard_estimate(i, shard):
                f = jaxsecond.value_grad_and_hessian_diagonal(lambda q: loss(q, shard))
                return f(p, jax.random.fold_in(key, i))[2]

            diag = jax.tree.map(lambda d: jnp.mean(d, 0),
                                jax.vmap(shard_estimate)(jnp.arange(num_shards), shards))
            value, grads = jax.value_and_grad(loss)(p, batch)
            updates, state = optimizer.update(grads, state, p, hessian_diagonal=diag)
            return optax.apply_updates(p, updates), state, {"loss": value}

        return step

    def max_diff(a, b):
        return max(float(jnp.max(jnp.abs(x - y)))
                   for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))

    def max_abs(a):
        return max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(a))

    RARTS = dict(weight_optimizer=optax.sgd(0.05), arch_optimizer=optax.adam(0.01),
                 lam=0.5, beta=2.0)
    DARTS = dict(weight_optimizer=optax.sgd(0.05), arch_optimizer=optax.sgd(0.1), order=2, xi=0.05)
    """
)

ADAHESSIAN_CASES = [
    ("make_mesh_8", "recorder"),
    ("Mesh_8", "adahessian"),
    ("make_mesh_4x2", "adahessian"),
]
SEARCH_CASES = [("make_mesh_8", "rarts"), ("Mesh_8", "darts2")]

SCRIPT = (
    f"ADAHESSIAN_CASES = {ADAHESSIAN_CASES!r}\nSEARCH_CASES = {SEARCH_CASES!r}\n"
    + COMMON
    + textwrap.dedent(
        """
    import json, time
    start = time.perf_counter()
    from jax.sharding import Mesh, PartitionSpec as P
    from jaxsecond.parallel import (data_parallel_adahessian_step, data_parallel_rarts,
                                    data_parallel_search, shard_batch)

    assert jax.device_count() == 8, jax.devices()
    results = {}
    key = jax.random.key(0)
    batch = data(jax.random.key(1), 32)
    p0 = params(jax.random.key(2))

    # What JAX does: inside shard_map, grad w.r.t. a replicated input sums over the mesh.
    auto = Mesh(np.array(jax.devices()), ("data",))
    naive = jax.jit(jax.shard_map(lambda p, b: jax.grad(loss)(p, b), mesh=auto,
                                  in_specs=(P(), P("data")), out_specs=P()))
    g_full = jax.grad(loss)(p0, batch)
    results["naive_grad_ratio"] = float(naive(p0, batch)["v"][0] / g_full["v"][0])

    meshes = {
        "make_mesh_8": jax.make_mesh((8,), ("data",)),  # Explicit axes
        "Mesh_8": auto,  # Auto axes
        "make_mesh_4x2": jax.make_mesh((4, 2), ("data", "model")),
    }
    steps = {}
    # Each mesh kind once (compiling dominates the run time).
    for name, opt_name in ADAHESSIAN_CASES:
        mesh = meshes[name]
        n = mesh.shape["data"]
        opt = recorder() if opt_name == "recorder" else jaxsecond.adahessian(0.1)
        step = data_parallel_adahessian_step(loss, opt, mesh)
        ref = reference_adahessian_step(opt, n)
        p, s, pr, sr = p0, opt.init(p0), p0, opt.init(p0)
        b = shard_batch(batch, mesh) if name == "make_mesh_8" else batch
        for i in range(3):
            k = jax.random.fold_in(key, i)
            p, s, m = step(p, s, b, k)
            pr, sr, mr = ref(pr, sr, batch, k)
        steps[name, opt_name] = (step, b)
        results[f"adahessian/{name}/{opt_name}"] = {
            "params_diff": max_diff(p, pr), "state_diff": max_diff(s, sr),
            "loss_diff": abs(float(m["loss"] - mr["loss"])), "scale": max_abs(p),
            "replicated": bool(p["v"].sharding.is_fully_replicated)}

    # Different probes per device: the 8-shard estimate differs from one probe on all.
    step, b = steps["make_mesh_8", "recorder"]
    _, (g8, d8), _ = step(p0, recorder().init(p0), b, key)
    _, g1, d1 = jaxsecond.value_grad_and_hessian_diagonal(lambda q: loss(q, batch))(
        p0, jax.random.fold_in(key, 0))
    results["grad_vs_full_batch"] = max_diff(g8, g1)
    results["diag_vs_one_shared_probe"] = max_diff(d8, d1)

    train, val = data(jax.random.key(3), 32), data(jax.random.key(4), 64)
    w0 = {"W": p0["W"], "v": p0["v"]}
    a0 = jnp.array([0.3, -0.2])
    for name, label in SEARCH_CASES:
        mesh = meshes[name]
        method, kwargs = (rarts, RARTS) if label == "rarts" else (darts, DARTS)
        if label == "rarts":
            search = data_parallel_rarts(search_loss, search_loss, mesh, **kwargs)
        else:
            search = data_parallel_search(method, search_loss, search_loss, mesh, **kwargs)
        single = method(search_loss, search_loss, **kwargs)
        single_step = jax.jit(single.step)
        s, sr = search.init(w0, a0), single.init(w0, a0)
        for _ in range(3):
            s, m = search.step(s, train, val)
            sr, mr = single_step(sr, train, val)
        results[f"{label}/{name}"] = {
            "state_diff": max_diff(s, sr), "metrics_diff": max_diff(m, mr),
            "scale": max_abs(s.arch)}

    try:
        data_parallel_adahessian_step(loss, recorder(), auto)(p0, recorder().init(p0),
                                                             data(key, 12), key)
        results["indivisible_error"] = None
    except ValueError as e:
        results["indivisible_error"] = str(e)
    try:
        data_parallel_rarts(search_loss, search_loss, auto, **RARTS).step(
            rarts(search_loss, search_loss, **RARTS).init(w0, a0), train, data(key, 20))
        results["indivisible_val_error"] = None
    except ValueError as e:
        results["indivisible_val_error"] = str(e)
    results["seconds"] = time.perf_counter() - start
    print("RESULTS " + json.dumps(results))
    """
    )
)


@pytest.fixture(scope="module")
def eight_devices():
    return _eight_devices()


@functools.cache  # xdist may interleave modules on a worker: run the subprocess once
def _eight_devices():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
        "JAX_ENABLE_X64": "1",
    }
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-4000:]
    line = next(s for s in out.stdout.splitlines() if s.startswith("RESULTS "))
    results = json.loads(line[len("RESULTS ") :])
    print(json.dumps(results, indent=1))
    return results


def test_jax_sums_replicated_gradients_inside_shard_map(eight_devices):
    # The trap the helpers avoid: a plain jax.grad of each shard's mean loss inside
    # shard_map comes out 8 times the full-batch gradient on 8 devices.
    assert eight_devices["naive_grad_ratio"] == pytest.approx(8.0, rel=1e-12)


@pytest.mark.parametrize(("mesh", "opt"), ADAHESSIAN_CASES)
def test_adahessian_step_equals_single_device(eight_devices, mesh, opt):
    r = eight_devices[f"adahessian/{mesh}/{opt}"]
    assert r["scale"] > 0.1  # the comparison is not between zeros
    assert r["params_diff"] < 1e-10
    assert r["state_diff"] < 1e-10
    assert r["loss_diff"] < 1e-12
    assert r["replicated"]


def test_gradient_is_full_batch_and_probes_differ_per_device(eight_devices):
    assert eight_devices["grad_vs_full_batch"] < 1e-12
    # Eight independent probes on eight shards are not one probe on the whole batch.
    assert eight_devices["diag_vs_one_shared_probe"] > 1e-3


@pytest.mark.parametrize(("mesh", "method"), SEARCH_CASES)
def test_search_step_equals_single_device(eight_devices, mesh, method):
    r = eight_devices[f"{method}/{mesh}"]
    assert r["scale"] > 0.1
    assert r["state_diff"] < 1e-10
    assert r["metrics_diff"] < 1e-10


def test_indivisible_batch_is_rejected(eight_devices):
    assert "batch size 12" in eight_devices["indivisible_error"]
    assert eight_devices["indivisible_error"].startswith("batch ")
    assert eight_devices["indivisible_val_error"].startswith("val_batch ")


# --- one device, in process -------------------------------------------------------------

namespace: dict = {}
exec(COMMON, namespace)


def test_one_device_mesh_matches_reference():
    ns = namespace
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    batch = ns["data"](jax.random.key(1), 16)
    p0 = ns["params"](jax.random.key(2))
    opt = jaxsecond.adahessian(0.1)
    step = data_parallel_adahessian_step(ns["loss"], opt, mesh)
    ref = ns["reference_adahessian_step"](opt, 1)
    p, s, pr, sr = p0, replicate(opt.init(p0), mesh), p0, opt.init(p0)
    for i in range(3):
        key = jax.random.fold_in(jax.random.key(0), i)
        p, s, m = step(p, s, shard_batch(batch, mesh), key)
        pr, sr, mr = ref(pr, sr, batch, key)
    assert ns["max_diff"](p, pr) < 1e-12
    assert abs(float(m["loss"] - mr["loss"])) < 1e-14

    w0, a0 = {"W": p0["W"], "v": p0["v"]}, jnp.array([0.3, -0.2])
    search = data_parallel_rarts(ns["search_loss"], ns["search_loss"], mesh, **ns["RARTS"])
    single = jaxsecond.nas.rarts(ns["search_loss"], ns["search_loss"], **ns["RARTS"])
    single_step = jax.jit(single.step)
    s, sr = search.init(w0, a0), single.init(w0, a0)
    for _ in range(3):
        s, _ = search.step(s, batch, batch)
        sr, _ = single_step(sr, batch, batch)
    assert ns["max_diff"](s, sr) < 1e-12


def test_float32_keeps_dtype(float32):
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    ns = namespace
    p0 = ns["params"](jax.random.key(2))
    opt = jaxsecond.adahessian(0.1)
    step = data_parallel_adahessian_step(ns["loss"], opt, mesh)
    p, _, m = step(p0, opt.init(p0), ns["data"](jax.random.key(1), 8), jax.random.key(0))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(p))
    assert m["loss"].dtype == jnp.float32


def test_equinox_module_params():
    import equinox as eqx

    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    model = eqx.nn.MLP(3, "scalar", 4, 1, activation=jnp.tanh, key=jax.random.key(0))

    def loss(m, batch):
        x, y = batch
        return jnp.mean((jax.vmap(m)(x) - y) ** 2)

    opt = jaxsecond.adahessian(0.1)
    state = opt.init(eqx.filter(model, eqx.is_inexact_array))
    step = data_parallel_adahessian_step(loss, opt, mesh)
    batch = namespace["data"](jax.random.key(1), 8)
    before = float(loss(model, batch))
    for i in range(5):
        model, state, _ = step(model, state, batch, jax.random.key(i))
    assert isinstance(model, eqx.nn.MLP) and float(loss(model, batch)) < before


def test_bad_arguments():
    mesh = Mesh(np.array(jax.devices()[:1]), ("batch",))
    opt = jaxsecond.adahessian()
    with pytest.raises(ValueError, match=r"no axis named 'data'.*\('batch',\)"):
        data_parallel_adahessian_step(namespace["loss"], opt, mesh)
    with pytest.raises(ValueError, match="no axis named 'data'"):
        data_parallel_rarts(namespace["search_loss"], namespace["search_loss"], mesh)
    with pytest.raises(TypeError, match=r"mesh must be a jax\.sharding\.Mesh"):
        data_parallel_adahessian_step(namespace["loss"], opt, jax.devices())
    step = data_parallel_adahessian_step(namespace["loss"], opt, mesh, axis_name="batch")
    p0 = namespace["params"](jax.random.key(2))
    x, y = namespace["data"](jax.random.key(1), 8)
    with pytest.raises(ValueError, match="batch's arrays must share the leading"):
        step(p0, opt.init(p0), (x, y[:4]), jax.random.key(0))
    with pytest.raises(ValueError, match="scalar leaf"):
        step(p0, opt.init(p0), (x, jnp.float64(1.0)), jax.random.key(0))


def test_docstring_examples():
    import jaxsecond.parallel._data_parallel as module

    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
