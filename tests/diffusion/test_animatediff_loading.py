"""load_model on AnimateDiff: ``builtin:tiny-animatediff`` and every real layout of the same tiny weights.

The tiny model is built with diffusers' constructors and saved by diffusers itself (``AnimateDiffPipeline``); the
other layouts are written from the same modules (see ``animatediff_layouts``), and every one must load through
``load_model`` into bit-identical state dicts and outputs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from reelgraph.nodes.animatediff.tiny import TINY_ANIMATEDIFF_SOURCE, ensure_tiny_animatediff  # noqa: E402
from reelgraph.nodes.model_loading import ModelLoadError, clear_model_cache, load_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny_ad(reelgraph_home: Path) -> Path:
    """The ``builtin:tiny-animatediff`` folder."""
    return ensure_tiny_animatediff()


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def _assert_same_state(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    a, b = _state(ours), _state(theirs)
    assert a.keys() == b.keys()
    different = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    assert not different, different[:5]


def _unet_out(unet: torch.nn.Module) -> torch.Tensor:
    gen = torch.Generator("cpu").manual_seed(1)
    x, emb = torch.randn((1, 4, 6, 8, 8), generator=gen), torch.randn((1, 7, 32), generator=gen)
    emb = emb.repeat_interleave(6, dim=0)  # UNetMotionModel takes the text states per frame, as its pipeline does
    with torch.inference_mode():
        return unet(x, 500, encoder_hidden_states=emb).sample


def test_builtin_is_what_diffusers_loads(tiny_ad: Path) -> None:
    """builtin:tiny-animatediff loads as a UNetMotionModel equal, weight for weight and output for output, to
    diffusers' own AnimateDiffPipeline.from_pretrained of the same folder; its motion modules are not zero."""
    from diffusers import AnimateDiffPipeline, UNetMotionModel

    unet, vae, text_encoder, scheduler = load_model(TINY_ANIMATEDIFF_SOURCE, device="cpu")
    assert isinstance(unet.module, UNetMotionModel) and unet.vae_scale_factor == 2
    pipe = AnimateDiffPipeline.from_pretrained(tiny_ad, local_files_only=True)
    _assert_same_state(unet.module, pipe.unet)
    _assert_same_state(vae.module, pipe.vae)
    _assert_same_state(text_encoder.module, pipe.text_encoder)
    assert scheduler.class_name == type(pipe.scheduler).__name__
    # Same weights; the float sums may round differently (tensor alignment picks other SIMD paths): ~1e-6 here.
    assert (_unet_out(unet.module) - _unet_out(pipe.unet.eval())).abs().max().item() < 1e-5
    proj = unet.module.down_blocks[0].motion_modules[0].proj_out.weight
    assert proj.abs().max() > 0  # the seeded init made the motion modules matter
    ids = text_encoder.tokenizer("a red ball").input_ids
    assert ids == pipe.tokenizer("a red ball").input_ids


def test_builtin_is_deterministic(tiny_ad: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second build in another home writes byte-identical weight files."""
    from reelgraph.nodes.animatediff.tiny import TINY_ANIMATEDIFF_NAME

    monkeypatch.setenv("REELGRAPH_HOME", str(tmp_path))
    other = ensure_tiny_animatediff()
    assert other == tmp_path / "models" / TINY_ANIMATEDIFF_NAME
    for part in ("unet", "motion_adapter", "vae"):
        name = f"{part}/diffusion_pytorch_model.safetensors"
        assert (other / name).read_bytes() == (tiny_ad / name).read_bytes()
    assert (other / "text_encoder/model.safetensors").read_bytes() == (tiny_ad / "text_encoder/model.safetensors"
                                                                      ).read_bytes()


def test_unknown_builtin_names_the_animatediff_one() -> None:
    with pytest.raises(ModelLoadError, match="builtin:tiny-animatediff"):
        load_model("builtin:tiny-nothing")
    clear_model_cache()
