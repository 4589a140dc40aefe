"""reclf_cls zero-shot classification and cross-modal retrieval: prompt files, the image–text score,
and zero_shot.yaml / retrieval.yaml on the demo data and on the real cxr-notes set."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml

from conftest import REPO, SHARED_DATA, exception_text, run_bundle

CLS_CONFIGS = os.path.join(REPO, "bundles", "reclf_cls", "configs")
PROMPTS = os.path.join(CLS_CONFIGS, "prompts")
ZERO_SHOT = os.path.join(CLS_CONFIGS, "zero_shot.yaml")
RETRIEVAL = os.path.join(CLS_CONFIGS, "retrieval.yaml")
RETRIEVAL_KEYS = tuple(f"{d}_recall@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)) + tuple(
    f"{d}_precision@{k}" for d in ("i2t", "t2i") for k in (5, 10, 100)) + ("n_samples", "eval_split", "checkpoint")


def _write(tmp_path, content, name: str = "prompts.yaml") -> str:
    path = str(tmp_path / name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def _read_json(path: str) -> dict:
    def no_nan(value):
        raise AssertionError(f"{path} holds {value} (DESIGN §5: null, never NaN)")

    with open(path, encoding="utf-8") as f:
        return json.load(f, parse_constant=no_nan)


# ---- prompt files ------------------------------------------------------------------------------


def test_prompt_templates_expand_to_the_exact_phrase_list(tmp_path):
    from custom.prompts import load_prompts

    path = _write(tmp_path, """
fields:
  side: [left, right]
classes:
  effusion:
    phrases: [pleural effusion]
    templates: ["{severity} {side} pleural effusion", "{side} effusion"]
    severity: [small, ""]        # "" makes the word optional
    negative: [no pleural effusion, "no   effusion"]
  cardiomegaly: [cardiomegaly, " enlarged  heart ", cardiomegaly]
  nodule:
    templates: ["{side} {zone} nodule"]
    side: [right]                # a class-level slot overrides `fields`
    zone: [upper, lower]
