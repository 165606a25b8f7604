"""Print the import graph between the project's packages, and each package's line count.

    python scripts/import_graph.py [--depth 2]

An edge ``a -> b (n)`` means n modules under ``a`` import something under ``b``. Modules of
``stream`` are grouped by their first ``depth`` parts (``stream.state.user`` under ``stream.state``);
``simulator`` and ``batch_training`` count as one package each.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("stream", "simulator", "batch_training")


def group(module: str, depth: int) -> str:
    return ".".join(module.split(".")[: depth if module.startswith("stream.") else 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=2, help="depth to group stream's modules by (default 2)")
    depth = parser.parse_args().depth
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False)
    edges: Counter[tuple[str, str]] = Counter()
    for importer in graph.modules:
        for imported in graph.find_modules_directly_imported_by(importer):
            a, b = group(importer, depth), group(imported, depth)
            if a != b:
                edges[a, b] += 1
    print("# imports between packages (n = importing modules)")
    for (a, b), n in sorted(edges.items()):
        print(f"{a} -> {b} ({n})")
    lines: Counter[str] = Counter()
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            lines[group(module, depth)] += len(path.read_text().splitlines())
    print("\n# lines per package")
    for name, n in sorted(lines.items()):
        print(f"{n:6d}  {name}")


if __name__ == "__main__":
    main()
