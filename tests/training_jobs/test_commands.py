"""What a job runs: one process, torchrun on one machine, or a static rendezvous across machines (this one
node 0), with what the other machines must run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from llama_stack.providers.inline.torch.jobs.config import TRAINING_MODULE, TorchPostTrainingConfig
from llama_stack.providers.inline.torch.jobs.runner import environment, join_command, training_command

FOLDER = Path("/srv/jobs/000001-job")


def test_one_process():
    config = TorchPostTrainingConfig()
    assert training_command(config, FOLDER) == [sys.executable, "-m", TRAINING_MODULE, str(FOLDER)]
    assert join_command(config, FOLDER) is None
    env = environment(config)
    assert env["PYTHONUNBUFFERED"] == "1" and env["HF_HUB_OFFLINE"] == "1"  # nothing is downloaded


def test_torchrun_on_one_machine_shares_the_cores():
    config = TorchPostTrainingConfig(nproc_per_node=2)
    command = training_command(config, FOLDER)
    assert command[1:] == [
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        "-m",
        TRAINING_MODULE,
        str(FOLDER),
    ]
    assert int(environment(config)["OMP_NUM_THREADS"]) >= 1
    assert environment(TorchPostTrainingConfig(nproc_per_node=2, torch_threads=3))["OMP_NUM_THREADS"] == "3"


def test_several_machines_say_what_the_others_run():
    config = TorchPostTrainingConfig(nproc_per_node=4, nnodes=3, rdzv_endpoint="10.0.0.5:29500")
    here = training_command(config, FOLDER)
    assert here[here.index("--node_rank") + 1] == "0"
    assert here[here.index("--master_addr") + 1] == "10.0.0.5" and here[here.index("--master_port") + 1] == "29500"
    assert config.processes == 12
    assert join_command(config, FOLDER) == (
        "python -m torch.distributed.run --nproc_per_node 4 --nnodes 3 --node_rank <k> --master_addr 10.0.0.5 "
        f"--master_port 29500 -m {TRAINING_MODULE} {FOLDER}"
    )


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"nnodes": 2}, "needs rdzv_endpoint"),
        ({"nnodes": 2, "rdzv_endpoint": "no port"}, "host:port"),
        ({"training_module": "not a module"}, "dotted module name"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_config_refusals(fields, says):
    with pytest.raises(ValidationError) as caught:
        TorchPostTrainingConfig(**fields)
    assert says in str(caught.value)
