"""Extreme eigenvalues and the spectral density of a Hessian, by Lanczos.

Lanczos builds an orthonormal basis of the Krylov space ``span(v, Hv, H^2 v, ...)`` in
which ``H`` is tridiagonal; that small matrix's eigenvalues (Ritz values) converge to
the extreme eigenvalues of ``H`` in far fewer products than power iteration needs. We
re-orthogonalise every new vector against the whole basis (twice: "twice is enough"),
which removes the spurious copies of converged eigenvalues that plain Lanczos produces
in floating point, at O(n m) memory for ``m`` iterations.

Stochastic Lanczos quadrature turns the same tridiagonal matrices, started from random
probes, into a quadrature rule for ``v^T g(H) v``, whose average over probes is the
spectral density smoothed by a Gaussian.

References: C. Lanczos, 1950; G. H. Golub, G. Meurant, "Matrices, Moments and
Quadrature with Applications", 2010; B. Ghorbani, S. Krishnan, Y. Xiao, "An Investigation
into Neural Net Optimization via Hessian Eigenvalue Density", ICML 2019; Z. Yao et al.,
"PyHessian", 2020.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxsecond._checks import check_count, check_key
from jaxsecond._tree import accumulation_dtype
from jaxsecond.curvature._products import flat_hvp, scalar_function

WHICH = ("largest", "smallest", "magnitude")


def _orthogonalise(w, basis):
    # Classical Gram-Schmidt twice against every basis row (unused rows are zero).
    w = w - basis.T @ (basis @ w)
    return w - basis.T @ (basis @ w)


def _norm(w):
    # Scaled, so that squares of large entries do not overflow (float32 past ~1e19).
    m = jnp.max(jnp.abs(w))
    return m * jnp.linalg.norm(w / jnp.where(m > 0, m, 1))


def lanczos_tridiagonal(matvec: Callable, v0, num_iters: int, key):
    """``num_iters`` steps of Lanczos with full re-orthogonalisation.

    Returns ``(alphas, betas, basis)``: the diagonal and off-diagonal of the
    tridiagonal matrix ``T = basis @ H @ basis.T`` and the orthonormal basis (rows). If
    the Krylov space becomes invariant (``beta`` ~ 0) the next vector is a fresh random
    one orthogonal to the basis and ``beta`` is recorded as 0, so ``T`` stays exact.

    The iteration runs on ``H / s``, with ``s = |H v0| / |v0|`` from the first product,
    and scales ``T`` back: the invariance test and every intermediate stay near 1
    whatever the scale of ``H`` (a Hessian of 1e-12 or 1e19 in float32 alike).
    """
    n = v0.size
    dtype = v0.dtype
    basis = jnp.zeros((num_iters + 1, n), dtype).at[0].set(v0 / _norm(v0))
    tiny = jnp.finfo(dtype).eps

    def step(j, state):
        basis, alphas, betas, s = state
        v = basis[j]
        w = matvec(v)
        # The first product sets the scale (1 for a zero Hessian).
        first = _norm(w)
        s = jnp.where(j == 0, jnp.where(first > 0, first, 1), s).astype(s.dtype)
        w = w / s
        alpha = jnp.vdot(v, w)
        w = _orthogonalise(w - alpha * v, basis)
        beta = _norm(w)
        scale = jnp.abs(alpha) + jnp.where(j > 0, betas[j - 1], 0.0)
        # Relative to the local scale of H, independent of n: after re-orthogonalising,
        # a vector left in an invariant subspace is round-off, a few eps of the scale.
        invariant = beta <= 100 * tiny * jnp.maximum(scale, tiny)

        def restart():
            r = jax.random.normal(jax.random.fold_in(key, j), (n,), dtype)
            r = _orthogonalise(r, basis)
            return r / jnp.maximum(_norm(r), tiny)

        nxt = jax.lax.cond(invariant, restart, lambda: w / beta)
        basis = basis.at[j + 1].set(nxt)
        beta = jnp.where(invariant, 0.0, beta)
        return basis, alphas.at[j].set(alpha), betas.at[j].set(beta), s

    zeros = jnp.zeros(num_iters, dtype)
    init = (basis, zeros, zeros, jnp.ones((), jnp.real(zeros).dtype))
    basis, alphas, betas, s = jax.lax.fori_loop(0, num_iters, step, init)
    return alphas * s, betas[:-1] * s, basis[:num_iters]


def _tridiagonal_eigh(alphas, betas):
    T = jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)
    return jnp.linalg.eigh(T)


def _check_real_and_nonempty(flat, caller) -> int:
    if flat.size == 0:
        raise ValueError(f"{caller}: params hold no floating-point arrays (nothing to probe)")
    if jnp.iscomplexobj(flat):
        # The Hessian of a real function of complex parameters is that of the real and
        # imaginary parts; Lanczos on the complex HVP would mix them.
        raise TypeError(
            f"{caller}: complex parameters are not supported; split them into real and "
            "imaginary parts (e.g. params = (z.real, z.imag))"
        )
    return flat.size


def hessian_eigenvalues(
    fun: Callable,
    params,
    key,
    k: int = 1,
    num_iters: int | None = None,
    *,
    which: str = "largest",
):
    """The ``k`` extreme eigenvalues of the Hessian and their eigenvectors, by Lanczos.

    Args:
        fun: ``params -> scalar``.
        params: pytree of floating-point arrays (equinox Modules: non-arrays fixed).
        key: a ``jax.random`` key for the starting vector.
        k: how many eigenpairs.
        num_iters: Lanczos steps (Hessian-vector products); default
            ``min(n, max(30, 3 k))`` for ``n`` parameters. With ``num_iters = n`` the
            result is exact up to round-off.
        which: ``"largest"`` (algebraically, default; the sharpness), ``"smallest"``
            or ``"magnitude"`` (largest ``|lambda|``, what power iteration finds).

    Returns:
        ``(eigenvalues, eigenvectors)``: eigenvalues of shape ``[k]`` ordered from the
        largest (by ``which``), and unit eigenvectors as a pytree shaped like ``params``
        with a leading axis of size ``k`` (``None`` at non-array leaves).

    Example:
        >>> import jax, jax.numpy as jnp, jaxsecond
        >>> f = lambda x: 0.5 * x @ jnp.diag(jnp.array([1.0, 5.0, 3.0])) @ x
        >>> vals, vecs = jaxsecond.hessian_eigenvalues(f, jnp.zeros(3), jax.random.key(0), k=2)
        >>> print(vals.round(4), jnp.abs(vecs[0]).round(4))
        [5. 3.] [0. 1. 0.]
    """
    f, dynamic = scalar_function(fun, params)
    check_key(key)
    k = check_count(k, "k")
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    flat, unravel, matvec = flat_hvp(f, dynamic)
    n = _check_real_and_nonempty(flat, "hessian_eigenvalues")
    if k > n:
        raise ValueError(f"k={k} exceeds the number of parameters ({n})")
    if num_iters is None:
        num_iters = min(n, max(30, 3 * k))
    num_iters = check_count(num_iters, "num_iters")
    if not k <= num_iters <= n:
        raise ValueError(f"num_iters must be between k={k} and the parameter count {n}")
    start_key, restart_key = jax.random.split(key)
    v0 = jax.random.normal(start_key, (n,), accumulation_dtype(flat.dtype))
    alphas, betas, basis = lanczos_tridiagonal(matvec, v0, num_iters, restart_key)
    ritz_values, ritz_coords = _tridiagonal_eigh(alphas, betas)
    score = {"largest": ritz_values, "smallest": -ritz_values, "magnitude": jnp.abs(ritz_values)}
    order = jnp.argsort(-score[which])[:k]
    vectors = (ritz_coords[:, order].T @ basis).astype(flat.dtype)
    return ritz_values[order].astype(flat.dtype), jax.vmap(unravel)(vectors)


def hessian_spectral_density(
    fun: Callable,
    params,
    key,
    *,
    num_probes: int = 8,
    num_iters: int = 40,
    num_points: int = 256,
    sigma: float | None = None,
    batch_size: int | None = None,
):
    """Eigenvalue density of the Hessian by stochastic Lanczos quadrature.

    Each of ``num_probes`` Rademacher probes runs ``num_iters`` Lanczos steps; the Ritz
    values are quadrature nodes weighted by the squared first components of the
    tridiagonal matrix's eigenvectors. The density is the average over probes of these
    weighted nodes, each smoothed by a Gaussian of width ``sigma``, evaluated on a grid
    that covers every node by five widths, so it integrates to 1 on the grid.

    Args:
        fun: as in :func:`hessian_eigenvalues`.
        params: as in :func:`hessian_eigenvalues`.
        key: as in :func:`hessian_eigenvalues`.
        num_probes: independent probes (more: less noise in the weights).
        num_iters: Lanczos steps per probe (more: finer resolution of the spectrum).
        num_points: grid size.
        sigma: Gaussian width; default 1% of the spread of the Ritz values.
        batch_size: probes run together with ``vmap``; default all at once.

    Returns:
        ``(grid, density)``, both of shape ``[num_points]``.

    Example:
        >>> import jax, jax.numpy as jnp, jaxsecond
        >>> f = lambda x: 0.5 * jnp.sum(jnp.arange(1.0, 11.0) * x**2)
        >>> grid, density = jaxsecond.hessian_spectral_density(f, jnp.zeros(10), jax.random.key(0))
        >>> print(round(float(jnp.trapezoid(density, grid)), 6))
        1.0
    """
    f, dynamic = scalar_function(fun, params)
    check_key(key)
    num_probes = check_count(num_probes, "num_probes")
    num_points = check_count(num_points, "num_points", 2)
    if batch_size is not None:
        batch_size = check_count(batch_size, "batch_size")
    if sigma is not None and not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    flat, _, matvec = flat_hvp(f, dynamic)
    n = _check_real_and_nonempty(flat, "hessian_spectral_density")
    num_iters = check_count(num_iters, "num_iters")
    num_iters = min(num_iters, n)

    def one_probe(probe_key):
        start_key, restart_key = jax.random.split(probe_key)
        v0 = jax.random.rademacher(start_key, (n,), accumulation_dtype(flat.dtype))
        alphas, betas, _ = lanczos_tridiagonal(matvec, v0, num_iters, restart_key)
        nodes, coords = _tridiagonal_eigh(alphas, betas)
        return nodes, coords[0] ** 2

    keys = jax.random.split(key, num_probes)
    nodes, weights = jax.lax.map(one_probe, keys, batch_size=batch_size)
    lo, hi = jnp.min(nodes), jnp.max(nodes)
    spread = hi - lo
    if sigma is None:
        width = jnp.where(spread > 0, 0.01 * spread, 1e-3 * jnp.maximum(jnp.abs(hi), 1.0))
    else:
        width = jnp.asarray(sigma, nodes.dtype)
    grid = jnp.linspace(lo - 5 * width, hi + 5 * width, num_points, dtype=nodes.dtype)
    z = (grid[:, None, None] - nodes[None]) / width
    kernel = jnp.exp(-0.5 * z**2) / (width * jnp.sqrt(2 * jnp.pi))
    density = jnp.sum(kernel * weights[None], axis=(1, 2)) / num_probes
    return grid.astype(flat.dtype), density.astype(flat.dtype)
