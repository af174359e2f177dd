"""LoRA on the UNet3D and the CLIP text encoder: the merge definition, equality with PEFT, both file formats,
scale 0, stacking, no mutation of shared models (graph branches in either order), refusals, the workflow."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reelgraph import Engine, NodeFailed, NodeInputError

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("safetensors")

from safetensors.torch import save_file  # noqa: E402

from reelgraph.nodes import sampling  # noqa: E402
from reelgraph.nodes.lora_nodes import load_lora  # noqa: E402
from reelgraph.nodes.values import TextEncoder, UNet3D  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "workflows" / "lora_video.json"
T2V = ROOT / "workflows" / "text2video.json"
RANK, ALPHA = 4, 6.0

# Spatial, cross and temporal attention, transformer_in, a 3x3 resnet conv and a temporal Conv3d.
UNET_TARGETS = [
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0",
    "down_blocks.0.temp_attentions.0.transformer_blocks.0.attn1.to_v",
    "mid_block.temp_attentions.0.transformer_blocks.0.attn2.to_q",
    "transformer_in.transformer_blocks.0.attn1.to_k",
    "transformer_in.proj_in",
    "down_blocks.1.resnets.0.conv1",
    "down_blocks.0.temp_convs.0.conv1.2",
]
TEXT_TARGETS = ["encoder.layers.0.self_attn.q_proj", "encoder.layers.1.mlp.fc1"]
Lora = dict[str, dict[str, tuple[Any, Any]]]


def make_lora(unet: UNet3D, text_encoder: TextEncoder, seed: int, unet_targets: list[str] = UNET_TARGETS,
              text_targets: list[str] = TEXT_TARGETS) -> Lora:
    """Random (down, up) pairs per targeted module, shaped as PEFT shapes them (convs keep their kernel)."""
    g = torch.Generator().manual_seed(seed)
    out: Lora = {"unet": {}, "text_encoder": {}}
    for component, model, targets in (("unet", unet.module, unet_targets),
                                      ("text_encoder", text_encoder.module, text_targets)):
        modules = dict(model.named_modules())
        for name in targets:
            w = modules[name].weight
            down = torch.randn(RANK, *w.shape[1:], generator=g) * 0.3
            up = torch.randn(w.shape[0], RANK, *[1] * (w.ndim - 2), generator=g) * 0.3
            out[component][name] = (down, up)
    return out


def write_diffusers(lora: Lora, path: Path, alpha_in_metadata: bool = True) -> Path:
    """diffusers/PEFT layout: ``unet.<module>.lora_A.weight``; alpha in ``lora_adapter_metadata`` or as keys."""
    tensors: dict[str, Any] = {}
    for component, layers in lora.items():
        for name, (down, up) in layers.items():
            tensors[f"{component}.{name}.lora_A.weight"] = down
            tensors[f"{component}.{name}.lora_B.weight"] = up
            if not alpha_in_metadata:
                tensors[f"{component}.{name}.alpha"] = torch.tensor(ALPHA)
    meta = {f"{c}.{k}": v for c in lora for k, v in (("r", RANK), ("lora_alpha", ALPHA))}
    save_file(tensors, str(path), metadata={"lora_adapter_metadata": json.dumps(meta)} if alpha_in_metadata else None)
    return path


def write_kohya(lora: Lora, path: Path) -> Path:
    """kohya/A1111 layout: ``lora_unet_<module_with_underscores>.lora_down.weight`` and ``.alpha``; CLIP names
    carry the ``text_model.`` prefix as kohya writes them."""
    tensors: dict[str, Any] = {}
    for component, layers in lora.items():
        for name, (down, up) in layers.items():
            key = ("lora_unet_" + name if component == "unet" else "lora_te_text_model_" + name).replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = down
            tensors[f"{key}.lora_up.weight"] = up
            tensors[f"{key}.alpha"] = torch.tensor(ALPHA)
    save_file(tensors, str(path))
    return path


def definition(weight: Any, down: Any, up: Any, scale: float) -> Any:
    """``W + scale * (alpha / rank) * up @ down`` (flattened over a conv kernel)."""
    return weight + scale * (ALPHA / RANK) * (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)


@pytest.fixture(scope="module")
def lora(tiny: tuple) -> Lora:
    return make_lora(tiny[0], tiny[2], seed=1)


@pytest.fixture(scope="module")
def unet_inputs(tiny: tuple) -> dict[str, Any]:
    """One UNet3D call's inputs: a guidance-sized batch of 4 frames of 8x8 latents."""
    g = torch.Generator().manual_seed(0)
    return {"sample": torch.randn(2, 4, 4, 8, 8, generator=g), "timestep": torch.tensor(500),
            "encoder_hidden_states": torch.randn(2, 77, 32, generator=g)}


