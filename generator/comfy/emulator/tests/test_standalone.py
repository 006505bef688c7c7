"""The emulator runs on its own too: `python -m generator.comfy.emulator` and
`manage.py comfy_emulator` serve until Ctrl-C and clean up after themselves."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from generator.comfy.tests.recording import workflow

PROJECT = Path(__file__).resolve().parents[4]


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "generator.comfy.emulator", "--port", "0", "--step-seconds", "0"],
        [sys.executable, "manage.py", "comfy_emulator", "--port", "0", "--step-seconds", "0"],
    ],
    ids=["module", "manage.py"],
)
def test_it_serves_until_interrupted(command, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [*command, "--root", str(tmp_path)],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        announced = process.stdout.readline()
        url = re.search(r"http://[\d.]+:\d+", announced)
        assert url, announced
        stats = httpx.get(f"{url.group(0)}/system_stats", timeout=5).json()
        assert stats["system"]["emulator"] is True
        assert (tmp_path / "input" / "example.png").exists()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)
    assert process.returncode == 0, process.stderr.read() if process.stderr else ""


async def test_in_process_it_owns_a_temporary_folder_and_removes_it():
    from generator.comfy.emulator import Emulator

    async with Emulator() as emulator:
        root = emulator.folders.root
        assert (root / "output").is_dir()
    assert not root.exists()


async def test_a_taken_port_fails_to_start_and_leaves_nothing_behind(tmp_path):
    from generator.comfy.emulator import Emulator

    async with Emulator() as first:
        second = Emulator(port=first.port)
        with pytest.raises(OSError, match="address already in use"):
            await second.start()
        assert not second._folders.root.exists()


def test_it_can_be_started_again_in_another_loop():
    import asyncio

    from generator.comfy.emulator import Emulator

    emulator = Emulator()

    async def once() -> int:
        async with emulator, httpx.AsyncClient(base_url=emulator.url) as http:
            response = await http.post("/prompt", json={"prompt": workflow("txt2img")})
            await emulator.wait_idle()
            return response.status_code

    assert asyncio.run(once()) == 200
    assert asyncio.run(once()) == 200
