"""`edgeinfer serve --ray`: the same app as a Ray Serve deployment with 2 replicas on a local Ray instance."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

import edgeinfer

httpx = pytest.importorskip("httpx")
pytest.importorskip("ray.serve")
pytest.importorskip("torch")


def test_two_replicas_serve_the_library_answers_and_stop_on_sigterm(lively_bundles):
    from test_serve import _alone, _free_port

    ray_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "edgeinfer", "serve", "--ray", "--replicas", "2", "--threads",
                                "1", "--device", "cpu", "--port", str(port), f"--model=gpt={lively_bundles['contrib']}"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "RAY_TMPDIR": ray_dir})
    try:
        deadline = time.monotonic() + 150
        pids: set[int] = set()
        while time.monotonic() < deadline and len(pids) < 2:
            assert process.poll() is None, process.stdout.read()
            try:
                pids |= {httpx.get(f"{url}/health", timeout=2).json()["pid"] for _ in range(10)}
            except (httpx.TransportError, KeyError, ValueError):
                time.sleep(1)
        assert len(pids) == 2, "two replicas answer"
        model = edgeinfer.load(lively_bundles["contrib"], device="cpu")
        prompts = [[i + 1, i + 2, i + 3] for i in range(8)]

        async def load():
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                body = {"model": "gpt", "max_tokens": 8, "temperature": 0, "ignore_eos": True}
                return await asyncio.gather(*(client.post("/v1/completions", json={**body, "prompt": p})
                                              for p in prompts))

        answers = asyncio.run(load())
        assert [a.json()["choices"][0]["text"] for a in answers] == [model.decode(_alone(model, p, 8)) for p in prompts]
        process.send_signal(signal.SIGTERM)
        assert process.wait(90) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        shutil.rmtree(ray_dir, ignore_errors=True)
