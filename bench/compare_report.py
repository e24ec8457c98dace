#!/usr/bin/env python3
"""Turns the runs that bench/compare.sh collected into medians, ratios and a Markdown table.

Input: a JSON-lines file, one object per run:
  {"scenario": NAME, "broker": "junction" | PEER, "round": N, "rc": EXIT_CODE,
   "figures": {... the JSON line of junction-perf / tcp_relay, or the idle-memory figures ...}}
and a JSON-lines file describing the scenarios in the order they ran (name, title, peer,
peer_title, metric, unit, better, extra).

Commands:
  compare_report.py median RUNS SCENARIO BROKER FIELD   prints the median of one figure
  compare_report.py table RUNS SCENARIOS                prints the Markdown table
  compare_report.py overload RUNS SCENARIOS             prints the overload scenarios' table
                                                        (those whose metric is "overload")

Field names are read in either spelling: junction-perf's flat ones (received_per_s,
latency_p99_us, broker_received_per_cpu_s) or the nested ones first planned for it
(received_rate, latency_us.p99, msgs_per_broker_cpu_s).
"""

import json
import statistics
import sys

# Each figure the table uses, and the names it may go by, first match wins.
ALIASES = {
    "received_per_s": ["received_per_s", "received_rate"],
    "sent_per_s": ["sent_per_s", "sent_rate"],
    "latency_p50_us": ["latency_p50_us", "latency_us.p50"],
    "latency_p99_us": ["latency_p99_us", "latency_us.p99"],
    "broker_received_per_cpu_s": ["broker_received_per_cpu_s", "msgs_per_broker_cpu_s"],
    "kib_per_connection": ["kib_per_connection"],
}


def figure(figures, field):
    """One figure of a run, or None."""
    for name in ALIASES.get(field, [field]):
        value = figures
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def load(path):
    with open(path) as runs:
        return [json.loads(line) for line in runs if line.strip()]


def values(runs, scenario, broker, field):
    found = []
    for run in runs:
        if run["scenario"] == scenario and run["broker"] == broker:
            value = figure(run.get("figures") or {}, field)
            if value is not None:
                found.append(value)
    return found


def median(runs, scenario, broker, field):
    found = values(runs, scenario, broker, field)
    return statistics.median(found) if found else None


def problems(runs, scenario, broker):
    """What went wrong in one broker's runs of a scenario, as one short note (or None): runs
    with no result, shortfalls, and runs whose consumers had not received everything by the
    end of the drain (the share they had received)."""
    failed, short, partial = [], [], []
    for run in sorted(runs, key=lambda run: run["round"]):
        if run["scenario"] != scenario or run["broker"] != broker:
            continue
        figures = run.get("figures")
        if not figures:
            failed.append(f"round {run['round']} gave no result (exit {run['rc']})")
        elif figures.get("ok") is False:
            short.append(str(run["round"]))
        elif figures.get("complete") is False:
            received, expected = figures.get("received"), figures.get("expected")
            if isinstance(received, (int, float)) and expected:
                share = 100 * received / expected
                partial.append(f"{share:.2f}%" if share >= 99 else f"{share:.1f}%")
            else:
                partial.append("part")
    notes = list(failed)
    if short:
        notes.append(f"shortfall (lost messages) in round {', '.join(short)}")
    if partial:
        notes.append(
            f"{len(partial)} run(s) had not delivered everything when the drain ended "
            f"(received {', '.join(partial)} of the expected)"
        )
    return "; ".join(notes) or None


def ratio_text(ours, theirs):
    if ours is None or not theirs:
        return "n/a"
    ratio = ours / theirs
    return f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.2g}"


def number(value, unit):
    if value is None:
        return "n/a"
    if unit in ("KiB",):
        return f"{value:,.1f} {unit}"
    if unit == "µs":
        return f"{value:,.0f} µs"
    return f"{value:,.0f} {unit}".strip()


