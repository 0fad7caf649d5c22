"""Figures from a run: percentiles, the table printed at the end, JSON and the histogram."""

from __future__ import annotations

import json
import math
from pathlib import Path


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (NaN when there are none)."""
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def summary(values: list[float]) -> dict:
    v = sorted(values)
    return {"n": len(v), "p50": percentile(v, 50), "p95": percentile(v, 95), "p99": percentile(v, 99),
            "max": v[-1] if v else math.nan, "mean": sum(v) / len(v) if v else math.nan}


def _f(x: float, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def render_table(r: dict) -> str:
    """The human summary of one run (``r`` is what ``runner.run_bench`` returns)."""
    cfg, lines = r["config"], []
    lines.append(f"vterm bench: {cfg['sessions']} sessions, {cfg['rate']}/s each, {cfg['duration']} s, "
                 f"channels {','.join(cfg['channels'])}{', mixed' if cfg['mixed'] else ''}, "
                 f"{cfg['backends']} backends{'' if cfg['own_stack'] else ' (external stack)'}")
    c = r["create"]
    lines.append(f"sessions created      {c['created']}/{cfg['sessions']} in {_f(c['total_s'], 2)} s "
                 f"(per session p50 {_f(c['per_session']['p50'], 1)} ms, max {_f(c['per_session']['max'], 1)} ms, "
                 f"{c['concurrency']} at a time)")
    fl = r["floor"]
    lines.append(f"floor (bare bash+tmux) p50 {_f(fl['strict']['p50'], 3)} ms, p99 {_f(fl['strict']['p99'], 3)} ms"
                 f"   paced every {fl['paced_gap_ms']:g} ms: p50 {_f(fl['paced']['p50'], 3)} ms"
                 f"   via TmuxDriver: p50 {_f(fl['driver']['p50'], 3)} ms")
    lines.append("")
    lines.append(f"{'channel':<16}{'commands':>9}{'cmd/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
                 f"{'max ms':>9}{'p50/floor':>10}")
    for name, s in r["latency"].items():
        lines.append(f"{name:<16}{s['n']:>9}{_f(s['rate'], 1):>9}{_f(s['p50']):>9}{_f(s['p95']):>9}"
                     f"{_f(s['p99']):>9}{_f(s['max']):>9}{_f(s['floor_ratio'], 1) + 'x':>10}")
    lines.append("")
    lines.append(f"throughput            {_f(r['throughput'], 1)} commands/s over {_f(r['load_s'], 1)} s; "
                 f"late ticks {r['late']}")
    lines.append(f"errors                {sum(r['errors'].values())}"
                 + "".join(f"\n   {n} x {k}" for k, n in sorted(r["errors"].items(), key=lambda kv: -kv[1])[:8]))
    lines.append(f"session drops         {r['dropped']}")
    m = r.get("memory")
    if m:
        lines.append(f"memory (PSS)          {_f(m['per_session_mb'], 3)} MB per session "
                     f"(shells+tmux+workers {_f(m['held_mb'], 1)} MB / {m['sessions']}); with web and redis "
                     f"{_f(m['per_session_all_mb'], 3)} MB")
        lines.append("                      " + ", ".join(f"{k} {_f(v, 1)} MB" for k, v in m["groups_mb"].items()))
    cpu = r.get("cpu")
    if cpu:
        lines.append("CPU during the load    " + ", ".join(f"{k} {_f(v, 0)}%" for k, v in cpu.items())
                     + "  (100% = one core)")
    if r.get("peers"):
        lines.append(render_peers(r["peers"]))
    return "\n".join(lines)


def _times(vterm: float, peer: float, lower_is_better: bool) -> str:
    """How vterm stands against the peer, as a factor: "3.1x faster" / "2.0x slower"."""
    if not vterm or not peer:
        return "-"
    better = vterm < peer if lower_is_better else vterm > peer
    factor = max(vterm, peer) / min(vterm, peer)
    return f"vterm {factor:.1f}x {'faster' if better else 'slower'}"


def render_peers(p: dict) -> str:
    """The peers' table (vterm_project/bench/peers.py measures it)."""
    lines = ["", "vterm beside its peers (same machine, same run)",
             f"{'figure':<34}{'vterm':>18}  {'peer':<11}{'peer figure':>18}  ratio"]

    def lat(figure: str, label: str, peer: str) -> None:
        v, o = p[figure].get("vterm"), p[figure].get(peer)
        vs = f"{v['p50']:.2f} / {v['p99']:.2f}" if v else "-"
        ps = f"{o['p50']:.2f} / {o['p99']:.2f}" if o else "-"
        ratio = _times(v["p50"], o["p50"], True) + " at p50" if v and o else "-"
        lines.append(f"{label:<34}{vs:>18}  {peer:<11}{ps:>18}  {ratio}")

    lat("command", "`true` in a session, p50 / p99 ms", "swe-rex")
    lat("echo", "keystroke echo, p50 / p99 ms", "terminado")
    v, o = p["output"].get("vterm"), p["output"].get("terminado")
    vs = f"{v['mb_per_s']:.1f}" if v else "-"
    ps = f"{o['mb_per_s']:.1f}" if o else "-"
    lines.append(f"{'cat to a viewer, MB/s':<34}{vs:>18}  {'terminado':<11}{ps:>18}  "
                 + (_times(v["mb_per_s"], o["mb_per_s"], False) if v and o else "-"))
    if v:
        lines.append(f"   vterm: {v['mb']:.1f} MB of output frames in {v['seconds']:.2f} s, every frame "
                     f"acknowledged, seq breaks {v['seq_breaks']}, snapshots {v['snapshots']} (each one: frames "
                     "skipped because the viewer fell behind)")
    n = {k: s["n"] for k, s in p["command"].items()}
    lines.append(f"   samples: commands {n}, keystrokes { {k: s['n'] for k, s in p['echo'].items()} }")
    for side, err in p["errors"].items():
        lines.append(f"   {side}: not measured: {err}")
    return "\n".join(lines)


def write_json(r: dict, path: str | Path) -> None:
    def clean(x):
        if isinstance(x, float) and math.isnan(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x
    Path(path).write_text(json.dumps(clean(r), indent=2) + "\n")


def write_histogram(series: dict[str, list[float]], floor_p50: float, path: str | Path, title: str) -> None:
    """Latency histogram per series, log-spaced bins, the floor's p50 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [v for vs in series.values() for v in vs]
    if not values:
        return
    lo, hi = max(min(values + [floor_p50]) * 0.8, 0.01), max(values) * 1.2
    bins = [lo * (hi / lo) ** (i / 60) for i in range(61)]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=90)
    for name, vs in series.items():
        if vs:
            ax.hist(vs, bins=bins, alpha=0.55, label=f"{name} (n={len(vs)}, p50 {percentile(sorted(vs), 50):.2f} ms)")
    ax.axvline(floor_p50, color="k", linestyle="--", label=f"floor p50 {floor_p50:.2f} ms")
    ax.set_xscale("log")
    ax.set_xlabel("command latency, ms (client sends → client has the exit code)")
    ax.set_ylabel("commands")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
