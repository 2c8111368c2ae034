"""/openapi.json matches the server: schemathesis runs against two live servers (no 5xx, conforming answers)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from admin_helpers import TOKEN, Live, SlowBackend, live_server

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
# Every check but positive_data_acceptance: /execute's body is open-ended (each operation
# has its own parameters), so a body that fits the schema may still be refused with 422.
CHECKS = ["--checks", "all", "--exclude-checks", "positive_data_acceptance"]


async def schemathesis(live: Live, cwd: Path, *selection: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS), "run", f"{live.admin}/openapi.json", "-H", f"Authorization: Bearer {TOKEN}", *CHECKS,
        "--max-examples", "8", "--seed", "5", "--workers", "1", "--generation-database", "none", "--no-color",
        "--request-timeout", "5", *selection,
        cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return await proc.wait(), out.decode(errors="replace")


async def test_schemathesis_finds_no_server_error_or_mismatch(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    assert SCHEMATHESIS.exists(), "schemathesis is a test dependency: pip install -e '.[dev]'"
    extra = ["drain_timeout: 0.5"]
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    # Two servers: requests routed through POST /execute hold their backend slot until completed, which
    # would make drains wait for the whole timeout; so drain is fuzzed on a server of its own.
    async with (
        live_server(tmp_path / "one", monkeypatch, [SlowBackend("a"), SlowBackend("b")], extra) as one,
        live_server(tmp_path / "two", monkeypatch, [SlowBackend("c")], extra) as two,
    ):
        code1, out1 = await schemathesis(one, tmp_path / "one", "--exclude-operation-id", "drainBackend",
                                         "--phases", "examples,coverage,fuzzing,stateful")  # fmt: skip
        code2, out2 = await schemathesis(two, tmp_path / "two", "--phases", "fuzzing,stateful",
                                         "--include-operation-id", "drainBackend",
                                         "--include-operation-id", "addBackend",
                                         "--include-operation-id", "listBackends")  # fmt: skip
    assert code1 == 0, out1
    assert code2 == 0, out2
    for out, operations in ((out1, 12), (out2, 3)):
        assert f"Tested: {operations}" in out and " passed" in out, out
