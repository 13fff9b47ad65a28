"""Proximal operators with jaxopt's names and call signatures.

Each ``prox_*(x, hyperparams, scaling=1.0)`` returns
``argmin_y 0.5 ||x - y||^2 + scaling * g(y)`` for its penalty ``g``, on pytrees, keeping
dtypes, and is differentiable (to second order) with respect to ``x`` and to the
hyperparameters, with a documented generalized Jacobian at kinks. Use them as the ``prox``
of a proximal-gradient solver and differentiate its fixed point with
:func:`jaxsecond.custom_fixed_point`.
"""

from jaxsecond.prox._prox import make_prox_from_projection as make_prox_from_projection
from jaxsecond.prox._prox import prox_box as prox_box
from jaxsecond.prox._prox import prox_elastic_net as prox_elastic_net
from jaxsecond.prox._prox import prox_group_lasso as prox_group_lasso
from jaxsecond.prox._prox import prox_lasso as prox_lasso
from jaxsecond.prox._prox import prox_non_negative_lasso as prox_non_negative_lasso
from jaxsecond.prox._prox import prox_non_negative_ridge as prox_non_negative_ridge
from jaxsecond.prox._prox import prox_none as prox_none
from jaxsecond.prox._prox import prox_ridge as prox_ridge
