"""Node services: what each workflow node type does (SPEC §6.2).

One registry keyed by type; adding a type is one class decorated with
``@register``. Each class checks its metadata when a workflow is saved
(``validate_metadata``) and does its work at run time (``execute``).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol

from chatsvc.services.jsonata.expressions import ExpressionError, compile_expression
from chatsvc.services.jsonata.pool import evaluate
from chatsvc.services.prompt_render import default_base, render_prompt

MAX_SLEEP_SECONDS = 60


class NodeContext(Protocol):
    """What a running node may use from its run (provided by the workflow runner)."""

    starting_inputs: dict[str, Any]
    jsonata_timeout_ms: int
    team_id: int | None  # the run's team: its evaluations count against the team's share

    def log_warn(self, message: str, **data: Any) -> None:
        """Add a warn event to the run's log."""

    def sleep(self, seconds: float) -> None:
        """Sleep, waking early (and raising) if the run is cancelled."""

    def run_expert(self, expert_id: int, input_params: Any) -> str:
        """Render the expert with ``input_params``, call the LLM, return the reply."""


class NodeService(ABC):
    node_type: ClassVar[str]

    def validate_metadata(self, metadata: dict[str, Any]) -> list[str]:
        """Problems with this node's metadata, as messages (empty when valid).

        Only the metadata's own shape: whether the experts an ``expert`` node names may
        be used is decided in ``security.permissions`` (``check_workflow_graph``)."""
        return []

    @abstractmethod
    def execute(self, inputs: dict[str, Any], metadata: dict[str, Any], ctx: NodeContext) -> Any:
        """Run the node on its available data and return its output."""


_SERVICES: dict[str, NodeService] = {}


def register(cls: type[NodeService]) -> type[NodeService]:
    _SERVICES[cls.node_type] = cls()
    return cls


def get_service(node_type: str) -> NodeService:
    return _SERVICES[node_type]


def node_types() -> frozenset[str]:
    return frozenset(_SERVICES)


def _unknown_keys(metadata: dict[str, Any], allowed: set[str]) -> list[str]:
    return [f"unknown metadata field '{k}'" for k in sorted(set(metadata) - allowed)]


def _output_key_problems(metadata: dict[str, Any]) -> list[str]:
    key = metadata.get("output_key")
    if key is not None and (not isinstance(key, str) or not key):
        return ["'output_key' must be a non-empty string"]
    return []


@register
class InputNode(NodeService):
    """Outputs the run's starting inputs."""

    node_type = "input"

    def validate_metadata(self, metadata):
        return _unknown_keys(metadata, set())

    def execute(self, inputs, metadata, ctx):
        return copy.deepcopy(ctx.starting_inputs)


@register
class EchoNode(NodeService):
    """Outputs its inputs unchanged (a pass-through)."""

    node_type = "echo"

    def validate_metadata(self, metadata):
        return _unknown_keys(metadata, set())

    def execute(self, inputs, metadata, ctx):
        return inputs


@register
class TransformNode(NodeService):
    """JSONata over the inputs; ``output_key`` wraps the result."""

    node_type = "transform"

    def validate_metadata(self, metadata):
        problems = _unknown_keys(metadata, {"expression", "output_key"}) + _output_key_problems(metadata)
        expression = metadata.get("expression")
        if not isinstance(expression, str) or not expression.strip():
            return problems + ["'expression' must be a non-empty string"]
        try:
            compile_expression(expression)
        except ExpressionError as exc:
            problems.append(f"'expression' does not compile: {exc.reason}")
        return problems

    def execute(self, inputs, metadata, ctx):
        result = evaluate(metadata["expression"], inputs, timeout_ms=ctx.jsonata_timeout_ms, tenant=ctx.team_id)
        output_key = metadata.get("output_key")
        if output_key:
            return {output_key: result}
        return result


@register
class TemplateNode(NodeService):
    """Renders a prompt-style template over the inputs: ``{"text": ...}``."""

    node_type = "template"

    def validate_metadata(self, metadata):
        problems = _unknown_keys(metadata, {"template"})
        if not isinstance(metadata.get("template"), str):
            problems.append("'template' must be a string")
        return problems

    def execute(self, inputs, metadata, ctx):
        rendered = render_prompt(metadata["template"], default_base(), inputs, timeout_ms=ctx.jsonata_timeout_ms,
                                 tenant=ctx.team_id)
        if rendered.warnings:
            ctx.log_warn("template_warnings", warnings=rendered.warnings)
        return {"text": rendered.text}


@register
class ExpertNode(NodeService):
    """Renders an expert of the same team with the inputs and calls the LLM."""

    node_type = "expert"

    def validate_metadata(self, metadata):
        problems = _unknown_keys(metadata, {"expert_id", "output_key"}) + _output_key_problems(metadata)
        expert_id = metadata.get("expert_id")
        if not isinstance(expert_id, int) or isinstance(expert_id, bool):
            problems.append("'expert_id' must be an integer")
        return problems

    def execute(self, inputs, metadata, ctx):
        reply = ctx.run_expert(metadata["expert_id"], inputs)
        return {metadata.get("output_key") or "reply": reply}


@register
class SleepNode(NodeService):
    """Waits ``seconds`` (≤ 60), cancellable; outputs its inputs. For demos and tests."""

    node_type = "sleep"

    def validate_metadata(self, metadata):
        problems = _unknown_keys(metadata, {"seconds"})
        seconds = metadata.get("seconds")
        if (
            not isinstance(seconds, (int, float))
            or isinstance(seconds, bool)
            or not 0 <= seconds <= MAX_SLEEP_SECONDS
        ):
            problems.append(f"'seconds' must be a number from 0 to {MAX_SLEEP_SECONDS}")
        return problems

    def execute(self, inputs, metadata, ctx):
        ctx.sleep(float(metadata["seconds"]))
        return inputs
