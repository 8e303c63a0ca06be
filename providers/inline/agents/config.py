"""Config of inline::agents: the iteration limit, retrieval settings and the bounds on what a request may hold."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class AgentsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    db_path: Path | None = Field(
        default=None, description="The SQLite file of agents; unset: agents.sqlite in the provider's storage directory."
    )
    max_iterations: int = Field(
        default=10,
        ge=1,
        le=100,
        description="Model calls per turn when the agent sets no max_iterations (each tool round trip is one more).",
    )
    max_tokens: int = Field(default=0, ge=0, description="max_tokens of each model call; 0: until the model stops.")
    retrieval_chunks: int = Field(default=5, ge=1, le=100, description="Chunks retrieved from each memory bank.")
    max_context_characters: int = Field(
        default=8000, ge=1, description="Retrieved text given to the model per turn; chunks past it are left out."
    )
    max_query_characters: int = Field(
        default=2000, ge=1, description="The memory query: the end of the turn's user text, cut to this length."
    )
    # Bounds on hostile input, checked before any work starts.
    max_messages: int = Field(default=64, ge=1, description="Messages one execute may send.")
    max_message_characters: int = Field(default=100_000, ge=1, description="Text of one message.")
    max_turn_history: int = Field(default=100, ge=0, description="Earlier turns one execute may carry.")
    max_steps_per_turn: int = Field(default=256, ge=1, description="Steps of one earlier turn in turn_history.")
    max_conversation_characters: int = Field(
        default=1_000_000, ge=1, description="Text of the whole conversation an execute sends (history included)."
    )
    max_instructions_characters: int = Field(default=100_000, ge=0, description="An agent's instructions.")
    max_tools: int = Field(default=64, ge=0, description="available_tools of one agent.")
    max_tool_schema_bytes: int = Field(default=16_384, ge=2, description="One tool definition, as JSON.")
    max_memory_banks: int = Field(default=16, ge=0, description="memory_bank_uuids of one agent.")
    max_shields: int = Field(default=16, ge=0, description="input_shields and output_shields of one agent, each.")