""")
    prompts = load_prompts(path)
    assert list(prompts) == ["effusion", "cardiomegaly", "nodule"]
    assert prompts["effusion"].positive == [
        "pleural effusion",
        "small left pleural effusion", "small right pleural effusion",  # the last slot varies fastest
        "left pleural effusion", "right pleural effusion",
        "left effusion", "right effusion",
    ]
    assert prompts["effusion"].negative == ["no pleural effusion", "no effusion"]
    assert prompts["cardiomegaly"].positive == ["cardiomegaly", "enlarged heart"]  # cleaned, de-duplicated
    assert prompts["cardiomegaly"].negative == []
    assert prompts["nodule"].positive == ["right upper nodule", "right lower nodule"]


@pytest.mark.parametrize("classes, fragment", [
    ({"effusion": {"templates": ["{sev} effusion"]}}, "slot 'sev'"),
    ({"effusion": {"templtes": ["{sev} effusion"], "sev": ["small"]}}, "'templtes'"),
    ({"effusion": {"phrases": {"a": 1}}}, "'phrases' must be a list"),
    ({"effusion": "", "nodule": ["nodule"]}, "empty string"),
    ({"effusion": {"phrases": [True]}}, "quote it"),
    ({"effusion": None}, "no phrases"),
    ({"effusion": {"phrases": ["x"], "negative": {"templates": ["no {what}"]}}}, "slot 'what'"),
])
def test_malformed_prompt_file_names_file_and_class(tmp_path, classes, fragment):
    from custom.prompts import PromptError, load_prompts

    path = _write(tmp_path, {"classes": classes})
    with pytest.raises(PromptError) as err:
        load_prompts(path)
    message = str(err.value)
    assert path in message and "'effusion'" in message and fragment in message, message


def test_prompt_file_structure_errors(tmp_path):
    from custom.prompts import PromptError, load_prompts, match_classes, parse_prompts

    with pytest.raises(PromptError, match="top-level 'classes:'"):
        load_prompts(_write(tmp_path, "effusion: [pleural effusion]\n"))
    with pytest.raises(PromptError, match="not found"):
        load_prompts(str(tmp_path / "missing.yaml"))
    prompts = parse_prompts({"classes": {"Efusion": ["x"], "nodule": ["y"]}}, "p.yaml")
    with pytest.raises(PromptError, match="'Efusion' is not a class of the dataset"):
        match_classes(prompts, ["effusion", "nodule"], "p.yaml", require_all=False)
    prompts = parse_prompts({"classes": {"NODULE": ["y"]}}, "p.yaml")  # case-insensitive match
    assert [name for name, _ in match_classes(prompts, ["effusion", "nodule"], "p.yaml", False)] == ["nodule"]
    with pytest.raises(PromptError, match="no class 'effusion'"):
        match_classes(prompts, ["effusion", "nodule"], "p.yaml", require_all=True)


def test_shipped_prompt_files_cover_their_datasets():
    from custom.datasets.chexpert import COMPETITION
    from custom.datasets.covid_notes import CLASS_NAMES
    from custom.demo import FINDINGS
    from custom.prompts import load_prompts

    demo = load_prompts(os.path.join(PROMPTS, "demo.yaml"))
    assert list(demo) == list(FINDINGS)
    assert all(p.positive and p.negative for p in demo.values())  # dict labels: positive vs negative
    assert "no pleural effusion" in demo["effusion"].negative and "left upper lobe opacity" in demo["opacity"].positive
    assert list(load_prompts(os.path.join(PROMPTS, "covid_notes.yaml"))) == list(CLASS_NAMES)
    chexpert = load_prompts(os.path.join(PROMPTS, "chexpert_5x200.yaml"))
    assert list(chexpert) == list(COMPETITION)
    assert all(len(p.positive) >= 30 for p in chexpert.values())  # severity x subtype x location
    assert "moderate left pleural effusion" in chexpert["Pleural Effusion"].positive


@pytest.mark.parametrize("name", ["zero_shot.yaml", "retrieval.yaml"])
def test_configs_default_to_the_pretraining_checkpoint(name):
    with open(os.path.join(CLS_CONFIGS, name), encoding="utf-8") as f:
        config = yaml.safe_load(f)
    assert config["pretrained_ckpt"] == "bundles/reclf_pretrain/models/model.pt" and config["image_size"] == 64


# ---- scoring --------------------------------------------------------------------------------------


def test_scores_do_not_depend_on_the_other_test_images(pretrained, tiny_datalist):
    """No test-set normalisation: an image's scores are the same alone, in a chunk or in the full set,
    and ``combined`` is the mean of the scaled global and local terms."""
    from custom.data import load_datalist
    from custom.downstream import ImageItems
    from custom.engines.pretrained import load_pretrained
    from custom.zero_shot import PairScorer

    model, tokenizer = load_pretrained(os.path.join(pretrained, "models", "model.pt"))
    items = load_datalist(tiny_datalist, os.path.dirname(tiny_datalist), "test")[:12]
    texts = ["small left pleural effusion", "no pleural effusion", "the heart is markedly enlarged"]
    full, few = ImageItems(items, 64), ImageItems(items[:3], 64)
    out = {}
    for mode in ("combined", "global", "local"):
        scorer = PairScorer(model, tokenizer, "cpu", mode, batch_size=5, image_chunk=4)
        encoded = scorer.encode_texts(texts)
        out[mode] = scorer.score(full, encoded)
        assert out[mode].shape == (12, 3)
        torch.testing.assert_close(scorer.score(few, encoded), out[mode][:3], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["combined"], 0.5 * (out["global"] + out["local"]), rtol=1e-4, atol=1e-4)
    assert "trained scales" in PairScorer(model, tokenizer, "cpu").description


def test_gloria_sum_pooling_is_length_corrected(pretrained, tiny_datalist):
    """GLoRIA's log-sum-exp over words grows with the phrase length: zero-shot subtracts log(#words)."""
    from custom.data import load_datalist
    from custom.downstream import ImageItems, encode_images
    from custom.engines.pretrained import build_reclf_model, load_pretrained
    from custom.zero_shot import PairScorer

    _, tokenizer = load_pretrained(os.path.join(pretrained, "models", "model.pt"))
    torch.manual_seed(0)
    model = build_reclf_model(tokenizer, objective="gloria", gloria_pooling="sum").eval()
    images = ImageItems(load_datalist(tiny_datalist, os.path.dirname(tiny_datalist), "test")[:4], 64)
    scorer = PairScorer(model, tokenizer, "cpu", "local")
    texts = scorer.encode_texts(["effusion", "small left pleural effusion at the base"])
    with torch.no_grad():
        raw = model.local_similarity(encode_images(model, images, "cpu", local=True), texts)  # (4, 2)
        expected = float(model.local_scale()) * (raw - texts["word_mask"].sum(1).float().log())
    torch.testing.assert_close(scorer.score(images, texts), expected, rtol=1e-4, atol=1e-4)
    assert "log(n_words)" in scorer.description