def unet_out(unet: UNet3D, inputs: dict[str, Any]) -> Any:
    with torch.no_grad():
        return unet.module(**inputs, return_dict=False)[0]


def text_out(text_encoder: TextEncoder) -> Any:
    return sampling.encode_prompt(text_encoder, "a red circle moving left", "", guidance=True).prompt_embeds


def test_merged_weights_follow_the_definition_and_share_the_rest(tiny: tuple, lora: Lora, tmp_path: Path) -> None:
    unet, _, text_encoder, _ = tiny
    before = {k: v.clone() for k, v in unet.module.state_dict().items()}
    path = write_diffusers(lora, tmp_path / "a.safetensors")
    out = load_lora(unet, text_encoder, str(path), scale_unet=0.7, scale_text=1.3)
    for component, base, patched, scale in (("unet", unet, out.unet, 0.7),
                                            ("text_encoder", text_encoder, out.text_encoder, 1.3)):
        base_params = dict(base.module.named_parameters())
        new_params = dict(patched.module.named_parameters())
        targeted = {f"{name}.weight" for name in lora[component]}
        for name, (down, up) in lora[component].items():
            key = f"{name}.weight"
            assert torch.equal(new_params[key], definition(base_params[key], down, up, scale)), key
        assert all(new_params[k] is p for k, p in base_params.items() if k not in targeted)  # shared, not copied
    assert all(torch.equal(v, before[k]) for k, v in unet.module.state_dict().items())  # base untouched
    assert out.unet.loras == ("a.safetensors",) and unet.loras == ()


def test_equals_peft_inject_adapter_reference(tiny: tuple, lora: Lora, unet_inputs: dict[str, Any],
                                              tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    unet, _, text_encoder, _ = tiny
    out = load_lora(unet, text_encoder, str(write_kohya(lora, tmp_path / "k.safetensors")))
    worst = {}
    for component, base, ours, run in (("unet", unet, out.unet, lambda h: unet_out(h, unet_inputs)),
                                       ("text_encoder", text_encoder, out.text_encoder, text_out)):
        reference = copy.deepcopy(base.module)
        config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(lora[component]))
        inject_adapter_in_model(config, reference)
        state = {f"{n}.lora_{ab}.weight": t for n, (d, u) in lora[component].items() for ab, t in (("A", d), ("B", u))}
        result = set_peft_model_state_dict(reference, state)
        assert not result.unexpected_keys
        handle = (UNet3D(reference, "peft", unet.vae_scale_factor) if component == "unet"
                  else TextEncoder(text_encoder.tokenizer, reference, "peft"))
        expected, got = run(handle), run(ours)
        assert (expected - run(base)).abs().max() > 1e-2  # the LoRA matters
        worst[component] = (got - expected).abs().max().item()
    print(f"max |ours - PEFT|: {worst}")
    assert max(worst.values()) <= 1e-5


