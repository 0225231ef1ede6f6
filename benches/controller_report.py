#!/usr/bin/env python3
"""The report of benches/controller.sh (standard library only).

  controller_report.py OUT --baseline-p99    prints the median baseline p99 in ms
  controller_report.py OUT --baseline-signal [Q]  prints the median over baseline runs of the
                                             Q-th percentile (default 90) of the nodes' own
                                             signal per period
  controller_report.py --signal-p90 FILE...  prints the 90th percentile of the node signal in
                                             `admin throttle --json --watch-ms` samples (those
                                             with requests in their window), e.g. for
                                             benches/anti_entropy.sh's controller target
  controller_report.py OUT --target-ms T     prints the table, writes controller.csv,
                                             foreground.csv and controller.svg into OUT

OUT holds, per mode and run (tag = MODE-RUN): foreground-TAG.json (shoal-load's report),
throttle-TAG-nI.jsonl (each node's `admin throttle --json --watch-ms` samples), return-TAG.ms
(when n3 came back, wall-clock ms) and runs.csv (hints held at the return, drain seconds).
"""
import csv
import html
import glob
import json
import os
import statistics
import sys

# Every mode the benchmark knows, in the table's order; a report covers those that ran
# (`pinned` only when MODES asked for it).
MODES = ["baseline", "unthrottled", "pinned", "controller"]
COLOURS = {"baseline": "#1b9e77", "unthrottled": "#d95f02", "pinned": "#e7298a",
           "controller": "#7570b3"}
BUCKET_MS = 250


def worst(report, field):
    """The worst operation's percentile, in ms (a workload-A run has gets and puts)."""
    return max(op[field] for op in report["operations"]) / 1000.0


def runs_of(out, mode):
    found = []
    for path in sorted(glob.glob(os.path.join(out, f"foreground-{mode}-*.json"))):
        tag = os.path.basename(path)[len("foreground-"):-len(".json")]
        with open(path) as f:
            found.append((tag, json.load(f)))
    return found


def series(out, tag):
    """Per-bucket samples summed over nodes: t (s since n3's return), mean signal, handoff
    rate (None if any node is unlimited), handoff used, hints held (handoff's backlog)."""
    with open(os.path.join(out, f"return-{tag}.ms")) as f:
        returned = int(f.read().strip())
    buckets = {}
    for path in glob.glob(os.path.join(out, f"throttle-{tag}-n*.jsonl")):
        node = path.rsplit("-", 1)[1]
        with open(path) as f:
            for line in f:
                try:
                    sample = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short when the watcher was stopped
                key = (sample["at_ms"] - returned) // BUCKET_MS
                handoff = next(s for s in sample["stages"] if s["name"] == "handoff")
                buckets.setdefault(key, {})[node] = (
                    sample["controller"]["signal_ms"],
                    handoff["rate_per_sec"],
                    handoff["used_per_sec"],
                    handoff["backlog"],
                )
    rows = []
    for key in sorted(buckets):
        nodes = buckets[key].values()
        rates = [r for _, r, _, _ in nodes]
        rows.append((
            key * BUCKET_MS / 1000.0,
            statistics.mean(s for s, _, _, _ in nodes),
            None if any(r is None for r in rates) else sum(rates),
            sum(u for _, _, u, _ in nodes),
            sum(b for _, _, _, b in nodes),
        ))
    return rows


def drains(out):
    result = {}
    with open(os.path.join(out, "runs.csv")) as f:
        for row in csv.DictReader(f):
            result[f"{row['mode']}-{row['run']}"] = (int(row["hints_at_return"]), row["drain_s"])
    return result


def percentile(values, q):
    """The q-th percentile of `values` (None when empty): how a baseline's node signal becomes
    the controller's target, in both benchmarks that derive one."""
    values = sorted(values)
    return values[int(q / 100 * (len(values) - 1))] if values else None


def p90(values):
    """The 90th percentile of `values` (None when empty)."""
    return percentile(values, 90)


def signal_p90(paths):
    """p90 of the node signal over `admin throttle` samples whose window saw requests."""
    signals = []
    for path in paths:
        with open(path) as f:
            for line in f:
                try:
                    controller = json.loads(line)["controller"]
                except (json.JSONDecodeError, KeyError):
                    continue  # a line cut short when the watcher was stopped
                if controller["window_requests"] > 0:
                    signals.append(controller["signal_ms"])
    return p90(signals)


def polyline(points, x_of, y_of, colour, dash=""):
    if not points:
        return ""
    path = " ".join(f"{x_of(x):.1f},{y_of(y):.1f}" for x, y in points)
    extra = f' stroke-dasharray="{dash}"' if dash else ""
    return f'<polyline fill="none" stroke="{colour}" stroke-width="1.5"{extra} points="{path}"/>\n'


