"""The training process on job folders written as the server writes them, run as the server runs it (a
subprocess in a session of its own, output in output.log), on a tiny random Llama with SmolLM2's tokenizer."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from training import job_support as js

from llama_stack.providers.inline.torch.training.data import Encoder, epoch_batches
from llama_stack.providers.inline.torch.training.spec import (
    CHECKPOINT_INFO,
    CHECKPOINTS_DIR,
    LOSS_PLOT,
    AdapterSpec,
    BaseModelSpec,
    CheckpointInfo,
    DataSpec,
    DistributedSpec,
    DPOSpec,
    checkpoint_dirs,
    read_status,
)

ROWS = 9  # batches of 4, 4 and 1: the last one is short (and, over two processes, uneven)


def lora_spec(tiny_model: Path, **changes):
    loop = {
        "n_epochs": 2,
        "micro_batch_size": 2,
        "activation_checkpointing": True,
        "checkpoint_every_steps": 2,
        "keep_checkpoints": 2,
        **changes.pop("loop", {}),
    }
    return js.spec_for(str(tiny_model), "lora", loop=loop, **changes)


@pytest.fixture(scope="module")
def lora_job(tmp_path_factory, tiny_model) -> js.Finished:
    folder = js.write_job(
        tmp_path_factory.mktemp("lora-job"), lora_spec(tiny_model), js.dialog_rows(ROWS), js.dialog_rows(3)
    )
    return js.run(folder)


def test_a_lora_job_completes_and_says_so(lora_job):
    assert lora_job.returncode == 0, lora_job.log
    status = lora_job.status
    assert status.state == "completed"
    assert (status.step, status.total_steps, status.epoch) == (6, 6, 2)
    assert status.error is None
    assert status.started_at <= status.completed_at
    resources = status.resources
    assert resources["device"] == "cpu" and resources["dtype"] == "float32"
    assert resources["world_size"] == 1 and resources["strategy"] == "none"
    assert 0 < resources["parameters"]["trainable"] < resources["parameters"]["total"]


def test_metrics_count_each_steps_tokens_and_follow_the_schedule(lora_job, smollm2_tokenizer):
    steps = lora_job.steps
    assert [line["step"] for line in steps] == [1, 2, 3, 4, 5, 6]
    assert [line["epoch"] for line in steps] == [1, 1, 1, 2, 2, 2]
    assert steps[0]["lr"] == pytest.approx(1e-2) and steps[-1]["lr"] == pytest.approx(1e-3)
    assert all(a["lr"] > b["lr"] for a, b in itertools.pairwise(steps))
    # Tokens: each step's rows, padding excluded (the rows are encoded here as the process encodes them).
    encoder = Encoder(smollm2_tokenizer, DataSpec(format="dialog", columns={"dialog": "dialog"}), 64)
    lengths = [len(encoder.encode(i, row, "").input_ids) for i, row in enumerate(js.dialog_rows(ROWS))]
    batches = epoch_batches(ROWS, 4, shuffle=True, seed=0, epoch=1) + epoch_batches(ROWS, 4, True, 0, 2)
    assert [line["tokens"] for line in steps] == [sum(lengths[i] for i in batch) for batch in batches]
    assert all(line["tokens_per_s"] > 0 and line["loss"] > 0 for line in steps)
    assert [(v["step"], v["epoch"]) for v in lora_job.validations] == [(3, 1), (6, 2)]


def test_checkpoints_come_on_the_cadence_and_the_oldest_go(lora_job, tiny_model):
    # Saved at steps 2, 3 (the first epoch's end), 4 and 6; two are kept.
    assert [step for step, _ in checkpoint_dirs(lora_job.folder)] == [4, 6]
    assert sorted(p.name for p in (lora_job.folder / CHECKPOINTS_DIR).iterdir()) == ["step-4", "step-6"]
    last = lora_job.folder / CHECKPOINTS_DIR / "step-6"
    info = CheckpointInfo.model_validate_json((last / CHECKPOINT_INFO).read_text())
    assert (info.step, info.epoch, info.kind, info.algorithm) == (6, 2, "adapter", "lora")
    assert info.base == BaseModelSpec(reference=str(tiny_model))


def test_the_adapter_loads_with_peft_and_changes_the_model(lora_job, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint = lora_job.folder / CHECKPOINTS_DIR / "step-6"
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = tokenizer("What is 3 plus 3?", return_tensors="pt")["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        before = base(ids).logits
        tuned = PeftModel.from_pretrained(base, checkpoint)
        after = tuned(ids).logits
    assert not torch.allclose(before, after)
    assert sorted(tuned.peft_config["default"].target_modules) == ["q_proj", "v_proj"]


def test_the_log_shows_progress_and_the_loss_curve_is_drawn(lora_job):
    log = lora_job.log
    line = r"step 1/6 epoch 1/2 loss \d+\.\d{4} lr 1\.0e-02 tokens/s \d+ elapsed \d+:\d\d:\d\d left \d+:\d\d:\d\d"
    assert re.search(line, log), log
    assert re.search(r"step 6/6 epoch 2/2 loss \d+\.\d{4} lr 1\.0e-03", log)
    assert re.search(r"validation epoch 2/2 step 6 loss \d+\.\d{4}", log)
    assert "Traceback" not in log
    assert (lora_job.folder / LOSS_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("algorithm", "data"),
    [
        ("full", DataSpec(format="text", columns={"text": "body"})),
        ("dora", DataSpec(format="prompt_completion", columns={"prompt": "q", "completion": "a"})),
    ],
)
def test_full_and_dora_jobs_on_text_and_prompt_completion_rows(tmp_path, tiny_model, algorithm, data):
    from transformers import AutoModelForCausalLM

    rows = [{"body": f"Count: {i}, {i + 1}, {i + 2}.", "q": f"{i}+{i}=", "a": f" {2 * i}"} for i in range(6)]
    spec = js.spec_for(str(tiny_model), algorithm, data=data, loop={"n_iters": 2})
    finished = js.run(js.write_job(tmp_path, spec, rows))
    assert finished.returncode == 0, finished.log
    assert finished.status.state == "completed" and len(finished.steps) == 2
    checkpoint = checkpoint_dirs(tmp_path)[-1][1]
    info = CheckpointInfo.model_validate_json((checkpoint / CHECKPOINT_INFO).read_text())
    if algorithm == "full":
        assert info.kind == "full"
        assert finished.status.resources["parameters"]["trainable"] == finished.status.resources["parameters"]["total"]
        tuned = AutoModelForCausalLM.from_pretrained(checkpoint)
        base = AutoModelForCausalLM.from_pretrained(tiny_model)
        assert not torch.equal(tuned.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)
    else:
        assert info.kind == "adapter"
        assert json.loads((checkpoint / "adapter_config.json").read_text())["use_dora"] is True


def test_a_seed_repeats_a_run_and_micro_batches_change_nothing(tmp_path, tiny_model):
    """Same seed: the same losses, exactly. The same batch in micro-batches of 1 row: the same losses and
    weights (gradients accumulate to the batch's). Another seed: another run."""

    def spec(seed: int, micro: int | None):
        return js.spec_for(str(tiny_model), "lora", seed=seed, loop={"n_iters": 3, "micro_batch_size": micro})

    variants = {"first": spec(0, None), "again": spec(0, None), "micro": spec(0, 1), "other seed": spec(1, None)}
    processes = {}
    for name, job_spec in variants.items():  # two at a time: one thread each
        folder = js.write_job(tmp_path / name.replace(" ", "-"), job_spec, js.dialog_rows(12))
        processes[name] = (folder, js.start(folder))
        if len(processes) % 2 == 0:
            for _, process in list(processes.values())[-2:]:
                assert process.wait(timeout=240) == 0
    finished = {name: js.Finished(0, 0, folder) for name, (folder, _) in processes.items()}
    first = finished["first"].losses
    assert len(first) == 3
    assert finished["again"].losses == first
    assert finished["micro"].losses == pytest.approx(first, abs=1e-5)
    assert finished["other seed"].losses != first

    from safetensors.torch import load_file

    def weights(name: str) -> dict[str, torch.Tensor]:
        return load_file(checkpoint_dirs(finished[name].folder)[-1][1] / "adapter_model.safetensors")

    whole, micro = weights("first"), weights("micro")
    assert all(torch.allclose(whole[key], micro[key], atol=1e-5) for key in whole)
    assert any(not torch.equal(whole[key], weights("other seed")[key]) for key in whole)


@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_cancels_between_micro_batches(tmp_path, tiny_model, processes):
    """SIGTERM to the job's process group (the server's cancel): under torchrun, torchrun passes it on."""
    distributed = DistributedSpec(strategy="ddp" if processes > 1 else "none")
    spec = lora_spec(tiny_model, loop={"n_epochs": 1000, "checkpoint_every_steps": 0}, distributed=distributed)
    folder = js.write_job(tmp_path, spec, js.dialog_rows(ROWS))
    process = js.start(folder, processes)
    try:
        js.wait_for(lambda: (s := read_status(folder)) is not None and s.step >= 2, 120, "the job's second step")
        os.killpg(process.pid, signal.SIGTERM)
        began = time.monotonic()
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert time.monotonic() - began < 15
    assert code != 0
    if processes == 1:  # (torchrun answers a signal with an exit code of its own)
        assert code == 128 + signal.SIGTERM
    status = read_status(folder)
    assert status.state == "cancelled" and status.completed_at is not None
    assert status.step < status.total_steps
    assert not list((folder / CHECKPOINTS_DIR).glob(".*"))  # no half-written checkpoint left behind


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("bad row", "train.jsonl row 3: no column 'dialog' (the row has ['chat'])"),
        ("bad module", "attention module(s) ['qkv_proj'] are not in this model; its linear modules are"),
        ("qlora", "qlora needs a CUDA GPU"),
        ("no model", "does not exist"),
        ("dpo on dialogs", "a dpo job needs its dpo settings and preference rows"),
    ],
)
def test_a_job_that_cannot_train_fails_with_the_reason(tmp_path, tiny_model, change, expected):
    rows = js.dialog_rows(4)
    spec = js.spec_for(str(tiny_model), "lora")
    if change == "bad row":
        rows[2] = {"chat": rows[2]["dialog"]}
    elif change == "bad module":
        adapter = AdapterSpec(kind="lora", attn_modules=["q_proj", "qkv_proj"], mlp=True, output=True, rank=2, alpha=4)
        spec = spec.model_copy(update={"adapter": adapter})
    elif change == "qlora":
        spec = js.spec_for(str(tiny_model), "qlora")
    elif change == "no model":
        spec = spec.model_copy(update={"base": BaseModelSpec(reference=str(tmp_path / "nowhere"))})
    else:
        spec = spec.model_copy(update={"kind": "dpo", "dpo": DPOSpec(beta=0.1)})
    finished = js.run(js.write_job(tmp_path, spec, rows), timeout=120)
    assert finished.returncode == 1
    assert finished.status.state == "failed"
    assert expected in finished.status.error, finished.status.error
    assert f"failed: {finished.status.error}" in finished.log
    assert "Traceback" not in finished.log  # the reason is all there is to say
    assert not finished.steps


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_on_gloo_train_as_one_does(tmp_path, tiny_model, lora_job, strategy):
    """The same job over two processes (each with its share of every batch): the same losses and weights."""
    from safetensors.torch import load_file

    distributed = DistributedSpec(strategy=strategy, fsdp_wrap_blocks=True, backend="gloo")
    spec = lora_spec(tiny_model, distributed=distributed)
    finished = js.run(js.write_job(tmp_path, spec, js.dialog_rows(ROWS), js.dialog_rows(3)), processes=2)
    assert finished.returncode == 0, finished.log
    status = finished.status
    assert status.state == "completed"
    assert (status.resources["world_size"], status.resources["backend"]) == (2, "gloo")
    assert status.resources["strategy"] == strategy
    assert finished.losses == pytest.approx(lora_job.losses, abs=1e-4)
    assert [s["tokens"] for s in finished.steps] == [s["tokens"] for s in lora_job.steps]  # over all processes
    validation = [v["validation_loss"] for v in finished.validations]
    assert validation == pytest.approx([v["validation_loss"] for v in lora_job.validations], abs=1e-4)
    assert "[rank 1]" not in finished.log.replace("WARNING [rank 1]", "")  # rank 1 only warns
    assert [step for step, _ in checkpoint_dirs(tmp_path)] == [4, 6]
    ours = load_file(tmp_path / CHECKPOINTS_DIR / "step-6" / "adapter_model.safetensors")
    single = load_file(lora_job.folder / CHECKPOINTS_DIR / "step-6" / "adapter_model.safetensors")
    assert sorted(ours) == sorted(single)
    assert all(torch.allclose(ours[key], single[key], atol=1e-5) for key in ours)


