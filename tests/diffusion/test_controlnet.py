"""ControlNet on the UNet3D: exactness when off, equality with diffusers' ControlNetModel run frame by frame,
start/end windows, multi-ControlNet, loading, refusal of ControlNets that do not fit, preprocessors, workflow."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reelgraph import Engine, NodeFailed, NodeInputError

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from reelgraph.nodes import sampling  # noqa: E402
from reelgraph.nodes.controlnet import (  # noqa: E402
    ControlError,
    ControlNetLoadError,
    check_compatible,
    clear_controlnet_cache,
    load_controlnet,
)
from reelgraph.nodes.values import Conditioning, Control, ControlNet, UNet3D, Video  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "workflows" / "controlnet_video.json"
FRAMES, SIZE = 4, 32
RUN = {"frames": FRAMES, "height": SIZE, "width": SIZE, "steps": 3, "seed": 3, "guidance_scale": 7.0}


@pytest.fixture(scope="module")
def cn(tiny_dir: Path) -> Iterator[ControlNet]:
    """The random tiny ControlNet (non-zero output convolutions), beside the random model of ``tiny``: these tests
    are about mechanics; the trained ``builtin:tiny`` ControlNet is tested in test_companions.py."""
    yield load_controlnet("builtin:tiny-random", device="cpu")
    clear_controlnet_cache()


@pytest.fixture(scope="module")
def cond(tiny: tuple) -> Conditioning:
    """Text conditioning with negatives, for guidance."""
    return sampling.encode_prompt(tiny[2], "a red circle moving left", "blurry", guidance=True)


@pytest.fixture(scope="module")
def base(tiny: tuple, cond: Conditioning) -> Any:
    """Latents without any control."""
    return sampling.denoise(tiny[0], tiny[3], cond, **RUN)


def control_frames(seed: int, frames: int = FRAMES, size: int = SIZE) -> Any:
    return torch.rand(frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


class UNetCalls:
    """Records the inputs of every UNet3D call (a forward pre-hook; the module is not changed)."""

    def __init__(self, module: Any) -> None:
        self.calls: list[dict[str, Any]] = []
        self._handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        sample, t = args[:2]
        self.calls.append({"sample": sample.clone(), "t": t, **kwargs})

    def close(self) -> None:
        self._handle.remove()


def record(unet: UNet3D, fn: Callable[[], Any]) -> list[dict[str, Any]]:
    calls = UNetCalls(unet.module)
    try:
        fn()
    finally:
        calls.close()
    return calls.calls


def frame_by_frame(cn: ControlNet, call: dict[str, Any], images: Any, scale: float) -> tuple[list[Any], Any]:
    """diffusers' ControlNetModel run on one frame at a time, laid out as the UNet3D folds frames (n*F + f)."""
    sample, embeds = call["sample"], call["encoder_hidden_states"]
    downs: list[list[Any]] = []
    mids: list[Any] = []
    with torch.no_grad():
        for n in range(sample.shape[0]):
            for f in range(sample.shape[2]):
                d, m = cn.module(sample[n:n + 1, :, f], call["t"], encoder_hidden_states=embeds[n:n + 1],
                                 controlnet_cond=images[f:f + 1], conditioning_scale=scale, return_dict=False)
                downs.append(list(d))
                mids.append(m)
    return [torch.cat([d[k] for d in downs]) for k in range(len(downs[0]))], torch.cat(mids)


def max_residual_diff(call: dict[str, Any], down: list[Any], mid: Any) -> float:
    got_down, got_mid = call["down_block_additional_residuals"], call["mid_block_additional_residual"]
    assert len(got_down) == len(down)
    diffs = [(a - b).abs().max().item() for a, b in zip(got_down, down, strict=True)]
    return max([*diffs, (got_mid - mid).abs().max().item()])


def test_scale_zero_is_exactly_the_uncontrolled_output(tiny: tuple, cn: ControlNet, cond: Conditioning,
                                                       base: Any) -> None:
    off = cond.with_control(Control(cn, control_frames(1), scale=0.0))
    assert torch.equal(sampling.denoise(tiny[0], tiny[3], off, **RUN), base)


