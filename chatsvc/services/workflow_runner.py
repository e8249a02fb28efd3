"""Running a workflow: nodes in topological order, each on its available data (SPEC §6.2, §8).

Events per node: ``node_start`` → (``input_conflict``) → ``node_output`` or
``node_error``; after a failure every later node gets ``node_skipped`` and the
run fails. Cancellation is checked between nodes (and inside ``sleep`` and LLM
streams, by the node services themselves).

The outputs of a run's nodes together may be at most ``max_output_bytes`` of JSON: each
is kept in the run's steps, its events and its result, so without a bound a small
workflow (a hundred nodes each returning 1 MB) would hold gigabytes in the server. The
node that crosses the bound fails with ``OutputLimitExceeded``, as any failing node.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from chatsvc.runs.executor import RunCancelled, RunContext, RunOutcome, cancelled_error
from chatsvc.services.dag import Graph, InputResolver, NodeSpec
from chatsvc.services.expert_runner import ExpertSnapshot, run_expert
from chatsvc.services.llm import LLMProvider
from chatsvc.services.nodes import get_service


DEFAULT_MAX_OUTPUT_BYTES = 8 * 1024 * 1024


class OutputLimitExceeded(Exception):
    """A node's output took the run's node outputs past their bound."""


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
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    clock: Callable[[], float] = field(default=time.monotonic)
    _output_bytes: int = field(default=0, init=False)  # of this run's node outputs so far

    def __call__(self, ctx: RunContext) -> RunOutcome:
        node_ctx = NodeRunContext(ctx, self.starting_inputs, self.experts, self.provider, self.jsonata_timeout_ms)
        resolver = InputResolver(self.graph, self.starting_inputs)
        order = self.graph.topological_order()
        steps: list[dict[str, Any]] = []
        stop: str | None = None  # "failed" or "cancelled" once the run cannot go on
        for index, node in enumerate(order, start=1):
            ctx.take_turns()
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
            self._count_output(output)
        except RunCancelled:
            resolver.record_output(node.id, None)
            duration = _ms(self.clock() - started)
            ctx.log_warn("node_cancelled", node_id=node.id, node_key=node.key, duration_ms=duration)
            return _step(node, "cancelled", duration_ms=duration, error=cancelled_error())
        except Exception as exc:
            resolver.record_output(node.id, None)
            duration = _ms(self.clock() - started)
            if isinstance(exc, OutputLimitExceeded):  # the run's own input, not a fault: no traceback
                ctx.log_error("node_error", node_id=node.id, node_key=node.key, duration_ms=duration,
                              exception={"type": type(exc).__name__, "message": str(exc)})
            else:
                ctx.log_error("node_error", exc=exc, node_id=node.id, node_key=node.key, duration_ms=duration)
            error = {"type": type(exc).__name__, "message": str(exc), "node_key": node.key}
            return _step(node, "failed", duration_ms=duration, error=error)
        resolver.record_output(node.id, output)
        duration = _ms(self.clock() - started)
        ctx.log_info("node_output", node_id=node.id, node_key=node.key, output=output, duration_ms=duration)
        return _step(node, "succeeded", output=output, duration_ms=duration)


    def _count_output(self, output: Any) -> None:
        """Adds a node's output to the run's total; OutputLimitExceeded past ``max_output_bytes``."""
        # Measured as the JSON the output becomes in events and results (default=str, as there).
        self._output_bytes += len(json.dumps(output, default=str, ensure_ascii=False).encode(errors="replace"))
        if self._output_bytes > self.max_output_bytes:
            raise OutputLimitExceeded(f"the run's node outputs exceed {self.max_output_bytes} bytes together "
                                      f"(CHATSVC_MAX_RUN_OUTPUT_BYTES)")


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
