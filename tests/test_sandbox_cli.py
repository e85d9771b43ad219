"""``python -m narrative_pandas.sandbox``: prints its settings, serves, stops cleanly on signals."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from narrative_pandas.sandbox import DEFAULT_DATA_PLANE_ID, Sandbox, SandboxConfig
from narrative_pandas.sandbox.__main__ import _parser, knobs_from_args, main
from narrative_pandas.sandbox._knobs import parse_latency

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


class Running:
    """A sandbox CLI subprocess and the lines it printed."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "narrative_pandas.sandbox", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.printed: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self._env: dict[str, str] | None = None

    @property
    def env(self) -> dict[str, str]:
        """The NARRATIVE_* variables of the export lines (waits until they are printed)."""
        if self._env is None:
            self._env = {}
            while "Press Ctrl-C" not in (line := self.next_line()):
                match = re.fullmatch(r"export (NARRATIVE_\w+)=(\S+)", line)
                if match:
                    self._env[match.group(1)] = match.group(2)
        return self._env

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("")

    def next_line(self, timeout: float = 30) -> str:
        line = self.lines.get(timeout=timeout)
        if line == "" and self.proc.poll() is not None:
            stderr = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"the sandbox exited: {stderr}")
        self.printed.append(line)
        return line

    def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=20)
        finally:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TestCommandLine:
    def test_subprocess_prints_settings_serves_and_stops_on_sigint(self) -> None:
        """The printed URL, key and plane answer a request; Ctrl-C (SIGINT) exits with 0."""
        cli = Running("--latency", "0.01", "--seed", "3")
        try:
            env = cli.env
            assert set(env) == {
                "NARRATIVE_BASE_URL",
                "NARRATIVE_API_KEY",
                "NARRATIVE_DATA_PLANE_ID",
            }
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", env["NARRATIVE_BASE_URL"])
            assert not env["NARRATIVE_BASE_URL"].endswith(":0")
            assert env["NARRATIVE_API_KEY"].startswith("sk-sandbox-")
            assert env["NARRATIVE_DATA_PLANE_ID"] == DEFAULT_DATA_PLANE_ID
            assert any(env["NARRATIVE_BASE_URL"] in line for line in cli.printed[:2])
            response = httpx.get(
                env["NARRATIVE_BASE_URL"] + "/jobs",
                headers={"Authorization": f"Bearer {env['NARRATIVE_API_KEY']}"},
            )
            assert response.status_code == 200
            assert response.json()["total_records"] == 0
            assert cli.stop(signal.SIGINT) == 0
        finally:
            cli.kill()

    def test_sigterm_stops_main_with_0_and_api_key_is_used(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """In-process: --api-key sets the accepted key, and SIGTERM makes main() return 0."""
        port = free_port()
        url = f"http://127.0.0.1:{port}/jobs"
        seen: dict[str, int] = {}

        def probe_then_terminate() -> None:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    seen["wrong"] = httpx.get(
                        url, headers={"Authorization": "Bearer x"}
                    ).status_code
                    ok = httpx.get(url, headers={"Authorization": "Bearer sk-sandbox-fixed"})
                    seen["right"] = ok.status_code
                    break
                except httpx.TransportError:
                    time.sleep(0.02)
            os.kill(os.getpid(), signal.SIGTERM)

        handler = signal.getsignal(signal.SIGTERM)
        helper = threading.Thread(target=probe_then_terminate)
        helper.start()
        code = main(["--port", str(port), "--api-key", "sk-sandbox-fixed"])
        helper.join()
        assert code == 0
        assert seen == {"wrong": 401, "right": 200}
        assert signal.getsignal(signal.SIGTERM) is handler
        out = capsys.readouterr().out
        assert f"export NARRATIVE_BASE_URL=http://127.0.0.1:{port}" in out
        assert "export NARRATIVE_API_KEY=sk-sandbox-fixed" in out

    def test_bad_options_exit_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Invalid options are refused with exit code 2 before anything listens."""
        with pytest.raises(SystemExit) as exc:
            main(["--latency", "soon"])
        assert exc.value.code == 2
        assert main(["--failure-rate", "2", "--port", "0"]) == 2
        assert "failure_rate" in capsys.readouterr().err


class TestKnobFlags:
    FLAGS = (
        "--latency 0.5-2 --queue-latency 0.1 --response-delay 0.01 --failure-rate 0.1 "
        "--cancel-rate 0.2 --error-rate 0.05 --post-500-after-create-rate 0.01 "
        "--post-garbage-after-create-rate 0.02 --rate-limit-rps 50 --max-unfinished-jobs 64 "
        "--ttl 600 --executor-skew -2 --executor-skew-fraction 0.25 --replication-lag 1.5 "
        "--foreign-jobs 20 --foreign-update-interval none --foreign-null-updated-at 1 "
        "--listing-orders created_at_desc,created_at_asc --listing-ignores-order "
        "--total-records-mode page_end --listing-drip 100 --seed 7"
    )

    def test_every_flag_sets_its_knob(self) -> None:
        """Each --knob-name flag lands in the SandboxConfig field of the same name."""
        knobs = knobs_from_args(_parser().parse_args(self.FLAGS.split()))
        config = Sandbox(**knobs).config
        assert config.run_latency == (0.5, 2.0)
        assert (config.queue_latency, config.response_delay) == (0.1, 0.01)
        assert (config.failure_rate, config.cancel_rate, config.error_rate) == (0.1, 0.2, 0.05)
        assert config.post_500_after_create_rate == 0.01
        assert config.post_garbage_after_create_rate == 0.02
        assert (config.rate_limit_rps, config.max_unfinished_jobs, config.ttl) == (50, 64, 600)
        assert (config.executor_skew, config.executor_skew_fraction) == (-2.0, 0.25)
        assert config.replication_lag == 1.5
        assert (config.foreign_jobs, config.foreign_update_interval) == (20, None)
        assert config.foreign_null_updated_at == 1
        assert config.listing_orders == ("created_at_desc", "created_at_asc")
        assert config.listing_ignores_order is True
        assert (config.total_records_mode, config.listing_drip, config.seed) == ("page_end", 100, 7)

    def test_flags_left_out_keep_the_defaults(self) -> None:
        """No flags: no knobs, so the defaults (foreign updates every second, all orders)."""
        assert knobs_from_args(_parser().parse_args([])) == {}
        assert SandboxConfig().foreign_update_interval == 1.0

    def test_help_lists_every_knob_flag(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--help names a flag for every knob a command line can set."""
        with pytest.raises(SystemExit) as exc:
            main(["--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        for flag in (f for f in self.FLAGS.split() if f.startswith("--")):
            assert flag in out

    def test_served_with_deployment_faults(self) -> None:
        """The subprocess serves the knobs: foreign jobs, an older API's orders, no totals."""
        cli = Running(
            "--foreign-jobs", "5", "--listing-orders", "created_at_desc,created_at_asc",
            "--total-records-mode", "missing",
        )  # fmt: skip
        try:
            env = cli.env
            headers = {"Authorization": f"Bearer {env['NARRATIVE_API_KEY']}"}
            url = env["NARRATIVE_BASE_URL"] + "/jobs"
            page = httpx.get(url, headers=headers).json()
            assert set(page) == {"records"} and len(page["records"]) == 5
            refused = httpx.get(url, headers=headers, params={"order_by": "updated_at_desc"})
            assert refused.status_code == 400
            assert "created_at_desc, created_at_asc" in refused.json()["detail"]
            assert cli.stop(signal.SIGTERM) == 0
        finally:
            cli.kill()

    def test_invalid_knob_values_exit_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A knob the sandbox refuses is reported with its name and exit code 2."""
        assert main(["--total-records-mode", "sometimes", "--port", "0"]) == 2
        assert "total_records_mode" in capsys.readouterr().err
        with pytest.raises(SystemExit) as exc:
            main(["--foreign-jobs", "many"])
        assert exc.value.code == 2


class TestParseLatency:
    @pytest.mark.parametrize(
        ("text", "latency"),
        [("1", 1.0), ("0.25", 0.25), ("0.5-2", (0.5, 2.0)), (" 1-1 ", (1.0, 1.0))],
    )
    def test_forms(self, text: str, latency: float | tuple[float, float]) -> None:
        """A fixed value or a low-high range."""
        assert parse_latency(text) == latency

    @pytest.mark.parametrize("text", ["-1", "2-1", "x", "1-x"])
    def test_invalid(self, text: str) -> None:
        """Negative values, reversed ranges and words are refused."""
        with pytest.raises(ValueError):
            parse_latency(text)
