"""jaxsecond: implicit, second-order and reversible differentiation for JAX.

The top-level names are loaded on first use, so ``import jaxsecond`` (and the ``jaxsecond``
command line) starts without importing JAX; ``jaxsecond.odeint`` or
``from jaxsecond import odeint`` imports the subpackage that defines it.

Example:
    >>> import jax.numpy as jnp
    >>> import jaxsecond
    >>> float(jaxsecond.hvp(lambda x: jnp.sum(x**3), jnp.ones(2), jnp.ones(2))[0])
    6.0
"""

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public name -> the subpackage that defines it.
_EXPORTS_BY_SUBPACKAGE = {
    "curvature": (
        "gnvp",
        "grad_and_hvp",
        "hessian_eigenvalues",
        "hessian_spectral_density",
        "hutchinson_diagonal",
        "hutchinson_trace",
        "hutchpp_trace",
        "hvp",
    ),
    "diffeq": (
        "RK4",
        "AbstractAdjoint",
        "AbstractReversibleSolver",
        "AbstractSolver",
        "AbstractStepSizeController",
        "BacksolveAdjoint",
        "Checkpointed",
        "ConstantStepSize",
        "Dopri5",
        "Euler",
        "EulerMaruyama",
        "Event",
        "Heun",
        "Midpoint",
        "PIDController",
        "Reversible",
        "ReversibleAdjoint",
        "ReversibleHeun",
        "SaveAt",
        "Solution",
        "StoreAll",
        "odeint",
        "sdeint",
    ),
    "encoding": ("HashGridEncoding", "coarse_to_fine_levels"),
    "implicit": (
        "KKTSolution",
        "custom_fixed_point",
        "custom_root",
        "quadratic_program",
        "root_jvp",
        "root_vjp",
    ),
    "optim": (
        "ScaleByAdaHessianState",
        "adahessian",
        "scale_by_adahessian",
        "value_grad_and_hessian_diagonal",
    ),
}
_SUBPACKAGES = (
    "curvature",
    "diffeq",
    "encoding",
    "implicit",
    "nas",
    "optim",
    "parallel",
    "projection",
    "prox",
)
_HOME = {name: sub for sub, names in _EXPORTS_BY_SUBPACKAGE.items() for name in names}

__all__ = [*_SUBPACKAGES, *_HOME]

if TYPE_CHECKING:  # static tools see the eager imports
    from jaxsecond import (  # noqa: F401
        curvature,
        diffeq,
        encoding,
        implicit,
        nas,
        optim,
        parallel,
        projection,
        prox,
    )
    from jaxsecond.curvature import *  # noqa: F403
    from jaxsecond.diffeq import *  # noqa: F403
    from jaxsecond.encoding import *  # noqa: F403
    from jaxsecond.implicit import *  # noqa: F403
    from jaxsecond.optim import *  # noqa: F403


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _HOME:
        value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *__all__})
