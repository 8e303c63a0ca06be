"""inline::torch's training process: ``python -m llama_stack.providers.inline.torch.training <job folder>``.

The server never imports what trains; it shares :mod:`.spec` (the job folder's files) with it.
"""
