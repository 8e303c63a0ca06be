"""Together's moderation and judge models, image generation and code execution, answered deterministically.

- Chat responders (consulted by together_handlers' ``/chat/completions`` before its default answer):
  - a model with "guard" in its name is Llama Guard: ``unsafe\\n<codes>`` when the conversation holds a
    trigger word of :data:`MODERATION_TRIGGERS`, else ``safe``; ``fake.state["moderation_answer"]``, when
    set, is answered as is (for unparseable verdicts).
  - a model with "judge" in its name rates the ``<response>`` of the judge prompt: its word count, capped
    at 10, as ``{"score": N}``. A response containing "ramble" gets an answer without a score until the
    request carries a correction (a third message); "always ramble" never gets a score; "verbose" gets
    ``Score: N/10`` in prose.
- ``POST /images/generations``: ``n`` images, each :func:`image_bytes` of the prompt, index and seed.
- ``POST /tci/execute``: runs nothing; each ``print("...")`` in the code becomes stdout, each
  ``sys.stderr.write("...")`` stderr, ``plt.show()`` a PNG display_data, and code containing ``raise``
  ends in an error output. Sessions are remembered; an unknown ``session_id`` is a 404.
  ``fake.state["tci_answer"]``, when set, is answered as is (other response shapes).
"""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any

from .vendor_server import FakeVendor, Recorded, Reply

# Words that make the fake Llama Guard answer unsafe, and the category each stands for.
MODERATION_TRIGGERS = {"bomb": "S9", "kill": "S1", "steal": "S2", "home address": "S7"}
# A 1x1 PNG (vendor-fixtures' image).
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def image_bytes(prompt: str, index: int, seed: int | None) -> bytes:
    """The JPEG the fake 'generates': a JPEG signature, then the inputs (so each image is recognisable)."""
    return b"\xff\xd8\xff\xe0" + f"fake image {index} of {prompt!r} seed={seed}".encode()


def chat_answer(model: str, content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-tools",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
    }


def install(fake: FakeVendor) -> None:
    fake.state.setdefault("chat_responders", []).extend([_moderation(fake), _judge])
    fake.state.setdefault("tci_sessions", {})

    @fake.route("POST", "/images/generations")
    def images(request: Recorded, params: dict[str, str]) -> Any:
        body = request.json
        data = [
            {"index": i, "b64_json": base64.b64encode(image_bytes(body["prompt"], i, body.get("seed"))).decode()}
            for i in range(body.get("n", 1))
        ]
        return {"id": "img-1", "model": body["model"], "object": "list", "data": data}

    @fake.route("POST", "/tci/execute")
    def execute(request: Recorded, params: dict[str, str]) -> Any:
        body = request.json
        if fake.state.get("tci_answer") is not None:
            return fake.state["tci_answer"]  # a test's own answer shape
        sessions: dict[str, list[str]] = fake.state["tci_sessions"]
        session_id = body.get("session_id")
        if session_id is None:
            session_id = f"ses_{len(sessions) + 1}"
            sessions[session_id] = []
        elif session_id not in sessions:
            return Reply(
                {
                    "error": {
                        "type": "not_found",
                        "message": f"Session {session_id} not found",
                        "param": None,
                        "code": None,
                    }
                },
                status=404,
            )
        sessions[session_id].append(body["code"])
        return {"data": {"session_id": session_id, "status": "success", "outputs": _outputs(body)}, "errors": None}


def _moderation(fake: FakeVendor):
    def answer(body: dict[str, Any]) -> dict[str, Any] | None:
        if "guard" not in body["model"].lower():
            return None
        if fake.state.get("moderation_answer") is not None:
            return chat_answer(body["model"], fake.state["moderation_answer"])
        text = " ".join(m["content"] for m in body["messages"]).lower()
        codes = sorted({code for word, code in MODERATION_TRIGGERS.items() if word in text}, key=lambda c: int(c[1:]))
        return chat_answer(body["model"], f"unsafe\n{','.join(codes)}" if codes else "safe")

    return answer


def _judge(body: dict[str, Any]) -> dict[str, Any] | None:
    if "judge" not in body["model"].lower():
        return None
    prompt = next(m["content"] for m in body["messages"] if m["role"] == "user")
    found = re.search(r"<response>\n(.*)\n</response>", prompt, re.DOTALL)
    response = found.group(1) if found else ""
    corrected = len(body["messages"]) > 2
    if "always ramble" in response or ("ramble" in response and not corrected):
        return chat_answer(body["model"], "What a thoughtful answer; it deserves praise.")
    score = min(10, len(response.split()))
    if "verbose" in response:
        return chat_answer(body["model"], f"Score: {score}/10. The response is adequate.")
    return chat_answer(body["model"], json.dumps({"score": score}))


def _outputs(body: dict[str, Any]) -> list[dict[str, Any]]:
    code = body["code"]
    # Files are put in the session before the code runs.
    outputs: list[dict[str, Any]] = [
        {"type": "stdout", "data": f"uploaded {f['name']}\n"} for f in body.get("files", [])
    ]
    for kind, text in re.findall(r"""(print|sys\.stderr\.write)\(\s*["']([^"']*)["']""", code):
        if kind == "print":
            outputs.append({"type": "stdout", "data": text + "\n"})
        else:
            outputs.append({"type": "stderr", "data": text})
    if "plt.show()" in code:
        outputs.append(
            {
                "type": "display_data",
                "data": {
                    "image/png": base64.b64encode(PNG).decode(),
                    "text/plain": "<Figure size 640x480 with 1 Axes>",
                },
            }
        )
    if "raise" in code:
        error = re.search(r"raise (\w+)\(\s*[\"']([^\"']*)[\"']", code)
        name, message = (error.group(1), error.group(2)) if error else ("RuntimeError", "")
        outputs.append(
            {
                "type": "error",
                "data": f'Traceback (most recent call last):\n  File "<stdin>", line 1\n{name}: {message}',
            }
        )
    return outputs
