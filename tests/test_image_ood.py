"""The image OOD source: augmented patches of the bundled photo, shaped like the model's inputs."""

import pytest
import torch

from edge_agent.data.labeled import DataError
from edge_agent.data.ood import ImageAugment, ImageOOD, default_photo_path
from edge_agent.inputs import InputSpec

SPEC = InputSpec(kind="image", shape=(1, 16, 16), mean=(0.5,), std=(0.5,))


def _source(**augment) -> ImageOOD:
    return ImageOOD.from_path(default_photo_path(), SPEC, ImageAugment(**augment))


def _pixels(x: torch.Tensor) -> torch.Tensor:
    return x * 0.5 + 0.5  # back to [0, 1]


def test_patches_are_model_inputs_and_deterministic_for_a_seed():
    src = _source()
    a = src.sample(64, torch.Generator().manual_seed(5))
    b = src.sample(64, torch.Generator().manual_seed(5))
    assert a.shape == (64, 1, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert _pixels(a).min() >= -1e-6 and _pixels(a).max() <= 1 + 1e-6
    assert a.std(dim=(1, 2, 3)).gt(0).float().mean() > 0.9  # patches, not blank frames


def test_gamma_only_darkens_the_same_patches():
    # Gamma is drawn after every other step, so the same seed gives the same patches before it.
    plain = _pixels(_source(gamma_p=0.0, frame_p=0.0).sample(128, torch.Generator().manual_seed(1)))
    dark = _pixels(_source(gamma_p=1.0, gamma_range=(2.0, 3.0), frame_p=0.0).sample(128, torch.Generator().manual_seed(1)))
    assert (dark <= plain + 1e-5).all()
    assert dark.mean() < 0.8 * plain.mean()


def test_frame_shrinks_patches_onto_black():
    plain = _pixels(_source(frame_p=0.0).sample(128, torch.Generator().manual_seed(2)))
    framed = _pixels(_source(frame_p=1.0, frame_scale=(0.5, 0.7)).sample(128, torch.Generator().manual_seed(2)))
    corners = torch.stack([framed[:, 0, 0, 0], framed[:, 0, 0, -1], framed[:, 0, -1, 0], framed[:, 0, -1, -1]], 1)
    assert (corners.amin(1) < 1e-4).all()  # the patch is shifted at most to one side: some corner stays black
    border = torch.cat([framed[:, 0, 0], framed[:, 0, -1], framed[:, 0, :, 0], framed[:, 0, :, -1]], 1)
    assert (border < 1e-4).float().mean() > 0.5
    assert not torch.equal(plain, framed)


def test_unreadable_photo_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="cannot read OOD image"):
        ImageOOD.from_path(bad, SPEC)