def test_fresh_controlnet_is_exactly_the_uncontrolled_output(tiny: tuple, cn: ControlNet, cond: Conditioning,
                                                             base: Any) -> None:
    from diffusers import ControlNetModel

    fresh = ControlNetModel.from_config(cn.module.config).eval()  # zero-initialised output convolutions
    assert all(torch.count_nonzero(p) == 0 for p in fresh.controlnet_down_blocks.parameters())
    control = Control(ControlNet(fresh, "fresh"), control_frames(2), scale=1.0)
    out: list[Any] = []
    calls = record(tiny[0], lambda: out.append(sampling.denoise(tiny[0], tiny[3], cond.with_control(control), **RUN)))
    assert torch.equal(out[0], base)
    assert all(c["down_block_additional_residuals"] is not None for c in calls)  # it did run


def test_residuals_equal_controlnetmodel_frame_by_frame(tiny: tuple, cn: ControlNet, cond: Conditioning,
                                                        base: Any) -> None:
    images = control_frames(3)
    controlled = cond.with_control(Control(cn, images, scale=0.8))
    out: list[Any] = []
    calls = record(tiny[0], lambda: out.append(sampling.denoise(tiny[0], tiny[3], controlled, **RUN)))
    assert len(calls) == RUN["steps"]
    worst = 0.0
    for call in calls:
        assert call["sample"].shape[0] == 2  # both guidance halves get residuals
        down, mid = frame_by_frame(cn, call, images, 0.8)
        worst = max(worst, max_residual_diff(call, down, mid))
    print(f"max |residual - ControlNetModel frame by frame| = {worst:.3g}")
    assert worst <= 1e-5
    assert (out[0] - base).abs().max() > 1e-3  # the control changed the video


def test_multi_controlnet_sums_residuals_each_with_its_scale(tiny: tuple, cn: ControlNet,
                                                             cond: Conditioning) -> None:
    a, b = control_frames(4), control_frames(5)
    both = cond.with_control(Control(cn, a, scale=0.5)).with_control(Control(cn, b, scale=1.5))
    calls = record(tiny[0], lambda: sampling.denoise(tiny[0], tiny[3], both, **{**RUN, "steps": 1}))
    down_a, mid_a = frame_by_frame(cn, calls[0], a, 0.5)
    down_b, mid_b = frame_by_frame(cn, calls[0], b, 1.5)
    summed = [x + y for x, y in zip(down_a, down_b, strict=True)]
    assert max_residual_diff(calls[0], summed, mid_a + mid_b) <= 1e-5


def test_single_frame_is_broadcast_and_other_sizes_are_resized(tiny: tuple, cn: ControlNet,
                                                               cond: Conditioning) -> None:
    one = control_frames(6, frames=1)
    run = {**RUN, "steps": 2}
    broadcast = sampling.denoise(tiny[0], tiny[3], cond.with_control(Control(cn, one)), **run)
    repeated = sampling.denoise(tiny[0], tiny[3], cond.with_control(Control(cn, one.repeat(FRAMES, 1, 1, 1))), **run)
    assert torch.equal(broadcast, repeated)
    small = control_frames(7, size=16)
    resized = torch.nn.functional.interpolate(small, size=(SIZE, SIZE), mode="bilinear", antialias=True)
    auto = sampling.denoise(tiny[0], tiny[3], cond.with_control(Control(cn, small)), **run)
    manual = sampling.denoise(tiny[0], tiny[3], cond.with_control(Control(cn, resized.clamp(0, 1))), **run)
    assert torch.equal(auto, manual)
    with pytest.raises(ControlError, match="3 control frames for a 4-frame video"):
        sampling.denoise(tiny[0], tiny[3], cond.with_control(Control(cn, control_frames(8, frames=3))), **run)


