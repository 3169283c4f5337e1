"""Shared building blocks. Nothing in here imports a feature package."""
