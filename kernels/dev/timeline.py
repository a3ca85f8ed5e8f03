#!/usr/bin/env python3
"""timeline.py: each launch's share of a decode step's critical path, from
timeline.c's CSV. The decode steps are the kernels of the two graphs with the
most launches (qbench bench: adapter on, then off); a step starts at `embed`.
For each launch of a layer (by its position in the layer), over the steps
after the first five: dEnd, its end minus the previous launch's end (what it
adds to the step), its own duration, and its start minus the previous end
(negative: launched early, programmatic dependent launch)."""
import collections
import csv
import sys


def main(path):
    graphs = collections.defaultdict(list)
    for r in csv.reader(open(path)):
        graphs[int(r[2])].append((int(r[0]), int(r[1]), r[7]))
    for gid in sorted(graphs, key=lambda g: -len(graphs[g]))[:2]:
        if gid == 0:
            continue  # launches outside graphs: prefill passes
        steps, cur = [], []
        for k in sorted(graphs[gid]):
            if k[2] == "embed" and cur:
                steps.append(cur)
                cur = []
            cur.append(k)
        steps = [s for s in steps[5:] if len(s) == len(steps[0])]
        if not steps:
            continue
        n = len(steps[0])
        names = [k[2] for k in steps[0]]
        per = next(p for p in range(1, n) if all(names[i] == names[i + p] for i in range(1, n // 2)))  # launches a layer
        layers = 1
        while 1 + (layers + 1) * per <= n and names[1 + layers * per:1 + (layers + 1) * per] == names[1:1 + per]:
            layers += 1
        print("graph %d: %d steps of %d launches, %d a layer; step %.1f µs (first kernel's start to last's end)"
              % (gid, len(steps), n, per, sum(s[-1][1] - s[0][0] for s in steps) / len(steps) / 1e3))
        acc = collections.OrderedDict()
        for s in steps:
            for i in range(1, n):
                role = "%d:%s" % ((i - 1) % per, s[i][2]) if i <= layers * per else s[i][2]  # the layers, then the tail
                a = acc.setdefault(role, [0, 0, 0, 0])
                a[0] += 1
                a[1] += s[i][1] - s[i - 1][1]
                a[2] += s[i][1] - s[i][0]
                a[3] += s[i][0] - s[i - 1][1]
        print("  %-28s %7s %9s %9s %9s %10s" % ("launch", "a step", "dEnd µs", "dur µs", "start µs", "µs a step"))
        for role, a in acc.items():
            c = a[0] / len(steps)
            print("  %-28s %7.1f %9.2f %9.2f %9.2f %10.0f" % (role, c, a[1] / a[0] / 1e3, a[2] / a[0] / 1e3, a[3] / a[0] / 1e3, a[1] / len(steps) / 1e3))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "timeline.csv")
