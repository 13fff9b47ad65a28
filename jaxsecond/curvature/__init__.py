"""Curvature: Hessian-vector products, Hutchinson estimators and Lanczos eigenvalues."""

from jaxsecond.curvature._hutchinson import (
    hutchinson_diagonal as hutchinson_diagonal,
)
from jaxsecond.curvature._hutchinson import (
    hutchinson_trace as hutchinson_trace,
)
from jaxsecond.curvature._hutchinson import (
    hutchpp_trace as hutchpp_trace,
)
from jaxsecond.curvature._lanczos import (
    hessian_eigenvalues as hessian_eigenvalues,
)
from jaxsecond.curvature._lanczos import (
    hessian_spectral_density as hessian_spectral_density,
)
from jaxsecond.curvature._products import (
    gnvp as gnvp,
)
from jaxsecond.curvature._products import (
    grad_and_hvp as grad_and_hvp,
)
from jaxsecond.curvature._products import (
    hvp as hvp,
)
