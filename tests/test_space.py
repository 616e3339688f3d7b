"""The repository is a valid Hugging Face Space: front matter matches the pinned Gradio."""

import re
from pathlib import Path

import gradio

ROOT = Path(__file__).resolve().parent.parent


def front_matter() -> dict[str, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert block, "README.md must start with YAML front matter"
    pairs = (line.split(":", 1) for line in block.group(1).splitlines() if ":" in line)
    return {key.strip(): value.strip().strip('"') for key, value in pairs}


def test_space_front_matter_matches_the_pinned_gradio():
    meta = front_matter()
    assert meta["sdk"] == "gradio"
    assert meta["sdk_version"] == gradio.__version__
    assert f"gradio=={meta['sdk_version']}" in (ROOT / "requirements.txt").read_text()
    assert (ROOT / meta["app_file"]).is_file()
    assert meta["python_version"] == "3.11"
