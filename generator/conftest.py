"""Fixtures for every test under generator/: a ComfyUI emulator on a real port.

Each test gets its own (function scope): fresh queue, history, cache, folders and fault
switches. Break things with `emulator.faults` (see generator/comfy/emulator/faults.py).
"""

from __future__ import annotations

import pytest

from generator.comfy.emulator import Emulator


@pytest.fixture
async def emulator():
    """A started emulator at `emulator.url`, running as fast as it can (step_seconds=0)."""
    async with Emulator(step_seconds=0.0) as emu:
        yield emu


@pytest.fixture
async def slow_emulator():
    """An emulator that takes 0.2 s per sampling step: time to cancel, drop or restart mid-job."""
    async with Emulator(step_seconds=0.2) as emu:
        yield emu
