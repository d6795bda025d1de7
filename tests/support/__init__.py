"""Shared fixtures and test-only builders (tiny model families, ...)."""