def table(runs, scenarios):
    lines = [
        "| scenario | peer | Junction | peer | Junction / peer | Junction msgs per broker CPU-s | "
        "peer msgs per broker CPU-s |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for scenario in scenarios:
        name, metric, unit = scenario["name"], scenario["metric"], scenario["unit"]
        if metric == "overload":
            continue
        peer = scenario["peer"]
        ours = median(runs, name, "junction", metric)
        theirs = median(runs, name, peer, metric)
        if ours is None and theirs is None:
            continue
        ratio = ratio_text(ours, theirs)
        if scenario.get("better") == "lower":
            ratio += " (lower is better)"
        cpu = []
        for broker in ("junction", peer):
            value = median(runs, name, broker, "broker_received_per_cpu_s")
            cpu.append(f"{value:,.0f}" if value is not None else "")
        lines.append(
            f"| {scenario['title']} | {scenario['peer_title']} | {number(ours, unit)} | "
            f"{number(theirs, unit)} | {ratio} | {cpu[0]} | {cpu[1]} |"
        )
        for broker, title in (("junction", "Junction"), (peer, scenario["peer_title"])):
            note = problems(runs, name, broker)
            if note:
                notes.append(f"- {scenario['title']}, {title}: {note}.")
        extra = scenario.get("extra")
        if extra:
            notes.append(f"- {scenario['title']}: {extra}")
    if len(lines) == 2:
        return ""
    if notes:
        lines.append("")
        lines.extend(notes)
    return "\n".join(lines)


BROKER_TITLES = {"junction": "Junction", "mosquitto": "Mosquitto", "rabbitmq": "RabbitMQ"}


def overload_table(runs, scenarios):
    """One row per overload scenario and broker: medians of accepted and delivered msg/s and
    of the broker's VmHWM, the largest loss of any round, and Junction's delivered rate over
    each peer's."""
    lines = [
        "| scenario | broker | accepted msg/s | delivered msg/s | lost (worst round) | "
        "peak memory (VmHWM) | delivered, Junction / broker |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for scenario in scenarios:
        if scenario["metric"] != "overload":
            continue
        name = scenario["name"]
        ours = median(runs, name, "junction", "received_per_s")
        for broker in ["junction"] + scenario["peer"].split():
            accepted = median(runs, name, broker, "accepted_per_s")
            delivered = median(runs, name, broker, "received_per_s")
            hwm = median(runs, name, broker, "broker_hwm_kib")
            losses = values(runs, name, broker, "lost")
            if accepted is None and delivered is None:
                continue
            undelivered = values(runs, name, broker, "undelivered")
            if losses:
                lost = f"{max(losses):,.0f}"
            elif undelivered:
                lost = f"not guaranteed ({max(undelivered):,.0f} undelivered)"
            else:
                lost = "n/a"
            memory = f"{hwm / 1024:,.0f} MiB" if hwm is not None else "n/a"
            ratio = "" if broker == "junction" else ratio_text(ours, delivered)
            lines.append(
                f"| {scenario['title']} | {BROKER_TITLES.get(broker, broker)} | "
                f"{number(accepted, '')} | {number(delivered, '')} | {lost} | {memory} | "
                f"{ratio} |"
            )
            note = problems(runs, name, broker)
            if note:
                notes.append(f"- {scenario['title']}, {BROKER_TITLES.get(broker, broker)}: {note}.")
    if notes:
        lines.append("")
        lines.extend(notes)
    return "\n".join(lines)


def main(argv):
    if len(argv) == 6 and argv[1] == "median":
        value = median(load(argv[2]), argv[3], argv[4], argv[5])
        print("" if value is None else f"{value:.1f}")
        return 0
    if len(argv) == 4 and argv[1] == "overload":
        print(overload_table(load(argv[2]), load(argv[3])))
        return 0
    if len(argv) == 4 and argv[1] == "table":
        print(table(load(argv[2]), load(argv[3])))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
