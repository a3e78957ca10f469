#!/usr/bin/env python3
"""Inclusive and self instruction counts per function from an uncompressed
callgrind dump (valgrind --compress-strings=no --compress-pos=no, as
benches/callgrind.sh runs it). callgrind_annotate gives the thread entry
frames of a callgrind_control dump the whole total; this sums the dump's own
cost lines (self) and calls= lines (callees) per function instead.

  benches/cg-functions.py DUMP [REGEX] [N] [self]
    DUMP may be gzipped; REGEX filters function names; N rows (40);
    'self' also prints the top N by self cost.
"""
import collections
import gzip
import re
import sys

path = sys.argv[1]
opener = gzip.open if path.endswith(".gz") else open
self_c, callee_c, ncalls = collections.Counter(), collections.Counter(), collections.Counter()
fn = cfn = None
pending = None
with opener(path, "rt") as f:
    for line in f:
        line = line.rstrip("\n")
        if line.startswith("fn="):
            fn = line[3:]
        elif line.startswith("cfn="):
            cfn = line[4:]
        elif line.startswith("calls="):
            pending = (cfn, int(line[6:].split()[0]))
        elif line and (line[0].isdigit() or line[0] in "+-*"):
            parts = line.split()
            if len(parts) < 2:
                continue
            cost = int(parts[1])
            if pending:
                callee_c[fn] += cost
                ncalls[pending[0]] += pending[1]
                pending = None
            else:
                self_c[fn] += cost
total = sum(self_c.values())
pat = re.compile(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] else None
n = int(sys.argv[3]) if len(sys.argv) > 3 else 40
rows = sorted(
    ((self_c[f] + callee_c[f], self_c[f], ncalls[f], f) for f in set(self_c) | set(callee_c) if not pat or pat.search(f)),
    reverse=True,
)
print(f"total {total:,} instructions")
for inc, s, calls, f in rows[:n]:
    print(f"{inc:>13,} incl {s:>12,} self {calls:>8} calls  {f[:150]}")
if len(sys.argv) > 4 and sys.argv[4] == "self":
    print("-- by self")
    for s, f in sorted(((self_c[f], f) for f in self_c), reverse=True)[:n]:
        print(f"{s:>13,} self ({100 * s / total:4.1f}%)  {f[:150]}")
