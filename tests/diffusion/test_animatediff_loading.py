"""load_model on AnimateDiff: ``builtin:tiny-animatediff`` and every real layout of the same tiny weights.

The tiny model is built with diffusers' constructors and saved by diffusers itself (``AnimateDiffPipeline``); the
other layouts are written from the same modules (see ``animatediff_layouts``), and every one must load through
``load_model`` into bit-identical state dicts and outputs.
"""

from __future__ import annotations

import json
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
    from safetensors.torch import load_file

    torch.save({"state_dict": load_file(root / "tiny-sd15.safetensors")}, root / "tiny-sd15.ckpt")
    config = write_sd_folder(root / "tiny-config", parts, weights=False)
    cases = {
        "animatediff folder": {"source": str(tiny_ad)},
        "animatediff folder, UNet2D + motion_adapter/": {"source": str(root / "ad-unet2d")},
        "SD folder + MotionAdapter folder": {"source": str(sd), "motion_adapter": str(root / "adapter")},
        "SD folder + original .safetensors": {"source": str(sd), "motion_adapter": str(root / "mm_tiny.safetensors")},
        "SD folder + original .ckpt": {"source": str(sd), "motion_adapter": str(root / "mm_tiny.ckpt")},
        "LDM file + config + original .ckpt": {"source": str(root / "tiny-sd15.safetensors"),
                                               "motion_adapter": str(root / "mm_tiny.ckpt"), "config": str(config)},
        "LDM .ckpt (state_dict) + config + MotionAdapter folder": {
            "source": str(root / "tiny-sd15.ckpt"), "motion_adapter": str(root / "adapter"), "config": str(config)},
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
    "LDM file + config + MotionAdapter folder", "LDM .ckpt (state_dict) + config + MotionAdapter folder"])
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


# ------------------------------------------------------------------------------------------------ refusals


def _run_load(engine: Any, tmp_path: Path, **inputs: str) -> Any:
    """Run one load_model node; the NodeFailed it raises."""
    from reelgraph import NodeFailed

    doc = {"reelgraph": 1, "name": "t", "nodes": {"m": {"type": "load_model", "inputs": inputs}}}
    with pytest.raises(NodeFailed) as info:
        engine.run(doc, out_dir=tmp_path, allow_paths=[tmp_path, Path(inputs["source"]).parent.parent, Path("/tmp")])
    return info.value


def test_what_is_not_a_motion_adapter_is_refused_by_name(layouts: dict[str, Any], tiny_dir: Path,
                                                        tmp_path: Path) -> None:
    """A LoRA, a ModelScope UNet3D file or folder, a whole AnimateDiff folder and an adapter of another family are
    refused on motion_adapter saying what they are; so is an adapter on a ModelScope source, and an SD folder
    without one."""
    from diffusers import MotionAdapter
    from safetensors.torch import save_file

    from reelgraph.nodes.tiny_models import ensure_tiny_lora

    sd = str(layouts["sd"])
    refusals = {
        str(ensure_tiny_lora()): "is a LoRA",
        str(tiny_dir / "unet" / "diffusion_pytorch_model.safetensors"): "ModelScope / Zeroscope UNet3D",
        str(tiny_dir): "whole TextToVideoSDPipeline model folder",
        str(ensure_tiny_animatediff()): "Give its motion_adapter/ folder",
    }
    motion_lora = tmp_path / "v2_lora_ZoomIn.safetensors"  # AnimateDiff's motion LoRAs: processor LoRA layers
    key = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.processor"
    save_file({f"{key}.to_q_lora.down.weight": torch.zeros(4, 32), f"{key}.to_q_lora.up.weight": torch.zeros(32, 4)},
              str(motion_lora))
    refusals[str(motion_lora)] = "is a LoRA"
    wide = MotionAdapter(block_out_channels=(64, 128), motion_layers_per_block=1)
    wide.save_pretrained(tmp_path / "sdxl-like", safe_serialization=True)
    refusals[str(tmp_path / "sdxl-like")] = r"block channels \[64, 128\].*has \[32, 64\]"
    for adapter, words in refusals.items():
        with pytest.raises(ModelLoadError, match=words) as info:
            load_model(sd, device="cpu", motion_adapter=adapter)
        assert info.value.input == "motion_adapter", adapter
    with pytest.raises(ModelLoadError, match="ModelScope-style text-to-video") as info:
        load_model(str(tiny_dir), device="cpu", motion_adapter=str(layouts["root"] / "adapter"))
    assert info.value.input == "motion_adapter"
    with pytest.raises(ModelLoadError, match="set motion_adapter to an AnimateDiff motion module") as info:
        load_model(sd, device="cpu")
    assert info.value.input == "motion_adapter"
    with pytest.raises(ModelLoadError, match="is an AnimateDiff motion module: give it as motion_adapter") as info:
        load_model(str(layouts["root"] / "mm_tiny.safetensors"), device="cpu")
    assert info.value.input == "source"