def test_convirt_checkpoint_scores_global_only(tmp_path, pretrained, tiny_datalist):
    from custom.engines.pretrained import build_reclf_model, load_pretrained, save_pretrained

    _, tokenizer = load_pretrained(os.path.join(pretrained, "models", "model.pt"))
    torch.manual_seed(0)
    ckpt = save_pretrained(build_reclf_model(tokenizer, objective="convirt"), tokenizer, str(tmp_path / "convirt"))
    run_bundle(ZERO_SHOT, dataset_dir=os.path.dirname(tiny_datalist), datalist=tiny_datalist, pretrained_ckpt=ckpt,
               output_dir=str(tmp_path), device="cpu")
    metrics = _read_json(str(tmp_path / "eval" / "zero_shot.json"))
    assert metrics["scoring"].startswith("global only") and "convirt" in metrics["scoring"]
    assert metrics["n_samples"] == 32 and metrics["task"] == "multi_label"


@pytest.mark.parametrize("config", [ZERO_SHOT, RETRIEVAL])
def test_missing_checkpoint_says_pretrain_first(tmp_path, tiny_datalist, config):
    with pytest.raises(Exception) as err:
        run_bundle(config, dataset_dir=os.path.dirname(tiny_datalist), datalist=tiny_datalist,
                   pretrained_ckpt=str(tmp_path / "nowhere" / "model.pt"), output_dir=str(tmp_path), device="cpu")
    assert "run reclf_pretrain/configs/train.yaml first" in exception_text(err.value)
    assert not (tmp_path / "eval").exists()


# ---- pretrained vs random init on the demo ------------------------------------------------------


@pytest.fixture(scope="module")
def random_init(pretrained_demo, tmp_path_factory) -> str:
    """The same architecture and tokenizer with random weights (the baseline zero-shot must beat)."""
    from custom.engines.pretrained import build_reclf_model, load_pretrained, save_pretrained

    model, tokenizer = load_pretrained(pretrained_demo)
    config = model.build_config
    torch.manual_seed(0)
    fresh = build_reclf_model(tokenizer, image_encoder=config["image_encoder"], text_pooling=config["text_pooling"],
                              **config["model"])
    return save_pretrained(fresh, tokenizer, str(tmp_path_factory.mktemp("zs_random")))


