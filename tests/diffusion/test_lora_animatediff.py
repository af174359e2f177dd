"""LoRA on an AnimateDiff UNet (diffusers' ``UNetMotionModel``) and its CLIP text encoder, each layout written as a
real file and checked against PEFT's own injection of the same weights: kohya SD 1.5 files in diffusers' names and
in the LDM names (LoCon convolutions included), diffusers/PEFT files as diffusers' ``save_lora_weights`` writes
them, the AnimateDiff project's motion LoRAs (original and diffusers-converted), stacking with scales; LoRAs of
the other video family refused by name."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reelgraph import Engine, NodeFailed, NodeInputError

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")
pytest.importorskip("safetensors")

from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from reelgraph.nodes.lora_nodes import load_lora  # noqa: E402
from reelgraph.nodes.values import TextEncoder, UNet3D  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "workflows" / "lora_video.json"
RANK = 4
TOLERANCE = 1e-5
Layers = dict[str, tuple[Any, Any]]  # module name -> (down, up)


def _adaptable(model: Any) -> list[str]:
    kinds = (torch.nn.Linear, torch.nn.Conv2d)
    return [name for name, module in model.named_modules() if isinstance(module, kinds)]


@pytest.fixture(scope="module")
def animatediff() -> tuple[UNet3D, TextEncoder]:
    """A tiny AnimateDiff UNet (SD-style UNet2DConditionModel + MotionAdapter, as ``AnimateDiffPipeline`` builds
    it) whose motion modules matter (a fresh adapter's output projections are zero), and a tiny CLIPTextModel."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet2d = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=4)
    adapter = MotionAdapter(block_out_channels=(8, 16), motion_layers_per_block=1, motion_num_attention_heads=2,
                            motion_norm_num_groups=4, motion_max_seq_length=8)
    unet = UNetMotionModel.from_unet2d(unet2d, adapter).eval()
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "motion_modules" in name and "proj_out" in name:
                param.normal_(0, 0.3)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                        num_attention_heads=4, vocab_size=1000, bos_token_id=0, eos_token_id=1,
                                        pad_token_id=1)).eval()
    return UNet3D(module=unet, source="tiny-animatediff", vae_scale_factor=2), TextEncoder(None, text, "tiny-clip")


@pytest.fixture(scope="module")
def inputs() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {"sample": torch.randn(1, 4, 4, 8, 8, generator=g), "timestep": torch.tensor(500),
            # one per frame: AnimateDiffPipeline repeats the prompt's states for each frame
            "encoder_hidden_states": torch.randn(4, 7, 32, generator=g),
            "input_ids": torch.randint(2, 1000, (1, 7), generator=g)}


def unet_out(module: Any, inputs: dict[str, Any]) -> Any:
    with torch.no_grad():
        return module(inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"], return_dict=False)[0]


def text_out(module: Any, inputs: dict[str, Any]) -> Any:
    with torch.no_grad():
        return module(inputs["input_ids"]).last_hidden_state


def random_layers(model: Any, names: list[str], seed: int) -> Layers:
    """Random (down, up) per module, shaped as PEFT and kohya shape them: a convolution's down keeps its kernel
    (``[r, in, k, k]``), its up is 1x1 (``[out, r, 1, 1]``)."""
    g = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    out: Layers = {}
    for name in names:
        w = modules[name].weight
        out[name] = (torch.randn(RANK, *w.shape[1:], generator=g) * 0.2,
                     torch.randn(w.shape[0], RANK, *[1] * (w.ndim - 2), generator=g) * 0.2)
    return out


def peft_reference(model: Any, adapters: list[tuple[str, Layers, dict[str, float], float]]) -> Any:
    """A deep copy of ``model`` with each ``(name, layers, alphas, weight)`` injected by PEFT as an adapter of its
    own, all active, each scaled by its weight (diffusers' ``set_adapters``)."""
    from diffusers.utils.peft_utils import set_weights_and_activate_adapters

    reference = copy.deepcopy(model)
    for name, layers, alphas, _ in adapters:
        config = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=sorted(layers),
                            alpha_pattern={re.escape(m): a for m, a in alphas.items()})
        inject_adapter_in_model(config, reference, adapter_name=name)
        state = {f"{m}.lora_{ab}.weight": t for m, (d, u) in layers.items() for ab, t in (("A", d), ("B", u))}
        result = set_peft_model_state_dict(reference, state, adapter_name=name)
        assert not result.unexpected_keys
    set_weights_and_activate_adapters(reference, [a[0] for a in adapters], [a[3] for a in adapters])
    return merge_uncallable(reference)


