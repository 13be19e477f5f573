"""``EmulatorConfig.tls`` / ``--tls``: HTTPS with a CA made at start-up, trusted by its file."""

from __future__ import annotations

import io
import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import anyio
import pytest
from PIL import Image

from runflow_async.emulator import Emulator
from tests.emulator.emulator_support import AUTH, EDIT, FAST

ROOT = Path(__file__).resolve().parents[2]


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), (10, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def _trusting(ca_file: str | None) -> aiohttp.ClientSession:
    assert ca_file is not None
    context = ssl.create_default_context(cafile=ca_file)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))


async def test_tls_serves_https_to_a_client_that_trusts_the_ca_file() -> None:
    async with Emulator(tls=True, **FAST) as emu, _trusting(emu.ca_file) as http:
        assert emu.url.startswith("https://127.0.0.1:")
        assert emu.base_url == emu.url
        assert emu.scheme == "https"
        assert emu.ca_file is not None
        assert (await anyio.Path(emu.ca_file).read_text()).startswith("-----BEGIN CERTIFICATE-----")
        async with http.get(f"{emu.url}/v1/health") as resp:
            assert resp.status == 200
            assert await resp.json() == {"ok": True, "status": "ok"}


async def test_a_client_that_does_not_trust_the_ca_is_refused() -> None:
    async with Emulator(tls=True, **FAST) as emu:
        async with aiohttp.ClientSession() as http:  # the system's trust store only
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await http.get(f"{emu.url}/v1/health")
        # Another CA's file is no better than none.
        async with Emulator(tls=True, **FAST) as other, _trusting(other.ca_file) as http:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await http.get(f"{emu.url}/v1/health")


async def test_the_certificate_names_localhost_too() -> None:
    async with (
        Emulator(tls=True, **FAST) as emu,
        _trusting(emu.ca_file) as http,
        http.get(f"https://localhost:{emu.port}/v1/health") as resp,
    ):
        assert resp.status == 200


async def test_upload_urls_asset_urls_and_output_urls_are_https() -> None:
    data = _png()
    async with Emulator(tls=True, **FAST) as emu, _trusting(emu.ca_file) as http:
        url = emu.url
        session = {"filename": "a.png", "mime_type": "image/png", "size_bytes": len(data)}
        async with http.post(f"{url}/v1/asset-uploads", json=session, headers=AUTH) as resp:
            assert resp.status == 201
            upload = await resp.json()
        assert upload["upload_url"].startswith(f"{url}/uploads/")
        headers = {"Content-Type": "image/png"}
        async with http.put(upload["upload_url"], data=io.BytesIO(data), headers=headers) as resp:
            assert resp.status == 200
        confirm = f"{url}/v1/asset-uploads/{upload['asset_id']}/confirmations"
        async with http.post(confirm, json={}, headers=AUTH) as resp:
            assert resp.status == 201
            asset = await resp.json()
        assert asset["url"].startswith(f"{url}/assets/")
        async with http.get(asset["url"]) as resp:
            assert await resp.read() == data
        body = {"input": {"prompt": "edit it", "image_urls": [asset["url"]]}}
        async with http.post(f"{url}/v1/models/{EDIT}/runs", json=body, headers=AUTH) as resp:
            assert resp.status == 201
            run = await resp.json()
        for _ in range(1000):
            async with http.get(f"{url}/v1/runs/{run['id']}", headers=AUTH) as resp:
                run = await resp.json()
            if run["status_code"] == "succeeded":
                break
            await anyio.sleep(0.001)
        output = run["output"]["outputs"][0]["url"]
        assert output.startswith(f"{url}/files/")
        async with http.get(output) as resp:
            assert resp.status == 200
            assert resp.content_type == "image/png"
        assert [r["id"] for r in emu.runs()] == [run["id"]]
        assert emu.runs()[0]["output"]["outputs"][0]["url"].startswith("https://")


async def test_the_ca_file_is_removed_when_the_emulator_closes() -> None:
    async with Emulator(tls=True, **FAST) as emu:
        ca_file = emu.ca_file
        assert ca_file is not None
        assert await anyio.Path(ca_file).is_file()
        context = emu.client_ssl_context()
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode == ssl.CERT_REQUIRED
    assert not await anyio.Path(ca_file).exists()
    assert not await anyio.Path(ca_file).parent.exists()


async def test_without_tls_there_is_no_ca_and_urls_are_http() -> None:
    async with Emulator(**FAST) as emu:
        assert emu.url.startswith("http://")
        assert emu.ca_file is None
        assert emu.client_ssl_context() is None


def test_the_ca_file_is_known_only_once_started() -> None:
    with pytest.raises(RuntimeError, match="not been started"):
        _ = Emulator(tls=True).ca_file


async def test_the_tls_flag_prints_the_ca_file_and_serves_https() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "runflow_async", "emulator", "--port", "0", "--tls"]
    # A real process is the point (started once, not awaited); the arguments are our own.
    with subprocess.Popen(  # noqa: ASYNC220, S603
        command, stdout=subprocess.PIPE, env=env, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            banner = await anyio.to_thread.run_sync(proc.stdout.readline)
            ca_line = await anyio.to_thread.run_sync(proc.stdout.readline)
            url = banner.split()[3]
            assert url.startswith("https://127.0.0.1:")
            assert ca_line.startswith("TLS CA certificate")
            ca_file = ca_line.rsplit(" ", 1)[1].strip()
            async with _trusting(ca_file) as http, http.get(f"{url}/v1/health") as resp:
                assert resp.status == 200
        finally:
            proc.send_signal(signal.SIGINT)
            await anyio.to_thread.run_sync(proc.wait, 10)
    assert proc.returncode == 0
    assert not await anyio.Path(ca_file).exists()
