"""visualize.yaml and custom.visualize: the PNGs and grounding.json of a real run, the attention
against a plain per-pair computation, the grounding share against hand-computed values, the
GLoRIA / ConVIRT cases and a clear error for a missing checkpoint."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from conftest import TINY, run_bundle

from custom import visualize as V
from custom.text import normalize_report


@pytest.fixture(scope="module")
def ckpt(pretrained) -> str:
    return os.path.join(pretrained, "models", "model.pt")


def _data(tiny_datalist) -> dict:
    return {"dataset_dir": os.path.dirname(tiny_datalist), "datalist": tiny_datalist}


def test_bundle_writes_pngs_and_grounding(ckpt, tiny_datalist, tmp_path):
    from PIL import Image

    run_bundle("visualize.yaml", ckpt=ckpt, output_dir=str(tmp_path), num_samples=2, grounding_samples=16,
               image_size=TINY["image_size"], device="cpu", num_workers=0, **_data(tiny_datalist))
    out = tmp_path / "eval" / "visualize"
    pngs = sorted(p for p in os.listdir(out) if p.endswith(".png"))
    assert len(pngs) == 2, pngs
    for name in pngs:
        with Image.open(out / name) as img:
            img.verify()  # a complete, valid PNG
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.width >= 800 and img.height >= 500, img.size
            assert len(img.getcolors(maxcolors=1 << 16) or ()) > 20  # a drawing, not a blank canvas
    result = json.loads((out / "grounding.json").read_text())
    assert result["objective"] == "reclf" and result["srm"] and result["irm"]
    assert result["eval_split"] == "test" and result["figures"] == pngs
    assert result["n_samples"] > 0 and result["n_finding_words"] >= result["n_samples"]
    numbers = {k: v for k, v in result.items() if k.startswith(("grounding", "side_grounding"))}
    assert "grounding/effusion" in numbers or len(numbers) > 3
    for key, value in numbers.items():
        assert value is None or 0.0 <= value <= 1.0, (key, value)
    assert result["grounding"] is not None and result["grounding_uniform"] is not None


def test_attention_equals_plain_per_pair_computation(ckpt, tiny_datalist):
    from custom.data import load_datalist
    from custom.engines.pretrained import load_pretrained

    model, tokenizer = load_pretrained(ckpt)
    items = load_datalist(tiny_datalist, os.path.dirname(tiny_datalist), "test", require=("image", "report"))[:4]
    records = V.collect_evidence(model, tokenizer, items, image_size=TINY["image_size"], batch_size=4)
    scorer = model.scorer
    from custom.data import PretrainDataset

    dataset = PretrainDataset(items, tokenizer, image_size=TINY["image_size"], augment=False)
    batch = dataset.collate([dataset[n] for n in range(len(items))])
    with torch.no_grad():
        image = model.encode_image(batch["image"])
        text = model.encode_text(batch["input_ids"], batch["attention_mask"], batch["word_ids"])
        all_pairs = model.local_similarity(image, text)  # (B, B), the training code path
    for b, record in enumerate(records):
        words = text["words"][b][text["word_mask"][b]]  # (T', D) valid words only
        regions = image["regions"][b]  # (R, D), with position codes added
        cosine = torch.nn.functional.normalize(words, dim=-1) @ torch.nn.functional.normalize(regions, dim=-1).t()
        reference = torch.softmax(scorer.attention_scale().detach() * cosine, dim=-1)  # (T', R)
        attention = torch.from_numpy(record["attention"])
        assert attention.shape == reference.shape == (len(record["words"]), 16)
        torch.testing.assert_close(attention.sum(-1), torch.ones(len(words)), rtol=0, atol=1e-5)
        torch.testing.assert_close(attention, reference, rtol=1e-4, atol=1e-6)
        # the score of the details is the matched pair's entry of the all-pairs matrix
        assert math.isclose(record["score"], float(all_pairs[b, b]), rel_tol=1e-4, abs_tol=1e-5)
        assert math.isclose(float(record["importance"].sum()), 1.0, abs_tol=1e-5)
        t = len(record["words"])
        assert record["srm_attention"].shape[1:] == (t, t)
        np.testing.assert_allclose(record["srm_attention"].sum(-1), 1.0, atol=1e-5)
        # the word strings line up with the model's word axis
        assert record["words"] == V.report_words(tokenizer, items[b]["report"])
        assert all(w in normalize_report(items[b]["report"]) for w in record["words"])


def test_grounding_share_hand_computed():
    # 2x2 regions over a 4x4 mask: the top-left cell is fully inside, the top-right a quarter
    mask = np.zeros((4, 4), dtype=np.float32)
    mask[0:2, 0:2] = 1
    mask[0, 2] = 1
    fraction = V.mask_on_grid(mask, (2, 2))
    assert fraction.tolist() == [[1.0, 0.25], [0.0, 0.0]]
    attention = torch.tensor([0.1, 0.2, 0.3, 0.4])
    assert math.isclose(float(V.attention_share_in_mask(attention, fraction)), 0.1 * 1 + 0.2 * 0.25, rel_tol=1e-6)
    # the union mask of two opposite-side findings is split at the midline (patient's left = image right)
    union = np.zeros((4, 4), dtype=np.float32)
    union[1, 0] = union[2, 3] = 1
    left, right = V.demo_finding_masks(union, [{"finding": "effusion", "side": "left"},
                                               {"finding": "nodule", "side": "right"}])
    assert left[2, 3] == 1 and left.sum() == 1 and right[1, 0] == 1 and right.sum() == 1
    assert V.demo_finding_masks(union, [{"finding": "effusion", "side": "left"}, {"finding": "nodule", "side": "right"},
                                        {"finding": "cardiomegaly", "side": "none"}]) is None
    # a whole record: the effusion word puts 0.7 on the image's right column (its mask), the nodule word 0.5
    words = ["left", "effusion", "and", "right", "nodule"]
    att = np.full((5, 4), 0.25, dtype=np.float64)
    att[1] = [0.1, 0.7, 0.1, 0.1]  # regions row-major: (0,0) (0,1) (1,0) (1,1)
    att[4] = [0.5, 0.0, 0.5, 0.0]
    att[0] = [0.0, 0.6, 0.0, 0.4]  # 'left': all on the image's right half
    att[3] = [0.3, 0.2, 0.3, 0.2]  # 'right': 0.6 on the image's left half
    union = np.zeros((4, 4), dtype=np.float32)
    union[0:2, 2:4] = 1  # effusion: the top-right cell
    union[0:4, 0] = 1  # nodule: half of both left cells
    record = {"words": words, "attention": att, "grid": (2, 2), "image": np.zeros((4, 4), np.float32)}
    findings = [{"finding": "effusion", "side": "left"}, {"finding": "nodule", "side": "right"}]
    masks = V.demo_finding_masks(union, findings)
    record["finding_masks"] = [(f["finding"], m, V.finding_word_positions(words, f["finding"]))
                               for f, m in zip(findings, masks)]
    result = V.grounding_from_records([record])
    assert math.isclose(result["grounding/effusion"], 0.7) and math.isclose(result["grounding/nodule"], 0.5)
    assert math.isclose(result["grounding"], (0.7 + 0.5) / 2)
    assert math.isclose(result["grounding_uniform"], (0.25 + 0.25) / 2) and result["grounding_uniform/nodule"] == 0.25
    assert result["n_samples"] == 1 and result["n_finding_words"] == 2
    assert math.isclose(result["side_grounding"], (1.0 + 0.6) / 2) and result["n_side_words"] == 2


def test_gloria_and_convirt_checkpoints(ckpt, tiny_datalist, tmp_path):
    """GLoRIA: attention and grounding, a note instead of IRM/SRM; ConVIRT: no attention, grounding N/A."""
    from transformers import AutoTokenizer

    from custom.engines.pretrained import build_reclf_model, save_pretrained

    tokenizer = AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(ckpt), "text"), local_files_only=True)
    for objective in ("gloria", "convirt"):
        torch.manual_seed(0)
        folder = tmp_path / objective
        path = save_pretrained(build_reclf_model(tokenizer, objective=objective), tokenizer, str(folder / "models"))
        visualizer = V.AttentionVisualizer(path, tiny_datalist, os.path.dirname(tiny_datalist), str(folder / "vis"),
                                           num_samples=1, grounding_samples=8, image_size=TINY["image_size"])
        result = visualizer.run()
        assert result["objective"] == objective and len(result["figures"]) == 1
        assert os.path.getsize(folder / "vis" / result["figures"][0]) > 5000
        if objective == "gloria":
            assert 0.0 <= result["grounding"] <= 1.0 and result["n_samples"] > 0
        else:
            assert result["grounding"] is None and "no word→region attention" in result["note"]
        assert json.loads((folder / "vis" / "grounding.json").read_text())["objective"] == objective


def test_missing_checkpoint_is_a_clear_error(tiny_datalist, tmp_path):
    missing = str(tmp_path / "nowhere" / "model.pt")
    with pytest.raises(FileNotFoundError, match="not found: train one with"):
        V.grounding_score(missing, tiny_datalist, os.path.dirname(tiny_datalist))
    with pytest.raises(Exception) as info:  # through the bundle: MONAI wraps it, the cause is ours
        run_bundle("visualize.yaml", ckpt=missing, output_dir=str(tmp_path), **_data(tiny_datalist))
    cause = info.value
    while cause is not None and not isinstance(cause, FileNotFoundError):
        cause = cause.__cause__
    assert cause is not None and missing in str(cause)
