"""The emulator in a process of its own, as a real ComfyUI would be, noting when it sent each
`progress` message and when it ran each prompt (CLOCK_MONOTONIC: comparable across processes):
`progress` [(prompt id, step, sent at)], `runs` [(start, end)] in order, `executions` {prompt id:
(start, end)}. A prompt whose id starts with `hold-` stops at its first step until interrupted,
using no CPU meanwhile: it holds the emulator busy, as another user's long job would.

    python bench/timed_emulator.py PORT STEP_SECONDS OUT.json   (writes OUT.json on SIGTERM)
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generator.comfy.emulator import Emulator
from generator.comfy.emulator.executor import Executor

HOLD_PREFIX = "hold-"


async def main(port: int, step_seconds: float, out: Path) -> None:
    emulator = Emulator(port=port, step_seconds=step_seconds)
    progress: list[tuple[str, int, float]] = []
    runs: list[tuple[float, float]] = []
    executions: dict[str, tuple[float, float]] = {}
    send_to, execute, step = emulator.hub._send_to, Executor.execute, Executor._step

    async def timed_send(socket, message):
        if isinstance(message, dict) and message.get("type") == "progress":
            progress.append((message["data"]["prompt_id"], message["data"]["value"], time.perf_counter()))
        await send_to(socket, message)

    async def timed_execute(self, run):
        started = time.perf_counter()
        await execute(self, run)
        runs.append((started, time.perf_counter()))
        executions[run.prompt_id] = runs[-1]

    async def held_step(self, run, *args):
        while run.prompt_id.startswith(HOLD_PREFIX) and not self.interrupted:  # noqa: ASYNC110 - a plain flag
            await asyncio.sleep(0.005)
        await step(self, run, *args)

    emulator.hub._send_to = timed_send  # type: ignore[method-assign]
    Executor.execute = timed_execute  # type: ignore[method-assign]
    Executor._step = held_step  # type: ignore[method-assign]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with emulator:
        print("ready", flush=True)
        await stop.wait()
    timeline = {"progress": progress, "runs": runs, "executions": executions}
    out.write_text(json.dumps(timeline))  # noqa: ASYNC240 - once, at exit


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3])))
