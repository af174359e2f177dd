"""One-shot tuning (``tune_video``): the loss falls, the tuned adapter reproduces the clip better than the base,
the base model is never modified, a seed gives one adapter, the saved file reloads to identical outputs,
interruption keeps the last good adapter, the engine caches tuning, and the shipped workflow runs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reelgraph import Engine, NodeInputError, RunContext, RunInterrupted

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("safetensors")
pytest.importorskip("av")

from safetensors import safe_open  # noqa: E402

from reelgraph.nodes import sampling  # noqa: E402
from reelgraph.nodes.lora import LoraAdapter  # noqa: E402
from reelgraph.nodes.lora_nodes import load_lora  # noqa: E402
from reelgraph.nodes.tune_nodes import save_lora, tune_video  # noqa: E402
from reelgraph.nodes.tuning import DEFAULT_TARGETS, denoising_loss, match_targets  # noqa: E402
from reelgraph.nodes.values import Latents, UNet3D  # noqa: E402
from reelgraph.nodes.video_io import read_video  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "workflows" / "tune_a_video.json"
ASSET = ROOT / "workflows" / "assets" / "red_circle_left.mp4"
CAPTION = "a red circle moving left"
STEPS, LR = 40, 1e-2  # builtin:tiny learns its clip at lr 1e-2 within a few dozen steps


def context(tmp_path: Path, on_progress: Callable[[int, int, dict[str, Any]], None] | None = None) -> RunContext:
    """A run context writing under ``tmp_path`` and reporting progress to ``on_progress``."""
    ctx = RunContext("tune", "tune_video", tmp_path, tmp_path, None, tmp_path)
    if on_progress is not None:
        ctx._emit_progress = on_progress
    return ctx


def tune(tiny: tuple, clip: Latents, tmp_path: Path, **kwargs: Any) -> LoraAdapter:
    """``tune_video`` on ``clip`` with the test's settings, overridable by keyword."""
    unet, _, text_encoder, scheduler = tiny
    kwargs = {"latents": clip, "steps": STEPS, "learning_rate": LR, "seed": 3, **kwargs}
    return tune_video(unet, text_encoder, scheduler, CAPTION, kwargs.pop("ctx", context(tmp_path)), **kwargs)


def tensors(adapter: LoraAdapter) -> dict[str, Any]:
    return adapter.state_dict()


def unet_out(unet: UNet3D, latents: Latents, embeds: Any) -> Any:
    with torch.no_grad():
        return unet.module(latents.tensor, torch.tensor(400), encoder_hidden_states=embeds, return_dict=False)[0]


@pytest.fixture(scope="module")
def latents(tiny: tuple) -> Latents:
    """The shipped clip (8 frames of 32x32), encoded: ``[1, 4, 8, 8, 8]``."""
    return sampling.vae_encode(tiny[1], read_video(ASSET, max_frames=8))


@pytest.fixture(scope="module")
def embeds(tiny: tuple) -> Any:
    return sampling.encode_prompt(tiny[2], CAPTION, guidance=False).prompt_embeds


@pytest.fixture(scope="module")
def base_state(tiny: tuple) -> dict[str, Any]:
    """The base UNet3D before any tuning: weights (cloned), flags and the parameter objects themselves."""
    module = tiny[0].module
    return {"weights": {k: v.clone() for k, v in module.state_dict().items()},
            "params": dict(module.named_parameters()),
            "flags": {n: (p.requires_grad, p.grad) for n, p in module.named_parameters()},
            "training": {n: m.training for n, m in module.named_modules()}}


