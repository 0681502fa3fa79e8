"""The README's option table is the one the configuration dataclasses generate."""

from __future__ import annotations

import re
from pathlib import Path

from smtpfront.config import keys, options_markdown

README = Path(__file__).parent.parent / "README.md"


def test_readme_lists_every_configuration_key_as_generated() -> None:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- options:begin -->\n(.*?)<!-- options:end -->", text, re.DOTALL)
    assert match, "the README lost its options markers"
    assert match.group(1) == options_markdown(), (
        "README option table is stale: regenerate it with smtpfront.config.options_markdown()"
    )
    for key in keys():
        assert f"| `{key}` |" in match.group(1)
