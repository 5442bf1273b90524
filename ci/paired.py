#!/usr/bin/env python3
"""Summaries of paired benchmark rounds (used by ci/bench-capture and ci/bench-record).

Reads a table of rounds (whitespace-separated, first line the column names, one line per
round). Each round ran the configurations being compared back to back (in alternating order),
so a per-round ratio compares runs seconds apart and the machine's slower drifts cancel; the
median of the per-round ratios is the figure, with a bootstrap interval over the rounds for
how far it can be trusted.

  paired.py FILE --ratio LABEL NUM DEN [--ratio ...] [--median LABEL COL ...] [--max LABEL COL ...]

--ratio   per-round NUM / DEN: median, 90 % bootstrap interval of the median, quartiles, and
          the ratio of the column sums (total work with / without)
--median  the median of a column (and its range)
--max     the largest value of a column
"""

import argparse
import random
import statistics
import sys


def median(xs):
    return statistics.median(xs)


def bootstrap_interval(xs, stat, level=0.90, draws=4000, seed=1):
    """Percentile bootstrap interval of `stat` over resamples of `xs` (fixed seed: the same
    rounds always print the same interval)."""
    rng = random.Random(seed)
    n = len(xs)
    values = sorted(stat([xs[rng.randrange(n)] for _ in range(n)]) for _ in range(draws))
    lo = values[int((1 - level) / 2 * draws)]
    hi = values[min(draws - 1, int((1 + level) / 2 * draws))]
    return lo, hi


def quartiles(xs):
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file")
    ap.add_argument("--ratio", nargs=3, action="append", default=[], metavar=("LABEL", "NUM", "DEN"))
    ap.add_argument("--median", nargs=2, action="append", default=[], metavar=("LABEL", "COL"))
    ap.add_argument("--max", nargs=2, action="append", default=[], metavar=("LABEL", "COL"))
    args = ap.parse_args()

    with open(args.file) as f:
        lines = [line.split() for line in f if line.strip()]
    if len(lines) < 2:
        sys.exit(f"paired.py: {args.file}: no rounds")
    cols = lines[0]
    rows = [dict(zip(cols, map(float, line))) for line in lines[1:]]

    def column(name):
        if name not in cols:
            sys.exit(f"paired.py: no column {name!r} in {args.file} (has: {' '.join(cols)})")
        return [r[name] for r in rows]

    for label, num, den in args.ratio:
        a, b = column(num), column(den)
        ratios = [x / y for x, y in zip(a, b) if y > 0]
        if not ratios:
            print(f"{label}: no rounds with a nonzero {den}")
            continue
        lo, hi = bootstrap_interval(ratios, median)
        q1, q3 = quartiles(ratios)
        print(
            f"{label}: median {median(ratios):.3f} over {len(ratios)} rounds "
            f"(90 % bootstrap interval {lo:.3f}–{hi:.3f}; quartiles {q1:.3f}–{q3:.3f}; "
            f"range {min(ratios):.3f}–{max(ratios):.3f}; ratio of sums {sum(a) / sum(b):.3f})"
        )
    for label, col in args.median:
        xs = column(col)
        print(f"{label}: median {median(xs):.2f} (range {min(xs):.2f}–{max(xs):.2f})")
    for label, col in args.max:
        print(f"{label}: {max(column(col)):.1f}")


if __name__ == "__main__":
    main()