def test_diffusers_and_kohya_files_give_the_same_models(tiny: tuple, lora: Lora, unet_inputs: dict[str, Any],
                                                         tmp_path: Path) -> None:
    unet, _, text_encoder, _ = tiny
    files = [write_diffusers(lora, tmp_path / "meta.safetensors"),
             write_diffusers(lora, tmp_path / "alpha_keys.safetensors", alpha_in_metadata=False),
             write_kohya(lora, tmp_path / "kohya.safetensors")]
    outs = [load_lora(unet, text_encoder, str(f)) for f in files]
    first = unet_out(outs[0].unet, unet_inputs)
    for other in outs[1:]:
        assert torch.equal(unet_out(other.unet, unet_inputs), first)
        assert torch.equal(text_out(other.text_encoder), text_out(outs[0].text_encoder))


def test_scale_zero_gives_the_base_models(tiny: tuple, lora: Lora, tmp_path: Path) -> None:
    unet, _, text_encoder, _ = tiny
    path = write_kohya(lora, tmp_path / "k.safetensors")
    out = load_lora(unet, text_encoder, str(path), scale_unet=0.0, scale_text=0.0)
    assert out.unet is unet and out.text_encoder is text_encoder
    half = load_lora(unet, text_encoder, str(path), scale_unet=1.0, scale_text=0.0)
    assert half.text_encoder is text_encoder and half.unet.module is not unet.module


def test_stacked_loras_add_their_deltas(tiny: tuple, lora: Lora, tmp_path: Path) -> None:
    unet, _, text_encoder, _ = tiny
    other = make_lora(unet, text_encoder, seed=2, unet_targets=[*UNET_TARGETS[:5], "mid_block.resnets.0.conv2"],
                      text_targets=TEXT_TARGETS[:1])
    first = load_lora(unet, text_encoder, str(write_kohya(lora, tmp_path / "a.safetensors")), scale_unet=0.8)
    both = load_lora(first.unet, first.text_encoder, str(write_diffusers(other, tmp_path / "b.safetensors")),
                     scale_unet=0.5)
    assert both.unet.loras == ("a.safetensors", "b.safetensors")
    base = dict(unet.module.named_parameters())
    stacked = dict(both.unet.module.named_parameters())
    for name in set(lora["unet"]) | set(other["unet"]):
        key = f"{name}.weight"
        w = base[key]
        delta_a = definition(w, *lora["unet"][name], 0.8) - w if name in lora["unet"] else 0
        delta_b = definition(w, *other["unet"][name], 0.5) - w if name in other["unet"] else 0
        torch.testing.assert_close(stacked[key], w + delta_a + delta_b, rtol=0, atol=1e-6)
    assert all(stacked[k] is p for k, p in base.items() if k.removesuffix(".weight") not in
               set(lora["unet"]) | set(other["unet"]))


def _branches(lora_path: Path) -> dict[str, Any]:
    """One graph: a base branch and a LoRA branch sharing the loaded model."""
    sample = {"scheduler": {"from": "model.scheduler"}, "frames": 4, "height": 32, "width": 32, "steps": 3,
              "seed": 5, "guidance_scale": 7.5}
    return {"reelgraph": 1, "name": "branches", "nodes": {
        "model": {"type": "load_model", "inputs": {"source": "builtin:tiny-random"}},
        "lora": {"type": "load_lora", "inputs": {"unet": {"from": "model.unet"},
                                                  "text_encoder": {"from": "model.text_encoder"},
                                                  "source": str(lora_path)}},
        "base_text": {"type": "clip_text_encode", "inputs": {"text_encoder": {"from": "model.text_encoder"},
                                                             "prompt": "a red circle"}},
        "lora_text": {"type": "clip_text_encode", "inputs": {"text_encoder": {"from": "lora.text_encoder"},
                                                             "prompt": "a red circle"}},
        "base": {"type": "unet3d_denoise", "inputs": {**sample, "unet": {"from": "model.unet"},
                                                      "conditioning": {"from": "base_text.conditioning"}}},
        "styled": {"type": "unet3d_denoise", "inputs": {**sample, "unet": {"from": "lora.unet"},
                                                        "conditioning": {"from": "lora_text.conditioning"}}},
    }}


