"""``HashGridEncoding``: the multiresolution hash encoding as an equinox Module."""

from __future__ import annotations

import copy
import math

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxsecond._checks import check_count
from jaxsecond.encoding._primitives import encode_pallas, encode_xla
from jaxsecond.kernels import hashgrid as kernels

_BACKENDS = ("auto", "xla", "pallas")


def _check_backend(backend) -> None:
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")


def resolve_backend(backend: str = "auto") -> str:
    """The kernel backend that computes the encoding: ``backend`` itself, or for
    ``"auto"`` the Pallas kernels when JAX's default backend is a GPU and XLA elsewhere.

    The one rule for ``"auto"``, used by the encoding and reported by ``jaxsecond info``.

    Example:
        >>> resolve_backend("xla")
        'xla'
        >>> resolve_backend() in ("pallas", "xla")
        True
    """
    _check_backend(backend)
    if backend == "auto":
        return "pallas" if jax.default_backend() == "gpu" else "xla"
    return backend


class HashGridEncoding(eqx.Module):
    """Multiresolution hash-grid encoding (instant-NGP), differentiable to any order.

    Maps points ``x`` in ``[0, 1]^dim`` (shape ``[..., dim]``) to the concatenated
    features of ``num_levels`` grids, ``[..., num_levels * features_per_level]``, each
    interpolated multilinearly from a table of ``2**log2_hashmap_size`` trainable
    rows (coarse levels are stored densely, fine ones hashed). Grid rules follow
    tiny-cuda-nn, so tables are interchangeable with it (see
    :mod:`jaxsecond.kernels.hashgrid`).

    Backends: ``"xla"`` gathers with XLA and lets JAX differentiate; ``"pallas"`` runs
    fused Pallas kernels (Triton on GPU; the Pallas interpreter elsewhere, slow, for
    tests) whose derivatives of every order are kernels too: the table gradient is one
    atomic add per point, level and corner, and the gradient of an Eikonal loss (a loss
    on ``d features / d x``) costs one more gathered order forward and no extra atomics
    backward. ``"auto"``: ``pallas`` on GPU, ``xla`` elsewhere. Both backends agree to
    float round-off in values and derivatives.

    Points outside ``[0, 1]^dim`` are not clamped (as in tiny-cuda-nn): their cell
    indices wrap around, so they read unrelated rows of the tables. Scale or clip
    inputs into the unit cube first (e.g. a scene's bounding box mapped onto it).
    A point with a NaN or infinite coordinate encodes to NaN features and adds nothing
    to any derivative (tiny-cuda-nn would read and write arbitrary rows for it).

    Coarse-to-fine training (NeuS2): ``encoding(x, active_levels=k)`` outputs zeros
    for levels ``k`` and above, which then get no gradient; :func:`coarse_to_fine_levels`
    gives a schedule.

    Attributes:
        tables: ``[num_levels, 2**log2_hashmap_size, features_per_level]``, initialised
            uniform in ``+-1e-4`` (as tiny-cuda-nn).
        config: the static grid description (scales, resolutions, hashing).
        backend: ``"auto"``, ``"xla"`` or ``"pallas"``.

    Example:
        >>> import jax, jaxsecond
        >>> enc = jaxsecond.HashGridEncoding(dim=3, num_levels=4, log2_hashmap_size=10,
        ...                                  base_resolution=4, max_resolution=32,
        ...                                  key=jax.random.key(0))
        >>> enc(jax.numpy.full((5, 3), 0.3)).shape
        (5, 8)

    References: T. Mueller, A. Evans, C. Schied, A. Keller, "Instant Neural Graphics
    Primitives with a Multiresolution Hash Encoding", SIGGRAPH 2022; Y. Wang et al.,
    "NeuS2: Fast Learning of Neural Implicit Surfaces for Multi-view Reconstruction",
    ICCV 2023.
    """

    tables: jax.Array
    config: kernels.GridConfig = eqx.field(static=True)
    backend: str = eqx.field(static=True)

    def __init__(
        self,
        *,
        dim: int = 3,
        num_levels: int = 16,
        features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        max_resolution: int | None = 2048,
        per_level_scale: float | None = None,
        backend: str = "auto",
        dtype=jnp.float32,
        key: jax.Array,
    ):
        _check_backend(backend)
        # NumPy integers are accepted (and made Python ints) before any arithmetic.
        dim = check_count(dim, "dim")
        num_levels = check_count(num_levels, "num_levels")
        features_per_level = check_count(features_per_level, "features_per_level")
        log2_hashmap_size = check_count(log2_hashmap_size, "log2_hashmap_size")
        base_resolution = check_count(base_resolution, "base_resolution")
        if per_level_scale is None:
            if max_resolution is None:
                raise ValueError("give max_resolution or per_level_scale")
            if not max_resolution >= base_resolution:
                raise ValueError(
                    f"max_resolution ({max_resolution}) must be at least base_resolution "
                    f"({base_resolution})"
                )
            per_level_scale = (
                math.exp(math.log(max_resolution / base_resolution) / (num_levels - 1))
                if num_levels > 1
                else 1.0
            )
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"dtype must be a floating-point type, got {dtype!r}")
        if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
            raise TypeError(f"dtype must be float32 or float64 (the tables' dtype), got {dtype!r}")
        self.config = kernels.make_grid_config(
            dim,
            num_levels,
            features_per_level,
            log2_hashmap_size,
            base_resolution,
            per_level_scale,
        )
        shape = (num_levels, 1 << log2_hashmap_size, features_per_level)
        self.tables = jax.random.uniform(key, shape, dtype, minval=-1e-4, maxval=1e-4)
        self.backend = backend

    @property
    def num_levels(self) -> int:
        return self.config.num_levels

    @property
    def out_size(self) -> int:
        """Features per point: ``num_levels * features_per_level``."""
        return self.config.num_levels * self.config.features_per_level

    def __call__(self, x, active_levels=None):
        """Encode ``x`` (``[..., dim]``, in ``[0, 1]``) to ``[..., out_size]``.

        ``active_levels`` (an int, possibly traced): levels from it on output zeros
        and get no gradient. ``x`` is cast to the tables' dtype.
        """
        x = jnp.asarray(x)
        if x.ndim == 0 or x.shape[-1] != self.config.dim:
            raise ValueError(
                f"x must have shape [..., {self.config.dim}] (points in [0, 1]^"
                f"{self.config.dim}), got {x.shape}"
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"x must be floating point, got {x.dtype}")
        batch = x.shape[:-1]
        flat = x.reshape(-1, self.config.dim).astype(self.tables.dtype)
        # A NaN or inf coordinate has no cell: its hashed indices would be arbitrary rows,
        # and its NaN weights would write NaN into their table gradient. Encode a stand-in
        # point instead and output NaN, whose zero cotangent keeps the tables clean.
        finite = jnp.all(jnp.isfinite(flat), axis=-1)
        flat = jnp.where(finite[:, None], flat, 0)
        # No points: nothing for a kernel to launch over (XLA handles the empty case).
        if self._resolved_backend() == "pallas" and flat.shape[0] > 0:
            interpret = jax.default_backend() != "gpu"
            features = encode_pallas(flat, self.tables, config=self.config, interpret=interpret)
        else:
            features = encode_xla(flat, self.tables, config=self.config)
        if active_levels is not None:
            mask = jnp.arange(self.config.num_levels) < active_levels
            features = features * mask[None, :, None].astype(features.dtype)
        features = jnp.where(finite[:, None, None], features, jnp.nan)
        return features.reshape(*batch, self.out_size)

    def with_backend(self, backend: str) -> HashGridEncoding:
        """The same encoding (same tables) computed by another backend."""
        _check_backend(backend)
        new = copy.copy(self)
        object.__setattr__(new, "backend", backend)
        return new

    def _resolved_backend(self) -> str:
        return resolve_backend(self.backend)


def coarse_to_fine_levels(
    step, *, num_levels: int, initial_levels: int = 4, steps_per_level: int = 200
):
    """Coarse-to-fine schedule: how many levels are active at training ``step``.

    Starts with ``initial_levels`` and adds one every ``steps_per_level`` steps until
    all ``num_levels`` are on, as in NeuS2's progressive training (which starts
    coarse so that the first steps fit the overall shape and the fine, hashed levels
    do not fit noise early). Works on traced steps (inside a jitted training step).

    Example:
        >>> import jaxsecond
        >>> [int(jaxsecond.coarse_to_fine_levels(s, num_levels=8, initial_levels=2,
        ...                                       steps_per_level=10)) for s in (0, 25, 99)]
        [2, 4, 8]
    """
    num_levels = check_count(num_levels, "num_levels")
    initial_levels = check_count(initial_levels, "initial_levels")
    steps_per_level = check_count(steps_per_level, "steps_per_level")
    return jnp.minimum(num_levels, initial_levels + jnp.asarray(step) // steps_per_level)
