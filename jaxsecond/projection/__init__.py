"""Euclidean projections onto convex sets, differentiable to second order.

jaxopt's names and call signatures (``jaxopt.projection``), so code written for it
ports unchanged. Every projection keeps the dtype of its input, works under ``jax.jit``
and ``jax.vmap``, and is differentiable in the point and in the set's parameters
(``jax.grad``, ``jax.jvp``, ``jax.hessian``). The Birkhoff and transportation
projections are iterative and differentiated implicitly, through their optimality
conditions (:func:`jaxsecond.custom_root`).
"""

from jaxsecond.projection._birkhoff import kl_projection_birkhoff as kl_projection_birkhoff
from jaxsecond.projection._birkhoff import kl_projection_transport as kl_projection_transport
from jaxsecond.projection._birkhoff import projection_birkhoff as projection_birkhoff
from jaxsecond.projection._birkhoff import projection_transport as projection_transport
from jaxsecond.projection._projection import projection_affine_set as projection_affine_set
from jaxsecond.projection._projection import projection_box as projection_box
from jaxsecond.projection._projection import projection_halfspace as projection_halfspace
from jaxsecond.projection._projection import projection_hypercube as projection_hypercube
from jaxsecond.projection._projection import projection_hyperplane as projection_hyperplane
from jaxsecond.projection._projection import projection_l1_ball as projection_l1_ball
from jaxsecond.projection._projection import projection_l1_sphere as projection_l1_sphere
from jaxsecond.projection._projection import projection_l2_ball as projection_l2_ball
from jaxsecond.projection._projection import projection_l2_sphere as projection_l2_sphere
from jaxsecond.projection._projection import projection_linf_ball as projection_linf_ball
from jaxsecond.projection._projection import projection_non_negative as projection_non_negative
from jaxsecond.projection._projection import projection_simplex as projection_simplex