def test_base_and_lora_branches_in_one_graph_in_either_order(tiny: tuple, lora: Lora, tmp_path: Path,
                                                              make_engine: Callable[..., Engine]) -> None:
    unet, _, text_encoder, scheduler = tiny
    path = write_kohya(lora, tmp_path / "k.safetensors")
    run = {"frames": 4, "height": 32, "width": 32, "steps": 3, "seed": 5, "guidance_scale": 7.5}

    def direct(u: UNet3D, t: TextEncoder) -> Any:
        return sampling.denoise(u, scheduler, sampling.encode_prompt(t, "a red circle", "", True), **run)

    expected_base = direct(unet, text_encoder)
    patched = load_lora(unet, text_encoder, str(path))
    expected_lora = direct(patched.unet, patched.text_encoder)
    assert (expected_lora - expected_base).abs().max() > 1e-2
    doc = _branches(path)
    for order in (["base.latents", "styled.latents"], ["styled.latents", "base.latents"]):
        engine = make_engine()
        results = {name: engine.run(doc, outputs=[name], out_dir=tmp_path).outputs[name].tensor for name in order}
        assert torch.equal(results["base.latents"], expected_base), order
        assert torch.equal(results["styled.latents"], expected_lora), order
    together = make_engine().run(doc, outputs=["styled.latents", "base.latents"], out_dir=tmp_path).outputs
    assert torch.equal(together["base.latents"].tensor, expected_base)
    assert torch.equal(together["styled.latents"].tensor, expected_lora)
    # Re-running without the LoRA afterwards still gives the base result.
    assert torch.equal(direct(unet, text_encoder), expected_base)


def test_unmatched_keys_are_refused_with_their_list(tiny: tuple, lora: Lora, tmp_path: Path) -> None:
    unet, _, text_encoder, _ = tiny
    path = write_kohya(lora, tmp_path / "k.safetensors")
    from safetensors.torch import load_file

    state = load_file(str(path))
    sd15 = {"lora_unet_input_blocks_1_1_proj_in": (4, 320), "lora_unet_down_blocks_9_attentions_0_proj_out": (4, 16)}
    for key, (r, n) in sd15.items():
        state[f"{key}.lora_down.weight"] = torch.zeros(r, n)
        state[f"{key}.lora_up.weight"] = torch.zeros(n, r)
        state[f"{key}.alpha"] = torch.tensor(1.0)
    save_file(state, str(tmp_path / "sd15.safetensors"))
    with pytest.raises(NodeInputError) as info:
        load_lora(unet, text_encoder, str(tmp_path / "sd15.safetensors"))
    assert info.value.input == "source"
    assert "2 LoRA key(s) match no layer of the unet" in str(info.value)
    assert all(key in str(info.value) for key in sd15)

    wrong = {"unet": {"down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": (torch.zeros(4, 768),
                                                                                      torch.zeros(16, 4))},
             "text_encoder": {"encoder.layers.7.self_attn.q_proj": (torch.zeros(4, 32), torch.zeros(32, 4))}}
    with pytest.raises(NodeInputError) as info:
        load_lora(unet, text_encoder, str(write_diffusers(wrong, tmp_path / "wrong.safetensors")))
    message = str(info.value)
    assert "attn2.to_k: weight (16, 32), up (16, 4), down (4, 768)" in message
    assert "match no layer of the text_encoder" in message and "text_encoder.encoder.layers.7.self_attn" in message

    state = {"unet.conv_in.lora_A.weight": torch.zeros(4, 4, 3, 3), "unet.conv_in.hada_w1_a": torch.zeros(2, 2)}
    save_file(state, str(tmp_path / "lycoris.safetensors"))
    with pytest.raises(NodeInputError, match=r"not LoRA down/up/alpha weights .*unet\.conv_in\.hada_w1_a"):
        load_lora(unet, text_encoder, str(tmp_path / "lycoris.safetensors"))