def merge_uncallable(reference: Any) -> Any:
    """PEFT's LoRA layers cannot run where diffusers calls a layer by keyword (the motion modules'
    ``proj_in(input=…)`` / ``proj_out(input=…)``: ``TypeError: forward() missing 'x'``), so merge those with PEFT's
    own ``merge()`` (its active adapters at their scales) and put the base layer back; every other layer runs
    PEFT's unmerged adapter branch."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(reference.named_modules()):
        if isinstance(module, LoraLayer) and re.search(r"\.motion_modules\.\d+\.proj_(in|out)$", name):
            module.merge()
            parent, leaf = name.rsplit(".", 1)
            setattr(reference.get_submodule(parent), leaf, module.get_base_layer())
    return reference


def alphas_for(layers: Layers) -> dict[str, float]:
    """Per-layer alphas that differ (so a wrong alpha rule shows): 1, 2, …, 8, 1, 2, …"""
    return {name: float(1 + i % 8) for i, name in enumerate(sorted(layers))}


# --- writers of each file layout (the test's own key converters) -------------------------------------------------

_LDM_PREFIXES = {  # the tiny model's diffusers blocks -> SD's LDM (CompVis) names, written out by hand
    "conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2", "conv_out": "out.2",
    "down_blocks.0.resnets.0": "input_blocks.1.0", "down_blocks.0.attentions.0": "input_blocks.1.1",
    "down_blocks.0.downsamplers.0.conv": "input_blocks.2.0.op", "down_blocks.1.resnets.0": "input_blocks.3.0",
    "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
    "mid_block.resnets.1": "middle_block.2", "up_blocks.0.resnets.0": "output_blocks.0.0",
    "up_blocks.0.resnets.1": "output_blocks.1.0", "up_blocks.0.upsamplers.0.conv": "output_blocks.1.1.conv",
    "up_blocks.1.resnets.0": "output_blocks.2.0", "up_blocks.1.attentions.0": "output_blocks.2.1",
    "up_blocks.1.resnets.1": "output_blocks.3.0", "up_blocks.1.attentions.1": "output_blocks.3.1",
}
_LDM_RESNET = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
               "conv_shortcut": "skip_connection"}


def ldm_name(name: str) -> str:
    """The LDM name of one of the tiny UNet's 2D layers."""
    for prefix, ldm in sorted(_LDM_PREFIXES.items(), key=lambda item: -len(item[0])):
        if name == prefix:
            return ldm
        if name.startswith(prefix + "."):
            rest = name[len(prefix) + 1:]
            return f"{ldm}.{_LDM_RESNET.get(rest, rest) if '.resnets.' in '.' + prefix + '.' else rest}"
    raise KeyError(name)


def write_kohya(unet_layers: Layers, text_layers: Layers, alphas: dict[str, float], path: Path,
                ldm: bool = False) -> Path:
    """kohya sd-scripts' SD 1.x layout: ``lora_unet_<module, '.' -> '_'>.lora_down.weight`` / ``.lora_up.weight``
    / ``.alpha``, and ``lora_te_text_model_<…>`` (transformers 4's CLIP names, as kohya writes them); with ``ldm``
    the UNet names are SD's LDM names."""
    tensors: dict[str, Any] = {}
    for prefix, layers in (("lora_unet_", unet_layers), ("lora_te_text_model_", text_layers)):
        for name, (down, up) in layers.items():
            module = ldm_name(name) if ldm and prefix == "lora_unet_" else name
            key = prefix + module.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = down.contiguous()
            tensors[f"{key}.lora_up.weight"] = up.contiguous()
            tensors[f"{key}.alpha"] = torch.tensor(alphas[name])
    save_file(tensors, str(path))
    return path


