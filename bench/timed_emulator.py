"""The emulator in a process of its own, as a real ComfyUI would be, noting when it sent each
`progress` message and when it ran each prompt (CLOCK_MONOTONIC: comparable across processes):
`progress` [(prompt id, step, sent at)], `runs` [(start, end)] in order, `executions` {prompt id:
(start, end)}. A prompt whose id starts with `hold-` stops at its first step until interrupted,
using no CPU meanwhile: it holds the emulator busy, as another user's long job would.

    python bench/timed_emulator.py PORT STEP_SECONDS OUT.json   (writes OUT.json on SIGTERM)
        [--root DIR] [--fault-control] [--runs-log FILE] [--no-preview]

`--runs-log` appends a JSON line as each prompt is queued, starts and ends, flushed at once, so
what a killed emulator ran is known: {"event": "queued" | "start" | "end", "prompt_id", "job"
(the site's job number, from extra_data), "at", and for "end" "status" (the last message:
execution_success, execution_error, execution_interrupted)}. A "start" with no "end" was cut
by a crash or restart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generator.comfy.emulator import Emulator
from generator.comfy.emulator.executor import Executor
from generator.comfy.emulator.prompt_queue import PromptQueue, QueueItem

HOLD_PREFIX = "hold-"


def job_of(item: QueueItem) -> int | None:
    """The site's job number the bridge tagged a prompt with (its extra_data), if any."""
    tag = item.extra_data.get("comfysite")
    return tag.get("job") if isinstance(tag, dict) else None


def note_run(log: TextIO | None, event: str, item: QueueItem, **more: Any) -> None:
    if log is not None:
        line = {"event": event, "prompt_id": item.prompt_id, "job": job_of(item), "at": time.monotonic()}
        log.write(json.dumps({**line, **more}) + "\n")
        log.flush()


async def main(args: argparse.Namespace) -> None:
    emulator = Emulator(
        port=args.port,
        step_seconds=args.step_seconds,
        preview=not args.no_preview,
        root=args.root,
        fault_control=args.fault_control,
    )
    runs_log = args.runs_log.open("a") if args.runs_log else None
    progress: list[tuple[str, int, float]] = []
    runs: list[tuple[float, float]] = []
    executions: dict[str, tuple[float, float]] = {}
    send_to, execute, step, put = emulator.hub._send_to, Executor.execute, Executor._step, PromptQueue.put

    async def timed_send(socket, message):
        if isinstance(message, dict) and message.get("type") == "progress":
            progress.append((message["data"]["prompt_id"], message["data"]["value"], time.perf_counter()))
        await send_to(socket, message)

    async def timed_execute(self, run):
        started = time.perf_counter()
        note_run(runs_log, "start", run.item)
        await execute(self, run)
        runs.append((started, time.perf_counter()))
        executions[run.prompt_id] = runs[-1]
        note_run(runs_log, "end", run.item, status=run.messages[-1][0] if run.messages else "")

    async def held_step(self, run, *args):
        while run.prompt_id.startswith(HOLD_PREFIX) and not self.interrupted:  # noqa: ASYNC110 - a plain flag
            await asyncio.sleep(0.005)
        await step(self, run, *args)

    def noted_put(self, item):
        put(self, item)
        note_run(runs_log, "queued", item)

    emulator.hub._send_to = timed_send  # type: ignore[method-assign]
    Executor.execute = timed_execute  # type: ignore[method-assign]
    Executor._step = held_step  # type: ignore[method-assign]
    PromptQueue.put = noted_put  # type: ignore[method-assign]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with emulator:
        print("ready", flush=True)
        await stop.wait()
    timeline = {"progress": progress, "runs": runs, "executions": executions}
    args.out.write_text(json.dumps(timeline))  # once, at exit


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("port", type=int)
    parser.add_argument("step_seconds", type=float)
    parser.add_argument("out", type=Path, help="where the timeline is written on SIGTERM")
    parser.add_argument("--root", help="folder for input/, output/, temp/ (kept across restarts)")
    parser.add_argument("--fault-control", action="store_true", help="serve POST /_faults (loopback)")
    parser.add_argument("--runs-log", type=Path, help="append a line per prompt queued, started, ended")
    parser.add_argument("--no-preview", action="store_true", help="send no preview frames")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
