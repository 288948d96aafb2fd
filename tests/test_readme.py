"""The README's Python quick-start runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch


def test_readme_python_blocks_run():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "the README must keep a Python quick-start"
    ns: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), ns)  # noqa: S102 - our own README
    assert ns["out"].shape == (30, 16, 10)
    x = (torch.rand(2, 1, 2, 34, 34) < 0.3).float()
    assert ns["mine"](x).shape == (2, 1, 10)
