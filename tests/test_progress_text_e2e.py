"""A script whose stderr is a file (a CI log, a redirect) gets plain progress lines.

The script runs ``infer`` on the sandbox in a subprocess, with ``stderr`` pointing at a real file:
not a terminal, so the text display writes plain lines (no ``\\r``, no ANSI), one at the start,
one every ``NARRATIVE_PANDAS_PROGRESS_EVERY`` seconds and the summary at the end.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import sys
import pandas as pd
import narrative_pandas as npd

rows, progress = int(sys.argv[1]), sys.argv[2] == "on"
npd.use_sandbox(run_latency=1.0, queue_latency=0)
df = pd.DataFrame({"review": [f"review {i}" for i in range(rows)]})
schema = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}
kwargs = {} if progress else {"progress": False}
out = df.narrative.infer("Review: {review}", output=schema, concurrency=4, **kwargs)
print(len(out), int(out["narrative_error"].isna().sum()))
"""

LIVE = re.compile(r"^narrative  (\d+)/(\d+) (\d+)% · pending \d+ · running \d+ · failed \d+ ")
FINAL = re.compile(r"^narrative  (\d+)/(\d+) done in \S+ · (\d+) completed · (\d+) failed · ")


def run_script(tmp_path: Path, rows: int, progress: str, every: str) -> tuple[str, str]:
    """Run SCRIPT with stderr to a file; return (stdout, the file's text)."""
    script = tmp_path / "label.py"
    script.write_text(SCRIPT, encoding="utf-8")
    log = tmp_path / "stderr.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NARRATIVE_")}
    env["NARRATIVE_PANDAS_PROGRESS_EVERY"] = every
    with log.open("w", encoding="utf-8") as stderr:
        done = subprocess.run(
            [sys.executable, str(script), str(rows), progress],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            timeout=240,
            check=True,
        )
    return done.stdout, log.read_text(encoding="utf-8")


@pytest.mark.slow
class TestStderrToAFile:
    """About ten seconds of work (40 one-second jobs, 4 at a time) with stderr to a file."""

    def test_plain_lines_then_the_counts(self, tmp_path: Path) -> None:
        """Several progress lines that move forward, no \\r or ANSI, and a final counts line."""
        stdout, log = run_script(tmp_path, 40, "on", every="3")
        assert stdout.split() == ["40", "40"]
        assert "\r" not in log and "\x1b" not in log
        lines = log.splitlines()
        live = [m for m in map(LIVE.match, lines) if m]
        assert len(live) >= 3  # the start line and at least two more, 3 s apart
        done = [int(m.group(1)) for m in live]
        assert done == sorted(done) and done[0] == 0 and done[-1] < 40
        assert {m.group(2) for m in live} == {"40"}
        final = FINAL.match(lines[-1])
        assert final is not None, lines[-1]
        assert final.groups() == ("40", "40", "40", "0")

    def test_progress_false_is_silent(self, tmp_path: Path) -> None:
        """progress=False writes no progress line at all."""
        stdout, log = run_script(tmp_path, 4, "off", every="3")
        assert stdout.split() == ["4", "4"]
        assert not [line for line in log.splitlines() if line.startswith("narrative  ")]
