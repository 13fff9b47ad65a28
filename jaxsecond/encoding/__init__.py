"""Multiresolution hash-grid encoding with derivatives of every order."""

from jaxsecond.encoding._hashgrid import HashGridEncoding as HashGridEncoding
from jaxsecond.encoding._hashgrid import coarse_to_fine_levels as coarse_to_fine_levels