def test_motion_file_with_missing_or_extra_keys_names_them(engine: Any, layouts: dict[str, Any],
                                                           tmp_path: Path) -> None:
    """An original-layout file lacking a weight or holding an unknown tensor is refused on motion_adapter
    (model_load_failed), naming the key."""
    from safetensors.torch import save_file

    original = dict(layouts["original"])
    missing = "up_blocks.1.motion_modules.1.temporal_transformer.proj_out.weight"
    del original[missing]
    save_file({k: v.contiguous() for k, v in original.items()}, str(tmp_path / "mm_missing.safetensors"))
    failed = _run_load(engine, tmp_path, source=str(layouts["sd"]),
                       motion_adapter=str(tmp_path / "mm_missing.safetensors"))
    assert (failed.code, failed.input) == ("model_load_failed", "motion_adapter")
    assert "up_blocks.1.motion_modules.1.proj_out.weight" in failed.message and "not in" in failed.message

    extra = dict(layouts["original"])
    bogus = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.gate.weight"
    extra[bogus] = torch.zeros(3)
    torch.save(extra, tmp_path / "mm_extra.ckpt")
    failed = _run_load(engine, tmp_path, source=str(layouts["sd"]), motion_adapter=str(tmp_path / "mm_extra.ckpt"))
    assert (failed.code, failed.input) == ("model_load_failed", "motion_adapter")
    assert bogus in failed.message and "not weights of a motion adapter" in failed.message