def panel(top, title, unit, lines, x_max, y_cap=None, width=900, height=260):
    """One chart: lines is [(label, colour, dash, [(x, y)])]; values above y_cap are drawn at
    the top edge (the controller's idle ceiling would flatten everything else)."""
    left, right, bottom = 70, 20, 35
    y_max = max([y for _, _, _, pts in lines for _, y in pts] + [1e-9]) * 1.1
    if y_cap is not None:
        y_max = min(y_max, y_cap)
        lines = [(l, c, d, [(x, min(y, y_max)) for x, y in pts]) for l, c, d, pts in lines]
    x_of = lambda x: left + (x / x_max) * (width - left - right)
    y_of = lambda y: top + height - bottom - (y / y_max) * (height - bottom - 25)
    svg = f'<text x="{left}" y="{top + 15}" font-size="14" font-weight="bold">{html.escape(title)}</text>\n'
    svg += f'<line x1="{left}" y1="{y_of(0)}" x2="{width - right}" y2="{y_of(0)}" stroke="#333"/>\n'
    svg += f'<line x1="{left}" y1="{y_of(0)}" x2="{left}" y2="{top + 25}" stroke="#333"/>\n'
    for i in range(6):
        y = y_max * i / 5
        svg += f'<text x="{left - 6}" y="{y_of(y) + 4:.1f}" font-size="10" text-anchor="end">{y:.3g}</text>\n'
        x = x_max * i / 5
        svg += f'<text x="{x_of(x):.1f}" y="{y_of(0) + 14:.1f}" font-size="10" text-anchor="middle">{x:.0f}</text>\n'
    svg += f'<text x="{left - 55}" y="{top + 20}" font-size="10">{unit}</text>\n'
    svg += f'<text x="{width - right}" y="{y_of(0) + 28:.1f}" font-size="10" text-anchor="end">seconds since n3 returned</text>\n'
    for index, (label, colour, dash, pts) in enumerate(lines):
        svg += polyline(pts, x_of, y_of, colour, dash)
        lx = left + 10 + index * 210
        svg += f'<line x1="{lx}" y1="{top + 32}" x2="{lx + 20}" y2="{top + 32}" stroke="{colour}" stroke-width="2"'
        svg += f' stroke-dasharray="{dash}"/>\n' if dash else "/>\n"
        svg += f'<text x="{lx + 25}" y="{top + 36}" font-size="11">{html.escape(label)}</text>\n'
    return svg


