"""Turns the raw JSON lines of scripts/perf.sh into results/perf-<date>.md (medians)."""
import argparse
import json
import pathlib

from compare_summary import fmt, load, median


def ratio(a, b):
    return "n/a" if a is None or b in (None, 0) else f"{a / b:.2f}x"


def spread(values, digits=2):
    values = [v for v in values if v is not None]
    return "n/a" if not values else f"{min(values):,.{digits}f}-{max(values):,.{digits}f}"


def fanout_stats(runs):
    res = [r["result"] for r in runs]
    return {
        "n": len(res),
        "cpu": [r.get("server_cpu_us_per_delivery") for r in res],
        "p50": [r["latency_us"]["p50"] for r in res],
        "p99": [r["latency_us"]["p99"] for r in res],
        "dps": [r["deliveries_per_sec"] for r in res],
        "lost": sum(r["lost"] for r in res),
    }


def best_under(run, bound_us):
    """Highest deliveries/s among a sweep's steps that kept p99 under the bound
    and delivered what was expected (the sweep's own acceptance)."""
    best = None
    for step in run["steps"]:
        ok = (
            step["latency_us"]["p99"] <= bound_us
            and step["deliveries"] >= step["deliveries_expected"] * 99 // 100
            and step["lost"] == 0
        )
        if not ok:
            break
        best = step
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("raw", type=pathlib.Path)
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--machine", required=True)
    a = ap.parse_args()
    lines = [
        f"# Performance: feedgate against the tokio peer ({a.raw.parent.name})",
        "",
        f"- machine: {a.machine}",
        f"- commit: {a.commit}",
        f"- command: `{a.command}`",
        "- server pinned to CPU 0 (feedgate with `--cores 1`); Redis and feedgate-loadgen share CPU 1;"
        " servers alternate run by run; stream channels, 100-byte payloads",
        "- CPU per delivery: the server's utime + stime from /proc/PID/stat over the measured window,"
        " divided by the deliveries of messages published in it",
        f"- medians of the runs; the ranges are min-max; raw JSON lines in `{a.raw}`",
        "",
    ]

    table = [
        ("1,000 subs x 10 channels, 50k deliveries/s", "n1000-c10-r500"),
        ("50 subs x 5 channels, 100k deliveries/s", "n50-c5-r10000"),
        ("1,000 subs x 10 channels, 200k deliveries/s", "n1000-c10-r2000"),
    ]
    if any(load(a.raw, f"table-feedgate-{k}") for _, k in table):
        lines += [
            "## CPU per delivery (write delay 0)",
            "",
            "| scenario | feedgate us | tokio us | tokio / feedgate | feedgate p99 us | tokio p99 us | runs |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, key in table:
            f = fanout_stats(load(a.raw, f"table-feedgate-{key}"))
            t = fanout_stats(load(a.raw, f"table-tokio-{key}"))
            fm, tm = median(f["cpu"]), median(t["cpu"])
            lines.append(
                f"| {name} | {fmt(fm, 2)} ({spread(f['cpu'])}) | {fmt(tm, 2)} ({spread(t['cpu'])}) | {ratio(tm, fm)}"
                f" | {fmt(median(f['p99']))} | {fmt(median(t['p99']))} | {f['n']}/{t['n']} |"
            )
        lines.append("")

    delays = [0, 250, 500, 1000, 2000, 5000]
    if any(load(a.raw, f"curve-feedgate-wd{d}") for d in delays):
        tokio = fanout_stats(load(a.raw, "curve-tokio"))
        tokio_cpu = median(tokio["cpu"])
        base = fanout_stats(load(a.raw, "curve-feedgate-wd0"))
        base_p99 = median(base["p99"])
        lines += [
            "## Write delay: 50 subs x 5 channels at 10,000 msg/s (100k deliveries/s)",
            "",
            f"tokio peer at the same load: {fmt(tokio_cpu, 2)} us per delivery ({spread(tokio['cpu'])}),"
            f" p99 {fmt(median(tokio['p99']))} us.",
            "",
            "| write_delay_us | CPU us/delivery | of tokio's | p50 us | p99 us | p99 - p99 at 0 | deliveries/s | lost | runs |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for d in delays:
            s = fanout_stats(load(a.raw, f"curve-feedgate-wd{d}"))
            cpu, p99 = median(s["cpu"]), median(s["p99"])
            of = "n/a" if cpu is None or not tokio_cpu else f"{cpu / tokio_cpu:.2f}"
            delta = "n/a" if p99 is None or base_p99 is None else f"{p99 - base_p99:+,.0f}"
            lines.append(
                f"| {d} | {fmt(cpu, 2)} ({spread(s['cpu'])}) | {of} | {fmt(median(s['p50']))} | {fmt(p99)}"
                f" | {delta} | {fmt(median(s['dps']))} | {s['lost']} | {s['n']} |"
            )
        lines.append("")

    sweeps = {s: load(a.raw, f"sweep-{s}") for s in ("feedgate", "tokio")}
    if any(sweeps.values()):
        lines += [
            "## Highest sustained rate (1,000 subs x 10 channels, write delay 0, steps of 1.25x)",
            "",
            "| p99 bound | feedgate deliveries/s | tokio deliveries/s | feedgate / tokio | feedgate CPU us at it | tokio CPU us at it |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for bound in (10_000, 100_000):
            row = {}
            for server, runs in sweeps.items():
                bests = [best_under(r, bound) for r in runs]
                row[server] = (
                    median([b["deliveries_per_sec"] if b else 0 for b in bests]),
                    median([b.get("server_cpu_us_per_delivery") if b else None for b in bests]),
                    [b["deliveries_per_sec"] if b else 0 for b in bests],
                )
            f, t = row["feedgate"], row["tokio"]
            lines.append(
                f"| {bound // 1000} ms | {fmt(f[0])} ({spread(f[2], 0)}) | {fmt(t[0])} ({spread(t[2], 0)})"
                f" | {ratio(f[0], t[0])} | {fmt(f[1], 2)} | {fmt(t[1], 2)} |"
            )
        lines.append("")

    busy = [(r, m) for r in (10, 500) for m in ("off", "on")]
    if any(load(a.raw, f"busy-{m}-r{r}") for r, m in busy):
        lines += [
            "## Busy poll (1,000 subs x 10 channels)",
            "",
            "| deliveries/s | busy poll | p50 us | p99 us | CPU us/delivery | runs |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r, m in busy:
            s = fanout_stats(load(a.raw, f"busy-{m}-r{r}"))
            lines.append(
                f"| {r * 100:,} | {m} | {fmt(median(s['p50']))} ({spread(s['p50'], 0)}) | {fmt(median(s['p99']))}"
                f" ({spread(s['p99'], 0)}) | {fmt(median(s['cpu']), 2)} | {s['n']} |"
            )
        lines.append("")

    idle = {s: load(a.raw, f"idle-{s}") for s in ("feedgate", "tokio")}
    if any(idle.values()):
        lines += [
            "## Memory per idle subscribed connection (10,000 connections, RSS)",
            "",
            "| server | bytes per connection | runs |",
            "| --- | --- | --- |",
        ]
        for server, runs in idle.items():
            per = [r["result"]["bytes_per_connection"] for r in runs]
            lines.append(f"| {server} | {fmt(median(per))} ({spread(per, 0)}) | {len(per)} |")
        lines.append("")

    a.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