@pytest.fixture(scope="module")
def trained(tiny: tuple, latents: Latents, base_state: dict[str, Any],
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tuning run with ``save_path``; its adapter, the file and the per-step losses from progress events."""
    out = tmp_path_factory.mktemp("tuned")
    events: list[tuple[int, int, dict[str, Any]]] = []
    ctx = context(out, lambda i, n, extra: events.append((i, n, extra)))
    adapter = tune(tiny, latents, out, ctx=ctx, save_path=out / "clip.safetensors")
    return {"adapter": adapter, "events": events, "path": out / "clip.safetensors", "out": out}


def test_loss_falls_over_the_steps(trained: dict[str, Any]) -> None:
    events = trained["events"]
    assert [(i, n) for i, n, _ in events] == [(i, STEPS) for i in range(1, STEPS + 1)]
    losses = [extra["loss"] for _, _, extra in events]
    assert losses == trained["adapter"].info["losses"]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    print(f"loss: first 10 steps {first:.4f}, last 10 steps {last:.4f}")
    assert last < 0.9 * first


def test_tuned_adapter_reproduces_the_clip_better_than_the_base(tiny: tuple, latents: Latents, embeds: Any,
                                                                trained: dict[str, Any]) -> None:
    unet, _, text_encoder, scheduler = tiny
    g = torch.Generator().manual_seed(99)  # fixed noise and timesteps, none of them the training draws
    noises = [torch.randn(latents.tensor.shape, generator=g) for _ in range(8)]
    timesteps = [int(t) for t in torch.linspace(50, 950, 8)]
    tuned = load_lora(unet, text_encoder, lora=trained["adapter"]).unet
    base_loss = denoising_loss(unet, scheduler, latents.tensor, embeds, noises, timesteps)
    tuned_loss = denoising_loss(tuned, scheduler, latents.tensor, embeds, noises, timesteps)
    print(f"denoising loss on the clip: base {base_loss:.4f}, tuned {tuned_loss:.4f}")
    assert tuned_loss < 0.9 * base_loss
    cond = sampling.encode_prompt(text_encoder, CAPTION, guidance=False)
    errors = {}
    for name, model in (("base", unet), ("tuned", tuned)):  # DDIM inversion, then DDIM back under the caption
        noise = sampling.ddim_invert(model, scheduler, cond, latents, steps=10)
        back = sampling.denoise(model, scheduler, cond, noise=noise, steps=10, guidance_scale=1.0,
                                scheduler_type="ddim")
        errors[name] = (back - latents.tensor).pow(2).mean().item()
    print(f"inversion round-trip MSE on the clip's latents: {errors}")
    assert errors["tuned"] < 0.5 * errors["base"]


def assert_base_untouched(tiny: tuple, base_state: dict[str, Any]) -> None:
    """Bit-identical weights, the same parameter objects with the same flags, no hook or checkpoint left."""
    module = tiny[0].module
    assert all(torch.equal(v, base_state["weights"][k]) for k, v in module.state_dict().items())
    assert dict(module.named_parameters()) == base_state["params"]  # the same objects
    assert {n: (p.requires_grad, p.grad) for n, p in module.named_parameters()} == base_state["flags"]
    assert {n: m.training for n, m in module.named_modules()} == base_state["training"]
    assert not any(m._forward_hooks or "forward" in vars(m) for m in module.modules())  # no hook, no checkpoint


def test_base_model_is_never_modified(tiny: tuple, trained: dict[str, Any], base_state: dict[str, Any]) -> None:
    assert_base_untouched(tiny, base_state)


def test_default_targets_and_untouched_modules(tiny: tuple, trained: dict[str, Any]) -> None:
    unet, _, text_encoder, _ = tiny
    adapter = trained["adapter"]
    names = sorted(adapter.layers["unet"])
    assert names == match_targets(unet.module, DEFAULT_TARGETS) and not adapter.layers["text_encoder"]
    spatial = [n for n in names if ".attentions." in n]
    assert spatial and all(n.endswith(("attn1.to_q", "attn2.to_q")) for n in spatial)
    temporal = [n for n in names if "temp_attentions" in n or n.startswith("transformer_in")]
    assert len(temporal) == 8 * 5 and len(spatial) + len(temporal) == len(names)  # every temporal projection
    out = load_lora(unet, text_encoder, lora=adapter)
    assert out.text_encoder is text_encoder and out.unet.loras == (f"tune_video({CAPTION!r})",)
    base, tuned = dict(unet.module.named_parameters()), dict(out.unet.module.named_parameters())
    targeted = {f"{n}.weight" for n in names}
    assert all(tuned[k] is p for k, p in base.items() if k not in targeted)  # untouched: the very same tensors
    assert all(not torch.equal(tuned[k], base[k]) for k in targeted)


def test_saved_file_reloads_through_load_lora_to_identical_outputs(tiny: tuple, latents: Latents, embeds: Any,
                                                                   trained: dict[str, Any]) -> None:
    unet, _, text_encoder, _ = tiny
    adapter, path = trained["adapter"], trained["path"]
    assert adapter.info["saved_to"] == str(path)
    with safe_open(str(path), framework="pt") as handle:
        keys, meta = set(handle.keys()), handle.metadata()
    assert keys == {f"unet.{n}.lora_{ab}.weight" for n in adapter.layers["unet"] for ab in "AB"}
    assert json.loads(meta["lora_adapter_metadata"])["unet.lora_alpha"] == 8
    from_link = load_lora(unet, text_encoder, lora=adapter).unet
    from_file = load_lora(unet, text_encoder, str(path)).unet
    again = save_lora(adapter, context(trained["out"]), trained["out"] / "clip.safetensors")
    assert again == trained["out"] / "clip-1.safetensors"  # never clobbers
    from_saved = load_lora(unet, text_encoder, str(again)).unet
    expected = unet_out(from_link, latents, embeds)
    assert (expected - unet_out(unet, latents, embeds)).abs().max() > 1e-3  # the adapter matters
    assert torch.equal(unet_out(from_file, latents, embeds), expected)
    assert torch.equal(unet_out(from_saved, latents, embeds), expected)
    restored = LoraAdapter.__reelgraph_restore__(*adapter.__reelgraph_state__())  # the disk cache's round trip
    assert restored.name == adapter.name and restored.info == adapter.info
    assert all(torch.equal(v, tensors(adapter)[k]) for k, v in tensors(restored).items())


def test_same_seed_same_adapter(tiny: tuple, latents: Latents, base_state: dict[str, Any], tmp_path: Path) -> None:
    a, b = (tune(tiny, latents, tmp_path, steps=8, seed=11) for _ in range(2))
    assert all(torch.equal(v, tensors(b)[k]) for k, v in tensors(a).items()) and a.info["losses"] == b.info["losses"]
    other = tune(tiny, latents, tmp_path, steps=8, seed=12)
    assert not all(torch.equal(v, tensors(other)[k]) for k, v in tensors(a).items())
    checkpointed = tune(tiny, latents, tmp_path, steps=8, seed=11, gradient_checkpointing=True, batch_frames=8)
    for key, value in tensors(a).items():
        torch.testing.assert_close(tensors(checkpointed)[key], value, rtol=0, atol=1e-6)
    assert_base_untouched(tiny, base_state)


def test_interruption_keeps_the_last_good_adapter(tiny: tuple, latents: Latents, tmp_path: Path) -> None:
    ctx = context(tmp_path)
    ctx._emit_progress = lambda i, n, extra: ctx._interrupt.set() if i == 3 else None
    with pytest.raises(RunInterrupted):
        tune(tiny, latents, tmp_path, ctx=ctx, save_path=tmp_path / "partial.safetensors")
    with safe_open(str(tmp_path / "partial.safetensors"), framework="pt") as handle:
        info = json.loads(handle.metadata()["reelgraph.lora"])["info"]
        partial = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    assert info["steps_done"] == 4 and info["steps"] == STEPS and len(info["losses"]) == 4
    four = tune(tiny, latents, tmp_path, steps=4)  # the adapter after step 4 of the interrupted run
    assert partial.keys() == tensors(four).keys()
    assert all(torch.equal(partial[k], v) for k, v in tensors(four).items())


def test_inputs_are_checked_with_located_errors(tiny: tuple, latents: Latents, trained: dict[str, Any],
                                                tmp_path: Path) -> None:
    unet, vae, text_encoder, _ = tiny
    with pytest.raises(NodeInputError) as info:
        load_lora(unet, text_encoder)
    assert (info.value.input, info.value.code) == ("source", "missing_input")
    with pytest.raises(NodeInputError) as info:
        load_lora(unet, text_encoder, "builtin:tiny-lora", lora=trained["adapter"])
    assert info.value.input == "lora"
    cases = [({"targets": ["*.attentions.*.attn1.to_q", "*.nope"]}, "targets"),
             ({"vae": vae}, "latents"), ({"latents": None}, "video"),
             ({"save_path": tmp_path / "x.pt"}, "save_path")]
    for extra, where in cases:
        with pytest.raises(NodeInputError) as info:
            tune(tiny, latents, tmp_path, steps=1, **extra)
        assert info.value.input == where, extra
        if where == "targets":
            assert "1 target pattern(s) match no linear layer" in str(info.value) and "'*.nope'" in str(info.value)


def _tune_graph(save: bool = False) -> dict[str, Any]:
    """load_model -> load_video -> vae_encode -> tune_video, 6 steps."""
    tune_inputs = {"unet": {"from": "model.unet"}, "text_encoder": {"from": "model.text_encoder"},
                   "scheduler": {"from": "model.scheduler"}, "latents": {"from": "encode.latents"},
                   "caption": CAPTION, "steps": 6, "learning_rate": LR, "seed": {"param": "seed"}}
    if save:
        tune_inputs["save_path"] = "tuned.safetensors"
    return {"reelgraph": 1, "name": "tune", "params": {"seed": {"type": "int", "default": 0}}, "nodes": {
        "model": {"type": "load_model", "inputs": {"source": "builtin:tiny-random"}},
        "clip": {"type": "load_video", "inputs": {"path": str(ASSET), "max_frames": 8}},
        "encode": {"type": "vae_encode", "inputs": {"vae": {"from": "model.vae"}, "video": {"from": "clip.video"}}},
        "tune": {"type": "tune_video", "inputs": tune_inputs}}}


def test_engine_caches_tuning_like_any_node(tiny: tuple, make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    doc, allow = _tune_graph(), [ASSET.parent]
    engine = make_engine()
    losses: list[float] = []

    def sink(event: Any) -> None:
        if event.event == "node_progress" and event.node == "tune":
            losses.append(event.extra["loss"])

    first = engine.run(doc, out_dir=tmp_path, allow_paths=allow, events=[sink])
    assert "tune" in first.ran and len(losses) == 6
    second = engine.run(doc, out_dir=tmp_path, allow_paths=allow)
    assert "tune" in second.cached and "tune" not in second.ran
    assert second.outputs["tune.lora"] is first.outputs["tune.lora"]
    third = engine.run(doc, {"seed": 1}, out_dir=tmp_path, allow_paths=allow)
    assert third.ran == ["tune"]  # a changed input retrains exactly that node

    disk = tmp_path / "cache"
    make_engine(cache_dir=disk).run(doc, out_dir=tmp_path, allow_paths=allow)
    restored = make_engine(cache_dir=disk).run(doc, out_dir=tmp_path, allow_paths=allow)
    assert "tune" in restored.cached and "tune" not in restored.ran
    got, expected = tensors(restored.outputs["tune.lora"]), tensors(first.outputs["tune.lora"])
    assert got.keys() == expected.keys() and all(torch.equal(got[k], v) for k, v in expected.items())


def test_interrupted_run_through_the_engine_caches_nothing(tiny: tuple, make_engine: Callable[..., Engine],
                                                           tmp_path: Path) -> None:
    engine = make_engine()
    doc, allow = _tune_graph(save=True), [ASSET.parent]

    def sink(event: Any) -> None:
        if event.event == "node_progress" and event.node == "tune" and event.i == 2:
            engine.interrupt()

    with pytest.raises(RunInterrupted):
        engine.run(doc, out_dir=tmp_path, allow_paths=allow, events=[sink])
    with safe_open(str(tmp_path / "tuned.safetensors"), framework="pt") as handle:
        # The interrupt comes at step 2's tick and lands inside step 3's first UNet call: the last good adapter
        # is the one after step 2.
        assert json.loads(handle.metadata()["reelgraph.lora"])["info"]["steps_done"] == 2
    again = engine.run(doc, out_dir=tmp_path, allow_paths=allow)
    assert "tune" in again.ran and again.outputs["tune.lora"].info["saved_to"] == str(tmp_path / "tuned-1.safetensors")


def test_tune_a_video_workflow_runs_from_the_cli(reelgraph_home: Path, tiny_dir: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "reelgraph", "run", str(WORKFLOW), "--out", str(tmp_path),
                           "--set", "tune_steps=10", "--set", "steps=4", "--quiet",
                           "--record", str(tmp_path / "record.json")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["save.path", "=", str(tmp_path / "tune_a_video.mp4"),
                                   "base_save.path", "=", str(tmp_path / "tune_a_video_base.mp4")]
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["status"] == "finished" and {"tune", "tuned", "base_sample"} <= {n["node"] for n in record["nodes"]}
