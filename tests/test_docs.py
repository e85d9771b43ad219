"""The documentation matches the repository: links resolve and the first example runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(path: Path) -> list[str]:
    """The relative link targets of a Markdown file (no URLs, no in-page anchors)."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    return [
        target
        for target in LINK.findall(text)
        if not re.match(r"[a-z]+:", target) and not target.startswith("#")
    ]


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    slugs = set()
    for heading in re.findall(r"^#+\s+(.*)$", text, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        slugs.add(slug)
    return slugs


class TestLinks:
    """Every relative link in README.md and docs/*.md points at something that exists."""

    @pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
    def test_relative_links_resolve(self, path: Path) -> None:
        """Each linked file exists relative to the linking file."""
        missing = [
            target
            for target in relative_links(path)
            if not (path.parent / target.split("#", 1)[0]).exists()
        ]
        assert missing == []

    @pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
    def test_in_page_anchors_resolve(self, path: Path) -> None:
        """Each ``(#anchor)`` link names a heading of the same file."""
        text = path.read_text(encoding="utf-8")
        wanted = set(re.findall(r"\]\(#([^)]+)\)", text))
        assert wanted - anchors(path) == set()

    def test_the_docs_folder_is_for_users_and_contributors(self) -> None:
        """No working notes in docs/: nothing naming this machine's paths."""
        for path in DOCS:
            assert "/work/" not in path.read_text(encoding="utf-8"), path

    def test_the_api_contract_is_kept_in_the_repository(self) -> None:
        """docs/narrative-api.md exists and DESIGN.md links to it."""
        assert (ROOT / "docs" / "narrative-api.md").is_file()
        assert "narrative-api.md" in relative_links(ROOT / "docs" / "DESIGN.md")


class TestReadmeExample:
    """The README's first example runs as written, pasted into a fresh interpreter."""

    def test_first_python_block_runs(self, tmp_path: Path) -> None:
        """It builds its own frame, uses the sandbox, and gives one labelled row per review."""
        readme = (ROOT / "README.md").read_text(encoding="utf-8")
        code = re.search(r"```python\n(.*?)```", readme, flags=re.DOTALL)
        assert code is not None
        lines = code.group(1).rstrip().splitlines()
        lines[-1] = f"print({lines[-1]}.to_json())"  # a notebook would display the last line
        script = tmp_path / "example.py"
        script.write_text("\n".join(lines), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("NARRATIVE_")}
        done = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert '"narrative_error":{"0":null,"1":null,"2":null}' in done.stdout
        assert '"label":{"0":' in done.stdout
