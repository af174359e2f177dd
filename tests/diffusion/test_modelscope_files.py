"""ModelScope's original files: a single-file UNet3D in ``text2video_pytorch_model.pth`` layout (and the
sd-webui-text2video folder holding one), and Text-To-Video-Finetuning's LoRA files (full_weights and webui).

The original-layout files are written here from the tiny random model with this file's own table of ModelScope
names (the layout of ModelScope's ``UNetSD``: ``input_blocks``, ``middle_block``, ``output_blocks``, the
``temopral_conv`` spelling, ``Conv1d`` temporal projections), independent of reelgraph's converter, and must give
the frames of the diffusers folder they were written from.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reelgraph import Engine, NodeFailed

torch = pytest.importorskip("torch")
for _name in ("diffusers", "transformers", "safetensors"):
    pytest.importorskip(_name)

from safetensors.torch import load_file, save_file  # noqa: E402

from reelgraph.nodes.lora_nodes import load_lora  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
T2V = ROOT / "workflows" / "text2video.json"
PARAMS = {"prompt": "a green square moving up", "negative_prompt": "blurry", "seed": 11, "steps": 4, "frames": 4,
          "guidance_scale": 7.5}

#: The tiny model's UNet3D (down: CrossAttn, Down; up: Up, CrossAttn; one layer per block) in ModelScope's names,
#: diffusers prefix -> original prefix, written out by hand.
TINY_LAYOUT = {
    "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0", "transformer_in": "input_blocks.0.1",
    "down_blocks.0.resnets.0": "input_blocks.1.0", "down_blocks.0.temp_convs.0": "input_blocks.1.0.temopral_conv",
    "down_blocks.0.attentions.0": "input_blocks.1.1", "down_blocks.0.temp_attentions.0": "input_blocks.1.2",
    "down_blocks.0.downsamplers.0.conv": "input_blocks.2.op",
    "down_blocks.1.resnets.0": "input_blocks.3.0", "down_blocks.1.temp_convs.0": "input_blocks.3.0.temopral_conv",
    "mid_block.resnets.0": "middle_block.0", "mid_block.temp_convs.0": "middle_block.0.temopral_conv",
    "mid_block.attentions.0": "middle_block.1", "mid_block.temp_attentions.0": "middle_block.2",
    "mid_block.resnets.1": "middle_block.3", "mid_block.temp_convs.1": "middle_block.3.temopral_conv",
    "up_blocks.0.resnets.0": "output_blocks.0.0", "up_blocks.0.temp_convs.0": "output_blocks.0.0.temopral_conv",
    "up_blocks.0.resnets.1": "output_blocks.1.0", "up_blocks.0.temp_convs.1": "output_blocks.1.0.temopral_conv",
    "up_blocks.0.upsamplers.0.conv": "output_blocks.1.1.conv",
    "up_blocks.1.resnets.0": "output_blocks.2.0", "up_blocks.1.temp_convs.0": "output_blocks.2.0.temopral_conv",
    "up_blocks.1.attentions.0": "output_blocks.2.1", "up_blocks.1.temp_attentions.0": "output_blocks.2.2",
    "up_blocks.1.resnets.1": "output_blocks.3.0", "up_blocks.1.temp_convs.1": "output_blocks.3.0.temopral_conv",
    "up_blocks.1.attentions.1": "output_blocks.3.1", "up_blocks.1.temp_attentions.1": "output_blocks.3.2",
    "conv_norm_out": "out.0", "conv_out": "out.2",
}
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
          "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
#: Text-To-Video-Finetuning's converter names the first mid-block resnet ``middle_block.1`` (ModelScope: ``.0``).
T2VF_LAYOUT = {**TINY_LAYOUT, "mid_block.resnets.0": "middle_block.1"}


def original_name(name: str, layout: dict[str, str] = TINY_LAYOUT) -> str:
    """A diffusers tensor or module name in ModelScope's layout (the longest matching prefix of ``layout``)."""
    head = max((p for p in layout if name == p or name.startswith(p + ".")), key=len)
    rest = name[len(head) + 1:]
    if ".resnets." in head and rest:
        first, _, tail = rest.partition(".")
        rest = RESNET.get(first, first) + (f".{tail}" if tail else "")
    return layout[head] + (f".{rest}" if rest else "")


