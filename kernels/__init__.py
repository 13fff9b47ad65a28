"""Pallas GPU kernels shipped as ``jaxsecond.kernels``."""
