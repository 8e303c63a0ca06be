"""Llama Stack runtime: serves the Llama Stack APIs through plugin providers.

Importing this package is cheap; the server, the clients and providers are imported where used.
"""

__version__ = "0.1.0"
