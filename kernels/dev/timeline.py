#!/usr/bin/env python3
"""timeline.py: each launch's share of a decode step's critical path, from
timeline.c's CSV. The decode steps are the kernels of the two graphs with the
most launches (qbench bench: adapter on, then off); a step starts at `embed`.
CUPTI reports some graphs' kernels with graph id 0 (batch steps, H200, CUDA 13
driver), so where no graph holds steps, the steps outside graphs are grouped by
their launch count instead (the two most common counts: adapter on, off; the
steps of the runs without graphs and sampled fall into the same groups).
For each launch of a layer (by its position in the layer), over the steps
after the first five: dEnd, its end minus the previous launch's end (what it
adds to the step), its own duration, and its start minus the previous end
(negative: launched early, programmatic dependent launch)."""
import collections
import csv
import sys


def split_steps(kernels):
    steps, cur = [], []
    for k in sorted(kernels):
        if k[2] == "embed" and cur:
            steps.append(cur)
            cur = []
        cur.append(k)
    if cur:
        steps.append(cur)
    return steps


def groups(path):
    graphs = collections.defaultdict(list)
    for r in csv.reader(open(path)):
        graphs[int(r[2])].append((int(r[0]), int(r[1]), r[7]))
    out = []
    for gid in sorted(graphs, key=lambda g: -len(graphs[g])):
        if gid == 0:
            continue  # launches outside graphs: prefill passes
        steps = split_steps(graphs[gid])[5:]
        steps = [s for s in steps if len(s) == len(steps[0])] if steps else []
        if len(steps) > 0 and len(steps[0]) > 40:
            out.append(("graph %d" % gid, steps))
        if len(out) == 2:
            return out
    if out:
        return out
    by_len = collections.defaultdict(list)
    for s in split_steps(graphs[0]):
        by_len[len(s)].append(s)
    for n in sorted(by_len, key=lambda n: -len(by_len[n]))[:2]:
        out.append(("steps of %d launches outside graphs" % n, by_len[n][5:]))
    return out


def main(path):
    for label, steps in groups(path):
        if not steps:
            continue
        n = len(steps[0])
        names = [k[2] for k in steps[0]]
        # launches a layer, from launch o on (1, or 2 where the first layer's first launch differs)
        o, per = next((o, p) for o in (1, 2) for p in range(1, n // 4) if all(names[i] == names[i + p] for i in range(o, n // 2)))
        layers = 1
        while o + (layers + 1) * per <= n and names[o + layers * per:o + (layers + 1) * per] == names[o:o + per]:
            layers += 1
        print("%s: %d steps of %d launches, %d a layer; step %.1f µs (first kernel's start to last's end)"
              % (label, len(steps), n, per, sum(s[-1][1] - s[0][0] for s in steps) / len(steps) / 1e3))
        acc = collections.OrderedDict()
        for s in steps:
            for i in range(1, n):
                role = "%d:%s" % ((i - o) % per, s[i][2]) if o <= i < o + layers * per else s[i][2]  # the layers, then the rest
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
