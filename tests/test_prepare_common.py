"""``prepare``: patient-grouped splits, identical images, the real cxr-notes set (covid_notes),
the demo, the command line, and a pretraining run on the real datalist."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, SHARED_DATA, TINY, run_bundle

from custom.datasets.common import PrepareError, PrepareLog, Record, assign_splits, patient_groups, read_csv

CXR_NOTES = os.path.join(SHARED_DATA, "cxr-notes")
needs_notes = pytest.mark.skipif(not os.path.isdir(CXR_NOTES), reason="../shared/data/cxr-notes not present")


def _records(spec):
    return [Record(image=f"{p}-{n}.png", patient_id=p, source=f"row{n}", split=s, labels=lab)
            for n, (p, s, lab) in enumerate(spec)]


def _split_of_patient(records, splits):
    seen = {}
    for r, s in zip(records, splits):
        assert seen.setdefault(r.patient_id, s) == s, f"patient {r.patient_id} in {seen[r.patient_id]} and {s}"
    return seen


def test_splits_are_by_patient_seeded_and_near_the_fractions():
    spec = [(f"p{n // 3}", None, None) for n in range(300)]  # 100 patients, 3 images each
    records = _records(spec)
    groups = patient_groups(records, [])
    a = assign_splits(records, groups, seed=0, val_frac=0.1, test_frac=0.2)
    assert a == assign_splits(records, groups, seed=0, val_frac=0.1, test_frac=0.2)
    assert a != assign_splits(records, groups, seed=1, val_frac=0.1, test_frac=0.2)
    _split_of_patient(records, a)
    assert a.count("test") == 60 and a.count("validation") == 30 and a.count("training") == 210


def test_official_splits_are_kept_and_only_open_splits_are_filled():
    spec = [("a", "test", None), ("a", None, None), ("b", "validation", None), ("c", None, None)]
    spec += [(f"o{n}", None, None) for n in range(40)]
    records = _records(spec)
    splits = assign_splits(records, patient_groups(records, []), 0, 0.25, 0.25, open_splits=("training", "validation"))
    by_patient = _split_of_patient(records, splits)
    assert by_patient["a"] == "test" and by_patient["b"] == "validation"  # an official row pulls its patient
    assert splits.count("test") == 2  # nothing open went to test
    assert 8 <= splits.count("validation") - 1 <= 12


def test_patients_sharing_an_identical_image_are_one_group():
    records = _records([("x", None, None), ("y", None, None), ("z", None, None)])
    groups = patient_groups(records, [{"x", "z"}])
    assert groups["x"] == groups["z"] != groups["y"]


def test_splits_are_stratified_by_class():
    spec = [(f"p{n}", None, 0) for n in range(90)] + [(f"q{n}", None, 1) for n in range(10)]
    records = _records(spec)
    splits = assign_splits(records, patient_groups(records, []), 3, 0.2, 0.2)
    minority = [s for r, s in zip(records, splits) if r.labels == 1]
    assert minority.count("test") == 2 and minority.count("validation") == 2


def test_bad_row_policy_and_csv_errors(tmp_path):
    log = PrepareLog("x", "error")
    with pytest.raises(PrepareError, match=r"meta.csv:4: image file not found \(/a.png\). Fix the input, or pass --on_error skip"):
        log.bad("image file not found", "meta.csv:4", "/a.png")
    log = PrepareLog("x", "skip")
    log.bad("image file not found", "meta.csv:4")
    assert log.skipped == {"image file not found": 1}
    path = tmp_path / "t.csv"
    path.write_text("a, b\n1,2\n3\n")
    rows = read_csv(str(path), ["a", "b"])
    assert next(rows) == ("t.csv:2", {"a": "1", "b": "2"})  # header names stripped (SIIM's " EncodedPixels")
    with pytest.raises(PrepareError, match=r"t.csv:3: 1 fields, the header has 2"):
        next(rows)
    with pytest.raises(PrepareError, match=r"missing column\(s\) \['c'\]"):
        next(read_csv(str(path), ["a", "c"]))


@pytest.fixture(scope="module")
def covid_notes_datalist(tmp_path_factory):
    from custom.datasets.covid_notes import prepare_covid_notes

    out = str(tmp_path_factory.mktemp("covid_notes") / "datalist.json")
    return out, prepare_covid_notes(CXR_NOTES, out, quiet=True)


@needs_notes
def test_covid_notes_datalist_is_patient_disjoint_merges_identical_images_and_labels_classes(covid_notes_datalist):
    path, datalist = covid_notes_datalist
    assert json.load(open(path)) == datalist
    assert datalist["label_names"] == ["COVID-19", "Other pneumonia", "No Finding"]
    splits = {s: datalist[s] for s in ("training", "validation", "test")}
    patients = {s: {it["patient_id"] for it in items} for s, items in splits.items()}
    assert not patients["training"] & patients["validation"] and not patients["training"] & patients["test"]
    assert not patients["validation"] & patients["test"]
    # patients 285 and 339 share three identical images: merged, and split together
    where = {s for s, ps in patients.items() if {"285", "339"} & ps}
    assert len(where) == 1
    summary = datalist["prepare"]["summary"]
    assert summary["dropped"]["identical image bytes as an earlier item (merged)"] == 3
    assert summary["dropped"]["view L not selected (views=frontal)"] == 28
    items = [it for s in splits.values() for it in s]
    assert len(items) == 247 - 28 - 3
    assert not any("XXXX" in it.get("report", "") for it in items)
    by_image = {it["image"]: it for it in items}
    first = by_image["images/jkms-35-e79-g001-l-a.png"]
    assert first["labels"] == 0 and first["mask"] == "masks/jkms-35-e79-g001-l-a.png" and first["view"] == "AP"
    assert first["report"].startswith("Small consolidation in right upper lobe")
    findings = {it["finding"]: it.get("labels") for it in items}
    assert findings["COVID-19, ARDS"] == 0 and findings["Klebsiella"] == 1 and findings["No Finding"] == 2
    assert findings["todo"] is None and findings["ARDS"] is None
    for split, items_ in splits.items():  # every class in every split (stratified)
        assert {it["labels"] for it in items_ if "labels" in it} == {0, 1, 2}, split


@needs_notes
def test_pretraining_runs_on_the_real_covid_notes_datalist(covid_notes_datalist, tmp_path):
    path, datalist = covid_notes_datalist
    run_bundle("train.yaml", dataset_dir=CXR_NOTES, datalist=path, output_dir=str(tmp_path), epochs=1,
               **dict(TINY, batch_size=8))
    run_bundle("evaluate.yaml", dataset_dir=CXR_NOTES, datalist=path, output_dir=str(tmp_path),
               image_size=TINY["image_size"], device="cpu")
    metrics = json.load(open(tmp_path / "eval" / "metrics.json"))
    # only the test items with notes are pairs; those without a report are skipped, not failed on
    paired = sum(bool(it.get("report")) for it in datalist["test"])
    assert metrics["eval_split"] == "test" and 0.0 <= metrics["i2t_recall@10"] <= 1.0
    assert metrics["n_samples"] == paired < len(datalist["test"])


def test_demo_prepare_keeps_the_generator_split(tmp_path):
    from custom.datasets.demo_data import prepare_demo

    out = tmp_path / "copy.json"
    datalist = prepare_demo(str(tmp_path / "demo"), str(out), n_train=12, n_val=6, n_test=6, image_size=32, quiet=True)
    generated = json.load(open(tmp_path / "demo" / "datalist.json"))
    for split in ("training", "validation", "test"):
        assert [it["image"] for it in datalist[split]] == [it["image"] for it in generated[split]]
    assert datalist["label_names"] == generated["label_names"]


@needs_notes
def test_command_line_prepare_help_and_unknown_option(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    out = tmp_path / "dl.json"
    done = subprocess.run(
        [sys.executable, "-m", "custom", "prepare", "covid_notes", "--root", CXR_NOTES, "--out", str(out),
         "--seed", "3", "--views", "all"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "training" in done.stdout and "use with: --dataset_dir" in done.stdout
    datalist = json.load(open(out))
    assert datalist["prepare"]["seed"] == 3 and any(it["view"] == "L" for s in ("training", "validation", "test")
                                                     for it in datalist[s])
    helped = subprocess.run([sys.executable, "-m", "custom", "prepare", "siim_acr", "--help"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert "train-rle.csv" in helped.stdout + helped.stderr
    wrong = subprocess.run(
        [sys.executable, "-m", "custom", "prepare", "covid_notes", "--root", CXR_NOTES, "--out", str(out),
         "--val_fraction", "0.2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert wrong.returncode != 0 and "val_fraction" in wrong.stdout + wrong.stderr


def test_readme_lists_every_dataset_layout():
    import importlib

    from custom.datasets import REGISTRY

    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    for name, (module, _) in REGISTRY.items():
        layout = getattr(importlib.import_module(f"custom.datasets.{module}"), "LAYOUT", None)
        assert f"`{name}`" in readme, name
        if layout is not None:
            assert layout in readme, f"README's layout of {name} is out of date"
