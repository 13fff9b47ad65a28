"""jaxsecond: implicit, second-order and reversible differentiation for JAX."""

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

__version__ = "0.1.0"
