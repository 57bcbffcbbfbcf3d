"""The suite's report as PNG plots (matplotlib, no display) and one markdown page of tables."""

from __future__ import annotations

from pathlib import Path

import decode_peers
import numpy as np
import qa_peers


def figure(columns: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, columns, figsize=(6 * columns, 4.2), squeeze=False)
    return plt, fig, axes[0]


def save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _engines(report: dict) -> dict[str, dict]:
    return {s["engine"]: s for s in report["engines"]}


def plot_batch(jobs: dict, out: Path) -> Path | None:
    """Decode ms/token and QA sequences/s against batch size, one line per engine."""
    panels = [j for j in ("decode", "qa") if j in jobs]
    if not panels:
        return None
    plt, fig, axes = figure(len(panels))
    for ax, job in zip(axes, panels, strict=True):
        report = jobs[job]["main"] if job == "decode" else jobs[job]
        key = "decode_ms_per_token" if job == "decode" else "items_per_s"
        for name, s in _engines(report).items():
            batches = sorted(s["batches"], key=int)
            ax.plot([int(b) for b in batches], [s["batches"][b][key] for b in batches], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("decode ms per token (lower is better)" if job == "decode" else "sequences/s (higher is better)")
        ax.set_title("decode, GPT-2-small shape" if job == "decode" else "extractive QA, BERT-base shape")
        ax.legend(fontsize=7)
    return save(plt, fig, out / "latency_vs_batch.png")


def plot_sweeps(decode: dict, out: Path) -> Path:
    """B=1 tokens/s against prompt length, and decode ms/token against intra-op threads."""
    plt, fig, (by_prompt, by_threads) = figure(2)
    for ax, sweep, key, label in ((by_prompt, decode["prompts"], "tokens_per_s", "prompt length (tokens)"),
                                  (by_threads, decode["threads"], "decode_ms_per_token", "intra-op threads")):
        names = sorted({e for r in sweep.values() for e in _engines(r)})
        for name in names:
            xs = [x for x in sorted(sweep, key=int) if name in _engines(sweep[x])]
            ax.plot([int(x) for x in xs], [_engines(sweep[x])[name]["batches"]["1"][key] for x in xs], marker="o",
                    label=name)
        ax.set_xlabel(label)
        ax.legend(fontsize=7)
    by_prompt.set_xscale("log", base=2)
    by_prompt.set_ylabel("B=1 tokens/s, prefill included")
    by_threads.set_ylabel("B=1 decode ms per token")
    return save(plt, fig, out / "decode_sweeps.png")


def plot_cdf(jobs: dict, out: Path) -> Path | None:
    """Latency CDFs: per call (Xiangqi move selection, QA calls, a sampled dialogue turn's first token), and per
    decode step at B=1 for every decode engine."""
    calls, steps = {}, {}
    if "xiangqi" in jobs:
        for method in ("choice_ms", "one_run_per_move_ms"):
            calls[f"xiangqi {method[:-3]}"] = [t for row in jobs["xiangqi"]["latency"].values()
                                               for t in row["samples_ms"][method]]
    if "qa" in jobs:
        for name, s in _engines(jobs["qa"]).items():
            calls[f"qa {name}, B=1"] = s["batches"]["1"]["calls_ms"] if "1" in s["batches"] else []
    if "dialogue" in jobs:
        calls["dialogue: first token of a sampled turn"] = jobs["dialogue"]["sampled"]["first_token_ms"]
    if "decode" in jobs:
        for name, s in _engines(jobs["decode"]["main"]).items():
            steps[name] = s["batches"]["1"].get("token_gaps_ms", []) if "1" in s["batches"] else []
    panels = [(title, {k: v for k, v in series.items() if v}) for title, series in
              (("latency per call, ms", calls), ("decode step at B=1 (per token), ms", steps))]
    panels = [(title, series) for title, series in panels if series]
    if not panels:
        return None
    plt, fig, axes = figure(len(panels))
    for ax, (title, series) in zip(axes, panels, strict=True):
        for name, values in series.items():
            values = np.sort(values)
            ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post", label=name)
        ax.set_xscale("log")
        ax.set_xlabel(title)
        ax.set_ylabel("share at most this slow")
        ax.legend(fontsize=7)
    return save(plt, fig, out / "latency_cdf.png")


def write_plots(report: dict, out: Path) -> list[Path]:
    jobs = report["jobs"]
    paths = [plot_batch(jobs, out), plot_cdf(jobs, out)]
    if "decode" in jobs:
        paths.append(plot_sweeps(jobs["decode"], out))
    return [p for p in paths if p is not None]


def _sweep_table(sweep: dict, key: str, label: str) -> str:
    names = sorted({e for r in sweep.values() for e in _engines(r)})
    xs = sorted(sweep, key=int)
    lines = ["| engine | " + " | ".join(f"{label} {x}" for x in xs) + " |", "|" + " --- |" * (len(xs) + 1)]
    for name in names:
        cells = [f"{_engines(sweep[x])[name]['batches']['1'][key]:.2f}" if name in _engines(sweep[x]) else "—"
                 for x in xs]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_tables(report: dict) -> str:
    """One markdown page: the command, the machine, then each job's table."""
    m = report["machine_before"]
    parts = [(f"Made with `{report['command']}` in {report['seconds']} s on {m['cpu']}, {m['cores']} cores "
             f"(load before {m['loadavg'][0]:.2f}, after {report['machine_after']['loadavg'][0]:.2f}).")]
    jobs = report["jobs"]
    if "decode" in jobs:
        main = jobs["decode"]["main"]
        shape = main["shape"]
        parts += [(f"### Decode: {shape['layers']}x{shape['embd']} GPT-2 shape, prompt {shape['prompt']} -> "
                  f"{shape['new_tokens']} new tokens, greedy, {main['threads']} threads"),
                  decode_peers.markdown(main["engines"], shape["batches"], main["floor_ms_per_token"]),
                  (f"Bandwidth floor {main['floor_ms_per_token']:.2f} ms/token ({main['weight_bytes'] / 1e6:.0f} MB "
                  f"at {main['copy_bandwidth_gb_s']:.1f} GB/s). Skipped: {main['skipped'] or 'none'}."),
                  "B=1 decode ms/token by intra-op threads:", _sweep_table(jobs["decode"]["threads"],
                                                                          "decode_ms_per_token", "threads"),
                  "B=1 tokens/s (prefill included) by prompt length:", _sweep_table(jobs["decode"]["prompts"],
                                                                                    "tokens_per_s", "prompt")]
    if "qa" in jobs:
        qa = jobs["qa"]
        parts += [(f"### Extractive QA: BERT shape {qa['shape']['layers']}x{qa['shape']['hidden']}, sequence "
                  f"{qa['shape']['sequence']}, text in, {qa['threads']} threads"),
                  qa_peers.markdown(qa["engines"], qa["shape"]["batches"]), f"Skipped: {qa['skipped'] or 'none'}."]
    if "dgcnn" in jobs:
        d = jobs["dgcnn"]
        parts.append("### DGCNN reader (runtime/bundles/qa-dgcnn), passages/s")
        if "skipped" in d:
            parts.append(f"Skipped: {d['skipped']}")
        else:
            rows = [f"| {r['batch']} | {r['edgeinfer']:.0f} | {r['torch_eager']:.0f} | "
                    f"{r['edgeinfer'] / r['torch_eager']:.2f}× |" for r in d["table"]]
            parts.append("\n".join(["| batch | edgeinfer | PyTorch eager | ratio |", "| --- | --- | --- | --- |",
                                    *rows]))
    if "xiangqi" in jobs:
        rows = [f"| {ply} | {r['legal_moves']} | {r['choice_ms']} | {r['one_run_per_move_ms']} | {r['speedup']}× |"
                for ply, r in jobs["xiangqi"]["latency"].items()]
        parts += ["### Xiangqi move selection, ms (median)",
                  "\n".join(["| ply | legal moves | one call | one run per move | speed-up |", "|" + " --- |" * 5,
                             *rows])]
    if "dialogue" in jobs:
        d = jobs["dialogue"]
        rows = [f"| {t['engine']} | {t['batches']['1']['prefill_ms']:.1f} | {t['batches']['1']['decode_ms_per_token']:.2f} "
                f"| {t['load_s']:.2f} | {t['peak_rss_mb']:.0f} | {t['agrees']} |" for t in d["turn"]]
        sampled = d["sampled"]
        parts += [f"### Dialogue turn: default chat bundle, a {d['history_tokens']}-token history, greedy reply",
                  "\n".join(["| engine | first token ms | ms/token | load s | peak RSS MB | same tokens |",
                             "|" + " --- |" * 6, *rows]),
                  (f"Skipped: {d['skipped'] or 'none'}. Sampled turns (top-k 5, the chat defaults, kept cache): "
                   f"{sampled['contexts']} turns, first token {sampled['first_token_ms_median']} ms, then "
                   f"{sampled['per_token_ms_median']} ms/token (medians), {sampled['mean_reply_tokens']} tokens per "
                   f"reply, distinct-1/2 {sampled['distinct_1']}/{sampled['distinct_2']}.")]
    return "\n\n".join(parts) + "\n"
