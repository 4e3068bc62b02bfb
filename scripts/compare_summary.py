"""Turns the raw JSON lines of scripts/compare.sh into a Markdown report of medians."""
import argparse
import json
import pathlib
import statistics


def load(raw: pathlib.Path, label: str) -> list[dict]:
    path = raw / f"{label}.jsonl"
    if not path.exists():
        return []
    runs = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("{"):
            doc = json.loads(line)
            if "error" not in doc:
                runs.append(doc)
    return runs


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0):
    if v is None:
        return "n/a"
    return f"{v:,.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("raw", type=pathlib.Path)
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--runs", required=True)
    ap.add_argument("--servers", required=True)
    ap.add_argument("--machine", required=True)
    ap.add_argument("--p99-bound-us", type=int, required=True)
    a = ap.parse_args()
    servers = a.servers.split()
    lines = [
        f"# feedgate vs peers ({a.raw.parent.name})",
        "",
        f"- machine: {a.machine}",
        f"- commit: {a.commit}",
        f"- command: `RUNS={a.runs} SERVERS=\"{a.servers}\" P99_BOUND_US={a.p99_bound_us} bash scripts/compare.sh`",
        "- each server pinned to CPU 0 (feedgate with `--cores 1`); Redis and feedgate-loadgen share CPU 1",
        f"- every figure is the median of {a.runs} runs; raw JSON, logs, percentile distributions in `{a.raw}`",
        "",
    ]

    limit_runs = load(a.raw, "limit")
    ceiling = {}
    for batch in (1, 8):
        ceiling[batch] = median(
            [r["deliveries_per_sec"] for run in limit_runs for r in run["results"] if r["frames_per_write"] == batch]
        )
    lines += [
        "## Machine ceiling (`feedgate-loadgen limit`, no protocol)",
        "",
        "| frames per write | deliveries/s |",
        "| --- | --- |",
        f"| 1 | {fmt(ceiling[1])} |",
        f"| 8 | {fmt(ceiling[8])} |",
        "",
    ]

    lines += [
        f"## Headline: highest sustained deliveries/s with p99 under {a.p99_bound_us / 1000:g} ms",
        "",
        "`sweep`, 1,000 subscribers over 10 stream channels, 100 B payloads; the rate steps up 1.5x from 100 msg/s "
        f"until p99 > {a.p99_bound_us / 1000:g} ms, deliveries fall behind, or a message is lost.",
        "",
        "| server | deliveries/s | p99 (us) at that rate | % of ceiling (1 / 8 per write) | feedgate / server |",
        "| --- | --- | --- | --- | --- |",
    ]
    best = {}
    for s in servers:
        runs = load(a.raw, f"{s}-sweep-1k-stream-100")
        passed = [r for r in runs if r.get("best")]
        complete = runs and len(passed) == len(runs)
        best[s] = (
            median([r["best_deliveries_per_sec"] for r in passed]) if complete else None,
            median([r["best"]["latency_us"]["p99"] for r in passed]) if complete else None,
        )
    fg = best.get("feedgate", (None, None))[0]
    for s in servers:
        rate, p99 = best[s]
        pct = " / ".join(fmt(100 * rate / ceiling[b], 1) + "%" if rate and ceiling[b] else "n/a" for b in (1, 8))
        ratio = fmt(fg / rate, 2) + "x" if fg and rate else "n/a"
        lines.append(f"| {s} | {fmt(rate)} | {fmt(p99)} | {pct} | {ratio} |")
    lines.append("")

    lines += [
        "## Latency at a fixed load (`fanout`, 100 msg/s offered; each message reaches 100 subscribers)",
        "",
        "| scenario | server | deliveries/s | p50 us | p99 us | p99.9 us | max us | lost | dup | out of order |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    scenarios = [
        ("1k subs x 10 ch, stream, 100 B", "fanout-1k-stream-100"),
        ("1k subs x 10 ch, stream, 1 KiB", "fanout-1k-stream-1024"),
        ("1k subs x 10 ch, pubsub, 100 B", "fanout-1k-pubsub-100"),
        ("1k subs x 10 ch, pubsub, 1 KiB", "fanout-1k-pubsub-1024"),
        ("10k subs x 100 ch, stream, 100 B", "fanout-10k-stream-100"),
        ("10k subs x 100 ch, pubsub, 100 B", "fanout-10k-pubsub-100"),
    ]
    for title, label in scenarios:
        for s in servers:
            runs = load(a.raw, f"{s}-{label}")
            res = [r["result"] for r in runs]
            lat = [r["latency_us"] for r in res]
            lines.append(
                f"| {title} | {s} | {fmt(median([r['deliveries_per_sec'] for r in res]))} "
                f"| {fmt(median([l['p50'] for l in lat]))} | {fmt(median([l['p99'] for l in lat]))} "
                f"| {fmt(median([l['p99_9'] for l in lat]))} | {fmt(median([l['max'] for l in lat]))} "
                f"| {sum(r['lost'] for r in res)} | {sum(r['duplicated'] for r in res)} | {sum(r['out_of_order'] for r in res)} |"
            )
    lines += [
        "",
        "lost / dup / out of order are totals over all runs.",
        "",
        "## Memory per idle connection (`idle`, 10,000 subscribed connections)",
        "",
        "| server | bytes per connection (RSS delta) |",
        "| --- | --- |",
    ]
    for s in servers:
        runs = load(a.raw, f"{s}-idle-10k")
        lines.append(f"| {s} | {fmt(median([r['result']['bytes_per_connection'] for r in runs]))} |")
    lines.append("")
    a.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
