"""Shared test helpers: pytree comparison and finite differences."""

from __future__ import annotations

import importlib
import importlib.util
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np


def tree_allclose(x, y, *, rtol=1e-7, atol=0.0) -> bool:
    """True when ``x`` and ``y`` have the same structure and every leaf pair is close."""
    xl, xt = jax.tree.flatten(x)
    yl, yt = jax.tree.flatten(y)
    if xt != yt:
        return False
    return all(
        np.shape(a) == np.shape(b) and np.allclose(a, b, rtol=rtol, atol=atol)
        for a, b in zip(xl, yl, strict=True)
    )


def rel_err(a, b) -> float:
    """``|a - b| / |b|`` in the Euclidean norm."""
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def headline_numbers(key_figure: str, pattern: str) -> tuple[float, ...]:
    """The numbers an example's ``key_figure`` reports, by regular expression."""
    match = re.search(pattern, key_figure)
    assert match, f"{pattern!r} not found in {key_figure!r}"
    return tuple(float(g) for g in match.groups())


def assert_tree_allclose(x, y, *, rtol=1e-7, atol=0.0):
    """Like :func:`tree_allclose` but raises with the worst leaf mismatch."""
    xl, xt = jax.tree.flatten(x)
    yl, yt = jax.tree.flatten(y)
    assert xt == yt, f"structures differ: {xt} vs {yt}"
    for i, (a, b) in enumerate(zip(xl, yl, strict=True)):
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(b), rtol=rtol, atol=atol, err_msg=f"leaf {i}"
        )


def finite_difference_jvp(fun, primals, tangents, *, eps=1e-6):
    """Central difference ``(f(x + eps t) - f(x - eps t)) / (2 eps)`` on pytrees.

    Truncation error is O(eps^2 f'''), rounding error O(ulp(f) / eps); in float64
    eps = 1e-6 balances them near 1e-10 relative for smooth, O(1)-scaled functions.
    """
    plus = jax.tree.map(lambda p, t: p + eps * t, primals, tangents)
    minus = jax.tree.map(lambda p, t: p - eps * t, primals, tangents)
    return jax.tree.map(lambda a, b: (a - b) / (2 * eps), fun(*plus), fun(*minus))


def finite_difference_grad(fun, x, *, eps=1e-6):
    """Gradient of scalar ``fun`` at array ``x`` by central differences, coordinatewise."""
    x = jnp.asarray(x)
    flat = x.reshape(-1)
    basis = jnp.eye(flat.size, dtype=x.dtype)

    def one(e):
        return finite_difference_jvp(lambda z: fun(z.reshape(x.shape)), (flat,), (e,), eps=eps)

    return jax.vmap(one)(basis).reshape(x.shape)


EXAMPLES_DIR = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
    """The example module, from the installed package or else from the source tree."""
    try:
        return importlib.import_module(f"jaxsecond.examples.{name}")
    except ModuleNotFoundError:
        spec = importlib.util.spec_from_file_location(
            f"_jaxsecond_example_{name}", EXAMPLES_DIR / f"{name}.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


BENCHMARKS_DIR = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """A benchmark script as a module. Registered in ``sys.modules`` before it runs, as
    ``jaxsecond bench`` does: dataclasses with postponed annotations look their module
    up there."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
