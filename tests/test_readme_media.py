"""``tools/make_readme_media.py --check``: float-rounding noise passes, a different picture does not."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
from make_readme_media import IMAGES, compare_pictures


@pytest.fixture
def committed() -> np.ndarray:
    return np.asarray(Image.open(IMAGES / "text2video.png").convert("RGB")).copy()


def _save(pixels: np.ndarray, path: Path) -> Path:
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def test_nine_pixels_off_by_one_is_the_same_picture(committed: np.ndarray, tmp_path: Path) -> None:
    noisy = committed.astype(np.int16)
    flat = noisy.reshape(-1)
    positions = np.linspace(0, flat.size - 1, 9).astype(int)
    flat[positions] = np.where(flat[positions] < 255, flat[positions] + 1, flat[positions] - 1)
    assert compare_pictures(_save(noisy, tmp_path / "a.png"), IMAGES / "text2video.png") is None


def test_a_changed_picture_is_reported(committed: np.ndarray, tmp_path: Path) -> None:
    changed = committed.copy()
    changed[:10, :10] = 255 - changed[:10, :10]  # one frame corner inverted
    why = compare_pictures(_save(changed, tmp_path / "b.png"), IMAGES / "text2video.png")
    assert why is not None and "values differ" in why
    shifted = np.clip(committed.astype(np.int16) + 3, 0, 255)  # everything 3 levels brighter
    assert "by up to 3 levels" in compare_pictures(_save(shifted, tmp_path / "c.png"), IMAGES / "text2video.png")
    small = committed[:-3]
    assert compare_pictures(_save(small, tmp_path / "d.png"), IMAGES / "text2video.png").startswith("size ")
