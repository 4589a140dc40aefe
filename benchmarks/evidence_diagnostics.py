"""The evidence study's diagnostics from a model's own tensors (:mod:`benchmarks.evidence`):
IRM weights by word kind, SRM attention of a side word on its own / the other finding, and a
ridge probe from the matching vectors to the attended position."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any


def filler_vocabulary() -> set[str]:
    """Words of the demo's filler sentences that no finding, negation or location phrase uses."""
    import re

    from custom.data.demo import reports as demo  # the report templates and word lists

    def words(texts) -> set[str]:
        return {w for t in texts for w in re.findall(r"[a-z]+", t.lower())}

    meaningful = set()
    for table in (demo.FINDING_TEMPLATES, demo.BILATERAL_TEMPLATES, demo.IMPRESSION_TEMPLATES, demo.NEGATIONS):
        meaningful |= words(t for v in table.values() for t in v)
    meaningful |= words(t for v in demo.ZONE_WORDS.values() for t in v)
    meaningful |= words(t for v in demo.SEVERITY_WORDS.values() for s in v.values() for t in s)
    meaningful |= words(demo.NORMAL_LUNG_STATEMENTS) | {"left", "right"}
    return words(demo.FILLER) - meaningful


def ridge_r2(features, targets, alpha: float = 1.0) -> float | None:
    """R² (mean over target columns) of a ridge regression fitted on the first half of the rows
    and scored on the second half; None with too few rows or no target variance."""
    import numpy as np

    x, y = np.asarray(features, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    n = x.shape[0]
    if n < 8:
        return None
    half = n // 2
    mu_x, mu_y = x[:half].mean(0), y[:half].mean(0)
    xt, yt = x[:half] - mu_x, y[:half] - mu_y
    w = np.linalg.solve(xt.T @ xt + alpha * np.eye(x.shape[1]), xt.T @ yt)
    pred = (x[half:] - mu_x) @ w + mu_y
    sst = ((y[half:] - y[half:].mean(0)) ** 2).sum(0)
    if not np.all(sst > 1e-12):
        return None
    return float(np.mean(1.0 - ((y[half:] - pred) ** 2).sum(0) / sst))


def diagnostics(records: Sequence[Mapping[str, Any]], matchings: Sequence[Any] | None,
                matchings_srm: Sequence[Any] | None, filler: set[str]) -> dict[str, Any]:
    """The diagnostics of the module docstring from :func:`custom.visualize.collect_evidence`
    records (with ``finding_masks``) and, per record, its (T', D_m) matching vectors before /
    after SRM (None when the scorer has none)."""
    import numpy as np

    from custom.visualize import FINDING_WORDS, finding_word_positions

    finding_vocab = {w for names in FINDING_WORDS.values() for w in names}
    probe_x, probe_x_srm, probe_y = [], [], []
    own, other, chance = [], [], []
    irm: dict[str, list[float]] = {"finding": [], "side": [], "filler": []}
    for n, record in enumerate(records):
        attention = record.get("attention")
        if attention is None:
            continue
        h, w = record["grid"]
        ys, xs = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
        coords = np.stack([xs.reshape(-1), ys.reshape(-1)], 1)  # (R, 2), row-major like the grid
        centroid = attention @ coords  # (T', 2)
        if matchings is not None:
            probe_x.append(np.asarray(matchings[n]))
            probe_y.append(centroid)
            if matchings_srm is not None:
                probe_x_srm.append(np.asarray(matchings_srm[n]))
        words = record["words"]
        t = len(words)
        beta = record.get("importance")
        if beta is not None and record.get("irm"):
            rel = np.asarray(beta) * t
            for k, word in enumerate(words):
                kind = "finding" if word in finding_vocab else "side" if word in ("left", "right") else \
                    "filler" if word in filler else None
                if kind:
                    irm[kind].append(float(rel[k]))
        srm = record.get("srm_attention")
        findings = record["item"].get("findings") or []
        by_side = {f["side"]: f["finding"] for f in findings if f.get("side") in ("left", "right")}
        if srm is not None and len(by_side) == 2:
            attn = np.asarray(srm).mean(0)  # (T', T'), heads averaged
            for k, word in enumerate(words):
                if word not in by_side:
                    continue
                mine = finding_word_positions(words, by_side[word])
                theirs = finding_word_positions(words, by_side["left" if word == "right" else "right"])
                if mine:
                    own.append(float(attn[k, mine].sum()))
                    other.append(float(attn[k, theirs].sum()) if theirs else 0.0)
                    chance.append(len(mine) / t)

    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    out: dict[str, Any] = {"srm/own_mass": mean(own), "srm/other_mass": mean(other), "srm/chance": mean(chance),
                           "srm/n_side_words": len(own)}
    for kind, values in irm.items():
        out[f"irm/{kind}"] = mean(values)
    if probe_x:
        x, y = np.concatenate(probe_x), np.concatenate(probe_y)
        out["probe/r2"] = ridge_r2(x, y)
        out["probe/centroid_std"] = float(y.std(0).mean())
        if probe_x_srm:
            out["probe/r2_srm"] = ridge_r2(np.concatenate(probe_x_srm), y)
    return out


def capture_matchings(model) -> tuple[list[Any], list[Any], Callable[[], None]]:
    """Forward hooks on the last layer of the RECLF scorer's ``match_feature`` (m) and ``srm`` (m'): lists that fill
    with one (B, 1, 1, T, D_m) tensor per :meth:`RECLFModel.matched_pair_details` call, and a
    function removing the hooks. Empty lists for scorers without them."""
    pre, post, handles = [], [], []
    scorer = getattr(model, "scorer", None)
    if scorer is not None and hasattr(scorer, "match_feature"):
        handles.append(scorer.match_feature[-1].register_forward_hook(lambda m, i, o: pre.append(o.detach())))
        if getattr(scorer, "srm", None) is not None:
            handles.append(scorer.srm.register_forward_hook(lambda m, i, o: post.append(o[0].detach())))

    def remove() -> None:
        for handle in handles:
            handle.remove()

    return pre, post, remove


def per_record(batches: Sequence[Any], records: Sequence[Mapping[str, Any]], batch_size: int) -> list[Any] | None:
    """Split hooked batch tensors (B·T or B × 1 × 1 × T leading dims, one per batch of
    ``batch_size`` records of :func:`custom.visualize.collect_evidence`) into one (T', D) array
    per record, in order."""
    if not batches:
        return None
    sizes = [min(batch_size, len(records) - start) for start in range(0, len(records), batch_size)]
    if len(sizes) != len(batches):
        raise RuntimeError(f"hooked {len(batches)} batches for {len(sizes)} batches of records")
    rows = [row for n, batch in zip(sizes, batches) for row in batch.reshape(n, -1, batch.shape[-1]).float().numpy()]
    return [row[: len(r["words"])] for row, r in zip(rows, records)]
