#!/usr/bin/env python3
"""The shared object exports exactly the functions listed in lib/tlearn.map, the map is
sorted within each version node, and every name in the map is declared TLEARN_API in
tlearn.h (and every TLEARN_API declaration is in the map).

Usage: check_exports.py LIBTLEARN_SO TLEARN_MAP TLEARN_H
Exit status 0 on success; otherwise every difference is listed on stderr."""
import re
import subprocess
import sys


def map_names(path):
    """Names under every `global:` section, in file order, per version node."""
    text = re.sub(r"/\*.*?\*/", "", open(path).read(), flags=re.S)
    nodes = {}
    for node, body in re.findall(r"([A-Za-z0-9_.]+)\s*\{(.*?)\}", text, flags=re.S):
        glob = re.search(r"global:(.*?)(?:local:|$)", body, flags=re.S)
        names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*;", glob.group(1)) if glob else []
        nodes[node] = names
    return nodes


def header_names(path):
    text = re.sub(r"/\*.*?\*/", "", open(path).read(), flags=re.S)
    return set(re.findall(r"TLEARN_API\b[^;(]*?\b(tlearn_[A-Za-z0-9_]+)\s*\(", text))


def exported(so):
    out = subprocess.run(["nm", "-D", "--defined-only", so], check=True,
                         capture_output=True, text=True).stdout
    funcs, others = set(), set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        kind, name = parts[-2], parts[-1].split("@")[0]
        if kind == "A" and re.fullmatch(r"TLEARN_(MPI_)?[0-9.]+", name):
            continue  # the version node itself
        (funcs if kind in "TtWiI" else others).add(name)
    return funcs, others


def main():
    so, mapfile, header = sys.argv[1:4]
    problems = []
    nodes = map_names(mapfile)
    listed = set()
    for node, names in nodes.items():
        if names != sorted(names):
            problems.append(f"{mapfile}: names of node {node} are not sorted")
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            problems.append(f"{mapfile}: listed twice in {node}: {sorted(dup)}")
        listed |= set(names)
    if not listed:
        problems.append(f"{mapfile}: no names found")
    declared = header_names(header)
    funcs, others = exported(so)

    missing = sorted(listed - funcs)
    extra = sorted(funcs - listed)
    if missing:
        problems.append(f"{len(missing)} name(s) in the map are not defined by {so}:\n  "
                        + "\n  ".join(missing))
    if extra:
        problems.append(f"{len(extra)} exported function(s) are not in the map:\n  "
                        + "\n  ".join(extra))
    if others:
        problems.append("exported symbols that are not functions: " + ", ".join(sorted(others)))
    undeclared = sorted(listed - declared)
    if undeclared:
        problems.append("in the map but not declared TLEARN_API in tlearn.h:\n  "
                        + "\n  ".join(undeclared))
    unlisted = sorted(declared - listed)
    if unlisted:
        problems.append("declared TLEARN_API in tlearn.h but not in the map:\n  "
                        + "\n  ".join(unlisted))
    bad_prefix = sorted(n for n in listed if not n.startswith("tlearn_"))
    if bad_prefix:
        problems.append("map names without the tlearn_ prefix: " + ", ".join(bad_prefix))

    print(f"{len(funcs)} exported functions, {len(listed)} in the map, "
          f"{len(declared)} declared in the header")
    if problems:
        for p in problems:
            print("FAIL: " + p, file=sys.stderr)
        return 1
    print("exports match the map and the header")
    return 0


if __name__ == "__main__":
    sys.exit(main())
