"""Randomised estimates of the Hessian's diagonal and trace.

Hutchinson: for probes ``z`` with independent entries of mean 0 and variance 1,
``E[z * (H z)] = diag(H)`` and ``E[z^T H z] = tr(H)``. Hutch++ spends a third of its
matrix-vector products on a low-rank sketch of the dominant eigenspace, whose trace it
takes exactly, and estimates only the remainder, which lowers the variance when the
spectrum decays.

Each probe is one flat draw over all parameters from a key derived from the sample
index, split into the leaves, so leaves never share randomness (a key reused for
same-shaped leaves makes their probes equal and adds the off-diagonal blocks' entries
into the diagonal estimate) and the estimate does not depend on ``batch_size``.

References: M. F. Hutchinson, "A stochastic estimator of the trace of the influence
matrix for Laplacian smoothing splines", 1990; C. Bekas, E. Kokiopoulou, Y. Saad, "An
estimator for the diagonal of a matrix", 2007; R. A. Meyer, C. Musco, C. Musco,
D. P. Woodruff, "Hutch++: Optimal Stochastic Trace Estimation", 2021; Z. Yao et al.,
"PyHessian: Neural Networks Through the Lens of the Hessian", 2020.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxsecond._checks import check_count, check_key
from jaxsecond._tree import accumulation_dtype
from jaxsecond.curvature._products import flat_hvp, scalar_function, tree_hvp

DISTRIBUTIONS = ("rademacher", "normal")


def _check_distribution(distribution: str) -> None:
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")


def _draw(key, shape, dtype, distribution: str):
    if distribution == "rademacher":
        return jax.random.rademacher(key, shape, dtype=dtype)
    return jax.random.normal(key, shape, dtype=dtype)


def probe(key, index, dynamic, distribution: str = "rademacher"):
    """The ``index``-th probe: a pytree like ``dynamic`` whose entries are all
    independent (one flat draw from ``fold_in(key, index)``, split into the leaves)."""
    flat, unravel = ravel_pytree(dynamic)
    sample_key = jax.random.fold_in(key, index)
    return unravel(_draw(sample_key, flat.shape, flat.dtype, distribution))


def probe_product(f, dynamic, key, index, distribution: str = "rademacher"):
    """``z * (H z)`` for the ``index``-th probe ``z``: one sample of the diagonal."""
    z = probe(key, index, dynamic, distribution)
    hz = tree_hvp(f, dynamic, z)
    return jax.tree.map(jnp.multiply, z, hz)


def _checked(fun, params, key, num_samples, batch_size, distribution):
    f, dynamic = scalar_function(fun, params)
    check_key(key)
    num_samples = check_count(num_samples, "num_samples")
    if batch_size is not None:
        batch_size = check_count(batch_size, "batch_size")
    _check_distribution(distribution)
    return f, dynamic


def streaming_mean(sample_fn: Callable, num_samples: int, batch_size: int | None):
    """Mean and standard error of ``sample_fn(i)`` over ``i < num_samples``.

    ``batch_size`` samples are vmapped together; chunks run one after another in a
    ``lax.scan`` and are merged with Chan et al.'s pairwise update, so memory holds one
    chunk of samples, never all of them.
    """
    batch = num_samples if batch_size is None else min(batch_size, num_samples)
    num_chunks = math.ceil(num_samples / batch)
    shapes = jax.eval_shape(sample_fn, jnp.int32(0))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def chunk(carry, c):
        count, mean, m2 = carry
        index = c * batch + jnp.arange(batch)
        valid = index < num_samples
        samples = jax.vmap(sample_fn)(jnp.minimum(index, num_samples - 1))

        def weights_like(x):
            return valid.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)

        n_c = jnp.sum(valid, dtype=jnp.int32)
        mean_c = jax.tree.map(lambda s: jnp.sum(weights_like(s) * s, 0) / n_c, samples)
        m2_c = jax.tree.map(
            lambda s, mc: jnp.sum(weights_like(s) * (s - mc) ** 2, 0), samples, mean_c
        )
        total = count + n_c

        def merge_mean(m, mc):
            return m + (mc - m) * (n_c.astype(m.dtype) / total.astype(m.dtype))

        def merge_m2(a, b, m, mc):
            cross = count.astype(a.dtype) * n_c.astype(a.dtype) / total.astype(a.dtype)
            return a + b + (mc - m) ** 2 * cross

        m2 = jax.tree.map(merge_m2, m2, m2_c, mean, mean_c)
        mean = jax.tree.map(merge_mean, mean, mean_c)
        return (total, mean, m2), None

    init = (jnp.int32(0), zeros, zeros)
    (count, mean, m2), _ = jax.lax.scan(chunk, init, jnp.arange(num_chunks))
    if num_samples > 1:
        stderr = jax.tree.map(lambda v: jnp.sqrt(v / ((count - 1) * count)), m2)
    else:
        stderr = jax.tree.map(lambda v: jnp.full_like(v, jnp.nan), m2)
    return mean, stderr


def hutchinson_diagonal(
    fun: Callable,
    params,
    key,
    num_samples: int = 1,
    *,
    distribution: str = "rademacher",
    batch_size: int | None = None,
    return_stderr: bool = False,
):
    """Hutchinson estimate of the Hessian's diagonal, ``mean_i z_i * (H z_i)``.

    Exact with one Rademacher probe when the Hessian is diagonal. Probes are drawn
    independently for every leaf and every sample.

    Args:
        fun: ``params -> scalar``.
        params: pytree of floating-point arrays (equinox Modules: non-arrays held fixed).
        key: a ``jax.random`` key.
        num_samples: number of probes (Hessian-vector products).
        distribution: ``"rademacher"`` (default; lowest variance) or ``"normal"``.
        batch_size: probes evaluated together with ``vmap``; chunks of this size run
            sequentially, so memory is ``batch_size`` Hessian-vector products. Default:
            all at once. On CPU a chunk of 8-16 is often faster than all at once.
        return_stderr: also return the standard error of the estimate (per entry), from
            the spread of the per-probe estimates (NaN with one sample).

    Returns:
        A pytree shaped like ``params`` (or ``(estimate, stderr)``), with ``None`` where
        ``params`` has non-array leaves (as ``equinox.filter_grad`` does).

    Example:
        >>> import jax, jax.numpy as jnp, jaxsecond
        >>> f = lambda p: jnp.sum(p["w"] ** 4) + p["b"] ** 2
        >>> p = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(3.0)}
        >>> d = jaxsecond.hutchinson_diagonal(f, p, jax.random.key(0))  # exact: diagonal H
        >>> print(d["w"], d["b"])
        [12. 48.] 2.0
    """
    f, dynamic = _checked(fun, params, key, num_samples, batch_size, distribution)

    def sample(i):
        return probe_product(f, dynamic, key, i, distribution)

    mean, stderr = streaming_mean(sample, num_samples, batch_size)
    return (mean, stderr) if return_stderr else mean


def hutchinson_trace(
    fun: Callable,
    params,
    key,
    num_samples: int = 1,
    *,
    distribution: str = "rademacher",
    batch_size: int | None = None,
    return_stderr: bool = False,
    per_leaf: bool = False,
):
    """Hutchinson estimate of the Hessian's trace, ``mean_i z_i^T H z_i``.

    Args:
        fun: as in :func:`hutchinson_diagonal`.
        params: as in :func:`hutchinson_diagonal`.
        key: as in :func:`hutchinson_diagonal`.
        num_samples: as in :func:`hutchinson_diagonal`.
        distribution: as in :func:`hutchinson_diagonal`.
        batch_size: as in :func:`hutchinson_diagonal`.
        return_stderr: also return the standard error of the estimate.
        per_leaf: return the trace of each leaf's diagonal block (a per-layer breakdown)
            as a pytree of scalars shaped like ``params``, instead of the total.

    Returns:
        A scalar (or a pytree of scalars with ``per_leaf=True``), or ``(estimate,
        stderr)``.

    Example:
        >>> import jax, jax.numpy as jnp, jaxsecond
        >>> f = lambda x: 0.5 * x @ jnp.diag(jnp.arange(1.0, 5.0)) @ x
        >>> print(jaxsecond.hutchinson_trace(f, jnp.zeros(4), jax.random.key(0), 4))
        10.0
    """
    f, dynamic = _checked(fun, params, key, num_samples, batch_size, distribution)

    def sample(i):
        leaf_traces = jax.tree.map(jnp.sum, probe_product(f, dynamic, key, i, distribution))
        return leaf_traces, sum(jax.tree.leaves(leaf_traces))

    (leaf_mean, total_mean), (leaf_err, total_err) = streaming_mean(sample, num_samples, batch_size)
    if per_leaf:
        estimate, stderr = leaf_mean, leaf_err
    else:
        estimate, stderr = total_mean, total_err
    return (estimate, stderr) if return_stderr else estimate


def hutchpp_trace(
    fun: Callable,
    params,
    key,
    num_matvecs: int = 30,
    *,
    distribution: str = "rademacher",
    batch_size: int | None = None,
):
    """Hutch++ estimate of the Hessian's trace with ``num_matvecs`` products.

    A third of the products sketch the dominant eigenspace (``Q = orth(H S)``), a third
    take its trace exactly (``tr(Q^T H Q)``), a third run Hutchinson on the part of
    ``H`` orthogonal to it. For a Hessian whose eigenvalues decay, the variance is far
    below plain Hutchinson's with the same number of products.

    Args:
        fun: as in :func:`hutchinson_trace`.
        params: as in :func:`hutchinson_trace`.
        key: as in :func:`hutchinson_trace`.
        distribution: as in :func:`hutchinson_trace`.
        num_matvecs: total Hessian-vector products, a multiple of 3.
        batch_size: products evaluated together with ``vmap`` (``lax.map`` across
            chunks); default all at once.

    Example:
        >>> import jax, jax.numpy as jnp, jaxsecond
        >>> f = lambda x: 0.5 * x @ jnp.diag(2.0 ** -jnp.arange(6.0)) @ x
        >>> t = jaxsecond.hutchpp_trace(f, jnp.zeros(6), jax.random.key(0), num_matvecs=18)
        >>> print(f"{float(t):.3f}")  # exact (1.96875): the sketch spans the whole space
        1.969
    """
    f, dynamic = scalar_function(fun, params)
    check_key(key)
    num_matvecs = check_count(num_matvecs, "num_matvecs", 3)
    if num_matvecs % 3:
        raise ValueError(f"num_matvecs must be a multiple of 3, got {num_matvecs}")
    if batch_size is not None:
        batch_size = check_count(batch_size, "batch_size")
    _check_distribution(distribution)
    flat, _, matvec = flat_hvp(f, dynamic)
    k = num_matvecs // 3
    # The QR and the projections run in float32 for half-precision params.
    wide = accumulation_dtype(flat.dtype)

    def matmat(columns):  # columns: (n, k)
        return jax.lax.map(matvec, columns.T, batch_size=batch_size).T

    sketch_key, probe_key = jax.random.split(key)
    S = _draw(sketch_key, (flat.size, k), wide, distribution)
    Q, _ = jnp.linalg.qr(matmat(S))
    G = _draw(probe_key, (flat.size, k), wide, distribution)
    G = G - Q @ (Q.T @ G)
    trace = jnp.trace(Q.T @ matmat(Q)) + jnp.trace(G.T @ matmat(G)) / k
    return trace.astype(flat.dtype)
