"""Strips outputs, execution counts and run-time metadata from notebooks, in place.

    python notebooks/strip_outputs.py               # every notebooks/*.ipynb
    python notebooks/strip_outputs.py a.ipynb ...   # the given ones
    python notebooks/strip_outputs.py --check       # exit 1 naming the notebooks that need stripping

The notebooks are committed without outputs (CI executes them, tests/test_notebooks.py checks).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

import nbformat

# Cell metadata written while running (papermill, nbclient, Colab); tags and the rest are kept.
RUNTIME_CELL_METADATA = ("execution", "papermill", "collapsed", "scrolled", "colab", "outputId")
RUNTIME_NOTEBOOK_METADATA = ("papermill", "widgets", "colab", "accelerator")


def strip(nb: nbformat.NotebookNode) -> bool:
    """Removes outputs and run-time metadata from `nb`; returns whether anything changed."""
    changed = False
    for key in RUNTIME_NOTEBOOK_METADATA:
        changed |= nb.metadata.pop(key, None) is not None
    for cell in nb.cells:
        for key in RUNTIME_CELL_METADATA:
            changed |= cell.metadata.pop(key, None) is not None
        if cell.cell_type != "code":
            continue
        if cell.get("outputs") or cell.get("execution_count") is not None:
            changed = True
        cell.outputs = []
        cell.execution_count = None
    return changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", help="notebooks (default: every *.ipynb next to this script)")
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if any notebook needs stripping")
    args = parser.parse_args(argv)
    paths = args.paths or sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "*.ipynb")))
    dirty = []
    for path in paths:
        nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
        if strip(nb):
            dirty.append(path)
            if not args.check:
                nbformat.write(nb, path)
    verb = "need stripping" if args.check else "stripped"
    print(f"{len(dirty)} of {len(paths)} notebooks {verb}" + "".join(f"\n  {p}" for p in dirty))
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    sys.exit(main())
