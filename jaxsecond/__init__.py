"""jaxsecond: implicit, second-order and reversible differentiation for JAX."""

from jaxsecond import nas as nas
from jaxsecond import parallel as parallel
from jaxsecond.curvature import (
    gnvp as gnvp,
)
from jaxsecond.curvature import (
    grad_and_hvp as grad_and_hvp,
)
from jaxsecond.curvature import (
    hessian_eigenvalues as hessian_eigenvalues,
)
from jaxsecond.curvature import (
    hessian_spectral_density as hessian_spectral_density,
)
from jaxsecond.curvature import (
    hutchinson_diagonal as hutchinson_diagonal,
)
from jaxsecond.curvature import (
    hutchinson_trace as hutchinson_trace,
)
from jaxsecond.curvature import (
    hutchpp_trace as hutchpp_trace,
)
from jaxsecond.curvature import (
    hvp as hvp,
)
from jaxsecond.diffeq import (
    RK4 as RK4,
)
from jaxsecond.diffeq import (
    AbstractAdjoint as AbstractAdjoint,
)
from jaxsecond.diffeq import (
    AbstractReversibleSolver as AbstractReversibleSolver,
)
from jaxsecond.diffeq import (
    AbstractSolver as AbstractSolver,
)
from jaxsecond.diffeq import (
    AbstractStepSizeController as AbstractStepSizeController,
)
from jaxsecond.diffeq import (
    BacksolveAdjoint as BacksolveAdjoint,
)
from jaxsecond.diffeq import (
    Checkpointed as Checkpointed,
)
from jaxsecond.diffeq import (
    ConstantStepSize as ConstantStepSize,
)
from jaxsecond.diffeq import (
    Dopri5 as Dopri5,
)
from jaxsecond.diffeq import (
    Euler as Euler,
)
from jaxsecond.diffeq import (
    EulerMaruyama as EulerMaruyama,
)
from jaxsecond.diffeq import (
    Event as Event,
)
from jaxsecond.diffeq import (
    Heun as Heun,
)
from jaxsecond.diffeq import (
    Midpoint as Midpoint,
)
from jaxsecond.diffeq import (
    PIDController as PIDController,
)
from jaxsecond.diffeq import (
    Reversible as Reversible,
)
from jaxsecond.diffeq import (
    ReversibleAdjoint as ReversibleAdjoint,
)
from jaxsecond.diffeq import (
    ReversibleHeun as ReversibleHeun,
)
from jaxsecond.diffeq import (
    SaveAt as SaveAt,
)
from jaxsecond.diffeq import (
    Solution as Solution,
)
from jaxsecond.diffeq import (
    StoreAll as StoreAll,
)
from jaxsecond.diffeq import (
    odeint as odeint,
)
from jaxsecond.diffeq import (
    sdeint as sdeint,
)
from jaxsecond.encoding import (
    HashGridEncoding as HashGridEncoding,
)
from jaxsecond.encoding import (
    coarse_to_fine_levels as coarse_to_fine_levels,
)
from jaxsecond.implicit import (
    custom_fixed_point as custom_fixed_point,
)
from jaxsecond.implicit import (
    custom_root as custom_root,
)
from jaxsecond.implicit import (
    root_jvp as root_jvp,
)
from jaxsecond.implicit import (
    root_vjp as root_vjp,
)
from jaxsecond.optim import (
    ScaleByAdaHessianState as ScaleByAdaHessianState,
)
from jaxsecond.optim import (
    adahessian as adahessian,
)
from jaxsecond.optim import (
    scale_by_adahessian as scale_by_adahessian,
)
from jaxsecond.optim import (
    value_grad_and_hessian_diagonal as value_grad_and_hessian_diagonal,
)

__version__ = "0.1.0"
