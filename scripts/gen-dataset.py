#!/usr/bin/env python3
"""Generates a reproducible data set for the backup benchmark, or changes
about 1 % of one in place.

usage: gen-dataset.py create DIR SIZE_MIB [SEED]
       gen-dataset.py change DIR [PERCENT] [SEED]

The set mixes what real backups hold: many small files (configs, sources),
medium files, and a few large ones (archives, database dumps); about half of
the bytes are incompressible (random) and half compressible (text made from
a small vocabulary), with some duplicated files and empty directories.
"""
import os
import random
import sys

WORDS = [w.encode() for w in (
    "atlas rollout canary stable weight probe metric backup restore snapshot "
    "chunk pack index manifest prune retention schedule region failover alert "
    "service replica endpoint traffic split analysis judge lease state store"
).split()]


def text_bytes(rng, n):
    out = bytearray()
    while len(out) < n:
        line = b" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14)))
        out += line + b"\n"
    return bytes(out[:n])


def content(rng, n):
    return rng.randbytes(n) if rng.random() < 0.5 else text_bytes(rng, n)


def pick_size(rng):
    r = rng.random()
    if r < 0.80:
        return rng.randint(0, 16 * 1024)  # small
    if r < 0.98:
        return rng.randint(16 * 1024, 4 * 1024 * 1024)  # medium
    return rng.randint(16 * 1024 * 1024, 64 * 1024 * 1024)  # large


def create(root, size_mib, seed):
    rng = random.Random(seed)
    budget = size_mib * 1024 * 1024
    written = 0
    n = 0
    previous = []
    while written < budget:
        d = os.path.join(root, f"d{rng.randint(0, 40):02}", f"s{rng.randint(0, 8)}")
        os.makedirs(d, exist_ok=True)
        size = min(pick_size(rng), budget - written)
        path = os.path.join(d, f"f{n:06}.bin")
        if previous and rng.random() < 0.02:
            # A duplicate of an earlier file: dedup should store it once.
            with open(rng.choice(previous), "rb") as src:
                data = src.read()
        else:
            data = content(rng, size)
        with open(path, "wb") as f:
            f.write(data)
        previous.append(path)
        written += len(data)
        n += 1
    for i in range(10):
        os.makedirs(os.path.join(root, "empty", f"e{i}"), exist_ok=True)
    os.symlink("d00", os.path.join(root, "link-to-d00"))
    print(f"{n} files, {written / 1024 / 1024:.0f} MiB in {root}")


def change(root, percent, seed):
    rng = random.Random(seed)
    files = sorted(
        os.path.join(dp, f) for dp, _, fs in os.walk(root) for f in fs
        if not os.path.islink(os.path.join(dp, f)))
    total = sum(os.path.getsize(f) for f in files)
    target = total * percent / 100
    changed = 0
    # Half of the change as edits inside existing files, half as new files.
    while changed < target / 2:
        f = rng.choice(files)
        size = os.path.getsize(f)
        if size == 0:
            continue
        n = min(size, rng.randint(1024, 256 * 1024))
        at = rng.randint(0, size - n)
        with open(f, "r+b") as fh:
            fh.seek(at)
            fh.write(rng.randbytes(n))
        changed += n
    i = 0
    while changed < target:
        d = os.path.join(root, "new")
        os.makedirs(d, exist_ok=True)
        n = rng.randint(4096, 2 * 1024 * 1024)
        with open(os.path.join(d, f"n{seed}-{i:05}.bin"), "wb") as fh:
            fh.write(content(rng, n))
        changed += n
        i += 1
    print(f"changed {changed / 1024 / 1024:.1f} MiB of {total / 1024 / 1024:.0f} MiB")


def main(argv):
    if len(argv) >= 3 and argv[0] == "create":
        create(argv[1], int(argv[2]), int(argv[3]) if len(argv) > 3 else 1)
    elif len(argv) >= 2 and argv[0] == "change":
        change(argv[1], float(argv[2]) if len(argv) > 2 else 1.0,
               int(argv[3]) if len(argv) > 3 else 2)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
