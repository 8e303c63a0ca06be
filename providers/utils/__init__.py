"""Helpers shared by providers (pure Python: no provider's heavy libraries are imported here)."""
