"""The Markdown report of ``benchmarks/peers.py`` (``make bench-peers``), from its result dict."""

from __future__ import annotations

from typing import Any


def _f(v: float, nd: int = 3) -> str:
    return f"{v:.{nd}f}"


def _search_line(res: dict[str, Any]) -> list[str]:
    """Where the --weights came from, when the file records a weight search."""
    ws = res.get("weights_search")
    if not ws:
        return []
    return [f"- those weights: `qprune tune` on the VALIDATION split, {ws.get('n_trials')} trials, "
            f"{ws.get('seconds', 0):.0f} s, best validation PSNR {ws.get('best_value', float('nan')):.3f} dB "
            "(the weight search's time is not in the table)"]


def reading(res: dict[str, Any]) -> list[str]:
    """What the table says, computed from the rows: the order by PSNR and what each row kept."""
    b = res["unpruned"]
    rows = sorted(res["rows"], key=lambda r: -r["psnr"])
    tp_rows = [r for r in rows if r["method"] in res["criteria"]]
    out = ["**Reading.** By test PSNR at k = %d: " % res["k"] + ", ".join(
        f"`{r['method']}` {_f(r['psnr'])} dB ({100 * r['params'] / b['params']:.0f} % params, "
        f"{100 * r['macs'] / b['macs']:.0f} % MACs kept)" for r in rows) + "."]
    if tp_rows:
        best = tp_rows[0]
        for name in ("taylor-greedy", "hybrid-qubo", "hybrid-qubo (--weights)"):
            r = next((x for x in rows if x["method"] == name), None)
            if r is not None:
                out.append(f"`{name}` − best torch-pruning criterion (`{best['method']}`): "
                           f"{r['psnr'] - best['psnr']:+.3f} dB, params {r['params'] - best['params']:+d}, "
                           f"MACs {r['macs'] - best['macs']:+d}.")
    out.append("Equal k is equal unit count, not equal cost: the units differ in size (a branch unit of an "
               "`upN.conv` is one 1x1 filter; a `conv1` unit holds a SimpleGate pair, its depthwise filters and "
               "the consumers' input slices), so the rows remove different params and MACs (columns above).")
    return [" ".join(out)]


def markdown(res: dict[str, Any]) -> str:
    """The report: the table at k, the MetaPruner comparison at k_c, which units each criterion scored."""
    b = res["unpruned"]
    lines = [
        "# Peers at equal k: torch-pruning's criteria beside ours", "",
        f"- model `{res['checkpoint']}`{' (--quick: pipeline check, not the paper setting)' if res['quick'] else ''}; "
        f"space from `prepare`: {res['N']} units in {res['layers']} layers; k = round({res['sparsity']} N) = "
        f"**{res['k']}** for every row (per-layer caps of the space)",
        f"- test split {res['test_patches']} patches; calibration {res['calibration_patches']} patches; "
        f"torch-pruning {res['torch_pruning']}; total wall time {res['wall_s']:.0f} s (1 torch thread)",
        f"- hybrid weights given with --weights{' (`' + res['weights_file'] + '`)' if res.get('weights_file') else ''}: "
        f"{res['weights']}" if res["weights"] else
        "- hybrid-qubo with default weights (all 1); no --weights given",
        *_search_line(res), "",
        "## All units, k = %d (test split; params/MACs of the physically removed model)" % res["k"], "",
        "| method | k | PSNR (dB) | SSIM | params | MACs | pruned channel/branch | setup s | signals s | select s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| unpruned | 0 | {_f(b['psnr'])} | {_f(b['ssim'], 4)} | {b['params']} | {b['macs']} | – | – | – | – |",
    ]
    for r in sorted(res["rows"], key=lambda r: -r["psnr"]):
        kinds = r["pruned_by_kind"]
        lines.append(f"| `{r['method']}` | {r['k']} | {_f(r['psnr'])} | {_f(r['ssim'], 4)} | {r['params']} | "
                     f"{r['macs']} | {kinds.get('channel', 0)}/{kinds.get('branch', 0)} | {_f(r['setup_s'], 1)} | "
                     f"{_f(r['signals_s'], 1)} | {_f(r['select_s'], 2)} |")
    lines += [
        "", "`setup` = dependency graph (tp rows) or space discovery (ours); `signals` = gradient pass "
        "(tp-taylor: batch backward; tp-hessian: per-sample backward, shared by nothing else) or our calibration "
        "pass for that method alone (the two hybrid rows share one); `select` = importance + global ranking, or "
        "formulate + exact-k solve.", "",
        *reading(res), "",
        "## Which of our units each torch-pruning criterion scored", "",
        "| layer | scored by | group root | units |", "|---|---|---|---|",
    ]
    lines += [f"| `{s['layer']}` | {s['kind']} | `{s['root']}` | {s['units']} |" for s in res["scopes"]]
    own = sum(s["units"] for s in res["scopes"] if s["kind"] == "own group")
    lines += [
        "", f"All five criteria score the same units the same way: {own} units through torch-pruning's own group "
        "(its group of that layer equals our layer's unit set), the rest (residual-branch units) through a one-item "
        "group of the branch conv's output filters, because torch-pruning's group for those convs is the whole "
        "residual trunk (pruning it removes trunk channels, which our space keeps whole).", "",
        f"## torch-pruning's own MetaPruner (global_pruning=True) at k_c = {res['k_c']} of the "
        f"{res['channel_units']} units it can express", "",
        "| criterion | MetaPruner PSNR | ours PSNR | MetaPruner params | ours params | MetaPruner MACs | ours MACs | "
        "units MetaPruner / ours | masks differ | pruning ratio | MetaPruner s |", "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in res["metapruner"]:
        t, o = c["metapruner"], c["ours"]
        lines.append(f"| `{c['method']}` | {_f(t['psnr'])} | {_f(o['psnr'])} | {t['params']} | {o['params']} | "
                     f"{t['macs']} | {o['macs']} | {t['k']} / {o['k']} | {c['masks_differ']} | "
                     f"{t['pruning_ratio']:.4f} ({t['root_channels_pruned']} of {t['root_channels_total']} root ch.) | "
                     f"{_f(t['time_s'], 1)} |")
    lines += [
        "", "MetaPruner is given every group other than the own-group layers as `ignored_layers`, so it prunes only "
        "channel units; its ratio counts root channels, and one root channel of a `conv4` group takes a SimpleGate "
        "pair (one unit), so the ratio was searched until it removed k_c units (the closest count where it cannot: "
        "MetaPruner skips a group that its threshold would empty, `DependencyGraph.check_pruning_group`, where "
        "our caps keep one unit per layer). `ours` is the same "
        "criterion's scores through our route (global ranking of those units, per-layer caps, `apply_mask`). "
        "MetaPruner's PSNR is of the model it pruned physically; ours of the gated model, params/MACs of our "
        "removed model. MetaPruner cannot run at k itself: the branch units are not expressible, and k exceeds "
        "what the channel layers may lose.", "",
    ]
    return "\n".join(lines)
