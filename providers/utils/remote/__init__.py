"""What every remote provider shares: its config fields, API-key resolution, and an HTTP client with
timeouts, retries (exponential backoff with jitter) and errors that name the provider."""

from .config import RemoteServiceConfig
from .service import RemoteService, VendorStatusError

__all__ = ["RemoteService", "RemoteServiceConfig", "VendorStatusError"]
