"""Prints the commands of README.md's first fenced bash block, one per line (continuations joined), exactly as
written: the two commands a new user runs first. CI runs what this prints, so a README edit is what CI tests.

    python3 .ci/readme_commands.py README.md     # -> command 1 and command 2
"""

import re
import sys


def fenced_blocks(text: str, language: str = "bash"):
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def commands(block: str):
    out, current = [], ""
    for line in block.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        current += stripped[:-1].rstrip() + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            out.append(current)
            current = ""
    return out


if __name__ == "__main__":
    found = commands(fenced_blocks(open(sys.argv[1], encoding="utf-8").read())[0])
    if len(found) != 2:
        sys.exit(f"README.md's first bash block should hold exactly two commands, found {len(found)}: {found}")
    print("\n".join(found))
