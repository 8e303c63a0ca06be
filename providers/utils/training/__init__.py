"""What every post-training provider shares, whether it trains at a vendor or on this machine: the job store
(``jobs.py``) and the request checks that hold for any trainer (``requests.py``). Reading datasets is
``providers/utils/datasets.py``; what is only a vendor's (its job ids, polling it) is
``providers/utils/remote/training_jobs.py``.
"""
