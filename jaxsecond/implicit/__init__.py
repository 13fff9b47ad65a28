"""Implicit differentiation: derivatives of solutions through their optimality conditions."""

from jaxsecond.implicit._conditions import kkt_condition as kkt_condition
from jaxsecond.implicit._conditions import mirror_descent_condition as mirror_descent_condition
from jaxsecond.implicit._conditions import newton_condition as newton_condition
from jaxsecond.implicit._conditions import (
    projected_gradient_condition as projected_gradient_condition,
)
from jaxsecond.implicit._conditions import (
    proximal_gradient_condition as proximal_gradient_condition,
)
from jaxsecond.implicit._conditions import stationarity_condition as stationarity_condition
from jaxsecond.implicit._linear_solve import EuclideanBiCGStab as EuclideanBiCGStab
from jaxsecond.implicit._linear_solve import EuclideanCG as EuclideanCG
from jaxsecond.implicit._quadratic_program import KKTSolution as KKTSolution
from jaxsecond.implicit._quadratic_program import quadratic_program as quadratic_program
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