def main():
    if sys.argv[1] == "--signal-p90":
        value = signal_p90(sys.argv[2:])
        if value is None:
            sys.exit("controller_report.py: no signal samples with requests in " + " ".join(sys.argv[2:]))
        print(value)
        return
    out, flag = sys.argv[1], sys.argv[2]
    if flag == "--baseline-p99":
        runs = runs_of(out, "baseline")
        if not runs:
            sys.exit("controller_report.py: no baseline run in " + out)
        print(statistics.median(worst(r, "p99_us") for _, r in runs))
        return
    if flag == "--baseline-signal":
        # The controller compares its target with what the node measures (service time at the
        # coordinator and storage), which is below what a client sees (client queueing, the
        # network, scheduling). A target derived from the client's p99 sits above anything
        # the node's signal reaches on this box, and the controller never acts.
        q = float(sys.argv[3]) if len(sys.argv) > 3 else 90
        values = []
        for tag, _ in runs_of(out, "baseline"):
            value = percentile((s for t, s, _, _, _ in series(out, tag) if t >= 0), q)
            if value is not None:
                values.append(value)
        if not values:
            sys.exit("controller_report.py: no baseline controller samples in " + out)
        print(statistics.median(values))
        return
    target_ms = sys.argv[3]
    drained = drains(out)
    table = {}
    ran = [mode for mode in MODES if runs_of(out, mode)]
    if "baseline" not in ran:
        sys.exit(f"controller_report.py: no baseline run in {out}")
    for mode in ran:
        runs = runs_of(out, mode)
        drain_values = [drained[tag][1] for tag, _ in runs]
        numeric = [float(d) for d in drain_values if d not in ("", "never")]
        table[mode] = {
            "p99": statistics.median(worst(r, "p99_us") for _, r in runs),
            "p999": statistics.median(worst(r, "p999_us") for _, r in runs),
            "errors": sum(sum(op["errors"] for op in r["operations"]) for _, r in runs),
            "rate": statistics.median(r["achieved_rate"] for _, r in runs),
            "held": statistics.median(drained[tag][0] for tag, _ in runs),
            "drain": statistics.median(numeric) if len(numeric) == len(drain_values) else None,
            "runs": len(runs),
        }
    base = table["baseline"]
    print(f"\ncontroller target: {target_ms} ms (medians of {base['runs']} runs per mode)")
    print(f"{'mode':<12} {'ops/s':>7} {'p99 ms':>8} {'x base':>7} {'p99.9 ms':>9} {'x base':>7} "
          f"{'hints':>7} {'drain s':>8} {'errors':>6}")
    for mode in ran:
        row = table[mode]
        drain = "never" if row["drain"] is None else f"{row['drain']:.1f}"
        print(f"{mode:<12} {row['rate']:>7.0f} {row['p99']:>8.2f} {row['p99'] / base['p99']:>7.2f} "
              f"{row['p999']:>9.2f} {row['p999'] / base['p999']:>7.2f} {row['held']:>7.0f} "
              f"{drain:>8} {row['errors']:>6}")
    unthrottled, controlled = table.get("unthrottled"), table.get("controller")

    def drains_within_3x(row):
        return (row["drain"] is not None and unthrottled["drain"] is not None
                and row["drain"] <= 3 * unthrottled["drain"])

    checks = []
    if unthrottled:
        checks.append(("unthrottled backlog raises p99.9 >= 2x baseline",
                       unthrottled["p999"] >= 2 * base["p999"]))
    if controlled:
        checks.append(("controller keeps p99.9 <= 1.2x baseline",
                       controlled["p999"] <= 1.2 * base["p999"]))
        if unthrottled:
            checks.append(("controller drains within 3x the unthrottled drain time",
                           drains_within_3x(controlled)))
    # The pinned mode is no must-hold: it says what a steady pace would give.
    if "pinned" in table:
        print(f"pinned: p99.9 {table['pinned']['p999'] / base['p999']:.2f}x baseline"
              + (f", drain {'within' if drains_within_3x(table['pinned']) else 'over'} 3x"
                 " the unthrottled drain time" if unthrottled else ""))
    for name, held in checks:
        print(f"{'holds' if held else 'MISSED'}: {name}")

    with open(os.path.join(out, "controller.csv"), "w") as f:
        f.write("mode,run,t_s,signal_ms,handoff_rate_per_sec,handoff_used_per_sec,backlog\n")
        for mode in MODES:
            for tag, _ in runs_of(out, mode):
                for t, signal, rate, used, backlog in series(out, tag):
                    rate_text = "unlimited" if rate is None else rate
                    f.write(f"{mode},{tag.rsplit('-', 1)[1]},{t},{signal:.3f},{rate_text},{used},{backlog}\n")
    with open(os.path.join(out, "foreground.csv"), "w") as f:
        f.write("mode,run,t_s,p99_ms\n")
        for mode in MODES:
            for tag, report in runs_of(out, mode):
                lead = float(os.environ.get("LEAD", "3"))
                for second in report["series"]:
                    f.write(f"{mode},{tag.rsplit('-', 1)[1]},{second['t'] - lead},{second['p99_us'] / 1000}\n")

    # The plot: the first run of each mode.
    lead = float(os.environ.get("LEAD", "3"))
    fg_lines, bg_lines, x_max = [], [], 1.0
    for mode in ran:
        tag, report = runs_of(out, mode)[0]
        points = [(s["t"] - lead, s["p99_us"] / 1000) for s in report["series"] if s["t"] >= lead]
        fg_lines.append((f"{mode} foreground p99", COLOURS[mode], "", points))
        rows = series(out, tag)
        x_max = max([x_max] + [x for x, _ in points] + [t for t, *_ in rows])
        if mode != "baseline":
            bg_lines.append((f"{mode} handoff used/s", COLOURS[mode], "",
                             [(t, used) for t, _, _, used, _ in rows if t >= 0]))
        if mode == "controller":
            bg_lines.append(("controller handoff rate/s", COLOURS[mode], "4,3",
                             [(t, rate) for t, _, rate, _, _ in rows if t >= 0 and rate is not None]))
    svg = '<svg xmlns="http://www.w3.org/2000/svg" width="900" height="560" font-family="sans-serif">\n'
    svg += '<rect width="900" height="560" fill="white"/>\n'
    svg += panel(0, f"Foreground p99 per second (controller target {target_ms} ms)", "ms", fg_lines, x_max)
    used_max = max([y for label, _, _, pts in bg_lines if "used" in label for _, y in pts] + [1.0])
    svg += panel(280, "Hint delivery over four nodes, per 250 ms (rates clipped at 2x peak use)",
                 "units/s", bg_lines, x_max, y_cap=2 * used_max)
    svg += "</svg>\n"
    with open(os.path.join(out, "controller.svg"), "w") as f:
        f.write(svg)
    print(f"series: {out}/controller.csv, {out}/foreground.csv; plot: {out}/controller.svg")


if __name__ == "__main__":
    main()
