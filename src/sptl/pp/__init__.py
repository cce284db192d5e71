"""Preprocessing."""

__all__: list[str] = []
