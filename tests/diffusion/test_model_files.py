"""The weight files real ModelScope / Zeroscope folders ship: pickle-only folders, fp16-variant-only folders, shards,
variants chosen by dtype, every problem of a folder at once, zeroscope_v2_XL's index, ``reelgraph convert``, and
loads that never hold more than the weights.

Each folder is built from the tiny random model in the hub's on-disk layout (what ``save_pretrained`` of the
diffusers and transformers versions of 2023 wrote) and loaded through the real loaders; frames are compared
with diffusers' own loading of the very same files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reelgraph import Engine, NodeFailed

torch = pytest.importorskip("torch")
for _name in ("diffusers", "transformers", "safetensors"):
    pytest.importorskip(_name)

from safetensors.torch import load_file, save_file  # noqa: E402

from reelgraph.nodes.model_loading import ModelLoadError, load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
T2V = ROOT / "workflows" / "text2video.json"
PARAMS = {"prompt": "a green square moving up", "negative_prompt": "blurry", "seed": 11, "steps": 4, "frames": 4,
          "guidance_scale": 7.5}
#: (component, safetensors stem, pickle stem) of the hub layout.
PARTS = (("unet", "diffusion_pytorch_model", "diffusion_pytorch_model"),
         ("vae", "diffusion_pytorch_model", "diffusion_pytorch_model"),
         ("text_encoder", "model", "pytorch_model"))
#: The VAE's attention blocks, whose weights diffusers once saved as query/key/value/proj_attn.
VAE_ATTENTIONS = ("encoder.mid_block.attentions.0", "decoder.mid_block.attentions.0")


class Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _hub_state(component: str, state: dict[str, Any]) -> dict[str, Any]:
    """A state dict as 2023's libraries saved it: CLIP keys under ``text_model.`` with the ``position_ids`` buffer,
    the VAE's attention as ``query``/``key``/``value``/``proj_attn``."""
    if component == "text_encoder":
        out = {f"text_model.{k}": v for k, v in state.items()}
        out["text_model.embeddings.position_ids"] = torch.arange(77)[None]
        return out
    if component == "vae":
        renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
        out = {}
        for key, value in state.items():
            for path in VAE_ATTENTIONS:
                for new, old in renames.items():
                    if key.startswith(f"{path}.{new}."):
                        key = f"{path}.{old}." + key[len(f"{path}.{new}."):]
            out[key] = value
        return out
    return state


def pickle_only(tiny_dir: Path, dest: Path) -> Path:
    """A Zeroscope-style folder: every component only as ``*.bin`` (torch.save), in 2023's key layout."""
    folder = _copy(tiny_dir, dest)
    for component, st, pk in PARTS:
        weights = folder / component / f"{st}.safetensors"
        torch.save(_hub_state(component, load_file(weights)), folder / component / f"{pk}.bin")
        weights.unlink()
    return folder


def fp16_only(tiny_dir: Path, dest: Path) -> Path:
    """A folder with only ``*.fp16.safetensors`` weights (stored in float16)."""
    folder = _copy(tiny_dir, dest)
    for component, st, _ in PARTS:
        weights = folder / component / f"{st}.safetensors"
        save_file({k: v.half().contiguous() for k, v in load_file(weights).items()},
                  str(folder / component / f"{st}.fp16.safetensors"))
        weights.unlink()
    return folder


def ours(engine: Engine, folder: Path, tmp_path: Path, **params: Any) -> Any:
    """The shipped text2video workflow's frames for ``folder``."""
    result = engine.run(T2V, {**PARAMS, "model": str(folder), **params}, outputs=["decode.video"], out_dir=tmp_path,
                        allow_paths=[folder.parent])
    return result.outputs["decode.video"].frames


