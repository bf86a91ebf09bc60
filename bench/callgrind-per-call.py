#!/usr/bin/env python3
"""Inclusive instructions per call of a function, from a callgrind output.

  bench/callgrind-per-call.py cg.out 'pushgate::publish::decode'

Sums every `calls=` record whose callee's name contains the pattern (and
whose caller's does not, so recursion is not counted twice): the call
count and the inclusive Ir on the line after it. Prints calls, Ir and
Ir per call.
"""
import re
import sys

path, pattern = sys.argv[1], sys.argv[2]
names, calls, ir = {}, 0, 0
fn = cfn = ""
pending = None


def name_of(spec):
    m = re.match(r"\((\d+)\)(?:\s+(.*))?", spec)
    if not m:
        return spec
    if m.group(2):
        names[m.group(1)] = m.group(2)
    return names.get(m.group(1), "")


with open(path, errors="replace") as f:
    for line in f:
        line = line.rstrip("\n")
        if pending is not None:
            parts = line.split()
            if len(parts) >= 2 and pending:
                calls += pending
                ir += int(parts[1])
            pending = None
            continue
        if line.startswith("fn="):
            fn = name_of(line[3:])
        elif line.startswith("cfn="):
            cfn = name_of(line[4:])
        elif line.startswith("calls="):
            n = int(line[6:].split()[0])
            pending = n if (pattern in cfn and pattern not in fn) else 0
print(f"calls {calls}  Ir {ir}  Ir/call {ir / calls if calls else float('nan'):.0f}")
