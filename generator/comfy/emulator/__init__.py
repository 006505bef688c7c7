"""A ComfyUI 0.3.64 stand-in on a real port: the site's demo backend and the tests' double.

    from generator.comfy.emulator import Emulator
    async with Emulator(step_seconds=0.1) as emu:
        ...  # emu.url, emu.faults, emu.history, emu.queue

Modules: server (lifecycle), routes (HTTP), hub (websockets), validation, prompt_queue,
executor (running prompts), graph (order and cache), nodes, rendering, folders, faults,
tracebacks.
"""

from .faults import Faults
from .server import Emulator, serve_forever

__all__ = ["Emulator", "Faults", "serve_forever"]
