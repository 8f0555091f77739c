"""Every ```python block of README.md runs as written and prints what the README shows.

Each block runs in a fresh interpreter (``sys.executable -c``) from an empty temporary folder,
so it sees the installed softrank, as a reader who copies it would. A block shows its output as
comment lines right after a line that calls ``print(``: each such ``# text`` line is one line of
the expected output (compared with runs of whitespace collapsed). Comments elsewhere, including
a comment at the end of a print line, are explanations and are not compared. A block whose
first line is ``# requires: cuda`` is skipped when no CUDA GPU is present.
"""
import os
import re
import subprocess
import sys
import textwrap

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
CUDA_MARKER = "# requires: cuda"
TIMEOUT_S = 300


def python_blocks(text):
    """[(line number of the opening fence, code)] for every ```python block."""
    blocks, code, start = [], None, None
    for number, line in enumerate(text.splitlines(), 1):
        if code is None:
            if line.strip() == "```python":
                code, start = [], number
        elif line.strip() == "```":
            blocks.append((start, textwrap.dedent("\n".join(code)) + "\n"))
            code = None
        else:
            code.append(line)
    assert code is None, f"README.md: the ```python block opened at line {start} is not closed"
    return blocks


def expected_output(code):
    """The output lines a block shows: the comment lines that follow a print( line."""
    expected, after_print = [], False
    for line in code.splitlines():
        stripped = line.strip()
        if after_print and stripped.startswith("#"):
            expected.append(stripped[1:].strip())
            continue
        after_print = "print(" in stripped and not stripped.startswith("#")
    return expected


def normalized(lines):
    return [" ".join(line.split()) for line in lines if line.strip()]


def cuda_available():
    code = ("import sys\ntry:\n    import cupy\n    n = cupy.cuda.runtime.getDeviceCount()\n"
            "except Exception:\n    n = 0\nsys.exit(0 if n > 0 else 1)")
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


with open(README, encoding="utf-8") as f:
    BLOCKS = python_blocks(f.read())


def test_readme_has_its_examples():
    assert len(BLOCKS) >= 4, f"README.md has {len(BLOCKS)} python blocks"
    for line, code in BLOCKS:
        if "print(" in code:
            assert expected_output(code), f"README.md line {line}: prints but shows no output"


def test_expected_output_parsing():
    code = 'x = 1  # a note\nprint(x)  # a note too\n# 1\n# 2\n\n# a comment\nprint(3)\n'
    assert expected_output(code) == ["1", "2"]


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_readme_block_runs_and_prints_what_it_shows(line, code, tmp_path):
    if code.lstrip().startswith(CUDA_MARKER) and not cuda_available():
        pytest.skip("the block needs a CUDA GPU")
    env = dict(os.environ, PYTHONHASHSEED="0")
    try:
        result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"README.md line {line}: the block ran past {TIMEOUT_S} s:\n{code}")
    where = f"README.md, the python block at line {line}:\n{code}"
    if result.returncode != 0:
        pytest.fail(f"{where}\nexited with {result.returncode}; stderr:\n{result.stderr}")
    shown = normalized(expected_output(code))
    printed = normalized(result.stdout.splitlines())
    if printed != shown:
        pytest.fail(f"{where}\nprints:\n" + "\n".join(printed)
                    + "\nbut the README shows:\n" + "\n".join(shown))