class _Payload:
    """Unpickling this runs code (writes a marker file): what a malicious checkpoint does."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (Path.touch, (Path(self.marker),))


def test_pickle_motion_module_with_code_is_refused(layouts: dict[str, Any], tmp_path: Path) -> None:
    """A .ckpt whose pickle would run code is refused by torch.load(weights_only=True): the code never runs."""
    import pickle

    marker = tmp_path / "ran"
    state = dict(layouts["original"])
    state["down_blocks.0.motion_modules.0.temporal_transformer.norm.weight"] = _Payload(str(marker))
    bad = tmp_path / "mm_sd_v15_v2.ckpt"
    with open(bad, "wb") as handle:
        pickle.dump(state, handle)
    with pytest.raises(ModelLoadError, match="refused or is unreadable") as info:
        load_model(str(layouts["sd"]), device="cpu", motion_adapter=str(bad))
    assert info.value.input == "motion_adapter" and not marker.exists()


def test_config_that_does_not_describe_the_checkpoint(engine: Any, layouts: dict[str, Any], tmp_path: Path) -> None:
    """A single checkpoint with a config of other shapes is refused on config, naming the shapes; with the shipped
    SD 1.5 configs (a tiny file is not SD 1.5) on source; a ModelScope folder as config is refused as such."""
    from .animatediff_layouts import copy_tree

    root = layouts["root"]
    wrong = copy_tree(layouts["config"], tmp_path / "wrong-config")
    config = json.loads((wrong / "vae" / "config.json").read_text())
    config["latent_channels"] = 8
    (wrong / "vae" / "config.json").write_text(json.dumps(config))
    failed = _run_load(engine, tmp_path, source=str(root / "tiny-sd15.safetensors"),
                       motion_adapter=str(root / "adapter"), config=str(wrong))
    assert (failed.code, failed.input) == ("model_load_failed", "config")
    assert "encoder.conv_out.weight [8, 32, 3, 3] (the config wants [16, 32, 3, 3])" in failed.message

    with pytest.raises(ModelLoadError, match=r"shipped Stable Diffusion 1\.5 configs") as info:
        load_model(str(root / "tiny-sd15.safetensors"), device="cpu", motion_adapter=str(root / "adapter"))
    assert info.value.input == "source" and "[32, 4, 3, 3] (the config wants [320, 4, 3, 3])" in str(info.value)

    with pytest.raises(ModelLoadError, match="describes a TextToVideoSDPipeline model") as info:
        load_model(str(root / "tiny-sd15.safetensors"), device="cpu", motion_adapter=str(root / "adapter"),
                   config=str(ensure_tiny_animatediff().parent / "tiny-v1"))
    assert info.value.input == "config"
    with pytest.raises(ModelLoadError, match="config describes a single checkpoint") as info:
        load_model(str(layouts["sd"]), device="cpu", motion_adapter=str(root / "adapter"), config=str(wrong))
    assert info.value.input == "config"


def test_adapter_folders_follow_the_folder_rules(layouts: dict[str, Any], tmp_path: Path) -> None:
    """An adapter folder whose config asks for remote code, or with a link out of it, is refused; so is a motion
    file that is a link leading out of its folder."""
    from .animatediff_layouts import copy_tree

    remote = copy_tree(layouts["root"] / "adapter", tmp_path / "remote")
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil.Model"}
    (remote / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="auto_map") as info:
        load_model(str(layouts["sd"]), device="cpu", motion_adapter=str(remote))
    assert info.value.input == "motion_adapter"

    linked = copy_tree(layouts["root"] / "adapter", tmp_path / "linked")
    (linked / "diffusion_pytorch_model.safetensors").unlink()
    (linked / "diffusion_pytorch_model.safetensors").symlink_to(layouts["root"] / "adapter" /
                                                                "diffusion_pytorch_model.safetensors")
    with pytest.raises(ModelLoadError, match="symbolic link that does not lead inside") as info:
        load_model(str(layouts["sd"]), device="cpu", motion_adapter=str(linked))
    assert info.value.input == "motion_adapter"
    (tmp_path / "files").mkdir()
    link = tmp_path / "files" / "mm.safetensors"
    link.symlink_to(layouts["root"] / "mm_tiny.safetensors")
    with pytest.raises(ModelLoadError, match="symbolic link") as info:
        load_model(str(layouts["sd"]), device="cpu", motion_adapter=str(link))
    assert info.value.input == "motion_adapter"


def test_memory_limit_counts_the_motion_modules_once(layouts: dict[str, Any]) -> None:
    """The size check before building counts the motion modules, and a single checkpoint's parts each once: a
    limit between the model without and with its motion modules refuses (too large) before anything is allocated,
    and one a quarter above the whole model loads (counting the file three times would need three times as much)."""
    from reelgraph.nodes.model_loading import ModelTooLarge

    parts = layouts["parts"]
    image = sum(p.numel() * 4 for name in ("unet", "vae", "text_encoder") for p in parts[name].parameters())
    motion = sum(t.numel() * 4 for t in layouts["adapter_state"].values())
    scheduler = 1000 * 64
    clear_model_cache()  # a cached model is returned as it is: nothing new would be allocated
    for case in ("SD folder + original .ckpt", "LDM file + config + MotionAdapter folder"):
        with pytest.raises(ModelTooLarge, match="would need") as info:
            load_model(**layouts["cases"][case], device="cpu", max_bytes=image + motion // 2)
        assert info.value.nbytes > image + motion // 2
        handles = load_model(**layouts["cases"][case], device="cpu", max_bytes=int((image + motion) * 1.25) + scheduler)
        assert handles[0].module.dtype == torch.float32


def test_fingerprint_follows_the_adapter_and_config_files(layouts: dict[str, Any], tmp_path: Path) -> None:
    """load_model's cache key changes when the motion-module file, the single checkpoint or its config change."""
    import os

    from reelgraph.nodes.model_nodes import _load_fingerprint

    from .animatediff_layouts import copy_tree

    root = layouts["root"]
    adapter = tmp_path / "mm.safetensors"
    adapter.write_bytes((root / "mm_tiny.safetensors").read_bytes())
    config = copy_tree(layouts["config"], tmp_path / "cfg")
    values = {"source": str(root / "tiny-sd15.safetensors"), "motion_adapter": str(adapter), "config": str(config)}
    first = _load_fingerprint(values, None)
    os.utime(adapter, ns=(1, 1))
    second = _load_fingerprint(values, None)
    (config / "scheduler" / "scheduler_config.json").write_text("{}")
    third = _load_fingerprint(values, None)
    assert first != second != third != first
    assert _load_fingerprint(values, None) == third


