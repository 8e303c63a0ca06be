"""Every test here runs jobs with the fake trainer unless it says otherwise: its folder is on PYTHONPATH."""

import pytest
from training_jobs.jobs_support import fake_trainer_env


@pytest.fixture(autouse=True)
def _fake_trainer_importable(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", fake_trainer_env()["PYTHONPATH"])
