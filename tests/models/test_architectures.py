"""Every builder gives the output shapes the pipeline relies on, offline, with random weights."""

from __future__ import annotations

import pytest
import torch

from dicom_ai.models.architectures import (CLASSIFIERS, SEGMENTERS, UnknownArchitecture, build_classifier,
                                           build_detector, build_segmenter, load_detector)
from dicom_ai.models.unet import UNet


@pytest.mark.parametrize("arch", CLASSIFIERS)
def test_classifiers_take_one_channel_and_give_one_logit_per_class(arch: str) -> None:
    model = build_classifier(arch, 3, in_channels=1).eval()
    with torch.inference_mode():
        assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 3)


def test_classifier_channels_follow_in_channels() -> None:
    model = build_classifier("resnet18", 2, in_channels=3).eval()
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 2)
    with pytest.raises(RuntimeError):
        model(torch.zeros(1, 1, 32, 32))


@pytest.mark.parametrize("arch", SEGMENTERS)
def test_segmenters_give_a_logit_map_of_the_input_size(arch: str) -> None:
    model = build_segmenter(arch, in_channels=1, num_classes=1).eval()
    with torch.inference_mode():
        assert model(torch.zeros(1, 1, 64, 96)).shape == (1, 1, 64, 96)


def test_attention_unet_has_one_gate_per_skip_and_plain_unet_none() -> None:
    assert len(UNet(attention=True).gates or []) == 4
    assert UNet(attention=False).gates is None


def test_unknown_architectures_are_named_errors() -> None:
    with pytest.raises(UnknownArchitecture, match="resnet50"):
        build_classifier("resnet5", 2)
    with pytest.raises(UnknownArchitecture, match="attention_unet"):
        build_segmenter("unet++")
    with pytest.raises(UnknownArchitecture, match="yolov5l"):
        build_detector("yolov99", 1)


def test_detector_is_built_from_yaml_with_our_classes_and_reloads_offline(tmp_path) -> None:
    detector = build_detector("yolov5n", 2, ["fracture", "implant"])
    assert detector.model.model[-1].nc == 2 and detector.model.names == {0: "fracture", 1: "implant"}
    assert detector.model.yaml["scale"] == "n"
    module = detector.model.eval()
    with torch.inference_mode():
        prediction = module(torch.zeros(1, 3, 64, 64))[0]
    assert prediction.shape[:2] == (1, 4 + 2)  # xywh + one score per class, per anchor point
    detector.save(str(tmp_path / "det.pt"))
    again = load_detector(tmp_path / "det.pt")
    assert again.model.names == {0: "fracture", 1: "implant"}
