"""The example apps under examples/ run as a user runs them, against the real local distribution."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support import REPO


@pytest.mark.slow
def test_the_agent_app_answers_from_its_memory_bank_with_each_step_shown(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "agent_app.py")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "LLAMA_STACK_STORAGE": str(tmp_path / "state")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    # The only place the festival's town is written is the bank's document: the answer comes from retrieval.
    (retrieved,) = [line for line in lines if line.strip().startswith("retrieved ")]
    assert retrieved.strip().startswith("retrieved festival (score ")
    (answer,) = [line for line in lines if line.startswith("agent: ")]
    assert "Quillacollo" in answer
    assert "steps: safety_filtering, memory_retrieval, model_inference" in lines