@pytest.fixture(scope="module")
def dpo_lora_job(tmp_path_factory, tiny_model) -> js.Finished:
    spec = js.dpo_spec(str(tiny_model), "lora", dpo=DPOSpec(beta=0.5, margin=0.0), loop={"n_epochs": 2})
    folder = tmp_path_factory.mktemp("dpo-lora")
    return js.run(js.write_job(folder, spec, js.preference_rows(8), js.preference_rows(4)))


def test_dpo_starts_from_its_reference_and_reports_rewards(dpo_lora_job):
    assert dpo_lora_job.returncode == 0, dpo_lora_job.log
    steps = dpo_lora_job.steps
    # The reference is the model as training starts: at the first step the policy and it agree, h = 0.
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert steps[0]["reward_margin"] == pytest.approx(0, abs=1e-5)
    assert all(0 <= s["reward_accuracy"] <= 1 for s in steps)
    assert steps[-1]["reward_margin"] > 0  # trained toward the chosen answers
    assert [v["epoch"] for v in dpo_lora_job.validations] == [1, 2]
    assert all("reward_accuracy" in v for v in dpo_lora_job.validations)
    assert re.search(r"reward_accuracy \d\.\d\d reward_margin -?\d+\.\d{4}", dpo_lora_job.log)
    info = CheckpointInfo.model_validate_json(
        (checkpoint_dirs(dpo_lora_job.folder)[-1][1] / CHECKPOINT_INFO).read_text()
    )
    assert (info.kind, info.algorithm) == ("adapter", "dpo")


