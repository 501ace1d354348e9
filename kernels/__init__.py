"""Triton kernels compiled from dsf specs."""
