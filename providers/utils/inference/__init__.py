"""Provider-independent pieces of inference: tool calling, attachments, structured output.

- :mod:`.tool_calls`: offering tools to a model (prompt formats), parsing its answer into tool calls,
  streaming them (a package, one module per job).
- :mod:`.dialog`: a dialog's messages with their field paths.
- :mod:`.attachments`: fetching text attachments and inlining them into the prompt.
- :mod:`.structured`: the JSON schema a ``response_format`` asks for.
"""
