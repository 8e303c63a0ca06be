"""The Llama Stack contract: pydantic types and one Protocol per API.

Each protocol method carries its route (see :func:`llama_stack.apis.routes.webmethod`); the server's
routes, the OpenAPI document and both clients are derived from those declarations. This package imports
no provider and no server code.
"""
