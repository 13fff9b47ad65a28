"""Differentiable architecture search: RARTS and DARTS."""

from jaxsecond.nas._common import ArchitectureSearch as ArchitectureSearch
from jaxsecond.nas._darts import DartsState as DartsState
from jaxsecond.nas._darts import darts as darts
from jaxsecond.nas._rarts import RartsState as RartsState
from jaxsecond.nas._rarts import rarts as rarts
