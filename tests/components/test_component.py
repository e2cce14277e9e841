"""Component: construction checks, from_patterns, numel and validate."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from lightning_devinterp.components import Component


def model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_from_patterns_single_pattern() -> None:
    net = model()
    component = Component.from_patterns(net, "0.*")
    assert component.name == "0.*" and component.group is None
    assert set(component.masks) == {"0.weight", "0.bias"}
    for pname, mask in component.masks.items():
        param = net.get_parameter(pname)
        assert mask.dtype == torch.bool and mask.shape == param.shape and mask.all()
    assert component.numel() == 3 * 4 + 4
    component.validate(net)


def test_from_patterns_several_patterns_and_a_name() -> None:
    net = model()
    component = Component.from_patterns(net, ["*.weight", "2.bias"], name="weights")
    assert component.name == "weights"
    assert set(component.masks) == {"0.weight", "2.weight", "2.bias"}
    assert component.numel() == 12 + 8 + 2
    default = Component.from_patterns(net, ("0.bias", "2.bias"))
    assert default.name == "0.bias,2.bias"


def test_from_patterns_is_case_sensitive_and_reports_names() -> None:
    net = model()
    with pytest.raises(ValueError, match=r"No parameter matches \['0.WEIGHT'\]") as info:
        Component.from_patterns(net, "0.WEIGHT")
    assert "0.weight" in str(info.value)


def test_hand_built_masks_and_group() -> None:
    net = model()
    mask = torch.zeros(4, 3, dtype=torch.bool)
    mask[1] = True
    component = Component("row1", {"0.weight": mask}, group="l0")
    assert component.numel() == 3 and component.group == "l0"
    component.validate(net)
    assert "row1" in repr(component) and "masks" not in repr(component)


def test_component_is_frozen() -> None:
    component = Component.from_patterns(model(), "0.bias")
    with pytest.raises(dataclasses.FrozenInstanceError):
        component.name = "other"  # type: ignore[misc]


def test_empty_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        Component("", {"0.bias": torch.ones(4, dtype=torch.bool)})


@pytest.mark.parametrize(
    ("mask", "detail"),
    [(torch.ones(4), "of dtype torch.float32"), ([True] * 4, "got list")],
)
def test_non_bool_masks_are_rejected(mask: object, detail: str) -> None:
    with pytest.raises(TypeError, match="must be a bool tensor") as info:
        Component("c", {"0.bias": mask})  # type: ignore[dict-item]
    assert detail in str(info.value) and "zeros_like" in str(info.value)


def test_validate_unknown_parameter() -> None:
    component = Component("c", {"9.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(KeyError, match="9.weight"):
        component.validate(model())


def test_validate_wrong_shape() -> None:
    component = Component("c", {"0.weight": torch.ones(3, 4, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"shape \(3, 4\), the parameter has \(4, 3\)"):
        component.validate(model())


def test_validate_all_false() -> None:
    component = Component("c", {"0.bias": torch.zeros(4, dtype=torch.bool)})
    assert component.numel() == 0
    with pytest.raises(ValueError, match="owns no parameter entry"):
        component.validate(model())
