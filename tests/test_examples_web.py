"""The web examples, served as their docstring says (one command) and queried over HTTP."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
from _uvicorn import free_port, serve

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("example", ["web_fastapi.py", "web_litestar.py"])
async def test_the_web_example_serves_people_hooks_and_postcommit_mail(
    server: str, example: str
) -> None:
    port = free_port()
    env = {"HOOKBUS_DSN": server, "PORT": str(port)}
    async with serve([example], port, cwd=EXAMPLES, env=env) as running:
        await running.wait_listening()
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
            added = await client.post("/people", json={"name": "Ann", "age": 40})
            assert added.status_code == 201, added.text
            eid = added.json()["eid"]
            assert (await client.get(f"/people/{eid}")).json() == {"name": "Ann", "age": 40}
            refused = await client.post("/people", json={"name": "Old", "age": 130})
            assert refused.status_code == 422
            assert refused.json()["errors"] == {"age": "age must be between 0 and 120"}
            assert (await client.get("/people/999999")).status_code == 404
            # the mail went for the committed person only, before the 201 was answered
            assert (await client.get("/mails")).json() == [f"welcome Ann (#{eid})"]
        running.terminate()
        assert await running.wait_exit() in (0, -signal.SIGTERM), running.output
