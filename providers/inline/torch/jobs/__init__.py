"""inline::torch post-training: the server's side of training jobs.

A request is checked and turned into a job folder (:mod:`.requests`, :mod:`.data`, :mod:`.models`); the job's
process runs outside the server (:mod:`.runner`, :mod:`.supervise`) and says how it goes through the files
of :mod:`llama_stack.providers.inline.torch.training.spec`, which :mod:`.status` reads back. :mod:`.provider`
is the PostTraining API over them. Nothing here imports torch at build time.
"""
