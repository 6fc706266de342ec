"""The benchmark tables of run.py drawn as PNG plots (matplotlib, ``bench`` extra)."""

from __future__ import annotations

import os

NAMES = {"pickle": "pickle loop", "capbridge": "capbridge (strict)", "capbridge-none": "capbridge (none)",
         "rpyc": "RPyC", "pyro5": "Pyro5", "managers": "mp.managers"}
DIRECTIONS = {"h2s": "host → sandbox", "s2h": "sandbox → host", "cb": "callback round trip"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def latency(lat: dict, path: str) -> str:
    """One panel per placement: each contender's median as a multiple of the pickle loop."""
    plt = _pyplot()
    from matplotlib import ticker

    places = list(lat)
    fig, axes = plt.subplots(1, len(places), figsize=(3.6 * len(places), 3.4), sharey=True, squeeze=False)
    keys = [k for k in NAMES if all(k in lat[p]["h2s"] for p in places)]
    width = 0.8 / len(DIRECTIONS)
    for ax, place in zip(axes[0], places):
        for j, (d, label) in enumerate(DIRECTIONS.items()):
            base = lat[place][d]["pickle"]["median_us"]
            ratios = [lat[place][d][k]["median_us"] / base for k in keys]
            ys = [i + (j - 1) * width for i in range(len(keys))]
            ax.barh(ys, ratios, height=width, label=label)
        ax.axvline(1.3, color="black", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(ticker.FixedLocator([1, 1.3, 2, 5, 10, 20]))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.set_title(place)
        ax.set_xlabel("median per call ÷ pickle loop (log)")
    axes[0][0].set_yticks(range(len(keys)), [NAMES[k] for k in keys])
    axes[0][0].invert_yaxis()
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(DIRECTIONS), frameon=False)
    fig.suptitle("Small call latency against a hand-written pickle loop (dashed: 1.3x)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def start(rows: list[dict], npc: dict | None, path: str) -> str:
    """Sandbox start and cycle medians beside their targets; NPC ticks per second."""
    plt = _pyplot()
    rows = [r for r in rows if r["median_ms"] is not None and r["what"].startswith("strict")]
    panels = 2 if npc else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.4 * panels, 3.2), squeeze=False)
    ax = axes[0][0]
    labels = [r["what"].removeprefix("strict, ") for r in rows]
    ax.barh(range(len(rows)), [r["median_ms"] for r in rows], color="#4c72b0")
    for i, r in enumerate(rows):
        if r["target_ms"] is not None:
            ax.plot([r["target_ms"]] * 2, [i - 0.4, i + 0.4], color="black", lw=2)
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("median ms (log); black tick: target")
    ax.set_title("Strict sandbox start")
    if npc:
        ax = axes[0][1]
        ax.barh(range(len(npc)), list(npc.values()), color="#55a868")
        ax.axvline(100, color="black", lw=0.8, ls="--")
        ax.set_yticks(range(len(npc)), list(npc))
        ax.invert_yaxis()
        ax.set_xlabel("ticks per second (dashed: target 100)")
        ax.set_title("50 NPC sandboxes, 3 host calls each a tick")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fanout(fan: dict, path: str) -> str:
    """µs per call per core against the number of busy sandboxes, by who drives them."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(fan), figsize=(4.6 * len(fan), 3.2), squeeze=False)
    styles = {"threads": ("a thread per sandbox", "o-"), "gather": ("one thread, gather", "s-"),
              "raw": ("hand-written fan-out", "^--")}
    for ax, (call, by_how) in zip(axes[0], fan.items()):
        for how, points in by_how.items():
            points = {int(n): v for n, v in points.items()}
            if how == "gather" and 1 not in points and 1 in {int(n) for n in by_how.get("threads", {})}:
                points[1] = {int(n): v for n, v in by_how["threads"].items()}[1]  # one job: called directly
            xs = sorted(points)
            label, style = styles[how]
            ax.plot(xs, [points[n] for n in xs], style, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("busy sandboxes (log)")
        ax.set_ylabel("µs per call per core")
        ax.set_title(f"{call} call")
        ax.set_ylim(bottom=0)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw(results: dict, folder: str) -> list[str]:
    """Every plot the results allow, into ``folder``; returns the paths written."""
    os.makedirs(folder, exist_ok=True)
    sec = results["sections"]
    out = []
    if "latency" in sec:
        out.append(latency(sec["latency"], os.path.join(folder, "latency.png")))
    if "start" in sec:
        out.append(start(sec["start"], sec.get("npc"), os.path.join(folder, "start.png")))
    if "fanout" in sec:
        out.append(fanout(sec["fanout"], os.path.join(folder, "fanout.png")))
    return out
