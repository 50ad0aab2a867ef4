"""One measured run in a fresh process (so its peak RSS is its own).

``python -m benchmarks.child toc TOC.json OUT.cfs`` and
``python -m benchmarks.child layer BLOB STORE OUT.cfs`` print
``{"seconds": ...}``: the time of the work itself, without interpreter
start-up and imports (for ``toc`` also ``parse_s`` and ``write_s``, its
two stages).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from composefs_py import ObjectStore, open_layer, parse_toc, write_image


def main(argv: list[str]) -> int:
    kind, *args = argv
    stages: dict[str, float] = {}
    if kind == "toc":
        toc_path, out = args
        start = time.perf_counter()
        # The JSON bytes go once parsed, as a caller that only wants the image drops them.
        tree = parse_toc(Path(toc_path).read_bytes())
        stages["parse_s"] = time.perf_counter() - start
        write_image(tree, out, backend="native")
        stages["write_s"] = time.perf_counter() - start - stages["parse_s"]
    elif kind == "layer":
        blob, store, out = args
        start = time.perf_counter()
        tree = open_layer(blob).import_objects(ObjectStore(store))
        write_image(tree, out, backend="native")
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    print(json.dumps({"seconds": time.perf_counter() - start, **stages}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