def theirs(folder: Path, **kwargs: Any) -> Any:
    """``TextToVideoSDPipeline.from_pretrained(folder, **kwargs)``'s frames for the same prompt, seed and steps."""
    from diffusers import TextToVideoSDPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = TextToVideoSDPipeline.from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe(PARAMS["prompt"], negative_prompt=PARAMS["negative_prompt"], num_frames=4, height=32, width=32,
                num_inference_steps=4, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(11),
                output_type="pt").frames[0]


@pytest.fixture
def engine(reelgraph_home: Path, make_engine: Callable[..., Engine]) -> Engine:
    return make_engine()


# ------------------------------------------------------------------------------------------- pickle-only


def test_pickle_only_folder_gives_the_frames_of_diffusers(engine: Engine, tiny_dir: Path, tmp_path: Path) -> None:
    """Zeroscope ships only ``.bin`` files: they load through torch.load(weights_only=True), with transformers 4's
    ``text_model.`` keys, the old ``position_ids`` buffer and the VAE's old attention names, and the frames are
    those of diffusers loading the same files (main refused the folder, naming only the unet)."""
    folder = pickle_only(tiny_dir, tmp_path / "zeroscope")
    assert not list(folder.rglob("*.safetensors"))
    frames = ours(engine, folder, tmp_path)
    reference = theirs(folder)
    assert frames.shape == reference.shape == (4, 3, 32, 32)
    assert (frames - reference).abs().max().item() <= 1e-4
    loaded = load_model(str(folder), device="cpu")
    plain = load_model(str(tiny_dir), device="cpu")
    for a, b in zip(loaded[:3], plain[:3], strict=True):
        sa, sb = a.module.state_dict(), b.module.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_safetensors_are_preferred_to_pickles_of_the_same_weights(tiny_dir: Path, tmp_path: Path) -> None:
    """With both a ``.safetensors`` and a ``.bin``, the ``.bin`` is never opened (here it would run code)."""
    marker = tmp_path / "pwned"
    folder = _copy(tiny_dir, tmp_path / "both")
    for component, _, pk in PARTS:
        torch.save({"w": Payload(marker)}, folder / component / f"{pk}.bin")
    load_model(str(folder), device="cpu")
    assert not marker.exists()


def test_a_planted_pickle_is_refused_and_never_runs(engine: Engine, tiny_dir: Path, tmp_path: Path) -> None:
    """A component whose only weights are a pickle with a payload is refused (torch.load(weights_only=True)
    refuses it) before anything is built; the payload never runs, and the message names the component."""
    marker = tmp_path / "pwned"
    folder = _copy(tiny_dir, tmp_path / "planted")
    (folder / "text_encoder" / "model.safetensors").unlink()
    torch.save({"text_model.embeddings.token_embedding.weight": Payload(marker)},
               folder / "text_encoder" / "pytorch_model.bin")
    doc = {"reelgraph": 1, "name": "t", "nodes": {"m": {"type": "load_model", "inputs": {"source": str(folder)}}}}
    with pytest.raises(NodeFailed) as info:
        engine.run(doc, out_dir=tmp_path, allow_paths=[tmp_path])
    assert (info.value.code, info.value.input) == ("model_load_failed", "source")
    assert "text_encoder/: the pickle file pytorch_model.bin was refused" in info.value.message
    assert "weights_only" in info.value.message and not marker.exists()


