"""Tool calling, independent of the backend, one job per module:

- :mod:`.formats`: what the others agree on: the two formats (``llama3``, ``json``), the built-in tools,
  which format a model gets, and the JSON schema of a forced call.
- :mod:`.render`: offering tools to a model: tools, tool calls and tool results written into its prompt.
- :mod:`.parse`: reading tool calls out of an answer, whole or as it grows.
- :mod:`.stream`: a streamed answer as stream chunks, each tool call its own chunk.
"""
