"""What every remote provider shares: its config fields, API-key resolution, and an HTTP client with
timeouts, retries (exponential backoff with jitter) and errors that name the provider."""

from .config import RemoteServiceConfig
from .registration import remote_provider_specs
from .service import RemoteService, Vendor, VendorStatusError

__all__ = ["RemoteService", "RemoteServiceConfig", "Vendor", "VendorStatusError", "remote_provider_specs"]