def test_full_size_checkpoint_fits_the_shipped_sd15_configs(tmp_path: Path) -> None:
    """A full-size SD 1.5 LDM checkpoint and a v2-size original motion module (sparse files: real headers, no
    data) pass every check against the shipped configs (keys, shapes, the adapter joined to the UNet) and reach the
    memory check, whose estimate is the real model's size: 1.07 G image parameters + 0.45 G motion parameters."""
    from reelgraph.nodes.model_loading import ModelTooLarge

    from .animatediff_layouts import full_size_sd15_shapes, write_sparse_safetensors

    checkpoint, motion = full_size_sd15_shapes()
    write_sparse_safetensors(tmp_path / "v1-5-pruned-emaonly.safetensors", checkpoint)
    write_sparse_safetensors(tmp_path / "mm_sd_v15_v2.safetensors", motion)
    with pytest.raises(ModelTooLarge) as info:
        load_model(str(tmp_path / "v1-5-pruned-emaonly.safetensors"), device="cpu", dtype="float16",
                   motion_adapter=str(tmp_path / "mm_sd_v15_v2.safetensors"), max_bytes=2_900_000_000)
    # The limit passes with the last network: the estimate is complete. fp16; every part counted once (its own
    # tensors, not the whole file): UNet 0.86 G + motion 0.45 G + VAE 0.08 G + CLIP 0.12 G parameters.
    params = info.value.nbytes / 2
    assert 1.50e9 < params < 1.54e9, params


