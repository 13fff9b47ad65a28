"""Implicit differentiation: derivatives of solutions through their optimality conditions."""

from jaxsecond.implicit._linear_solve import EuclideanBiCGStab as EuclideanBiCGStab
from jaxsecond.implicit._linear_solve import EuclideanCG as EuclideanCG
from jaxsecond.implicit._root import (
    custom_fixed_point as custom_fixed_point,
)
from jaxsecond.implicit._root import (
    custom_root as custom_root,
)
from jaxsecond.implicit._root import (
    root_jvp as root_jvp,
)
from jaxsecond.implicit._root import (
    root_vjp as root_vjp,
)
