"""The behaviours jaxsecond takes from dependencies beyond their documented APIs.

Each is used in one module only (``diffeq/_vprim.py``: equinox's internal primitive
machinery; ``implicit/_outbox.py``: eager ``custom_jvp`` evaluation); these tests pin
what those modules rely on, so that an upgrade outside the bounds in ``pyproject.toml``
fails here, by name, rather than as a wrong gradient somewhere else.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import tomllib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.interpreters import batching
from packaging.requirements import Requirement

import jaxsecond as js
from jaxsecond.diffeq import _adjoint, _vprim
from jaxsecond.implicit._outbox import Outbox

jax.config.update("jax_enable_x64", True)

PYPROJECT = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_installed_versions_are_within_the_declared_bounds():
    # What CI tests is what pip installed; the bounds must admit it, and bound above
    # every dependency whose private or fast-moving API we use.
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    for dep in map(Requirement, deps):
        version = importlib.metadata.version(dep.name)
        assert dep.specifier.contains(version, prereleases=True), (dep, version)
    bounded = {Requirement(d).name for d in deps if "<" in str(Requirement(d).specifier)}
    assert {"jax", "jaxlib", "equinox", "diffrax", "lineax", "optax"} <= bounded


def test_vprim_batching_rule_is_ours():
    rule = batching.fancy_primitive_batchers[_adjoint._tangent_p]
    assert rule.wrapped_rule is not None  # equinox registered one, and we wrapped it


def test_vmapped_gradient_reaches_unbatched_closed_over_parameters():
    # The case the batching wrapper exists for: a vmap over y0 whose transpose meets a
    # parameter that is not batched (closed over), with the reversible adjoint.
    W = jnp.array([[0.3, -0.2], [0.1, 0.4]])
    y0s = jnp.array([[1.0, 0.0], [0.5, -1.0], [0.0, 2.0]])
    ts = jnp.array([0.0, 1.0])

    def loss(W, y0, adjoint):
        vf = lambda t, y, _: jnp.tanh(W @ y)
        ys = js.odeint(vf, y0, ts, solver=js.ReversibleHeun(), adjoint=adjoint, dt0=0.1)
        return jnp.sum(ys[-1] ** 2)

    def batched(adjoint):
        return jax.vmap(jax.grad(loss), in_axes=(None, 0, None))(W, y0s, adjoint)

    ours = batched(js.ReversibleAdjoint())
    ref = batched(js.StoreAll())
    # Reversible reconstruction is exact up to round-off in float64.
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)
    assert float(jnp.abs(ref).max()) > 0


def test_filter_vprim_refuses_nothing_it_needs():
    for name in ("create_vprim", "filter_primitive_def", "filter_primitive_jvp"):
        assert callable(getattr(_vprim._eqxi, name)), name
    assert callable(_vprim._eqxi.filter_primitive_transpose(materialise_zeros=True))


def test_outbox_take_without_put_raises():
    box = Outbox()
    with pytest.raises(RuntimeError, match="did not reach the caller"):
        box.take()
    box.put(1)
    assert box.take() == 1
    with pytest.raises(RuntimeError):
        box.take()  # taken once


def test_black_box_aux_reaches_the_caller_under_every_eager_transform():
    def optimality(w, lam):
        return w - lam

    seen = []

    @js.custom_root(optimality, has_aux=True)
    def numpy_solver(w0, lam):
        return np.asarray(lam, dtype=np.float64), {"solver": "numpy", "calls": len(seen)}

    def f(lam):
        w, aux = numpy_solver(jnp.zeros(()), lam)
        seen.append(aux["solver"])
        return w**2

    lam = jnp.array(1.5)
    assert float(f(lam)) == pytest.approx(2.25)
    _, tangent = jax.jvp(f, (lam,), (jnp.array(1.0),))
    assert float(tangent) == pytest.approx(3.0)
    assert float(jax.grad(f)(lam)) == pytest.approx(3.0)
    assert seen == ["numpy"] * 3
