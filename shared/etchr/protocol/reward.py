"""Reward service payloads (docs/api.md): ``POST /reward`` for the RL trainer and ``POST /filter`` (Eq. 1)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from etchr.protocol import EXAMPLE_IMAGE, EXAMPLE_QUESTION, MAX_KEYWORD_CHARS, MAX_NAME_CHARS, MAX_TEXT_CHARS
from etchr.protocol.edit import EditTask

AdvantageMode = Literal["pref-grpo", "grpo", "none"]


class RewardItem(BaseModel):
    """One (I, q, a) with its group of G edits."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    image: str = Field(min_length=1, description="the original image I, base64", examples=[EXAMPLE_IMAGE])
    question: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, examples=[EXAMPLE_QUESTION])
    answer: str = Field(
        min_length=1, max_length=MAX_TEXT_CHARS, description="the ground truth a", examples=["B"]
    )
    task: EditTask | None = Field(default=None, description="picks the judge prompt; default perception")
    scorer: str | None = Field(
        default=None,
        max_length=MAX_KEYWORD_CHARS,
        description="answer-matching rule (docs/answers.md); default auto",
    )
    meta: dict[str, Any] | None = Field(default=None, description="structured ground truth for task scorers")
    edits: list[str] = Field(
        min_length=1, max_length=64, description="G edited images, base64", examples=[[EXAMPLE_IMAGE]]
    )


class RewardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[RewardItem] = Field(min_length=1)
    alpha: float = Field(default=0.5, ge=0.0, le=1.0, description="R = α·R_guid + (1−α)·R_corr")
    k: int = Field(default=4, ge=1, le=32, description="stochastic decodings per query")
    advantage: AdvantageMode = "pref-grpo"
    correctness_images: Literal["both", "edit"] | None = Field(
        default=None,
        description="what R_corr's judge sees: 'both' = [original, edit], 'edit' = the edit alone (the "
        "authors' release); default ETCHR_REWARD_CORRECTNESS_IMAGES",
    )


class EditReward(BaseModel):
    guidance: float = Field(description="fraction of k decodings where U answered correctly from the edit")
    correctness: float = Field(description="fraction of k judge decodings saying the edit holds the evidence")
    reward: float


class ItemReward(BaseModel):
    id: str
    rewards: list[EditReward]
    win_rates: list[float] | None
    advantages: list[float] | None


class RewardUsage(BaseModel):
    mllm_requests: int = Field(description="HTTP requests to MLLM backends this call caused")
    cache_hits: int = Field(description="queries answered from the cache")
    coalesced: int = Field(default=0, description="queries that joined an identical one already in flight")
    queries: int = Field(default=0, description="queries the call needed in all")


class RewardResponse(BaseModel):
    items: list[ItemReward]
    usage: RewardUsage
    timings: dict[str, float]


class FilterItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    image: str = Field(min_length=1, examples=[EXAMPLE_IMAGE])
    question: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, examples=[EXAMPLE_QUESTION])
    answer: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, examples=["B"])
    edited_image: str = Field(
        min_length=1, description="the ground-truth edit I_e*", examples=[EXAMPLE_IMAGE]
    )
    task: EditTask | None = None
    scorer: str | None = Field(default=None, max_length=MAX_KEYWORD_CHARS)
    meta: dict[str, Any] | None = None


class FilterRequest(BaseModel):
    """Eq. 1 for every item: each clause decided by a strict majority of k sampled decodings, or by one
    greedy decoding — never by a single sample, which would make the RL set a coin flip."""

    model_config = ConfigDict(extra="forbid")

    items: list[FilterItem] = Field(min_length=1)
    k: int = Field(
        default=4,
        ge=1,
        le=32,
        description="sampled decodings per clause; a clause holds on a strict majority of them",
    )
    greedy: bool = Field(
        default=False, description="decide each clause on one greedy decoding (temperature 0) instead"
    )

    @model_validator(mode="after")
    def _greedy_is_one_decoding(self) -> FilterRequest:
        if self.greedy and self.k != 1 and "k" in self.model_fields_set:
            raise ValueError("greedy decides each clause on one decoding: leave k out or set it to 1")
        return self

    @property
    def decodings(self) -> int:
        """Decodings per clause: 1 when greedy (they would all be the same), else k."""
        return 1 if self.greedy else self.k


class FilterResult(BaseModel):
    id: str
    base_correct: float = Field(description="fraction of the decodings correct from I alone")
    edit_correct: float = Field(description="fraction of the decodings correct given I and I_e*")
    fails_alone: bool = Field(description="Eq. 1's first clause: base_correct < 0.5")
    succeeds_with_edit: bool = Field(description="Eq. 1's second clause: edit_correct > 0.5")
    keep: bool = Field(description="both clauses hold")


class FilterResponse(BaseModel):
    keep: list[str]
    items: list[FilterResult]
    usage: RewardUsage
    timings: dict[str, float]