def test_start_end_window_is_honoured(tiny: tuple, cn: ControlNet, cond: Conditioning) -> None:
    control = Control(cn, control_frames(9), start=0.2, end=0.6)
    assert [control.active(i, 5) for i in range(5)] == [False, True, True, False, False]
    calls = record(tiny[0], lambda: sampling.denoise(tiny[0], tiny[3], cond.with_control(control),
                                                     **{**RUN, "steps": 5}))
    assert [c.get("down_block_additional_residuals") is not None for c in calls] == [False, True, True, False,
                                                                                    False]
    # Inversion step i mirrors denoising step n - 1 - i (the same noise level).
    latents = torch.randn(1, 4, FRAMES, SIZE // 4, SIZE // 4, generator=torch.Generator().manual_seed(0))
    calls = record(tiny[0], lambda: sampling.ddim_invert(tiny[0], tiny[3], cond.with_control(control), latents,
                                                         steps=5))
    assert [c.get("down_block_additional_residuals") is not None for c in calls] == [False, False, True, True,
                                                                                    False]


def _save_controlnet(cn: ControlNet, folder: Path, **changes: Any) -> Path:
    """Save a fresh ControlNet whose config is the tiny one's with ``changes``."""
    from diffusers import ControlNetModel

    config = {k: v for k, v in dict(cn.module.config).items() if not k.startswith("_")}
    ControlNetModel.from_config({**config, **changes}).save_pretrained(folder)
    return folder


def test_mismatched_controlnets_are_refused_block_by_block(tiny: tuple, cn: ControlNet, tmp_path: Path) -> None:
    unet = tiny[0]

    def variant(name: str, **changes: Any) -> ControlNet:
        return ControlNet(load_controlnet(str(_save_controlnet(cn, tmp_path / name, **changes)), device="cpu").module,
                          name)

    wide = variant("wide", block_out_channels=[16, 48])
    expected = r"down residual 3 \(down block 1 resnet 0\) has 32 channels in the UNet3D, 48"
    with pytest.raises(ControlError, match=expected) as info:
        check_compatible(wide, unet)
    assert "mid-block residual has 48 channels" in str(info.value)
    deep = variant("deep", block_out_channels=[16, 32, 32],
                   down_block_types=["CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"])
    with pytest.raises(ControlError, match="gives 6 down-block residuals, the UNet3D takes 4"):
        check_compatible(deep, unet)
    coarse = variant("coarse", conditioning_embedding_out_channels=[8, 16, 16, 16])
    with pytest.raises(ControlError, match="1/8 of their size"):
        check_compatible(coarse, unet)


def test_mismatched_controlnet_fails_the_denoise_node_at_its_conditioning(
        reelgraph_home: Path, make_engine: Callable[..., Engine], cn: ControlNet, tmp_path: Path) -> None:
    wide = _save_controlnet(cn, tmp_path / "wide-cn", block_out_channels=[16, 48])
    with pytest.raises(NodeFailed) as info:
        make_engine().run(WORKFLOW, {"controlnet": str(wide), "steps": 1}, out_dir=tmp_path)
    err = info.value
    assert (err.code, err.node, err.input) == ("invalid_value", "sample", "conditioning")
    assert "does not fit the UNet3D" in err.message and "down residual" in err.message
    other_text = _save_controlnet(cn, tmp_path / "text-cn", cross_attention_dim=64)
    with pytest.raises(NodeFailed) as info:
        make_engine().run(WORKFLOW, {"controlnet": str(other_text), "steps": 1}, out_dir=tmp_path)
    assert (info.value.code, info.value.node, info.value.input) == ("invalid_value", "control", "controlnet")


def test_sources_folder_single_file_and_refusals(cn: ControlNet, tiny_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    single = tmp_path / "single" / "canny.safetensors"
    single.parent.mkdir()
    save_file({k: v.contiguous() for k, v in cn.module.state_dict().items()}, str(single))
    cn.module.save_config(single.parent)
    loaded = load_controlnet(str(single), device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(loaded.module.state_dict().values(),
                                                 cn.module.state_dict().values(), strict=True))
    assert load_controlnet(str(single), device="cpu") is loaded  # cached per process
    (single.parent / "config.json").unlink()
    with pytest.raises(ControlNetLoadError, match="needs its diffusers config"):
        load_controlnet(str(single), device="cpu")
    pickled = tmp_path / "pickled"  # a .bin only: read through torch.load(weights_only=True)
    shutil.copytree(_folder_of(cn), pickled)
    for f in pickled.glob("*.safetensors"):
        torch.save({k: v.clone() for k, v in cn.module.state_dict().items()}, f.with_suffix(".bin"))
        f.unlink()
    from_pickle = load_controlnet(str(pickled), device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(from_pickle.module.state_dict().values(),
                                                 cn.module.state_dict().values(), strict=True))
    renamed = tmp_path / "renamed"  # safetensors bytes under a pickle name: refused, never unpickled as such
    shutil.copytree(_folder_of(cn), renamed)
    for f in renamed.glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(ControlNetLoadError, match=r"the pickle file diffusion_pytorch_model\.bin was refused"):
        load_controlnet(str(renamed), device="cpu")
    with pytest.raises(ControlNetLoadError, match="does not exist"):
        load_controlnet(str(tmp_path / "nope"), device="cpu")
    with pytest.raises(ControlNetLoadError, match="describes a UNet3DConditionModel"):
        load_controlnet(str(tiny_dir / "unet"), device="cpu")


def _folder_of(cn: ControlNet) -> Path:
    from reelgraph.nodes.tiny_models import builtin_controlnet

    assert cn.source == "builtin:tiny-random"
    return builtin_controlnet(cn.source)


def test_controlnet_condition_node_checks_its_inputs(cn: ControlNet, cond: Conditioning) -> None:
    from reelgraph.nodes.controlnet_nodes import controlnet_condition

    video = Video(control_frames(1))
    out = controlnet_condition(cond, cn, video, scale=0.5, start=0.1, end=0.9)
    assert cond.controls == () and len(out.controls) == 1 and out.controls[0].scale == 0.5
    with pytest.raises(NodeInputError) as info:
        controlnet_condition(cond, cn, video, start=0.5, end=0.5)
    assert info.value.input == "end"
    with pytest.raises(NodeInputError) as info:
        controlnet_condition(cond, cn, Video(torch.rand(2, 2, 8, 8)))
    assert info.value.input == "video"


def test_conditioning_with_controls_stays_out_of_the_disk_cache(cn: ControlNet, cond: Conditioning,
                                                                 tmp_path: Path) -> None:
    from reelgraph.cache import DiskCache

    cache = DiskCache(tmp_path)
    assert cache.put("plain", {"conditioning": cond})
    assert not cache.put("controlled", {"conditioning": cond.with_control(Control(cn, control_frames(1)))})


def test_canny_edges_grayscale_and_resize_nodes(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    import numpy as np

    from reelgraph.nodes.preprocess_nodes import canny_edges, resize_video, to_grayscale
    from reelgraph.nodes.video_io import read_video

    class Ctx:
        def progress(self, i: int, n: int) -> None:
            pass

    clip = read_video(ROOT / "workflows" / "assets" / "red_circle_left.mp4")
    edges = canny_edges(clip, Ctx(), low_threshold=50, high_threshold=150)  # type: ignore[arg-type]
    assert edges.frames.shape == clip.frames.shape and edges.fps == clip.fps
    assert set(edges.frames.unique().tolist()) <= {0.0, 1.0}
    first = (clip.frames[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    expected = cv2.Canny(np.ascontiguousarray(first), 50, 150) / 255.0
    assert torch.equal(edges.frames[0, 1], torch.from_numpy(expected).float())
    assert edges.frames[0].sum() > 0 and edges.frames[0, :, :4, :4].sum() == 0  # edges on the disc only
    gray = to_grayscale(clip)
    assert torch.equal(gray.frames[:, 0], gray.frames[:, 2])
    assert resize_video(clip, 16, 24).frames.shape == (clip.num_frames, 3, 16, 24)


def test_controlnet_workflow_runs_from_the_cli(reelgraph_home: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "reelgraph", "run", str(WORKFLOW), "--out", str(tmp_path),
                           "--set", "steps=2", "--quiet", "--record", str(tmp_path / "record.json")],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"save.path = {tmp_path / 'controlnet_video.mp4'}"
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["status"] == "finished"
