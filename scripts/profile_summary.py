"""Sum the profiles that CVAE_PROFILE wrote (see ui/profiling.py): CPU per kind of run, and the top functions.

python -m scripts.profile_summary /tmp/prof [--top 25]
"""

from __future__ import annotations

import argparse
import pstats
from collections import defaultdict
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(args.folder.glob("*.prof")):
        groups[path.name.rsplit("-", 2)[0]].append(path)
    for what, paths in sorted(groups.items()):
        stats = pstats.Stats(*map(str, paths))
        print(
            f"\n## {what}: {len(paths)} runs, {stats.total_tt:.2f} s in all, {stats.total_tt / len(paths):.3f} s each"
        )
        stats.sort_stats("cumulative").print_stats(args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