# --------------------------------------------------------------------------------------------- variants


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_fp16_only_folder_gives_the_frames_of_diffusers(dtype: str, engine: Engine, tiny_dir: Path, tmp_path: Path,
                                                        capfd: pytest.CaptureFixture[str]) -> None:
    """A folder with only ``*.fp16.safetensors`` loads (main failed with diffusers' "no file named
    diffusion_pytorch_model.safetensors" and printed "An error occurred while trying to fetch"); float16 keeps
    the stored fp16 tensors as they are, float32 upcasts them; frames equal diffusers' ``variant="fp16"`` load."""
    folder = fp16_only(tiny_dir, tmp_path / "fp16")
    frames = ours(engine, folder, tmp_path, dtype=dtype)
    printed = capfd.readouterr()
    assert "error occurred" not in printed.out + printed.err
    reference = theirs(folder, variant="fp16", torch_dtype=getattr(torch, dtype))
    # float16 on this CPU (AVX-512): a Linear's result depends on whether its weights are 64-byte aligned, which
    # reelgraph's copies are and diffusers' memory-mapped ones are not (same weights, same input: 1.2e-4 apart
    # at the first differing layer, 3.2e-3 in the frames after 4 steps). float32 stays exact.
    assert (frames - reference).abs().max().item() <= (1e-4 if dtype == "float32" else 1e-2)
    unet = load_model(str(folder), device="cpu", dtype=dtype)[0].module
    stored = load_file(folder / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    assert unet.dtype == getattr(torch, dtype)
    assert all(torch.equal(v, stored[k].to(v.dtype)) for k, v in unet.state_dict().items())


def _two_variants(tiny_dir: Path, dest: Path) -> Path:
    """Default (fp32) files and fp16 files that hold *other* weights (half of them), so a test can tell which set
    was read."""
    folder = _copy(tiny_dir, dest)
    for component, st, _ in PARTS:
        state = load_file(folder / component / f"{st}.safetensors")
        save_file({k: (v * 0.5 if v.is_floating_point() else v).half().contiguous() for k, v in state.items()},
                  str(folder / component / f"{st}.fp16.safetensors"))
    return folder


def test_auto_variant_reads_the_files_stored_in_the_dtype(tiny_dir: Path, tmp_path: Path) -> None:
    folder = _two_variants(tiny_dir, tmp_path / "both")
    default = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    fp16 = load_file(folder / "unet" / "diffusion_pytorch_model.fp16.safetensors")

    def read(**kwargs: Any) -> dict[str, Any]:
        return load_model(str(folder), device="cpu", **kwargs)[0].module.state_dict()

    half = read(dtype="float16")
    assert all(torch.equal(half[k], fp16[k]) for k in half)  # auto + float16: the fp16 files
    full = read(dtype="float32")
    assert all(torch.equal(full[k], default[k]) for k in full)  # auto + float32: the plain files
    up = read(dtype="float32", variant="fp16")
    assert all(torch.equal(up[k], fp16[k].float()) for k in up)
    down = read(dtype="float16", variant="default")
    assert all(torch.equal(down[k], default[k].half()) for k in down)
    with pytest.raises(ModelLoadError, match=r"unet/ has no bf16 weights; it has: default safetensors, fp16 "
                                             r"safetensors") as info:
        read(variant="bf16")
    assert "vae/ has no bf16 weights" in str(info.value) and "text_encoder/ has no bf16" in str(info.value)


def test_shards_and_their_index_load(tiny_dir: Path, tmp_path: Path) -> None:
    """Weights split into shards with an index (also for a variant) load like the single file."""
    folder = _copy(tiny_dir, tmp_path / "sharded")
    unet = folder / "unet"
    state = load_file(unet / "diffusion_pytorch_model.safetensors")
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    keys = sorted(state)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map = {}
    for i, part in enumerate(halves, start=1):
        name = f"diffusion_pytorch_model-0000{i}-of-00002.fp16.safetensors"
        save_file({k: state[k].half().contiguous() for k in part}, str(unet / name))
        weight_map.update(dict.fromkeys(part, name))
    (unet / "diffusion_pytorch_model.safetensors.index.fp16.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = load_model(str(folder), device="cpu", dtype="float16")[0].module.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k].half()) for k in loaded)
    (unet / "diffusion_pytorch_model-00002-of-00002.fp16.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"lists shard.* that are not there"):
        load_model(str(folder), device="cpu", dtype="float16")


# ------------------------------------------------------------------------------------- reports and index


def test_every_problem_of_a_folder_is_reported_at_once(tiny_dir: Path, tmp_path: Path) -> None:
    """Problems in several components come in one message (main named only the first component)."""
    folder = _copy(tiny_dir, tmp_path / "broken")
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"w": torch.ones(1)}, folder / "vae" / "notes.bin")  # not a weight file name: ignored
    (folder / "text_encoder" / "model.safetensors").write_bytes(b"\x00" * 4)  # truncated
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(unet)
    torch.save(state, unet.with_suffix(".bin"))
    unet.unlink()
    with pytest.raises(ModelLoadError) as info:
        load_model(str(folder), device="cpu")
    message = str(info.value)
    assert "vae/ has no weight files" in message
    assert "text_encoder/: the file model.safetensors was refused or is unreadable" in message
    del state["conv_in.weight"], state["conv_out.bias"]  # the unet's file lacks two weights: reported as well
    torch.save(state, unet.with_suffix(".bin"))
    with pytest.raises(ModelLoadError) as info:
        load_model(str(folder), device="cpu")
    assert "vae/ has no weight files" in str(info.value) and "2 weight(s) the config needs" in str(info.value)
    torch.save(load_file(tiny_dir / "vae" / "diffusion_pytorch_model.safetensors"),
               folder / "vae" / "diffusion_pytorch_model.bin")
    shutil.copy(tiny_dir / "text_encoder" / "model.safetensors", folder / "text_encoder" / "model.safetensors")
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    vae_config["latent_channels"] = 8  # the vae's files no longer fit its config
    (folder / "vae" / "config.json").write_text(json.dumps(vae_config))
    with pytest.raises(ModelLoadError) as info:
        load_model(str(folder), device="cpu")
    message = str(info.value)
    assert "unet/ (unet/diffusion_pytorch_model.bin): 2 weight(s) the config needs are not in" in message
    assert "conv_in.weight" in message and "conv_out.bias" in message
    assert "vae/ (vae/diffusion_pytorch_model.bin):" in message and "other shapes than the config's" in message


def test_zeroscope_xl_index_with_a_diffusers_module_path_loads(tiny_dir: Path, tmp_path: Path) -> None:
    """zeroscope_v2_XL's model_index.json names the unet's library ``models.unet_3d_condition``: it is only a label
    (the class still comes from the allow-list); another library stays refused (main refused both)."""
    folder = _copy(tiny_dir, tmp_path / "xl")
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = ["models.unet_3d_condition", "UNet3DConditionModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    unet = load_model(str(folder), device="cpu")[0].module
    assert type(unet).__name__ == "UNet3DConditionModel"
    index["unet"] = ["evil_module", "UNet3DConditionModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="the unet slot names the library 'evil_module'"):
        load_model(str(folder), device="cpu")


# ----------------------------------------------------------------------------------------------- convert


def test_convert_writes_safetensors_twins_and_never_replaces_a_file(tiny_dir: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``reelgraph convert MODEL`` writes a safetensors twin beside each pickle (sha256 printed, same tensors, the
    folder then loads from them); a second run refuses to overwrite; ``--out`` writes a converted copy."""
    import hashlib

    from reelgraph.cli import main

    folder = pickle_only(tiny_dir, tmp_path / "zeroscope")
    assert main(["convert", str(folder)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    written = {Path(line.split("  ", 1)[1]): line.split("  ", 1)[0] for line in lines}
    assert sorted(p.relative_to(folder).as_posix() for p in written) == [
        "text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors"]
    for path, digest in written.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
        pickled = torch.load(path.with_name(path.name.replace("model.safetensors", "pytorch_model.bin")
                                            if path.parent.name == "text_encoder"
                                            else "diffusion_pytorch_model.bin"), weights_only=True)
        twin = load_file(path)
        assert twin.keys() == pickled.keys() and all(torch.equal(twin[k], pickled[k]) for k in twin)
    before = {p: p.stat().st_mtime_ns for p in written}
    assert main(["convert", str(folder)]) == 2
    assert "exist already and are never replaced" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in written} == before
    copy = tmp_path / "converted"
    assert main(["convert", str(folder), "--out", str(copy)]) == 0
    capsys.readouterr()
    assert not list(copy.rglob("*.bin")) and (copy / "tokenizer" / "vocab.json").is_file()
    a, b = load_model(str(copy), device="cpu")[0].module.state_dict(), load_model(str(tiny_dir), device="cpu")[0]
    assert all(torch.equal(a[k], v) for k, v in b.module.state_dict().items())
    single = tmp_path / "unet.pth"
    torch.save(load_file(tiny_dir / "unet" / "diffusion_pytorch_model.safetensors"), single)
    assert main(["convert", str(single)]) == 0
    assert capsys.readouterr().out.strip().endswith(str(tmp_path / "unet.safetensors"))


# ---------------------------------------------------------------------------------------------- memory

_MEMORY_SCRIPT = """
    import json, os, sys, threading, time, torch
    torch.set_num_threads(1)
    from reelgraph.nodes.model_loading import load_model
    from reelgraph.nodes.controlnet import load_controlnet

    kind, source, dtype = sys.argv[1:4]
    folder = os.path.realpath(source if os.path.isdir(source) else os.path.dirname(source))

    def used():
        # Anonymous memory plus the resident pages of memory-mapped weight files: what a load holds, and not the
        # library pages the kernel pages back in on a busy machine.
        total = 0
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                total += int(line.split()[1]) * 1024
        mapped = False
        for line in open("/proc/self/smaps"):
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5:
                mapped = len(head) >= 6 and head[5].startswith(folder)
            elif mapped and head and head[0] == "Rss:":
                total += int(head[1]) * 1024
        return total

    load = (lambda: load_model(source, device="cpu", dtype=dtype)[0].module) if kind == "model" else (
        lambda: load_controlnet(source, device="cpu", dtype=dtype).module)
    load_model("builtin:tiny-random", device="cpu", dtype=dtype)  # imports and first-call costs, not the load's
    load_controlnet("builtin:tiny", device="cpu", dtype=dtype)
    peak, done = [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], used())
            time.sleep(0.001)

    before = used()
    sampler = threading.Thread(target=sample)
    sampler.start()
    module = load()
    with torch.no_grad():  # read every weight once (a memory-mapped load would read its pages only now)
        for tensor in module.state_dict().values():
            tensor.sum()
    done.set()
    sampler.join()
    nbytes = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    print(json.dumps({"peak": max(peak[0], used()) - before, "nbytes": nbytes, "dtype": str(module.dtype)}))
"""


def _peak(kind: str, source: Path, dtype: str, tmp_path: Path) -> dict[str, Any]:
    script = tmp_path / "peak.py"
    script.write_text(textwrap.dedent(_MEMORY_SCRIPT), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script), kind, str(source), dtype], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc/self/status")
def test_loads_hold_no_more_than_the_weights(tiny_dir: Path, tmp_path: Path) -> None:
    """A UNet3D of about 176 MB: its load, until every weight has been read once, peaks at most 1.2x the loaded
    weights (no random init, no second copy); fp32 files loaded as float16 (streamed, cast one by one) and fp16
    files peak at most 0.6x the fp32 load (main read the fp32 files whole and cast them: 3x the fp16 weights
    here); a single-file ControlNet stays within 1.2x (main built it with random weights, then copied: 2.25x).
    The peak is sampled during the load: anonymous memory plus the resident pages of memory-mapped weight files
    (diffusers maps them), not the library pages a busy machine pages back in; bench/model_load.py measures the
    whole resident set."""
    import diffusers

    config = json.loads((tiny_dir / "unet" / "config.json").read_text())
    config.update(block_out_channels=[192, 384], norm_num_groups=32, attention_head_dim=8)
    torch.manual_seed(0)
    big = diffusers.UNet3DConditionModel.from_config(config)
    folder = _copy(tiny_dir, tmp_path / "big")
    big.save_pretrained(folder / "unet")
    big.half().save_pretrained(folder / "unet", variant="fp16")
    del big
    fp32 = _peak("model", folder, "float32", tmp_path)
    cast = _peak("model", folder, "float16", tmp_path)  # auto: reads the fp16 files
    (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").unlink()
    from_fp32 = _peak("model", folder, "float16", tmp_path)  # only fp32 files: streamed and cast one by one
    assert fp32["nbytes"] > 80e6 and fp32["dtype"] == "torch.float32"
    assert fp32["peak"] <= 1.2 * fp32["nbytes"], fp32
    for half in (cast, from_fp32):
        assert half["dtype"] == "torch.float16"
        assert half["peak"] <= 0.6 * fp32["peak"], (half, fp32)
        assert half["peak"] <= 1.2 * half["nbytes"], half
    controlnet = diffusers.ControlNetModel(block_out_channels=(192, 384), layers_per_block=1, cross_attention_dim=32,
                                           down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                           attention_head_dim=8, conditioning_embedding_out_channels=(16, 32))
    single = tmp_path / "cn" / "control.safetensors"
    single.parent.mkdir()
    save_file({k: v.contiguous() for k, v in controlnet.state_dict().items()}, str(single))
    controlnet.save_config(single.parent)
    del controlnet
    cn = _peak("controlnet", single, "float32", tmp_path)
    assert cn["nbytes"] > 40e6 and cn["peak"] <= 1.2 * cn["nbytes"], cn


# ------------------------------------------------------------------------------------------ the reader


def test_the_streaming_safetensors_reader_matches_the_library_and_checks_headers(tmp_path: Path) -> None:
    """reelgraph's own safetensors reader (plain reads, a cast per tensor) gives the safetensors library's tensors
    for every dtype, scalars and empty tensors, and refuses headers that do not describe the file."""
    import struct

    from reelgraph.nodes.weights import WeightsError, iter_safetensors, safetensors_header

    g = torch.Generator().manual_seed(3)
    tensors = {"f32": torch.randn(3, 5, generator=g), "f16": torch.randn(7, generator=g).half(),
               "bf16": torch.randn(2, 2, 2, generator=g).bfloat16(), "f64": torch.randn(4, generator=g).double(),
               "i64": torch.arange(6).reshape(2, 3), "i8": torch.tensor([-3, 4], dtype=torch.int8),
               "u8": torch.tensor([1, 255], dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
               "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4)}
    path = tmp_path / "all.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    ours = dict(iter_safetensors(path))
    theirs = load_file(path)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key
    half = dict(iter_safetensors(path, torch.float16))
    assert half["f32"].dtype == torch.float16 and torch.equal(half["f32"], tensors["f32"].half())
    assert half["i64"].dtype == torch.int64  # only floating-point tensors are cast
    infos, metadata = safetensors_header(path)
    assert metadata == {"format": "pt"} and infos["bf16"].dtype == "bfloat16" and infos["scalar"].shape == ()

    def forged(header: dict[str, Any], data: bytes = b"\0" * 16) -> Path:
        raw = json.dumps(header).encode()
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
        return bad

    cases = {
        "outside": {"a": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}},
        "size": {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}},
        "overlap": {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
        "dtype": {"a": {"dtype": "OBJ", "shape": [1], "data_offsets": [0, 1]}},
        "shape": {"a": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 1]}},
    }
    for name, header in cases.items():
        with pytest.raises(WeightsError, match="not a readable safetensors file"):
            list(iter_safetensors(forged(header)))
            pytest.fail(f"the {name} header was read")
    (tmp_path / "huge.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(WeightsError, match="header length"):
        safetensors_header(tmp_path / "huge.safetensors")