def original_unet_state(diffusers_state: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The tiny UNet3D's weights as ModelScope stores them: renamed, temporal projections as ``Conv1d``."""
    out = {}
    for key, value in diffusers_state.items():
        temporal = key.startswith("transformer_in.") or ".temp_attentions." in key
        if temporal and key.endswith(("proj_in.weight", "proj_out.weight")):
            value = value[..., None]  # Linear [out, in] -> Conv1d [out, in, 1]
        out[prefix + original_name(key)] = value.contiguous()
    return out


@pytest.fixture
def engine(reelgraph_home: Path, make_engine: Callable[..., Engine]) -> Engine:
    return make_engine()


def frames(engine: Engine, tmp_path: Path, source: Path, **inputs: Any) -> Any:
    """The text2video workflow's frames with ``inputs`` added to its load_model node."""
    doc = json.loads(T2V.read_text())
    doc["nodes"]["model"]["inputs"].update(inputs)
    result = engine.run(doc, {**PARAMS, "model": str(source)}, outputs=["decode.video"], out_dir=tmp_path,
                        allow_paths=[tmp_path, source.parent])
    return result.outputs["decode.video"].frames


# ---------------------------------------------------------------------------------------- single-file UNet


@pytest.mark.parametrize("form", ["pth", "safetensors", "webui-folder", "ldm-prefix"])
def test_original_single_file_unet_gives_the_frames_of_its_diffusers_folder(
        form: str, engine: Engine, tiny_dir: Path, tmp_path: Path) -> None:
    """``text2video_pytorch_model.pth`` (read through torch.load(weights_only=True)) or ``.safetensors`` in
    ModelScope's layout, an sd-webui-text2video folder holding it, or a checkpoint with LDM's
    ``model.diffusion_model.`` prefix: given as ``unet``, the frames are exactly those of the diffusers folder the
    file was written from (main had no way to load such a file)."""
    source = tiny_dir  # the VAE, text encoder, tokenizer and scheduler, and the UNet config
    state = load_file(tiny_dir / "unet" / "diffusion_pytorch_model.safetensors")
    original = original_unet_state(state, prefix="model.diffusion_model." if form == "ldm-prefix" else "")
    assert "input_blocks.2.op.weight" in original or form == "ldm-prefix"
    files = tmp_path / "files"
    files.mkdir()
    if form == "safetensors":
        unet: Path = files / "text2video_pytorch_model.safetensors"
        save_file(original, str(unet))
    elif form == "webui-folder":
        unet = files / "zs2_576w"
        unet.mkdir()
        torch.save(original, unet / "text2video_pytorch_model.pth")
        (unet / "configuration.json").write_text('{"framework": "pytorch", "task": "text-to-video-synthesis"}')
        torch.save({"unrelated": torch.ones(1)}, unet / "open_clip_pytorch_model.bin")
    else:
        unet = files / ("text2video_pytorch_model.pth" if form == "pth" else "model.ckpt")
        torch.save({"state_dict": original} if form == "ldm-prefix" else original, unet)
    got = frames(engine, tmp_path, source, unet=str(unet))
    want = frames(engine, tmp_path, tiny_dir)
    assert got.shape == want.shape == (4, 3, 32, 32)
    assert (got - want).abs().max().item() <= 1e-4


def test_the_shipped_config_has_the_real_1_7b_key_names() -> None:
    """The layout computed for the shipped ModelScope 1.7B config has the key names of the real
    ``text2video_pytorch_model.pth`` (from ModelScope's ``UNetSD``): downsamplers at ``input_blocks.3/6/9.op``,
    upsamplers at ``output_blocks.2.1`` and ``5/8.3``, ``temopral_conv`` inside the resnets, twelve output blocks."""
    import diffusers

    from reelgraph.nodes.modelscope_convert import modelscope_unet_config, original_key_map

    config = modelscope_unet_config()
    with torch.device("meta"):
        unet = diffusers.UNet3DConditionModel.from_config(config)
    real = ["input_blocks.3.op.weight", "input_blocks.6.op.bias", "input_blocks.9.op.weight",
            "output_blocks.2.1.conv.weight", "output_blocks.5.3.conv.weight", "output_blocks.8.3.conv.bias",
            "middle_block.3.temopral_conv.conv4.3.weight", "input_blocks.0.1.proj_in.weight",
            "input_blocks.4.0.skip_connection.weight", "output_blocks.11.2.transformer_blocks.0.attn2.to_k.weight",
            "input_blocks.11.0.emb_layers.1.weight", "time_embed.2.bias", "out.2.weight"]
    mapping, unknown = original_key_map(real, config)
    assert not unknown
    assert set(mapping.values()) <= set(unet.state_dict())
    assert mapping["output_blocks.5.3.conv.weight"] == "up_blocks.1.upsamplers.0.conv.weight"
    assert mapping["input_blocks.4.0.skip_connection.weight"] == "down_blocks.1.resnets.0.conv_shortcut.weight"
    assert sum(p.numel() for p in unet.parameters()) == 1_411_233_860  # the UNet of the "1.7B" model (5.6 GB fp32)


def test_a_unet_file_that_fits_no_config_is_refused_on_unet(engine: Engine, tiny_dir: Path, tmp_path: Path) -> None:
    """A single UNet file whose tensors fit neither the source's config nor the shipped one is refused on the
    ``unet`` input, with what is missing; a pickle with code is refused before anything is built."""
    state = original_unet_state(load_file(tiny_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    del state["input_blocks.2.op.weight"]
    bad = tmp_path / "text2video_pytorch_model.pth"
    torch.save(state, bad)
    doc = {"reelgraph": 1, "name": "t", "nodes": {"m": {"type": "load_model", "inputs": {
        "source": str(tiny_dir), "unet": str(bad)}}}}
    with pytest.raises(NodeFailed) as info:
        engine.run(doc, out_dir=tmp_path, allow_paths=[tmp_path, tiny_dir.parent])
    assert (info.value.code, info.value.input) == ("model_load_failed", "unet")
    assert "fits none of the UNet configs tried" in info.value.message
    assert "down_blocks.0.downsamplers.0.conv.weight" in info.value.message


# ------------------------------------------------------------------------------ Text-To-Video-Finetuning LoRA

#: Layers of the tiny model the LoRA adapts: linear layers (spatial, temporal and input attention, a feed-forward,
#: the time embedding, a projection) and a 1x1 convolution, where loralib's layout is PEFT's.
LINEAR = ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
          "down_blocks.0.temp_attentions.0.transformer_blocks.0.attn2.to_v",
          "transformer_in.transformer_blocks.0.attn1.to_k", "up_blocks.1.attentions.1.transformer_blocks.0.ff.net.2",
          "time_embedding.linear_1", "mid_block.attentions.0.proj_in", "down_blocks.1.resnets.0.conv_shortcut"]
#: Convolutions with a kernel, in loralib's layout (``B @ A`` viewed as the kernel).
CONVS = ["conv_in", "mid_block.resnets.0.conv1", "down_blocks.0.temp_convs.0.conv1.2"]
TEXT = ["encoder.layers.0.self_attn.q_proj", "encoder.layers.1.mlp.fc1", "encoder.layers.1.self_attn.out_proj"]


def _weights(module: Any, name: str) -> Any:
    return dict(module.named_modules())[name].weight


def _lora_pairs(unet: Any, text: Any, rank: int = 4) -> dict[tuple[str, str], tuple[Any, Any]]:
    """Random (A, B) per layer, rounded to fp16 (the webui file stores fp16) and kept in float32."""
    g = torch.Generator().manual_seed(5)
    pairs = {}
    for component, module, names in (("unet", unet, LINEAR + CONVS), ("text_encoder", text, TEXT)):
        for name in names:
            w = _weights(module, name)
            out, inp = int(w.shape[0]), int(w.shape[1])
            k = int(w.shape[2]) if w.ndim > 2 else 1
            a = torch.randn(rank * k, inp * k, generator=g) * 0.3
            b = torch.randn(out * k, rank * k, generator=g) * 0.3
            pairs[(component, name)] = (a.half().float(), b.half().float())
    return pairs


def _t2vf_files(pairs: dict[tuple[str, str], tuple[Any, Any]], folder: Path) -> tuple[Path, Path, Path]:
    """The files Text-To-Video-Finetuning's save_lora writes: ``full_weights/<step>_lora.safetensors`` (unet, diffusers
    names), its ``_text`` twin (transformers 4's ``text_model.`` names), and the fp16 webui file (ModelScope names
    by its converter, OpenCLIP text names, ``conv_in``/``time_embedding`` left as they were)."""
    full = folder / "full_weights"
    full.mkdir(parents=True)
    unet_full = {f"{n}.lora_{r}": t for (c, n), (a, b) in pairs.items() if c == "unet" for r, t in (("A", a), ("B", b))}
    text_full = {f"text_model.{n}.lora_{r}": t for (c, n), (a, b) in pairs.items() if c == "text_encoder"
                 for r, t in (("A", a), ("B", b))}
    save_file(unet_full, str(full / "500_lora_text_to_video.safetensors"))
    save_file(text_full, str(full / "500_lora_text_to_video_text.safetensors"))
    webui: dict[str, Any] = {}
    for (component, name), (a, b) in pairs.items():
        if component == "unet":
            spelled = name if name.startswith(("conv_in", "time_embedding")) else original_name(name, T2VF_LAYOUT)
        else:
            spelled = (name.replace("encoder.layers.", "resblocks.").replace(".self_attn.", ".attn.")
                       .replace(".mlp.fc1", ".mlp.c_fc").replace(".mlp.fc2", ".mlp.c_proj"))
        webui[f"{spelled}.lora_A"], webui[f"{spelled}.lora_B"] = a.half(), b.half()
    assert "middle_block.1.in_layers.2.lora_A" in webui and "resblocks.0.attn.q_proj.lora_A" in webui
    path = folder / "500_lora_text_to_video.safetensors.safetensors"
    save_file(webui, str(path), metadata={"stable_lora_text_to_video": "v1", "lora_name": "t_abcde"})
    return full / "500_lora_text_to_video.safetensors", full / "500_lora_text_to_video_text.safetensors", path


def _peft_file(pairs: dict[tuple[str, str], tuple[Any, Any]], unet: Any, path: Path) -> Path:
    """The same linear/1x1 layers in diffusers/PEFT form (``lora_A.weight`` / ``lora_B.weight``, alpha = rank)."""
    state = {}
    for (component, name), (a, b) in pairs.items():
        if name in CONVS:
            continue
        w = _weights(unet, name) if component == "unet" else None
        extra = (1, 1) if w is not None and w.ndim == 4 else ()
        state[f"{component}.{name}.lora_A.weight"] = a.reshape(*a.shape, *extra)
        state[f"{component}.{name}.lora_B.weight"] = b.reshape(*b.shape, *extra)
    save_file(state, str(path))
    return path


def test_t2v_finetuning_loras_equal_their_peft_form(tiny: tuple, tmp_path: Path) -> None:
    """Text-To-Video-Finetuning's full_weights files (unet and ``_text``) and its fp16 webui file give the same
    merged models; on linear layers and 1x1 convolutions that is the PEFT file's, on kernels loralib's rule
    (``B @ A`` viewed as the kernel; averaged over the view's fourth axis for the ``(3, 1, 1)`` temporal
    convolutions). Main refused these files (``lora_A`` without ``.weight``, ``input_blocks`` names)."""
    unet, _, text_encoder, _ = tiny
    pairs = _lora_pairs(unet.module, text_encoder.module)
    unet_full, text_full, webui = _t2vf_files(pairs, tmp_path / "lora")
    peft = _peft_file(pairs, unet.module, tmp_path / "peft.safetensors")
    first = load_lora(unet, text_encoder, str(unet_full))
    full = load_lora(first.unet, first.text_encoder, str(text_full))
    web = load_lora(unet, text_encoder, str(webui))
    reference = load_lora(unet, text_encoder, str(peft))
    for name in LINEAR:
        want = _weights(reference.unet.module, name)
        assert torch.equal(_weights(full.unet.module, name), want), name
        assert torch.equal(_weights(web.unet.module, name), want), name
        assert not torch.equal(want, _weights(unet.module, name))
    for name in TEXT:
        want = _weights(reference.text_encoder.module, name)
        assert torch.equal(_weights(full.text_encoder.module, name), want), name
        assert torch.equal(_weights(web.text_encoder.module, name), want), name
    for name in CONVS:
        base = _weights(unet.module, name)
        a, b = pairs[("unet", name)]
        product = b @ a
        if base.ndim == 5:
            o, i, k = base.shape[:3]
            delta = product.reshape(o, i, k, k, 1).mean(dim=-2, keepdim=True)
        else:
            delta = product.reshape(base.shape)
        want = base + delta
        for merged in (full, web):
            assert torch.allclose(_weights(merged.unet.module, name), want, atol=1e-6), name
    g = torch.Generator().manual_seed(0)
    x, emb = torch.randn(1, 4, 3, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g)
    with torch.inference_mode():
        a_out = full.unet.module(x, 10, encoder_hidden_states=emb).sample
        b_out = web.unet.module(x, 10, encoder_hidden_states=emb).sample
    assert torch.equal(a_out, b_out)
    assert unet.module is tiny[0].module and all(p.dtype == torch.float32 for p in web.unet.module.parameters())


def test_t2v_finetuning_lora_for_another_model_lists_its_keys(tiny: tuple, tmp_path: Path) -> None:
    """A webui LoRA of the 1.7B layout (``input_blocks.11`` does not exist in the tiny model) is refused listing
    the keys that match nothing."""
    unet, _, text_encoder, _ = tiny
    path = tmp_path / "big.safetensors"
    save_file({"input_blocks.11.1.transformer_blocks.0.attn1.to_q.lora_A": torch.zeros(4, 320),
               "input_blocks.11.1.transformer_blocks.0.attn1.to_q.lora_B": torch.zeros(320, 4)}, str(path))
    with pytest.raises(Exception, match=r"match no layer of the unet.*input_blocks\.11\.1"):
        load_lora(unet, text_encoder, str(path))


def test_zs2_folder_is_found_and_links_out_of_it_are_refused(engine: Engine, tiny_dir: Path, tmp_path: Path) -> None:
    """The webui folder is checked like a model folder: a UNet file linked from outside is refused."""
    state = original_unet_state(load_file(tiny_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    outside = tmp_path / "outside.pth"
    torch.save(state, outside)
    folder = tmp_path / "zs2_576w"
    folder.mkdir()
    (folder / "text2video_pytorch_model.pth").symlink_to(outside)
    doc = {"reelgraph": 1, "name": "t", "nodes": {"m": {"type": "load_model", "inputs": {
        "source": str(tiny_dir), "unet": str(folder)}}}}
    with pytest.raises(NodeFailed) as info:
        engine.run(doc, out_dir=tmp_path, allow_paths=[tmp_path, tiny_dir.parent])
    assert (info.value.code, info.value.input) == ("model_load_failed", "unet")
    assert "symbolic link that does not lead inside" in info.value.message
    shutil.rmtree(folder)
