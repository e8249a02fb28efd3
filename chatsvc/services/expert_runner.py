"""Running an expert: render its prompt, call the LLM, log every step (SPEC §6.1).

Used by the experts endpoint and by workflow ``expert`` nodes alike. It works
on an ``ExpertSnapshot`` taken when the run was requested, so the background
run never touches the database.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from chatsvc.runs.executor import RunCancelled
from chatsvc.services.llm import LLMCancelled, LLMProvider
from chatsvc.services.prompt_render import default_base, merge_base, render_prompt


class ExpertRunContext(Protocol):
    """The part of a run's context an expert run needs (see runs.executor.RunContext)."""

    team_id: int | None  # the run's team: its evaluations count against the team's share

    @property
    def cancelled(self) -> bool: ...

    def log_info(self, message: str, **data: Any) -> None: ...


@dataclass(frozen=True)
class ExpertSnapshot:
    id: int
    team_id: int
    name: str
    prompt_template: str
    model_name: str
    base: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExpertReply:
    messages: list[dict[str, str]]
    warnings: list[dict[str, str]]

    @property
    def content(self) -> str:
        return self.messages[-1]["content"]

    def as_result(self) -> dict[str, Any]:
        return {"messages": self.messages, "warnings": self.warnings}


def input_size(input_params: Any) -> int:
    """Bytes of the input as compact UTF-8 JSON."""
    return len(json.dumps(input_params, separators=(",", ":"), ensure_ascii=False).encode())


def run_expert(
    ctx: ExpertRunContext,
    expert: ExpertSnapshot,
    input_params: Any,
    request_base: dict[str, Any] | None,
    provider: LLMProvider,
    *,
    jsonata_timeout_ms: int = 500,
) -> ExpertReply:
    """Render, emit ``prompt_rendered``, call the LLM and emit its reply events."""
    base = merge_base(default_base(), expert.base, request_base)
    rendered = render_prompt(expert.prompt_template, base, input_params, timeout_ms=jsonata_timeout_ms,
                             tenant=ctx.team_id)
    ctx.log_info(
        "prompt_rendered",
        expert_id=expert.id,
        model_name=expert.model_name,
        input_size=input_size(input_params),
        prompt_chars=len(rendered.text),
        warnings=rendered.warnings,
    )
    messages = [{"role": "user", "content": rendered.text}]
    try:
        content = provider.complete(
            model=expert.model_name,
            messages=messages,
            on_delta=lambda text: ctx.log_info("assistant_delta", text=text),
            should_cancel=lambda: ctx.cancelled,
        )
    except LLMCancelled:
        raise RunCancelled("Run cancelled while the LLM was answering") from None
    if provider.is_stub:
        ctx.log_info("assistant_stub_sent", content=content)
    else:
        ctx.log_info("assistant_reply", content=content, chars=len(content))
    return ExpertReply(messages=[*messages, {"role": "assistant", "content": content}], warnings=rendered.warnings)