def motion_original_key(name: str) -> str:
    """The AnimateDiff project's name of a motion-module projection (``…motion_modules.0.temporal_transformer.
    transformer_blocks.0.attention_blocks.0.processor.to_q_lora``), as its motion LoRAs name them."""
    block, rest = name.split(".motion_modules.")
    index, rest = rest.split(".", 1)
    rest = rest.replace(".attn1.", ".attention_blocks.0.").replace(".attn2.", ".attention_blocks.1.")
    base, proj = rest.rsplit(".to_", 1)
    proj = "out" if proj == "out.0" else proj
    return f"{block}.motion_modules.{index}.temporal_transformer.{base}.processor.to_{proj}_lora"


def motion_diffusers_key(original: str) -> str:
    """diffusers' ``scripts/convert_animatediff_motion_lora_to_diffusers.py`` renames (and its ``unet.`` prefix)."""
    return "unet." + (original.replace(".attention_blocks.0", ".attn1").replace(".attention_blocks.1", ".attn2")
                      .replace(".temporal_transformer", ""))


def write_motion(layers: Layers, path: Path, diffusers: bool, wrap: bool = False) -> Path:
    """A motion LoRA: ``<key>.down.weight`` / ``.up.weight``, no alpha; the original is a pickle (``.ckpt``, with
    ``wrap`` inside ``{"state_dict": …}``, which AnimateDiff's loader also reads), the diffusers-converted one
    ``.safetensors``."""
    tensors: dict[str, Any] = {}
    for name, (down, up) in layers.items():
        key = motion_original_key(name)
        key = motion_diffusers_key(key) if diffusers else key
        tensors[f"{key}.down.weight"] = down.contiguous()
        tensors[f"{key}.up.weight"] = up.contiguous()
    if diffusers:
        save_file(tensors, str(path))
    else:
        torch.save({"state_dict": tensors} if wrap else tensors, path)
    return path


def motion_targets(unet: Any) -> list[str]:
    """The projections the AnimateDiff project's motion LoRAs adapt: q, k, v and out of every motion attention."""
    return [n for n in _adaptable(unet) if ".motion_modules." in n and re.search(r"\.attn[12]\.to_(q|k|v|out\.0)$", n)]


def assert_close(name: str, got: Any, expected: Any, base: Any, worst: dict[str, float]) -> None:
    assert (expected - base).abs().max() > 1e-2, f"{name}: the LoRA changes nothing"
    worst[name] = (got - expected).abs().max().item()
    assert worst[name] <= TOLERANCE, (name, worst[name])


def patched(base: Any, out: Any) -> set[str]:
    """Names of the modules whose weight ``out`` does not share with ``base``."""
    base_params = dict(base.named_parameters())
    return {k.removesuffix(".weight") for k, p in out.named_parameters() if p is not base_params[k]}


# --- equality with PEFT ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ldm", [False, True], ids=["diffusers-names", "ldm-names"])
def test_kohya_locon_every_layer_equals_peft(animatediff: tuple, inputs: dict[str, Any], tmp_path: Path,
                                            ldm: bool) -> None:
    unet, text = animatediff
    names = [n for n in _adaptable(unet.module) if not (ldm and ".motion_modules." in n)]
    unet_layers = random_layers(unet.module, names, seed=1)
    text_layers = random_layers(text.module, _adaptable(text.module), seed=2)
    alphas = {**alphas_for(unet_layers), **alphas_for(text_layers)}
    path = write_kohya(unet_layers, text_layers, alphas, tmp_path / "locon.safetensors", ldm=ldm)
    out = load_lora(unet, text, str(path), scale_unet=0.8, scale_text=1.3)
    # every key lands: each layer of the file is patched, nothing else
    assert patched(unet.module, out.unet.module) == set(unet_layers)
    assert patched(text.module, out.text_encoder.module) == set(text_layers)
    assert any(w.ndim == 4 and w.shape[-1] == 3 for w, _ in unet_layers.values())  # LoCon 3x3 convs are in
    worst: dict[str, float] = {}
    ref_unet = peft_reference(unet.module, [("k", unet_layers, {n: alphas[n] for n in unet_layers}, 0.8)])
    ref_text = peft_reference(text.module, [("k", text_layers, {n: alphas[n] for n in text_layers}, 1.3)])
    assert_close("unet", unet_out(out.unet.module, inputs), unet_out(ref_unet, inputs), unet_out(unet.module, inputs),
                 worst)
    assert_close("text", text_out(out.text_encoder.module, inputs), text_out(ref_text, inputs),
                 text_out(text.module, inputs), worst)
    print(f"kohya ({'LDM' if ldm else 'diffusers'} names, {len(unet_layers)}+{len(text_layers)} layers) "
          f"max |ours - PEFT|: {worst}")