def test_unmatched_text_encoder_keys_fail_the_node_located(reelgraph_home: Path, make_engine: Callable[..., Engine],
                                                           tiny: tuple, tmp_path: Path) -> None:
    path = tmp_path / "te.safetensors"
    save_file({"lora_te_text_model_encoder_layers_9_self_attn_q_proj.lora_down.weight": torch.zeros(4, 32),
               "lora_te_text_model_encoder_layers_9_self_attn_q_proj.lora_up.weight": torch.zeros(32, 4)}, str(path))
    with pytest.raises(NodeFailed) as info:
        make_engine().run(WORKFLOW, {"lora": str(path), "steps": 1}, out_dir=tmp_path)
    err = info.value
    assert (err.code, err.node, err.input) == ("invalid_value", "lora", "source")
    assert "lora_te_text_model_encoder_layers_9_self_attn_q_proj" in err.message


class _Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("pwned",))


def test_only_tensor_pickles_are_read(tiny: tuple, lora: Lora, unet_inputs: dict[str, Any], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    unet, _, text_encoder, _ = tiny
    state = load_file(str(write_kohya(lora, tmp_path / "k.safetensors")))
    torch.save(state, tmp_path / "k.pt")
    from_pickle = load_lora(unet, text_encoder, str(tmp_path / "k.pt"))
    from_safetensors = load_lora(unet, text_encoder, str(tmp_path / "k.safetensors"))
    assert torch.equal(unet_out(from_pickle.unet, unet_inputs), unet_out(from_safetensors.unet, unet_inputs))
    torch.save({**state, "payload": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(NodeInputError) as info:
        load_lora(unet, text_encoder, str(tmp_path / "evil.pt"))
    assert (info.value.code, info.value.input) == ("model_load_failed", "source")
    assert "weights_only" in str(info.value)
    with pytest.raises(NodeInputError) as info:
        load_lora(unet, text_encoder, str(tmp_path / "missing.safetensors"))
    assert info.value.code == "file_not_found"


def test_builtin_tiny_lora_is_reproducible(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from reelgraph.nodes.tiny_models import _write_tiny_lora

    _write_tiny_lora(tmp_path / "a.safetensors")
    _write_tiny_lora(tmp_path / "b.safetensors")
    a, b = (load_file(str(tmp_path / name)) for name in ("a.safetensors", "b.safetensors"))
    assert a.keys() == b.keys() and len(a) == 3 * 80
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_workflow_runs_from_the_cli(reelgraph_home: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "reelgraph", "run", str(WORKFLOW), "--out", str(tmp_path),
                           "--set", "steps=2", "--quiet", "--record", str(tmp_path / "record.json")],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"save.path = {tmp_path / 'lora_video.mp4'}"
    assert json.loads((tmp_path / "record.json").read_text())["status"] == "finished"


def test_patched_copy_shares_untouched_modules_but_not_their_tables() -> None:
    from reelgraph.nodes.lora import patched_copy

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.Linear(2, 2)))
    before = model[1][0].weight.clone()
    copy_ = patched_copy(model, {"1.0.weight": torch.zeros(2, 2)})
    assert copy_[0] is model[0] and copy_[1] is not model[1] and copy_[1][0].bias is model[1][0].bias
    assert torch.equal(model[1][0].weight, before) and torch.equal(copy_[1][0].weight, torch.zeros(2, 2))
    calls: list[str] = []
    model[1][0].register_forward_hook(lambda *args: calls.append("hook"))
    copy_(torch.ones(1, 2))
    assert calls == []  # a hook added to the original later does not reach the copy
    with pytest.raises(KeyError):
        patched_copy(model, {"0.nope": torch.zeros(1)})
