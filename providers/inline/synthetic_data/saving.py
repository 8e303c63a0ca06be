"""A run's results as datasets that post-training takes by uuid.

* The kept generations: one row per generation, a ``dialog`` column (the prompt, then the generation as the
  assistant's answer: what a supervised fine-tune learns) and its ``score``.
* Preference pairs: per prompt, its best and its worst generation among all those scored (the filter does
  not apply: DPO learns as much from what was dropped), as ``chosen`` and ``rejected`` dialogs with their
  scores. A prompt whose generations all score the same teaches no preference and is left out.

The rows travel as a ``data:`` URL of JSON Lines, so the datasets provider reads and checks them like any
other dataset.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

from llama_stack.apis.common import Message
from llama_stack.apis.datasets import CreateDatasetRequest, Dataset, DatasetColumnType
from llama_stack.apis.errors import BadRequestError, ConflictError, NotFoundError
from llama_stack.apis.reward_scoring import KScoredPromptGenerations
from llama_stack.apis.synthetic_data_generation import SaveSettings

if TYPE_CHECKING:
    from .provider import Plan

SFT_COLUMNS: dict[str, DatasetColumnType] = {"dialog": "dialog", "score": "number"}
PREFERENCE_COLUMNS: dict[str, DatasetColumnType] = {
    "chosen": "dialog",
    "rejected": "dialog",
    "chosen_score": "number",
    "rejected_score": "number",
}


def _message(message: Message) -> dict[str, Any]:
    return message.model_dump(mode="json", exclude_defaults=True)


def sft_rows(kept: list[KScoredPromptGenerations]) -> list[dict[str, Any]]:
    return [
        {"dialog": [_message(item.prompt), _message(g.message)], "score": g.score}
        for item in kept
        for g in item.k_scored_generations
    ]


def preference_rows(scored: list[KScoredPromptGenerations]) -> list[dict[str, Any]]:
    rows = []
    for item in scored:
        generations = item.k_scored_generations
        if len(generations) < 2:
            continue
        # The earliest of equal best scores, the latest of equal worst ones: a fixed choice among ties.
        best = min(range(len(generations)), key=lambda i: (-generations[i].score, i))
        worst = max(range(len(generations)), key=lambda i: (-generations[i].score, i))
        if generations[best].score == generations[worst].score:
            continue
        prompt = _message(item.prompt)
        rows.append(
            {
                "chosen": [prompt, _message(generations[best].message)],
                "rejected": [prompt, _message(generations[worst].message)],
                "chosen_score": generations[best].score,
                "rejected_score": generations[worst].score,
            }
        )
    return rows


def jsonl_data_url(rows: list[dict[str, Any]]) -> str:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return "data:application/jsonl;base64," + base64.b64encode(text.encode()).decode("ascii")


class DatasetSaver:
    def __init__(self, datasets: Any, provider_id: str):
        self.datasets = datasets
        self.provider_id = provider_id

    async def check_free(self, save: SaveSettings) -> None:
        """Both uuids unused, before any generation: a taken name found after an hour's run loses the run."""
        wanted = {
            "save.dataset_uuid": save.dataset_uuid,
            "save.preference_dataset_uuid": save.preference_dataset_uuid,
        }
        if not any(wanted.values()):
            raise BadRequestError(
                "save: name dataset_uuid (the kept generations) and/or preference_dataset_uuid (best vs worst pairs)",
                param="save",
            )
        if save.dataset_uuid is not None and save.dataset_uuid == save.preference_dataset_uuid:
            raise BadRequestError(
                f"save: dataset_uuid and preference_dataset_uuid are both '{save.dataset_uuid}'; two datasets need "
                "two uuids",
                param="save.preference_dataset_uuid",
            )
        for param, uuid in wanted.items():
            if uuid is None:
                continue
            try:
                await self.datasets.get_dataset(uuid)
            except NotFoundError:
                continue
            raise ConflictError(
                f"{param}: dataset '{uuid}' exists already; delete it first or choose another uuid",
                param=param,
                code="dataset_exists",
            )

    async def save(
        self, plan: Plan, scored: list[KScoredPromptGenerations], kept: list[KScoredPromptGenerations]
    ) -> dict[str, Any]:
        """Create the datasets the request asked for; answers what was saved (for the run's statistics)."""
        assert plan.save is not None
        saved: dict[str, Any] = {}
        metadata = {
            "source": "synthetic_data_generation",
            "provider_id": self.provider_id,
            "model": plan.model,
            "reward_model": plan.reward_model,
            "filtering_function": plan.function,
        }
        if plan.save.dataset_uuid is not None:
            saved["sft"] = await self._create(
                plan.save, plan.save.dataset_uuid, SFT_COLUMNS, sft_rows(kept), metadata, "no generation was kept"
            )
        if plan.save.preference_dataset_uuid is not None:
            saved["preference"] = await self._create(
                plan.save,
                plan.save.preference_dataset_uuid,
                PREFERENCE_COLUMNS,
                preference_rows(scored),
                metadata,
                "no prompt had generations scored differently",
            )
        return saved

    async def _create(
        self,
        save: SaveSettings,
        uuid: str,
        columns: dict[str, DatasetColumnType],
        rows: list[dict[str, Any]],
        metadata: dict[str, Any],
        why_empty: str,
    ) -> dict[str, Any]:
        if not rows:
            # A dataset holds at least one row; an empty result is reported, not an error that loses the run.
            return {"uuid": uuid, "rows": 0, "saved": False, "reason": why_empty}
        dataset = Dataset(columns=columns, content_url=jsonl_data_url(rows), metadata=metadata)
        await self.datasets.create_dataset(
            CreateDatasetRequest(uuid=uuid, dataset=dataset, provider_id=save.provider_id)
        )
        return {"uuid": uuid, "rows": len(rows), "saved": True}
