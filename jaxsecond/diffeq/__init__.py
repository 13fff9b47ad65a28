"""Differential equations: one solve loop, fixed and adaptive steps, reversible solvers
and their adjoints."""

from jaxsecond.diffeq._adjoint import AbstractAdjoint as AbstractAdjoint
from jaxsecond.diffeq._adjoint import BacksolveAdjoint as BacksolveAdjoint
from jaxsecond.diffeq._adjoint import Checkpointed as Checkpointed
from jaxsecond.diffeq._adjoint import ReversibleAdjoint as ReversibleAdjoint
from jaxsecond.diffeq._adjoint import StoreAll as StoreAll
from jaxsecond.diffeq._controllers import (
    AbstractStepSizeController as AbstractStepSizeController,
)
from jaxsecond.diffeq._controllers import ConstantStepSize as ConstantStepSize
from jaxsecond.diffeq._controllers import PIDController as PIDController
from jaxsecond.diffeq._events import Event as Event
from jaxsecond.diffeq._odeint import odeint as odeint
from jaxsecond.diffeq._saveat import SaveAt as SaveAt
from jaxsecond.diffeq._saveat import Solution as Solution
from jaxsecond.diffeq._sdeint import sdeint as sdeint
from jaxsecond.diffeq._solvers import RK4 as RK4
from jaxsecond.diffeq._solvers import AbstractReversibleSolver as AbstractReversibleSolver
from jaxsecond.diffeq._solvers import AbstractSolver as AbstractSolver
from jaxsecond.diffeq._solvers import Dopri5 as Dopri5
from jaxsecond.diffeq._solvers import Euler as Euler
from jaxsecond.diffeq._solvers import EulerMaruyama as EulerMaruyama
from jaxsecond.diffeq._solvers import ExplicitRungeKutta as ExplicitRungeKutta
from jaxsecond.diffeq._solvers import Heun as Heun
from jaxsecond.diffeq._solvers import Midpoint as Midpoint
from jaxsecond.diffeq._solvers import Reversible as Reversible
from jaxsecond.diffeq._solvers import ReversibleHeun as ReversibleHeun
from jaxsecond.diffeq._terms import ODETerm as ODETerm
from jaxsecond.diffeq._terms import SDETerm as SDETerm