def test_ldm_names_agree_with_diffusers_conversion(animatediff: tuple) -> None:
    """The test's LDM table against diffusers' own kohya conversion (``_maybe_map_sgm_blocks_to_diffusers`` +
    ``_convert_non_diffusers_lora_to_diffusers``): equal on every layer but the upsampler of SD's up block without
    attentions, which diffusers' SDXL-minded block map sends to an ``attentions`` module that does not exist."""
    from diffusers.loaders.lora_conversion_utils import (
        _convert_non_diffusers_lora_to_diffusers,
        _maybe_map_sgm_blocks_to_diffusers,
    )

    unet, _ = animatediff
    names = [n for n in _adaptable(unet.module) if ".motion_modules." not in n]
    state = {}
    for name in names:
        key = "lora_unet_" + ldm_name(name).replace(".", "_")
        state[f"{key}.lora_down.weight"] = torch.zeros(1)
        state[f"{key}.lora_up.weight"] = torch.zeros(1)
    mapped = _maybe_map_sgm_blocks_to_diffusers(state, unet.module.config)
    converted, _ = _convert_non_diffusers_lora_to_diffusers(mapped)
    theirs = set()
    for key in converted:
        if ".down." in key:
            module = key.removeprefix("unet.").split(".lora.down.")[0]
            module = re.sub(r"\.processor\.to_(q|k|v|out)_lora\.down\.weight$",
                            lambda m: f".to_{'out.0' if m[1] == 'out' else m[1]}", module)
            theirs.add(module)
    assert theirs ^ set(names) == {"up_blocks.0.upsamplers.0.conv", "up_blocks.0.attentions.1.conv"}


@pytest.mark.parametrize("rslora", [False, True], ids=["alpha-over-rank", "rslora"])
def test_peft_file_written_by_diffusers_equals_peft(animatediff: tuple, inputs: dict[str, Any], tmp_path: Path,
                                                   rslora: bool) -> None:
    """A LoRA trained with PEFT on the AnimateDiff UNet and CLIP and saved by ``save_lora_weights`` with its
    ``LoraConfig`` as ``lora_adapter_metadata`` (alpha, alpha_pattern, rank_pattern, use_rslora), motion modules
    included."""
    from diffusers import AnimateDiffPipeline

    unet, text = animatediff
    unet_config = LoraConfig(r=RANK, lora_alpha=6, target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in",
                                                                    "proj_out", "conv1", "conv2", "ff.net.2"],
                             alpha_pattern={"conv1": 2, "motion_modules.0.proj_in": 12}, rank_pattern={"conv2": 2},
                             use_rslora=rslora)
    text_config = LoraConfig(r=RANK, lora_alpha=3, target_modules=["q_proj", "v_proj", "fc1"], use_rslora=rslora)
    references, states = {}, {}
    g = torch.Generator().manual_seed(3)
    for part, model, config in (("unet", unet.module, unet_config), ("text", text.module, text_config)):
        reference = inject_adapter_in_model(config, copy.deepcopy(model))
        with torch.no_grad():
            for name, param in reference.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=g) * 0.2)  # trained, not PEFT's zero init
        states[part] = get_peft_model_state_dict(reference)
        references[part] = merge_uncallable(reference)
    AnimateDiffPipeline.save_lora_weights(tmp_path, unet_lora_layers=states["unet"],
                                          text_encoder_lora_layers=states["text"],
                                          unet_lora_adapter_metadata=unet_config.to_dict(),
                                          text_encoder_lora_adapter_metadata=text_config.to_dict())
    path = tmp_path / "pytorch_lora_weights.safetensors"
    out = load_lora(unet, text, str(path))
    assert len(patched(unet.module, out.unet.module)) == len(states["unet"]) // 2
    assert any(".motion_modules." in n for n in patched(unet.module, out.unet.module))
    worst: dict[str, float] = {}
    assert_close("unet", unet_out(out.unet.module, inputs), unet_out(references["unet"], inputs),
                 unet_out(unet.module, inputs), worst)
    assert_close("text", text_out(out.text_encoder.module, inputs), text_out(references["text"], inputs),
                 text_out(text.module, inputs), worst)
    print(f"diffusers/PEFT file ({'rslora' if rslora else 'alpha/rank'}) max |ours - PEFT|: {worst}")


