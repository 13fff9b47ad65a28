"""Implicit differentiation: derivatives of solutions through their optimality conditions."""

from jaxsecond.implicit._root import (
    custom_fixed_point as custom_fixed_point,
    custom_root as custom_root,
    root_jvp as root_jvp,
    root_vjp as root_vjp,
)
