"""The README's first command: ``omnixan-lb demo``, end to end, as a user runs it (about 7 s)."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def test_the_demo_answers_every_request_while_a_backend_dies_and_draws_the_chart(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "omnixan-lb"
    chart = tmp_path / "demo.svg"
    done = subprocess.run(
        [str(exe), "demo", "--output", str(chart)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    summary = re.search(r"^(\d+) requests answered, (\d+) failed; proxy retries: (\d+)$", done.stdout, re.M)
    assert summary is not None, done.stdout
    answered, failed, _ = map(int, summary.groups())
    assert answered > 500 and failed == 0
    fast = re.search(r"^  fast\s+\S+\s+(\w+)", done.stdout, re.M)
    assert fast is not None and fast.group(1) == "unhealthy"  # the stopped backend was found out
    bars = [e for e in ET.parse(chart).getroot().iter("{http://www.w3.org/2000/svg}rect") if e.get("class") == "bar"]
    assert len(bars) == 4  # one per backend