@pytest.mark.parametrize("diffusers", [False, True], ids=["animatediff-ckpt", "diffusers-converted"])
def test_motion_lora_equals_peft(animatediff: tuple, inputs: dict[str, Any], tmp_path: Path, diffusers: bool) -> None:
    unet, text = animatediff
    layers = random_layers(unet.module, motion_targets(unet.module), seed=4)
    path = write_motion(layers, tmp_path / ("m.safetensors" if diffusers else "m.ckpt"), diffusers)
    out = load_lora(unet, text, str(path), scale_unet=1.5)
    assert patched(unet.module, out.unet.module) == set(layers) and len(layers) == 7 * 8
    assert out.text_encoder is text  # a motion LoRA has no text part
    reference = peft_reference(unet.module, [("motion", layers, {n: float(RANK) for n in layers}, 1.5)])
    worst: dict[str, float] = {}
    assert_close("unet", unet_out(out.unet.module, inputs), unet_out(reference, inputs), unet_out(unet.module, inputs),
                 worst)
    print(f"motion LoRA ({'diffusers' if diffusers else 'AnimateDiff'} layout) max |ours - PEFT|: {worst}")


def test_diffusers_converted_motion_lora_equals_diffusers_loader(animatediff: tuple, inputs: dict[str, Any],
                                                                 tmp_path: Path) -> None:
    """The same file through diffusers' own ``UNetMotionModel.load_lora_adapter`` + ``set_adapters``."""
    from safetensors.torch import load_file

    unet, text = animatediff
    layers = random_layers(unet.module, motion_targets(unet.module), seed=5)
    path = write_motion(layers, tmp_path / "m.safetensors", diffusers=True)
    reference = copy.deepcopy(unet.module)
    reference.load_lora_adapter(load_file(str(path)), prefix="unet", adapter_name="zoom")
    reference.set_adapters(["zoom"], [0.6])
    out = load_lora(unet, text, str(path), scale_unet=0.6)
    worst: dict[str, float] = {}
    assert_close("unet", unet_out(out.unet.module, inputs), unet_out(reference, inputs), unet_out(unet.module, inputs),
                 worst)
    print(f"motion LoRA vs diffusers' load_lora_adapter max: {worst}")


@pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute")  # two PEFT adapters, on purpose
def test_stacked_loras_equal_peft_adapters_weighted(animatediff: tuple, inputs: dict[str, Any],
                                                   tmp_path: Path) -> None:
    """A kohya LoCon style LoRA (UNet at 0.7, text at 1.3) then a motion LoRA (1.5) on the same motion
    projections: equal to PEFT with both adapters active, weighted."""
    unet, text = animatediff
    style_unet = random_layers(unet.module, _adaptable(unet.module), seed=6)
    style_text = random_layers(text.module, _adaptable(text.module), seed=7)
    alphas = {**alphas_for(style_unet), **alphas_for(style_text)}
    motion = random_layers(unet.module, motion_targets(unet.module), seed=8)
    first = load_lora(unet, text, str(write_kohya(style_unet, style_text, alphas, tmp_path / "style.safetensors")),
                      scale_unet=0.7, scale_text=1.3)
    second = load_lora(first.unet, first.text_encoder, str(write_motion(motion, tmp_path / "zoom.ckpt", False)),
                       scale_unet=1.5, scale_text=0.0)
    assert second.unet.loras == ("style.safetensors", "zoom.ckpt")
    assert second.text_encoder.loras == ("style.safetensors",)
    ref_unet = peft_reference(unet.module, [("style", style_unet, {n: alphas[n] for n in style_unet}, 0.7),
                                            ("motion", motion, {n: float(RANK) for n in motion}, 1.5)])
    ref_text = peft_reference(text.module, [("style", style_text, {n: alphas[n] for n in style_text}, 1.3)])
    worst: dict[str, float] = {}
    assert_close("unet", unet_out(second.unet.module, inputs), unet_out(ref_unet, inputs),
                 unet_out(first.unet.module, inputs), worst)
    assert_close("text", text_out(second.text_encoder.module, inputs), text_out(ref_text, inputs),
                 text_out(text.module, inputs), worst)
    print(f"stacked max |ours - PEFT two adapters|: {worst}")


