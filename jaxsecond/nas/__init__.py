"""Differentiable architecture search: RARTS and DARTS."""
