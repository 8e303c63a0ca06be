"""Emissary's ``POST /v1/classification``, answered deterministically from the model name and the input.

- A model with "reward" in its name is a reward classifier with labels ``bad``, ``good``: ``good`` is a
  tenth of the number of words after the input's last ``assistant:`` (capped at 0.9), ``bad`` the rest.
- A model named ``missing-deployment`` does not exist: 404 in Emissary's error shape.
- A model with "sentiment" in its name reports ``negative``/``positive`` only (no unsafe label).
- Any other model is a safety classifier with labels ``safe``, ``unsafe``, ``toxic``: each word of
  :data:`SAFETY_TRIGGERS` in the input sets its label's probability; ``safe`` gets the rest.

``data_format: "logits"`` (Emissary's default) answers the natural logarithms instead.
"""

from __future__ import annotations

import math
from typing import Any

from .vendor_server import FakeVendor, Recorded, Reply

SAFETY_TRIGGERS = {"bomb": ("unsafe", 0.96), "borderline": ("unsafe", 0.55), "idiot": ("toxic", 0.8)}


def reward_probability(input_text: str) -> float:
    response = input_text.rsplit("assistant:", 1)[-1]
    return round(min(0.9, len(response.split()) / 10), 4)


def safety_probabilities(input_text: str) -> dict[str, float]:
    text = input_text.lower()
    probs = {"safe": 0.0, "unsafe": 0.02, "toxic": 0.01}
    for word, (label, p) in SAFETY_TRIGGERS.items():
        if word in text:
            probs[label] = max(probs[label], p)
    probs["safe"] = round(max(0.0, 1 - probs["unsafe"] - probs["toxic"]), 4)
    return probs


def install(fake: FakeVendor) -> None:
    @fake.route("POST", "/v1/classification")
    def classify(request: Recorded, params: dict[str, str]) -> Any:
        body = request.json
        model, text = body["model"], body["input"]
        if model == "missing-deployment":
            return Reply({"status": 404, "error": "Not found", "code": "object_not_found"}, status=404)
        if "reward" in model:
            good = reward_probability(text)
            probs = {"bad": round(1 - good, 4), "good": good}
        elif "sentiment" in model:
            probs = {"negative": 0.3, "positive": 0.7}
        else:
            probs = safety_probabilities(text)
        item: dict[str, Any]
        if body.get("data_format", "logits") == "probs":
            item = {"index": 0, "probs": probs}
        else:
            item = {"index": 0, "logits": {label: math.log(max(p, 1e-9)) for label, p in probs.items()}}
        words = len(text.split())
        return {
            "id": f"classify-{len(fake.calls('POST', r'/v1/classification'))}",
            "model": "dp-12345",
            "data": [item],
            "usage": {"completion_tokens": 0, "prompt_tokens": words, "total_tokens": words},
        }