# --- the other family's LoRAs ------------------------------------------------------------------------------------


def test_modelscope_lora_on_animatediff_is_refused_by_name(animatediff: tuple, tmp_path: Path) -> None:
    unet, text = animatediff
    fits = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    alien = ["lora_unet_down_blocks_0_temp_attentions_0_transformer_blocks_0_attn1_to_q",
             "lora_unet_transformer_in_transformer_blocks_0_attn1_to_k"]
    state = {}
    for key in (fits, *alien):
        state[f"{key}.lora_down.weight"] = torch.zeros(RANK, 8)
        state[f"{key}.lora_up.weight"] = torch.zeros(8, RANK)
    save_file(state, str(tmp_path / "zeroscope_style.safetensors"))
    with pytest.raises(NodeInputError) as info:
        load_lora(unet, text, str(tmp_path / "zeroscope_style.safetensors"))
    assert (info.value.code, info.value.input) == ("invalid_value", "source")
    assert str(info.value) == (
        "zeroscope_style.safetensors does not fit this model: 2 LoRA key(s) match no layer of the unet (a LoRA for "
        f"another architecture?): {alien[0]}, {alien[1]}; the file names ModelScope/Zeroscope layers "
        "(temp_attentions, temp_convs, transformer_in), and this UNet is an AnimateDiff UNetMotionModel")

    peft_state = {"unet.down_blocks.0.temp_convs.0.conv1.2.lora_A.weight": torch.zeros(RANK, 8, 3, 1, 1),
                  "unet.down_blocks.0.temp_convs.0.conv1.2.lora_B.weight": torch.zeros(8, RANK, 1, 1, 1)}
    save_file(peft_state, str(tmp_path / "temporal.safetensors"))
    with pytest.raises(NodeInputError, match=r"1 LoRA key\(s\) match no layer of the unet .*: "
                                             r"unet\.down_blocks\.0\.temp_convs\.0\.conv1\.2; the file names "
                                             r"ModelScope/Zeroscope layers") as info:
        load_lora(unet, text, str(tmp_path / "temporal.safetensors"))
    assert info.value.code == "invalid_value"


def test_motion_lora_on_modelscope_fails_the_node_by_name(reelgraph_home: Path, make_engine: Callable[..., Engine],
                                                          animatediff: tuple, tmp_path: Path) -> None:
    unet, _ = animatediff
    layers = random_layers(unet.module, motion_targets(unet.module)[:2], seed=9)
    path = write_motion(layers, tmp_path / "v2_lora_ZoomIn.ckpt", diffusers=False)
    with pytest.raises(NodeFailed) as info:
        make_engine().run(WORKFLOW, {"lora": str(path), "steps": 1}, out_dir=tmp_path)
    err = info.value
    assert (err.code, err.node, err.input) == ("invalid_value", "lora", "source")
    keys = sorted(f"unet.{motion_original_key(n).replace('.processor.', '.').removesuffix('_lora')}" for n in layers)
    assert keys[0].startswith("unet.down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.")
    assert ("v2_lora_ZoomIn.ckpt does not fit this model: 2 LoRA key(s) match no layer of the unet (a LoRA for "
            f"another architecture?): {keys[0]}, {keys[1]}; the file names AnimateDiff motion modules "
            "(motion_modules), and this UNet is a ModelScope-family UNet3DConditionModel") in err.message


