"""The consolidation rule on manifests: what differs is named in one line."""

from __future__ import annotations

import copy

import pytest
import torch

from edge_agent.bundle import BundleError, Manifest, load_bundle_bytes, new_manifest, save_bundle
from edge_agent.compat import MAX_ABS_WEIGHT, IncompatibleBundle, check_compatible, check_weights, merge_labels
from edge_agent.inputs import InputSpec
from edge_agent.models import create_model

SPEC = InputSpec("image", (1, 8, 8))
LABELS = ["cat", "dog", "fox"]


def _central() -> Manifest:
    model = create_model("cnn-s", len(LABELS), in_chans=1, width=4)
    return new_manifest(model, LABELS, SPEC, trained_classes=["cat"], extra={"class_support": {"cat": 2}})


def _refusal(**changes) -> str:
    base = _central()
    incoming = copy.deepcopy(base)
    incoming.trained_classes = ["dog"]
    incoming.extra = {}
    for k, v in changes.items():
        setattr(incoming, k, v)
    with pytest.raises(IncompatibleBundle) as e:
        check_compatible(base, incoming)
    msg = str(e.value)
    assert isinstance(e.value, BundleError) and msg and "\n" not in msg
    return msg


def test_a_device_model_of_the_central_fits():
    base = _central()
    incoming = copy.deepcopy(base)
    incoming.trained_classes = ["dog", "fox"]
    incoming.extra = {"class_support": {"dog": 1, "fox": 3}}
    check_compatible(base, incoming)


def test_architecture_and_input_spec_show_both_sides():
    assert _refusal(arch="ds-cnn") == "architecture differs from the central's: arch 'ds-cnn' vs 'cnn-s'"
    msg = _refusal(arch_config={"in_chans": 1, "width": 2500})
    assert msg.startswith("architecture differs from the central's: arch_config") and "2500" in msg and "'width': 4" in msg
    msg = _refusal(input=InputSpec("image", (3, 8, 8)).to_dict())
    assert msg.startswith("input spec differs from the central's: input") and "[3, 8, 8]" in msg and "[1, 8, 8]" in msg


def _accepts(**changes) -> None:
    base = _central()
    incoming = copy.deepcopy(base)
    for k, v in changes.items():
        setattr(incoming, k, v)
    check_compatible(base, incoming)


def test_labels_match_by_name_so_a_device_may_add_lack_or_reorder_classes():
    _accepts(labels=[*LABELS, "owl"], trained_classes=["owl"])  # a class the central has never seen
    _accepts(labels=["cat", "dog"], trained_classes=["dog"])  # pulled before "fox" was added
    _accepts(labels=["dog", "cat", "fox"], trained_classes=["dog"])
    assert merge_labels(LABELS, ["owl", "dog", "emu"]) == [*LABELS, "owl", "emu"]  # old labels keep their index


def test_labels_that_cannot_be_class_names_are_refused_by_name():
    assert _refusal(labels=["cat", "dog", "cat"]) == "labels repeat 'cat'"
    assert _refusal(labels=["\ufeffcat", "dog", "fox"]).startswith("bad label: '\\ufeffcat' has control or invisible")
    assert _refusal(labels=["cat", " dog", "fox"]) == "bad label: ' dog' is blank or has surrounding spaces"
    assert _refusal(labels=["cat", "dog\n", "fox"]).startswith("bad label: 'dog\\n'")
    assert _refusal(labels=["cat", 7, "fox"]) == "bad label: 7 is not a string"
    assert "more than 4096" in _refusal(labels=[f"x{i}" for i in range(4100)], trained_classes=["x0"])


def test_trained_classes_must_be_a_non_empty_subset_of_the_labels():
    assert "trained_classes is empty" in _refusal(trained_classes=[])
    assert _refusal(trained_classes=["dog", "owl"]) == "trained_classes not in the labels: 'owl'"
    assert "trained_classes must be a list" in _refusal(trained_classes="dog")


def test_extra_and_class_support_are_well_formed():
    assert _refusal(extra=["x"]) == "extra must be a JSON object, not ['x']"
    assert "extra.class_support must map classes" in _refusal(extra={"class_support": [1, 2]})
    assert "extra.class_support names classes not in the labels: 'owl'" in _refusal(extra={"class_support": {"owl": 1}})
    for bad in ("many", 0, -1, 1.5, True, None):
        msg = _refusal(extra={"class_support": {"dog": bad}})
        assert msg.startswith("extra.class_support['dog'] must be a positive integer"), (bad, msg)


def test_messages_stay_short_whatever_the_manifest_holds():
    msg = _refusal(arch_config={"in_chans": 1, "width": 4, "pad": "x" * 100_000})
    assert len(msg) < 600


def test_weights_must_be_finite_and_bounded():
    check_weights({"w": torch.full((3,), MAX_ABS_WEIGHT), "n": torch.tensor([1 << 40]), "e": torch.zeros(0)})
    with pytest.raises(BundleError, match="'w' has NaN or infinite"):
        check_weights({"w": torch.tensor([0.0, float("inf")])})
    with pytest.raises(BundleError, match=r"'w' has weights up to 3e\+38, beyond the 1e\+06 bound"):
        check_weights({"w": torch.tensor([0.0, -3e38])})


def test_load_with_expect_refuses_before_building_the_model(tmp_path, monkeypatch):
    model = create_model("cnn-s", len(LABELS), in_chans=1, width=4)
    base = new_manifest(model, LABELS, SPEC, trained_classes=["cat"])
    device = new_manifest(model, LABELS, SPEC, trained_classes=["dog"])
    save_bundle(model, device, tmp_path / "d.safetensors")
    data = (tmp_path / "d.safetensors").read_bytes()
    assert load_bundle_bytes(data, expect=base).manifest.trained_classes == ["dog"]
    wider = copy.deepcopy(base)
    wider.arch_config = {**base.arch_config, "width": 2500}

    def no_build(*a, **kw):
        raise AssertionError("the model was built before the manifests were compared")

    monkeypatch.setattr("edge_agent.bundle.create_model", no_build)
    with pytest.raises(IncompatibleBundle, match="arch_config"):
        load_bundle_bytes(data, expect=wider)


def test_saving_refuses_what_loading_would():
    model = create_model("cnn-s", 2, width=4)
    with torch.no_grad():
        model.head.bias[0] = 3e38
    with pytest.raises(BundleError, match="refusing to save: tensor 'head.bias' has weights up to 3e"):
        save_bundle(model, new_manifest(model, ["a", "b"], SPEC), "/nonexistent/x.safetensors")
