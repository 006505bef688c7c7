"""The fault control route: a test in another process breaks an emulator it started
(`--fault-control`) as it would one in its own loop, and nothing else can."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import pytest

from generator.comfy.emulator import Emulator, Faults
from generator.comfy.emulator.control import KINDS


@pytest.fixture
async def controlled():
    async with Emulator(fault_control=True) as emu:
        yield emu


def test_every_switch_of_faults_can_be_set_through_the_control():
    public = {f.name for f in dataclasses.fields(Faults) if not f.name.startswith("_")}
    assert set(KINDS) == public


async def test_switches_set_over_http_take_effect(controlled):
    async with httpx.AsyncClient(base_url=controlled.url) as http:
        answer = await http.post("/_faults", json={"http_500": ["/view"], "view_delay": 1.5})
        assert answer.status_code == 200
        assert answer.json()["http_500"] == ["/view"]
        assert (await http.get("/view", params={"filename": "x.png"})).status_code == 500

        await http.post("/_faults", json={"reset": True})
        assert (await http.get("/view", params={"filename": "x.png"})).status_code == 404
    assert controlled.faults.view_delay == 0.0


async def test_a_restart_through_the_control_loses_the_history(controlled):
    controlled.queue.history["old"] = {"status": {}}
    async with httpx.AsyncClient(base_url=controlled.url) as http:
        assert (await http.post("/_faults", json={"restart": 0})).status_code == 200
        await asyncio.sleep(0.3)
        assert (await http.get("/history")).json() == {}


async def test_every_path_failing_still_lets_the_control_turn_it_off(controlled):
    async with httpx.AsyncClient(base_url=controlled.url) as http:
        await http.post("/_faults", json={"http_500": ["*"]})
        assert (await http.get("/queue")).status_code == 500
        assert (await http.post("/_faults", json={"http_500": []})).status_code == 200
        assert (await http.get("/queue")).status_code == 200


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"no_such": 1}, "unknown switch no_such"),
        ({"view_delay": "slow"}, "view_delay takes seconds"),
        ({"drop_ws_after": -1}, "drop_ws_after takes count or null"),
        ({"http_500": "/view"}, "http_500 takes paths"),
    ],
)
async def test_a_wrong_switch_is_refused_with_the_reason(controlled, body, reason):
    async with httpx.AsyncClient(base_url=controlled.url) as http:
        answer = await http.post("/_faults", json=body)
    assert (answer.status_code, answer.json()) == (400, {"error": reason})
    assert controlled.faults == Faults(
        _refuse=controlled.faults._refuse,
        _restart=controlled.faults._restart,
        _forget=controlled.faults._forget,
    )


async def test_without_the_flag_there_is_no_control(emulator):
    async with httpx.AsyncClient(base_url=emulator.url) as http:
        assert (await http.post("/_faults", json={"view_delay": 5})).status_code == 404
    assert emulator.faults.view_delay == 0.0
