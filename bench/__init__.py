"""Benchmarks that print figures (never asserted in tests)."""

__all__: list[str] = []
