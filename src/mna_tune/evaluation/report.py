"""The human-readable evaluation report (Markdown) under reports/."""

from __future__ import annotations

from .scoring import LOWER_IS_BETTER, METRICS

_LABELS = {"eval_loss": "eval loss (answer)", "perplexity": "perplexity", "rougeL_f1": "ROUGE-L F1 (Kiwi)",
           "chrf": "chrF", "exact_match": "exact match", "korean_only_share": "Korean-only share",
           "think_leak_share": "think-tag leaks", "length_ratio": "length ratio", "domain_term_recall":
           "domain-term recall", "gen_tokens_per_second": "generation tokens/s"}
_GROUP_METRICS = ("eval_loss", "rougeL_f1", "chrf", "korean_only_share", "domain_term_recall")


def _cell(text: str, limit: int = 400) -> str:
    text = text if len(text) <= limit else text[:limit] + "…"
    return text.replace("|", "\\|").replace("\n", "<br>") or "(empty)"


def _num(value) -> str:
    return "–" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _delta(metric: str, value) -> str:
    if value is None:
        return "–"
    if metric == "length_ratio":  # neither direction is better: closeness to 1 is
        return f"{value:+.4f}"
    better = value < 0 if metric in LOWER_IS_BETTER else value > 0
    return f"{value:+.4f}" + (" ✓" if better else "")


def render(title: str, overall: dict, by_group: dict, samples: list[dict], header_lines: list[str]) -> str:
    lines = [f"# {title}", "", *header_lines, "", "## Overall", "", "| metric | base | adapter | adapter − base |",
             "|---|---:|---:|---:|"]
    for metric in (*METRICS, "gen_tokens_per_second"):
        base, adapter = overall["base"].get(metric), overall["adapter"].get(metric)
        if base is None and adapter is None:
            continue
        lines.append(f"| {_LABELS[metric]} | {_num(base)} | {_num(adapter)} | "
                     f"{_delta(metric, overall['delta'].get(metric))} |")
    for kind, groups in by_group.items():
        lines += ["", f"## By {kind}", "",
                  f"| {kind} | " + " | ".join(f"{_LABELS[m]} (adapter, Δ)" for m in _GROUP_METRICS) + " |",
                  "|---|" + "---:|" * len(_GROUP_METRICS)]
        for value, result in groups.items():
            cells = [f"{_num(result['adapter'].get(m))} ({_delta(m, result['delta'].get(m))})" for m in _GROUP_METRICS]
            lines.append(f"| {value} | " + " | ".join(cells) + " |")
    if samples:
        lines += ["", "## Sample answers", ""]
        for number, sample in enumerate(samples, start=1):
            lines += [f"### {number}. {_cell(sample['question'], 200)}", "",
                      f"source `{sample['source']}`, category `{sample['category']}`", "",
                      "| reference | base | adapter |", "|---|---|---|",
                      f"| {_cell(sample['reference'])} | {_cell(sample['base'])} | {_cell(sample['adapter'])} |", ""]
    return "\n".join(lines).rstrip() + "\n"
