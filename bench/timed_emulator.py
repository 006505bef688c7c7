"""The emulator in a process of its own, as a real ComfyUI would be, noting when it sent each
`progress` message and when it ran each prompt (CLOCK_MONOTONIC: comparable across processes).

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


async def main(port: int, step_seconds: float, out: Path) -> None:
    emulator = Emulator(port=port, step_seconds=step_seconds)
    progress: list[tuple[str, int, float]] = []
    runs: list[tuple[float, float]] = []
    send_to, execute = emulator.hub._send_to, Executor.execute

    async def timed_send(socket, message):
        if isinstance(message, dict) and message.get("type") == "progress":
            progress.append((message["data"]["prompt_id"], message["data"]["value"], time.perf_counter()))
        await send_to(socket, message)

    async def timed_execute(self, run):
        started = time.perf_counter()
        await execute(self, run)
        runs.append((started, time.perf_counter()))

    emulator.hub._send_to = timed_send  # type: ignore[method-assign]
    Executor.execute = timed_execute  # type: ignore[method-assign]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with emulator:
        print("ready", flush=True)
        await stop.wait()
    out.write_text(json.dumps({"progress": progress, "runs": runs}))  # noqa: ASYNC240 - once, at exit


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3])))
