#!/usr/bin/env python3
"""Turns a folder of mapping packs into a values file for the kiungo chart.

    python3 helm/mappings-values.py mappings/packs > packs.json
    helm install kiungo helm/kiungo -f my-values.yaml -f packs.json

Every regular file under the folder (mappings, lookup tables, the test
fixtures the mappings name) becomes one entry of `mappings`, keyed by its
path relative to the folder. Hidden files and folders are skipped. The
output is JSON, which Helm reads as YAML.
"""

import json
import os
import sys


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    root = sys.argv[1]
    if not os.path.isdir(root):
        print(f"{root}: not a folder", file=sys.stderr)
        return 2
    files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            with open(path, encoding="utf-8") as f:
                files[rel] = f.read()
    if not files:
        print(f"{root}: no files", file=sys.stderr)
        return 1
    size = sum(len(v.encode("utf-8")) for v in files.values())
    print(f"{len(files)} files, {size} bytes", file=sys.stderr)
    json.dump({"mappings": files}, sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
