"""Optimizers: AdaHessian as optax transformations."""

from jaxsecond.optim._adahessian import (
    ScaleByAdaHessianState as ScaleByAdaHessianState,
)
from jaxsecond.optim._adahessian import (
    adahessian as adahessian,
)
from jaxsecond.optim._adahessian import (
    scale_by_adahessian as scale_by_adahessian,
)
from jaxsecond.optim._adahessian import (
    value_grad_and_hessian_diagonal as value_grad_and_hessian_diagonal,
)