def test_use_rslora_must_be_a_boolean(animatediff: tuple, tmp_path: Path) -> None:
    import json

    unet, text = animatediff
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    save_file({f"unet.{name}.lora_A.weight": torch.zeros(RANK, 8), f"unet.{name}.lora_B.weight": torch.zeros(8, RANK)},
              str(tmp_path / "r.safetensors"),
              metadata={"lora_adapter_metadata": json.dumps({"unet.lora_alpha": 4, "unet.use_rslora": "yes"})})
    with pytest.raises(NodeInputError) as info:
        load_lora(unet, text, str(tmp_path / "r.safetensors"))
    assert (info.value.code, info.value.input) == ("invalid_value", "source")
    assert str(info.value) == ("r.safetensors: lora_adapter_metadata 'unet.use_rslora' must be true or false, "
                               "got 'yes'")


@pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute")  # two PEFT adapters, on purpose
def test_builtin_animatediff_through_the_engine_equals_peft(reelgraph_home: Path, make_engine: Callable[..., Engine],
                                                            tmp_path: Path) -> None:
    """``load_model builtin:tiny-animatediff`` -> ``load_lora`` (kohya LoCon style, 0.7 / text 1.3) -> ``load_lora``
    (AnimateDiff motion ``.ckpt``, 1.2) in a workflow: the UNet and text encoder it returns equal PEFT's two
    weighted adapters on the loaded model."""
    from reelgraph.nodes.model_loading import load_model

    unet, _, text, _ = load_model("builtin:tiny-animatediff", device="cpu")
    style_unet = random_layers(unet.module, _adaptable(unet.module), seed=10)
    style_text = random_layers(text.module, _adaptable(text.module), seed=11)
    alphas = {**alphas_for(style_unet), **alphas_for(style_text)}
    motion = random_layers(unet.module, motion_targets(unet.module), seed=12)
    style = write_kohya(style_unet, style_text, alphas, tmp_path / "style.safetensors")
    zoom = write_motion(motion, tmp_path / "v2_lora_ZoomIn.ckpt", diffusers=False, wrap=True)
    doc = {"reelgraph": 1, "name": "ad-lora", "nodes": {
        "m": {"type": "load_model", "inputs": {"source": "builtin:tiny-animatediff", "device": "cpu"}},
        "s": {"type": "load_lora", "inputs": {"unet": {"from": "m.unet"}, "text_encoder": {"from": "m.text_encoder"},
                                              "source": str(style), "scale_unet": 0.7, "scale_text": 1.3}},
        "z": {"type": "load_lora", "inputs": {"unet": {"from": "s.unet"}, "text_encoder": {"from": "s.text_encoder"},
                                              "source": str(zoom), "scale_unet": 1.2}}}}
    result = make_engine().run(doc, out_dir=tmp_path, allow_paths=[tmp_path])
    out_unet, out_text = result.outputs["z.unet"], result.outputs["z.text_encoder"]
    assert out_unet.loras == ("style.safetensors", "v2_lora_ZoomIn.ckpt") and type(out_unet.module).__name__ == (
        "UNetMotionModel")
    ref_unet = peft_reference(unet.module, [("style", style_unet, {n: alphas[n] for n in style_unet}, 0.7),
                                            ("motion", motion, {n: float(RANK) for n in motion}, 1.2)])
    ref_text = peft_reference(text.module, [("style", style_text, {n: alphas[n] for n in style_text}, 1.3)])
    g = torch.Generator().manual_seed(1)
    big = {"sample": torch.randn(1, 4, 4, 16, 16, generator=g), "timestep": torch.tensor(300),
           "encoder_hidden_states": torch.randn(4, 7, 32, generator=g),
           "input_ids": torch.randint(2, text.module.config.vocab_size, (1, 7), generator=g)}
    worst: dict[str, float] = {}
    assert_close("unet", unet_out(out_unet.module, big), unet_out(ref_unet, big), unet_out(unet.module, big), worst)
    assert_close("text", text_out(out_text.module, big), text_out(ref_text, big), text_out(text.module, big), worst)
    print(f"builtin:tiny-animatediff through the engine, max |ours - PEFT|: {worst}")
