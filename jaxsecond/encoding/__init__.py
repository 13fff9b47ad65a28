"""Multiresolution hash-grid encoding."""
