"""load_model on AnimateDiff: ``builtin:tiny-animatediff`` and every real layout of the same tiny weights.

The tiny model is built with diffusers' constructors and saved by diffusers itself (``AnimateDiffPipeline``); the
other layouts are written from the same modules (see ``animatediff_layouts``), and every one must load through
``load_model`` into bit-identical state dicts and outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


# ------------------------------------------------------------------------------------------- every layout


@pytest.fixture(scope="module")
def layouts(tiny_ad: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny model's weights in every layout, and the load_model arguments of each."""
    from safetensors.torch import save_file

    from reelgraph.nodes.animatediff.tiny import tiny_animatediff_components

    from .animatediff_layouts import (
        motion_to_original,
        write_animatediff_unet2d_folder,
        write_ldm_checkpoint,
        write_sd_folder,
    )

    root = tmp_path_factory.mktemp("ad-layouts")
    parts = tiny_animatediff_components()
    sd = write_sd_folder(root / "sd15", parts)
    parts["motion_adapter"].save_pretrained(root / "adapter", safe_serialization=True)
    adapter_state = parts["motion_adapter"].state_dict()
    original = motion_to_original(adapter_state)
    save_file({k: v.contiguous() for k, v in original.items()}, str(root / "mm_tiny.safetensors"))
    torch.save(original, root / "mm_tiny.ckpt")
    write_animatediff_unet2d_folder(root / "ad-unet2d", parts)
    counts = write_ldm_checkpoint(root / "tiny-sd15.safetensors", parts)
    config = write_sd_folder(root / "tiny-config", parts, weights=False)
    cases = {
        "animatediff folder": {"source": str(tiny_ad)},
        "animatediff folder, UNet2D + motion_adapter/": {"source": str(root / "ad-unet2d")},
        "SD folder + MotionAdapter folder": {"source": str(sd), "motion_adapter": str(root / "adapter")},
        "SD folder + original .safetensors": {"source": str(sd), "motion_adapter": str(root / "mm_tiny.safetensors")},
        "SD folder + original .ckpt": {"source": str(sd), "motion_adapter": str(root / "mm_tiny.ckpt")},
        "LDM file + config + original .ckpt": {"source": str(root / "tiny-sd15.safetensors"),
                                               "motion_adapter": str(root / "mm_tiny.ckpt"), "config": str(config)},
        "LDM file + config + MotionAdapter folder": {"source": str(root / "tiny-sd15.safetensors"),
                                                     "motion_adapter": str(root / "adapter"), "config": str(config)},
    }
    return {"root": root, "parts": parts, "cases": cases, "original": original, "adapter_state": adapter_state,
            "counts": counts, "sd": sd, "config": config}


def test_converters_cover_every_key(layouts: dict[str, Any]) -> None:
    """The test-side converters map every diffusers key (the loader maps them back): the original motion file has
    the adapter's tensors plus two pe tables per transformer block, the LDM file every UNet/VAE/CLIP tensor."""
    parts, original, adapter = layouts["parts"], layouts["original"], layouts["adapter_state"]
    pe = [k for k in adapter if k.endswith(".pe")]
    assert len(original) == len(adapter) + len(pe)
    assert all(".temporal_transformer." in k for k in original)
    assert layouts["counts"] == {name: len(parts[name].state_dict()) for name in ("unet", "vae", "text_encoder")}


def _outputs(handles: tuple) -> dict[str, torch.Tensor]:
    unet, vae, text_encoder, _ = handles
    gen = torch.Generator("cpu").manual_seed(2)
    latents = torch.randn((1, 4, 5, 8, 8), generator=gen)
    with torch.inference_mode():
        ids = text_encoder.tokenizer(["a cat walking"], padding="max_length", return_tensors="pt").input_ids
        text = text_encoder.module(ids).last_hidden_state
        noise = unet.module(latents, 321, encoder_hidden_states=text.repeat_interleave(5, dim=0)).sample
        frames = vae.module.decode(latents[0].permute(1, 0, 2, 3)).sample
    return {"text": text, "unet": noise, "vae": frames}


@pytest.mark.parametrize("case", [
    "animatediff folder, UNet2D + motion_adapter/", "SD folder + MotionAdapter folder",
    "SD folder + original .safetensors", "SD folder + original .ckpt", "LDM file + config + original .ckpt",
    "LDM file + config + MotionAdapter folder"])
def test_every_layout_loads_the_same_model(layouts: dict[str, Any], case: str) -> None:
    """Each layout gives bit-identical UNetMotionModel / VAE / text-encoder state dicts and the same outputs (a UNet
    forward, a VAE decode, a text encoding) as the AnimateDiff folder diffusers saved."""
    from diffusers import UNetMotionModel

    reference = load_model(**layouts["cases"]["animatediff folder"], device="cpu")
    handles = load_model(**layouts["cases"][case], device="cpu")
    assert isinstance(handles[0].module, UNetMotionModel) and handles[0].vae_scale_factor == 2
    for ours, theirs in zip(handles[:3], reference[:3], strict=True):
        _assert_same_state(ours.module, theirs.module)
    assert handles[3].class_name == "DDIMScheduler"
    want, got = _outputs(reference), _outputs(handles)
    assert {k: (got[k] - want[k]).abs().max().item() for k in want} == {"text": 0.0, "unet": 0.0, "vae": 0.0}


def test_replacing_an_animatediff_folders_motion_modules(layouts: dict[str, Any]) -> None:
    """motion_adapter on an AnimateDiff folder replaces its motion modules and keeps the rest."""
    from safetensors.torch import save_file

    root = layouts["root"]
    other = {k: (v * 0.5 if not k.endswith(".pe") else v) for k, v in layouts["original"].items()}
    save_file({k: v.contiguous() for k, v in other.items()}, str(root / "mm_half.safetensors"))
    base = load_model(**layouts["cases"]["animatediff folder"], device="cpu")[0].module.state_dict()
    swapped = load_model(layouts["cases"]["animatediff folder"]["source"], device="cpu",
                         motion_adapter=str(root / "mm_half.safetensors"))[0].module.state_dict()
    assert base.keys() == swapped.keys()
    for key in base:
        scale = 0.5 if ".motion_modules." in key and not key.endswith(".pe") else 1.0
        assert torch.equal(swapped[key], base[key] * scale), key
