"""Running a workflow: nodes in topological order, each on its available data (SPEC §6.2, §8).

Events per node: ``node_start`` → (``input_conflict``) → ``node_output`` or
``node_error``; after a failure every later node gets ``node_skipped`` and the
run fails. Cancellation is checked between nodes (and inside ``sleep`` and LLM
streams, by the node services themselves).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from chatsvc.runs.executor import RunCancelled, RunContext, RunOutcome, cancelled_error
from chatsvc.services.dag import Graph, InputResolver, NodeSpec
from chatsvc.services.expert_runner import ExpertSnapshot, run_expert
from chatsvc.services.llm import LLMProvider
from chatsvc.services.nodes import get_service


@dataclass
class NodeRunContext:
    """The ``NodeContext`` that node services see during one workflow run."""

    run: RunContext
    starting_inputs: dict[str, Any]
    experts: dict[int, ExpertSnapshot]
    provider: LLMProvider
    jsonata_timeout_ms: int = 500

    @property
    def team_id(self) -> int | None:
        return self.run.team_id

    def log_warn(self, message: str, **data: Any) -> None:
        self.run.log_warn(message, **data)

    def sleep(self, seconds: float) -> None:
        self.run.sleep(seconds)

    def run_expert(self, expert_id: int, input_params: Any) -> str:
        expert = self.experts[expert_id]  # loaded and permission-checked when the run was requested
        reply = run_expert(
            self.run, expert, input_params, None, self.provider, jsonata_timeout_ms=self.jsonata_timeout_ms
        )
        return reply.content


@dataclass
class WorkflowJob:
    """A workflow run, ready for the executor: everything it needs was loaded up front."""

    graph: Graph
    starting_inputs: dict[str, Any]
    experts: dict[int, ExpertSnapshot]
    provider: LLMProvider
    jsonata_timeout_ms: int = 500
    clock: Callable[[], float] = field(default=time.monotonic)

    def __call__(self, ctx: RunContext) -> RunOutcome:
        node_ctx = NodeRunContext(ctx, self.starting_inputs, self.experts, self.provider, self.jsonata_timeout_ms)
        resolver = InputResolver(self.graph, self.starting_inputs)
        order = self.graph.topological_order()
        steps: list[dict[str, Any]] = []
        stop: str | None = None  # "failed" or "cancelled" once the run cannot go on
        for index, node in enumerate(order, start=1):
            if stop is None and ctx.cancelled:
                stop = "cancelled"
            if stop is not None:
                ctx.log_info("node_skipped", node_id=node.id, node_key=node.key, reason=stop)
                steps.append(_step(node, "skipped"))
                continue
            step = self._run_node(ctx, node_ctx, resolver, node, index)
            steps.append(step)
            if step["status"] != "succeeded":
                stop = step["status"]
        status = stop or "succeeded"
        error = next((s["error"] for s in steps if "error" in s), None)
        summary = [{k: s[k] for k in ("node_key", "status", "duration_ms")} for s in steps]
        return RunOutcome(status, result={"steps": steps}, error=error, summary={"steps": summary})

    def _run_node(
        self, ctx: RunContext, node_ctx: NodeRunContext, resolver: InputResolver, node: NodeSpec, index: int
    ) -> dict[str, Any]:
        predecessors = [p.key for p in self.graph.predecessors(node.id)]
        ctx.log_info(
            "node_start",
            node_id=node.id,
            node_key=node.key,
            node_type=node.node_type,
            index=index,
            predecessors=predecessors,
        )
        resolved = resolver.resolve(node.id)
        if resolved.conflicts:
            ctx.log_warn(
                "input_conflict",
                node_id=node.id,
                node_key=node.key,
                keys=list(resolved.conflicts),
                winners=resolved.conflicts,
            )
        started = self.clock()
        try:
            output = get_service(node.node_type).execute(resolved.inputs, node.metadata, node_ctx)
        except RunCancelled:
            resolver.record_output(node.id, None)
            duration = _ms(self.clock() - started)
            ctx.log_warn("node_cancelled", node_id=node.id, node_key=node.key, duration_ms=duration)
            return _step(node, "cancelled", duration_ms=duration, error=cancelled_error())
        except Exception as exc:
            resolver.record_output(node.id, None)
            duration = _ms(self.clock() - started)
            ctx.log_error("node_error", exc=exc, node_id=node.id, node_key=node.key, duration_ms=duration)
            error = {"type": type(exc).__name__, "message": str(exc), "node_key": node.key}
            return _step(node, "failed", duration_ms=duration, error=error)
        resolver.record_output(node.id, output)
        duration = _ms(self.clock() - started)
        ctx.log_info("node_output", node_id=node.id, node_key=node.key, output=output, duration_ms=duration)
        return _step(node, "succeeded", output=output, duration_ms=duration)


def _step(node: NodeSpec, status: str, *, output: Any = None, duration_ms: int = 0, error: dict | None = None) -> dict:
    step = {
        "node_id": node.id,
        "node_key": node.key,
        "node_type": node.node_type,
        "status": status,
        "output": output,
        "duration_ms": duration_ms,
    }
    if error is not None:
        step["error"] = error
    return step


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
