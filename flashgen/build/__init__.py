"""Compiling rendered CUDA sources into shared libraries, cached per user."""