def test_shipped_clip_tokenizer_is_clips() -> None:
    """The tokenizer derived from the shipped BPE file is CLIP's: 49408 entries, the byte symbols first, the
    markers at 49406 / 49407, and CLIP's ids for known prompts (as openai/clip-vit-large-patch14 gives them)."""
    import hashlib

    from reelgraph.nodes.animatediff.shipped import _BPE, BPE_SHA256, clip_bpe, clip_tokenizer, clip_vocab

    assert hashlib.sha256(_BPE.read_bytes()).hexdigest() == BPE_SHA256
    merges = clip_bpe()
    vocab = clip_vocab(merges)
    assert len(merges) == 48894 and len(vocab) == 49408
    assert (vocab["!"], vocab["!</w>"], vocab["".join(merges[0])]) == (0, 256, 512)
    tokenizer = clip_tokenizer()
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (49406, 49407, 49407)
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer("An astronaut riding a horse").input_ids == [49406, 550, 18376, 6765, 320, 4558, 49407]
    padded = tokenizer("a cat", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[:4] == [49406, 320, 2368, 49407] and set(padded[4:]) == {49407}


def _frames_doc(model: dict[str, str]) -> dict[str, Any]:
    return {"reelgraph": 1, "name": "ad-layout", "nodes": {
        "model": {"type": "load_model", "inputs": {**model, "device": "cpu"}},
        "text": {"type": "clip_text_encode", "inputs": {"text_encoder": {"from": "model.text_encoder"},
                                                        "prompt": "a red ball bouncing", "negative_prompt": "blur"}},
        "sample": {"type": "unet3d_denoise", "inputs": {
            "unet": {"from": "model.unet"}, "scheduler": {"from": "model.scheduler"},
            "conditioning": {"from": "text.conditioning"}, "frames": 6, "height": 16, "width": 16, "steps": 3,
            "guidance_scale": 7.5, "seed": 3}},
        "decode": {"type": "vae_decode", "inputs": {"vae": {"from": "model.vae"},
                                                    "latents": {"from": "sample.latents"}}},
    }}


def test_every_layout_gives_the_same_frames_through_the_engine(engine: Any, layouts: dict[str, Any],
                                                               tmp_path: Path) -> None:
    """Text-to-video through the engine (load_model -> clip_text_encode -> unet3d_denoise -> vae_decode) gives
    bit-identical frames from the AnimateDiff folder, the SD folder + original .ckpt and the LDM file + config."""
    frames = {}
    for case in ("animatediff folder", "SD folder + original .ckpt", "LDM file + config + original .ckpt"):
        result = engine.run(_frames_doc(layouts["cases"][case]), outputs=["decode.video"], out_dir=tmp_path,
                            allow_paths=[tmp_path, layouts["root"], ensure_tiny_animatediff().parent])
        frames[case] = result.outputs["decode.video"].frames
    reference = frames.pop("animatediff folder")
    assert tuple(reference.shape)[-2:] == (16, 16) and reference.std() > 0
    assert {case: (f - reference).abs().max().item() for case, f in frames.items()} == dict.fromkeys(frames, 0.0)


def test_motion_unet_config_is_from_unet2d_s(layouts: dict[str, Any]) -> None:
    """The UNetMotionModel config computed from the two configs equals the one diffusers' from_unet2d builds, for
    the tiny model and for SD 1.5 + AnimateDiff v2 (built on the meta device), and incompatible ones are refused."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    from reelgraph.nodes.animatediff.adapters import motion_unet_config
    from reelgraph.nodes.animatediff.shipped import SD15_CONFIG_DIR

    sd15 = json.loads((SD15_CONFIG_DIR / "unet" / "config.json").read_text())
    tiny = dict(layouts["parts"]["unet"].config)
    for unet_config, adapter_config in ((tiny, dict(layouts["parts"]["motion_adapter"].config)), (sd15, {})):
        with torch.device("meta"):
            want = UNetMotionModel.from_unet2d(UNet2DConditionModel.from_config(unet_config),
                                               MotionAdapter.from_config(adapter_config), load_weights=False).config
        got = motion_unet_config(unet_config, adapter_config)
        assert {k: got[k] for k in want if not k.startswith("_")} == {k: want[k] for k in want if not k.startswith("_")}
    with pytest.raises(ValueError, match="number of layers per block"):
        motion_unet_config(sd15, {"motion_layers_per_block": 1})


def test_header_cache_follows_the_file(tmp_path: Path) -> None:
    """A safetensors header is parsed once per file version (a single checkpoint is read for three parts), and a
    rewritten file is parsed again."""
    from safetensors.torch import save_file

    from reelgraph.nodes import weights

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(2)}, str(path))
    assert set(weights.safetensors_header(path)[0]) == {"a"}
    key = next(k for k in weights._HEADERS if k[0] == str(path.resolve()))
    assert set(weights.safetensors_header(path)[0]) == {"a"} and key in weights._HEADERS
    save_file({"b": torch.zeros(3), "c": torch.ones(1)}, str(path))
    assert set(weights.safetensors_header(path)[0]) == {"b", "c"}
    assert [name for name, _ in weights.iter_safetensors(path)] == ["b", "c"]


def test_an_edited_checkpoint_or_adapter_is_loaded_again(layouts: dict[str, Any], tmp_path: Path) -> None:
    """load_model's own cache follows the single checkpoint's and the motion file's content (size and mtime): an
    unchanged pair returns the same handles, an edited one is read again and replaces the stale entry."""
    import os

    from reelgraph.nodes import model_loading

    root = layouts["root"]
    checkpoint, adapter = tmp_path / "model.safetensors", tmp_path / "mm.ckpt"
    checkpoint.write_bytes((root / "tiny-sd15.safetensors").read_bytes())
    adapter.write_bytes((root / "mm_tiny.ckpt").read_bytes())
    kwargs = {"source": str(checkpoint), "motion_adapter": str(adapter), "config": str(layouts["config"]),
              "device": "cpu"}
    first = load_model(**kwargs)
    assert load_model(**kwargs) is first
    entries = len(model_loading._cache)
    for path in (checkpoint, adapter):
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
        again = load_model(**kwargs)
        assert again is not first and len(model_loading._cache) == entries
        first = again


def test_single_file_equals_diffusers_from_single_file(layouts: dict[str, Any]) -> None:
    """The LDM checkpoint + original motion file load into exactly what diffusers' own single-file loaders give
    (StableDiffusionPipeline.from_single_file, MotionAdapter.from_single_file, UNetMotionModel.from_unet2d; offline,
    with the same local configs): state dicts bit-identical, UNet outputs equal."""
    from diffusers import MotionAdapter, StableDiffusionPipeline, UNetMotionModel

    root = layouts["root"]
    pipe = StableDiffusionPipeline.from_single_file(str(root / "tiny-sd15.safetensors"), config=str(layouts["sd"]),
                                                    local_files_only=True, safety_checker=None)
    adapter = MotionAdapter.from_single_file(str(root / "mm_tiny.safetensors"), config=str(root / "adapter"),
                                             local_files_only=True)
    reference = UNetMotionModel.from_unet2d(pipe.unet, adapter).eval()
    ours = load_model(str(root / "tiny-sd15.safetensors"), device="cpu", config=str(layouts["config"]),
                      motion_adapter=str(root / "mm_tiny.safetensors"))
    _assert_same_state(ours[0].module, reference)
    _assert_same_state(ours[1].module, pipe.vae)
    _assert_same_state(ours[2].module, pipe.text_encoder)
    assert ours[2].tokenizer("a red ball").input_ids == pipe.tokenizer("a red ball").input_ids
    assert (_unet_out(ours[0].module) - _unet_out(reference)).abs().max().item() < 1e-5