def test_pretrained_beats_random_init(pretrained_demo, random_init, demo_dir, tmp_path):
    results = {}
    for tag, ckpt in (("pretrained", pretrained_demo), ("random", random_init)):
        out = str(tmp_path / tag)
        run_bundle(ZERO_SHOT, dataset_dir=demo_dir, pretrained_ckpt=ckpt, output_dir=out, device="cpu")
        run_bundle(RETRIEVAL, dataset_dir=demo_dir, pretrained_ckpt=ckpt, output_dir=out, device="cpu")
        results[tag] = (_read_json(os.path.join(out, "eval", "zero_shot.json")),
                        _read_json(os.path.join(out, "eval", "retrieval.json")))
    (zs, rt), (zs0, rt0) = results["pretrained"], results["random"]
    for metrics in (zs, zs0):
        assert metrics["n_samples"] == 96 and metrics["eval_split"] == "test" and metrics["task"] == "multi_label"
        assert all(f"auroc/{name}" in metrics for name in ("opacity", "effusion", "cardiomegaly"))
        assert metrics["scoring"].startswith("combined") and metrics["prompts"].endswith("demo.yaml")
    for metrics in (rt, rt0):
        assert all(k in metrics for k in RETRIEVAL_KEYS) and metrics["precision_queries"] == "reports"
        assert metrics["retrieval_score"] == "global" and metrics["n_samples"] == 96
        assert 0 < metrics["n_single_class"] < 96  # dict labels with exactly one positive finding
    print("zero-shot auroc_mean pretrained", zs["auroc_mean"], "random", zs0["auroc_mean"])
    assert zs["auroc_mean"] > zs0["auroc_mean"] + 0.05
    recall = rt["i2t_recall@10"] + rt["t2i_recall@10"]
    recall0 = rt0["i2t_recall@10"] + rt0["t2i_recall@10"]
    print("retrieval R@10 i2t+t2i pretrained", recall, "random", recall0)
    assert recall > recall0 + 0.05


def test_precision_with_prompt_queries(pretrained_demo, demo_dir, tmp_path):
    """text→image Precision@K with each class's prompt phrases as queries (datasets without reports)."""
    run_bundle(RETRIEVAL, dataset_dir=demo_dir, pretrained_ckpt=pretrained_demo, output_dir=str(tmp_path),
               device="cpu", precision_queries="prompts", retrieval_score="global+local")
    metrics = _read_json(str(tmp_path / "eval" / "retrieval.json"))
    assert metrics["precision_queries"] == "prompts" and metrics["prompts"].endswith("demo.yaml")
    assert metrics["i2t_precision@5"] is None  # undefined with prompt queries
    assert all(0.0 <= metrics[f"t2i_precision@{k}"] <= 1.0 for k in (5, 10, 100))
    assert metrics["n_precision_queries"] > 6 and metrics["scoring"].startswith("combined")


# ---- real data: the cxr-notes set ---------------------------------------------------------------


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_DATA, "cxr-notes")), reason="no ../shared/data/cxr-notes")
def test_covid_notes_zero_shot_and_retrieval_run(pretrained, tmp_path):
    from custom.datasets.covid_notes import prepare_covid_notes

    root = os.path.join(SHARED_DATA, "cxr-notes")
    datalist = str(tmp_path / "covid_notes.json")
    prepare_covid_notes(root, datalist, quiet=True)
    with open(datalist, encoding="utf-8") as f:
        test = json.load(f)["test"]
    n_labelled = sum(1 for it in test if it.get("labels") is not None)
    n_reports = sum(1 for it in test if it.get("report"))
    common = dict(dataset_dir=root, datalist=datalist, pretrained_ckpt=os.path.join(pretrained, "models", "model.pt"),
                  output_dir=str(tmp_path), device="cpu", prompts=os.path.join(PROMPTS, "covid_notes.yaml"))
    run_bundle(ZERO_SHOT, **common)
    run_bundle(RETRIEVAL, **common)
    zs = _read_json(str(tmp_path / "eval" / "zero_shot.json"))
    keys = ("acc", "macro_f1", "auroc_mean", "auroc/COVID-19", "auroc/Other pneumonia", "auroc/No Finding",
            "n_samples", "eval_split", "checkpoint", "prompts", "scoring")
    assert all(k in zs for k in keys) and zs["task"] == "multi_class"
    assert zs["n_samples"] == n_labelled and 0.0 <= zs["acc"] <= 1.0
    rt = _read_json(str(tmp_path / "eval" / "retrieval.json"))
    assert all(k in rt for k in RETRIEVAL_KEYS)
    assert rt["n_samples"] == len(test) and rt["n_reports"] == n_reports and rt["precision_queries"] == "reports"
    assert all(0.0 <= rt[k] <= 1.0 for k in RETRIEVAL_KEYS[:12])  # int labels: every precision is defined