def test_dpo_after_an_sft_adapter_continues_it(tmp_path, tiny_model, lora_job):
    from safetensors.torch import load_file

    start = lora_job.folder / CHECKPOINTS_DIR / "step-6"
    spec = js.dpo_spec(str(tiny_model), "lora", loop={"n_iters": 2})
    spec = spec.model_copy(update={"base": BaseModelSpec(reference=str(tiny_model), adapter=str(start))})
    finished = js.run(js.write_job(tmp_path, spec, js.preference_rows(8)))
    assert finished.returncode == 0, finished.log
    # Its reference is base + the SFT adapter: the first step starts level with it.
    assert finished.steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    checkpoint = checkpoint_dirs(tmp_path)[-1][1]
    info = CheckpointInfo.model_validate_json((checkpoint / CHECKPOINT_INFO).read_text())
    assert info.base == BaseModelSpec(reference=str(tiny_model))  # the plain base, never the adapter itself
    before = load_file(start / "adapter_model.safetensors")
    after = load_file(checkpoint / "adapter_model.safetensors")
    assert sorted(before) == sorted(after)  # the same adapter (modules, rank) ...
    assert any(not torch.equal(before[key], after[key]) for key in before)  # ... trained further


def test_a_full_dpo_job_completes(tmp_path, tiny_model):
    spec = js.dpo_spec(str(tiny_model), "full", loop={"n_iters": 2})
    finished = js.run(js.write_job(tmp_path, spec, js.preference_rows(8)))
    assert finished.returncode == 0, finished.log
    assert finished.steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    info = CheckpointInfo.model_validate_json((checkpoint_dirs(tmp_path)[-1][1] / CHECKPOINT_INFO).read_text())
    assert (info.kind, info.algorithm) == ("full", "full")
