"""The vendors' fakes and ``start_stack`` of tests/remote, for training on a dataset named by its uuid."""

from remote.conftest import emissary, emissary_server, start_stack, together, together_server  # noqa: F401
