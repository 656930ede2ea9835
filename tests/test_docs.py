"""The README's speed and accuracy claims link to sections of the results files that exist."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(((?:benchmarks|docs)/results\.md)?#([\w-]+)\)")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    return {github_anchor(line.lstrip("#")) for line in markdown.read_text().splitlines() if line.startswith("#")}


def test_github_anchor_matches_githubs_rule():
    assert github_anchor(" Throughput: 2 CPU cores, no GPU (2026-12-01 18:18 UTC)") == (
        "throughput-2-cpu-cores-no-gpu-2026-12-01-1818-utc"
    )
    assert github_anchor("GPU: no figures yet") == "gpu-no-figures-yet"


@pytest.mark.parametrize("document", ["README.md", "benchmarks/results.md", "docs/results.md"])
def test_every_link_to_a_results_section_resolves(document):
    text = (REPO / document).read_text()
    links = LINK.findall(text)
    if document == "README.md":
        assert len(links) >= 5  # the speed-and-results bullets each point to their figures
    for target, anchor in links:
        markdown = REPO / target if target else REPO / document
        assert anchor in anchors(markdown), f"{document}: link to {target or document}#{anchor} has no such section"
