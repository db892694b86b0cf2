"""The README's "Verify your own loss" example runs as shown (its asserts are the test)."""
import os
import re

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")


def test_readme_verify_snippet_runs():
    text = open(README, encoding="utf-8").read()
    section = text.split("## Verify your own loss", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "check_preference_loss" in code and "buggy_dpo" in code
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
