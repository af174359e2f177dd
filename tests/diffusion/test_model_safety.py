"""Model folders and LoRA files are data from strangers: no code of theirs runs, no class outside the allow-lists
is built, no config is allocated past the memory limit, no link leads out of the folder, no regex runs.

Every test uses real tiny models (copies of ``builtin:tiny-random``, the tiny ControlNet and CLIP), real
safetensors files and the real loaders; the hangs and prompts they guard against run in subprocesses with a
timeout, so a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from reelgraph import Engine, NodeFailed

torch = pytest.importorskip("torch")
for _name in ("diffusers", "transformers", "safetensors"):
    pytest.importorskip(_name)

from safetensors.torch import load_file, save_file  # noqa: E402

from reelgraph.nodes.clip_models import ClipLoadError, ensure_tiny_clip, load_clip  # noqa: E402
from reelgraph.nodes.controlnet import ControlNetLoadError, load_controlnet  # noqa: E402
from reelgraph.nodes.lora import LoraAdapter, LoraWeights, merge_lora, read_lora, resolve_lora  # noqa: E402
from reelgraph.nodes.model_loading import ModelLoadError, load_model  # noqa: E402
from reelgraph.nodes.tiny_models import ensure_tiny_controlnet  # noqa: E402
from reelgraph.nodes.values import Scheduler  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
#: Far above the tiny model (about 1.9 MB in all), far below any inflated config here.
LIMIT = 8 * 1024**2
#: What transformers prints before it reads stdin to ask whether to run a folder's code.
PROMPT = "Do you wish to run the custom code"


# ------------------------------------------------------------------------------------------------ helpers


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _edit_json(path: Path, **changes: Any) -> None:
    """Rewrite a JSON file with some keys changed."""
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(json.dumps(data), encoding="utf-8")


def _run_node(engine: Engine, node: dict[str, Any], tmp_path: Path, max_memory: int | None = None) -> NodeFailed:
    """Run a one-node workflow that must fail; return the located error."""
    doc = {"reelgraph": 1, "name": "t", "nodes": {"n": node}}
    with pytest.raises(NodeFailed) as info:
        engine.run(doc, out_dir=tmp_path, allow_paths=[tmp_path], max_memory=max_memory)
    return info.value


def _hub_layout(src: Path, root: Path, name: str = "models--org--tiny", rev: str = "0" * 40) -> Path:
    """Lay ``src`` out like the Hugging Face hub cache: each file once in ``blobs/<sha256>`` and
    ``snapshots/<rev>/<path>`` a relative link to it (``../../../blobs/<sha>`` for ``unet/config.json``)."""
    repo = root / name
    blobs, snapshot = repo / "blobs", repo / "snapshots" / rev
    blobs.mkdir(parents=True)
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / path.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    return snapshot


def _relink(link: Path, target: Path | str) -> None:
    """Point ``link`` (a file or a link) at ``target``."""
    link.unlink()
    link.symlink_to(target)


@contextmanager
def _parameter_devices() -> Iterator[list[str]]:
    """Record the device of every parameter any module registers meanwhile (a real build shows ``cpu``)."""
    from torch.nn.modules.module import register_module_parameter_registration_hook

    devices: list[str] = []
    handle = register_module_parameter_registration_hook(
        lambda module, name, param: devices.append(param.device.type) if param is not None else None)
    try:
        yield devices
    finally:
        handle.remove()


def _run_script(code: str, tmp_path: Path, timeout: float = 240) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter whose stdin says yes to any question; parse its last output line.

    A loader that asked (transformers' "run the custom code? [y/N]") would get its ``y``, so a planted script
    that does not run proves nothing ran it, not merely that nobody answered.
    """
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], input="y\n" * 50, capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert PROMPT not in proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


_ENGINE_SCRIPT = """
    import json, sys
    from reelgraph import Engine, NodeFailed

    engine = Engine(entry_points=False)
    results = {}
    for name, node in json.loads(sys.argv[1] if len(sys.argv) > 1 else open("nodes.json").read()).items():
        try:
            engine.run({"reelgraph": 1, "name": "t", "nodes": node}, out_dir=".", allow_paths=["/"])
            results[name] = {"code": None}
        except NodeFailed as exc:
            results[name] = {"code": exc.code, "input": exc.input, "message": exc.message}
    print(json.dumps(results))
"""


def _planted_code(folder: Path, marker: Path) -> None:
    """Put a tokenizer module in ``folder`` that leaves ``marker`` behind when it is imported."""
    (folder / "evil_tokenizer.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        Path({str(marker)!r}).write_text("the model folder's code ran")
        from transformers import CLIPTokenizer

        class EvilTokenizer(CLIPTokenizer):
            pass
    """), encoding="utf-8")
    auto_map = {"AutoTokenizer": ["evil_tokenizer.EvilTokenizer", None]}
    _edit_json(folder / "tokenizer_config.json", auto_map=auto_map, tokenizer_class="EvilTokenizer")


# ------------------------------------------------------------------------------------------- remote code


def test_planted_tokenizer_code_never_runs_and_nothing_reads_stdin(tiny_dir: Path, tmp_path: Path) -> None:
    """A folder whose tokenizer has an ``auto_map`` and a ``.py`` is refused (slot ``AutoTokenizer``, or the
    ``auto_map`` key itself when the slot names an allowed class, for models and CLIP folders alike); the
    ``.py`` never runs even though stdin answers ``y``, and no prompt is printed."""
    marker = tmp_path / "pwned"
    auto = _copy(tiny_dir, tmp_path / "auto-tokenizer")
    _edit_json(auto / "model_index.json", tokenizer=["transformers", "AutoTokenizer"])
    _planted_code(auto / "tokenizer", marker)
    mapped = _copy(tiny_dir, tmp_path / "clip-tokenizer-with-auto-map")
    _planted_code(mapped / "tokenizer", marker)
    clip = _copy(ensure_tiny_clip(), tmp_path / "clip")
    _planted_code(clip, marker)
    nodes = {
        "auto": {"m": {"type": "load_model", "inputs": {"source": str(auto)}}},
        "mapped": {"m": {"type": "load_model", "inputs": {"source": str(mapped)}}},
        "clip": {"m": {"type": "load_clip", "inputs": {"source": str(clip)}}},
    }
    (tmp_path / "nodes.json").write_text(json.dumps(nodes))
    results = _run_script(_ENGINE_SCRIPT, tmp_path)
    assert not marker.exists(), "the model folder's code ran"
    for name, result in results.items():
        assert (result["code"], result["input"]) == ("model_load_failed", "source"), (name, result)
    assert "the tokenizer slot names the class 'AutoTokenizer'" in results["auto"]["message"]
    assert "allowed there: only CLIPTokenizer or CLIPTokenizerFast" in results["auto"]["message"]
    for name in ("mapped", "clip"):
        message = results[name]["message"]
        assert "tokenizer_config.json has the key 'auto_map'" in message, message
    assert "tokenizer/tokenizer_config.json" in results["mapped"]["message"]


@pytest.mark.parametrize(("slot", "entry", "words"), [
    ("scheduler", ["diffusers", "UNet3DConditionModel"], "the scheduler slot names the class 'UNet3DConditionModel'"),
    ("vae", ["diffusers", "AutoencoderTiny"], "the vae slot names the class 'AutoencoderTiny'"),
    ("text_encoder", ["transformers", "T5EncoderModel"], "the text_encoder slot names the class 'T5EncoderModel'"),
    ("text_encoder", ["diffusers", "CLIPTextModel"], "the text_encoder slot names the library 'diffusers'"),
    ("tokenizer", ["transformers", "AutoTokenizer"], "the tokenizer slot names the class 'AutoTokenizer'"),
])
def test_slots_name_only_allowed_classes(slot: str, entry: list[str], words: str, tiny_dir: Path, tmp_path: Path,
                                         make_engine: Callable[..., Engine]) -> None:
    """Each slot of model_index.json builds only its allowed classes; anything else is refused naming the slot,
    the class and the allowed ones, before any module is built (a scheduler slot once built a 7 GB UNet)."""
    folder = _copy(tiny_dir, tmp_path / "model")
    _edit_json(folder / "model_index.json", **{slot: entry})
    with _parameter_devices() as devices:
        err = _run_node(make_engine(), {"type": "load_model", "inputs": {"source": str(folder)}}, tmp_path)
    assert (err.code, err.node, err.input) == ("model_load_failed", "n", "source")
    assert words in err.message and "model_index.json" in err.message
    if "class" in words:
        assert "allowed there: only" in err.message
    assert devices == [], "a module was built before the refusal"


def test_scheduler_handles_build_only_schedulers() -> None:
    """``Scheduler.create`` refuses a class outside the scheduler allow-list, even on a hand-made handle."""
    with pytest.raises(ValueError, match="not one reelgraph builds"):
        Scheduler("UNet3DConditionModel", {}, "hand-made").create()
    assert type(Scheduler("EulerDiscreteScheduler", {}, "ok").create()).__name__ == "EulerDiscreteScheduler"


@pytest.mark.parametrize(("file", "key"), [
    ("model_index.json", "custom_pipeline"),
    ("model_index.json", "auto_map"),
    ("unet/config.json", "auto_map"),
    ("text_encoder/config.json", "auto_map"),
    ("scheduler/scheduler_config.json", "custom_pipeline"),
])
def test_remote_code_keys_are_refused_naming_file_and_key(file: str, key: str, tiny_dir: Path, tmp_path: Path) -> None:
    """``custom_pipeline`` / ``auto_map`` in the index or a component config is refused, naming both."""
    folder = _copy(tiny_dir, tmp_path / "model")
    _edit_json(folder / file, **{key: {"AutoModel": "evil.Model"} if key == "auto_map" else "evil_pipeline"})
    with pytest.raises(ModelLoadError) as info:
        load_model(str(folder), device="cpu")
    assert f"{file} has the key {key!r}" in str(info.value)


def test_text_encoder_with_projection_is_allowed_and_encodes_its_hidden_states(tiny: tuple, tiny_dir: Path,
                                                                              tmp_path: Path) -> None:
    """The other allowed text-encoder class loads, and prompts are encoded from its last hidden state (not from
    its first output, which for this class is the pooled projection)."""
    from transformers import CLIPTextModelWithProjection

    from reelgraph.nodes.sampling import encode_prompt

    folder = _copy(tiny_dir, tmp_path / "projection")
    _edit_json(folder / "model_index.json", text_encoder=["transformers", "CLIPTextModelWithProjection"])
    model = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder")
    shutil.rmtree(folder / "text_encoder")
    model.save_pretrained(folder / "text_encoder")
    loaded = load_model(str(folder), device="cpu")[2]
    assert type(loaded.module).__name__ == "CLIPTextModelWithProjection"
    ours = encode_prompt(loaded, "a red circle moving left", guidance=False).prompt_embeds
    plain = encode_prompt(tiny[2], "a red circle moving left", guidance=False).prompt_embeds
    assert ours.shape == plain.shape == (1, 77, 32)
    assert torch.equal(ours, plain)  # the same CLIP text weights, so the same hidden states


def test_controlnet_and_clip_configs_with_remote_code_are_refused(tmp_path: Path) -> None:
    """The ControlNet (folder and single file) and CLIP loaders refuse ``auto_map`` the same way."""
    cn = _copy(ensure_tiny_controlnet(), tmp_path / "cn")
    _edit_json(cn / "config.json", auto_map={"AutoModel": "evil.Model"})
    with pytest.raises(ControlNetLoadError, match=r"config\.json has the key 'auto_map'"):
        load_controlnet(str(cn), device="cpu")
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(next(cn.glob("*.safetensors")), single / "canny.safetensors")
    shutil.copy(cn / "config.json", single / "config.json")
    with pytest.raises(ControlNetLoadError, match=r"config\.json has the key 'auto_map'"):
        load_controlnet(str(single / "canny.safetensors"), device="cpu")
    clip = _copy(ensure_tiny_clip(), tmp_path / "clip")
    _edit_json(clip / "config.json", auto_map={"AutoModel": "evil.Model"})
    with pytest.raises(ClipLoadError, match=r"config\.json has the key 'auto_map'"):
        load_clip(str(clip), device="cpu")


# ------------------------------------------------------------------------------------------------ sizes


def test_inflated_configs_are_too_large_before_anything_is_built(tiny_dir: Path, tmp_path: Path,
                                                                 make_engine: Callable[..., Engine]) -> None:
    """Configs describing more than the memory limit are refused with ``too_large`` on ``source`` without a single
    real parameter being allocated (everything registered lives on the meta device), and the refusal costs about
    as much as loading the tiny model, not as much as building the inflated one."""
    from reelgraph.nodes.model_safety import ModelTooLarge

    wide = _copy(tiny_dir, tmp_path / "wide")  # ~80 MB of UNet; its weights would not even fit the config
    _edit_json(wide / "unet" / "config.json", block_out_channels=[128, 256])
    deep = _copy(tiny_dir, tmp_path / "deep")  # thousands of layers
    _edit_json(deep / "unet" / "config.json", layers_per_block=1000)
    padded = _copy(tiny_dir, tmp_path / "padded")  # a tiny config whose weight file holds 16 MB more
    weights = padded / "text_encoder" / "model.safetensors"
    save_file({**load_file(weights), "padding": torch.zeros(4 * 1024**2)}, str(weights))

    engine = make_engine()
    for folder in (wide, deep, padded):
        with _parameter_devices() as devices:
            err = _run_node(engine, {"type": "load_model", "inputs": {"source": str(folder)}}, tmp_path, LIMIT)
        assert (err.code, err.input) == ("too_large", "source"), err.message
        assert "than the limit of 8.0 MiB" in err.message
        assert set(devices) <= {"meta"}, f"{folder.name}: real parameters were allocated"

    plain = _copy(tiny_dir, tmp_path / "plain")  # a new folder: not in the loader's cache
    start = time.perf_counter()
    load_model(str(plain), device="cpu", max_bytes=LIMIT)
    tiny_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with pytest.raises(ModelTooLarge, match=r"its unet, by its config\) would need more memory than the limit"):
        load_model(str(deep), device="cpu", max_bytes=4 * 1024**2)
    refused_seconds = time.perf_counter() - start
    assert refused_seconds < 20 * tiny_seconds, (refused_seconds, tiny_seconds)
    with pytest.raises(ModelTooLarge):  # the same folder fits when there is no limit: only the estimate refuses
        load_model(str(padded), device="cpu", max_bytes=LIMIT)
    assert load_model(str(padded), device="cpu", max_bytes=None)[2].module is not None


def test_inflated_controlnet_and_clip_are_too_large(tmp_path: Path, make_engine: Callable[..., Engine]) -> None:
    """ControlNet and CLIP configs are size-checked the same way, through their nodes."""
    cn = _copy(ensure_tiny_controlnet(), tmp_path / "cn")
    _edit_json(cn / "config.json", block_out_channels=[256, 512], norm_num_groups=8)
    clip = _copy(ensure_tiny_clip(), tmp_path / "clip")
    config = json.loads((clip / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] = 4000
    (clip / "config.json").write_text(json.dumps(config))
    engine = make_engine()
    for node in ({"type": "load_controlnet", "inputs": {"source": str(cn)}},
                 {"type": "load_clip", "inputs": {"source": str(clip)}}):
        with _parameter_devices() as devices:
            err = _run_node(engine, node, tmp_path, LIMIT)
        assert (err.code, err.input) == ("too_large", "source"), err.message
        assert set(devices) <= {"meta"}


# --------------------------------------------------------------------------------------------- symlinks


def test_hub_cache_layout_loads_bit_identical_to_the_plain_folder(tiny_dir: Path, tmp_path: Path) -> None:
    """A hub cache snapshot (every file a link into ``blobs/``) loads, with the same weights and outputs."""
    snapshot = _hub_layout(tiny_dir, tmp_path / "hub")
    assert (snapshot / "unet" / "config.json").is_symlink()
    assert os.readlink(snapshot / "unet" / "config.json").startswith("../../../blobs/")
    plain = load_model(str(_copy(tiny_dir, tmp_path / "plain")), device="cpu", max_bytes=LIMIT)
    hub = load_model(str(snapshot), device="cpu", max_bytes=LIMIT)
    for ours, theirs in zip(hub[:3], plain[:3], strict=True):
        a, b = ours.module.state_dict(), theirs.module.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert hub[3].config == plain[3].config and hub[3].class_name == plain[3].class_name
    prompt = "a red circle moving left"
    assert hub[2].tokenizer(prompt).input_ids == plain[2].tokenizer(prompt).input_ids
    g = torch.Generator().manual_seed(0)
    x, emb = torch.randn(1, 4, 2, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g)
    with torch.inference_mode():
        assert torch.equal(hub[0].module(x, 10, encoder_hidden_states=emb).sample,
                           plain[0].module(x, 10, encoder_hidden_states=emb).sample)


def test_links_out_of_the_folder_are_refused_without_revealing_the_target(
        tiny_dir: Path, tmp_path: Path, make_engine: Callable[..., Engine]) -> None:
    """A link leading outside the folder (and outside its own repository's ``blobs/``) is refused, naming the link
    inside the folder: the same message whether the target exists or not, and never the target's path."""
    snapshot = _hub_layout(tiny_dir, tmp_path / "hub")
    private = tmp_path / "private-place"
    private.mkdir()
    shutil.copy(tiny_dir / "unet" / "config.json", private / "config.json")  # a valid config, outside
    other_repo = _hub_layout(tiny_dir, tmp_path / "hub", name="models--someone--else")
    link = snapshot / "unet" / "config.json"

    blob = os.path.realpath(link)  # the right file, reached through a path outside: probe/../.. cancels out
    through_outside = f"{private}/probe/../../{os.path.relpath(blob, tmp_path)}"
    targets: list[Any] = [private / "config.json", private / "missing.json", other_repo / "unet" / "config.json",
                          through_outside, "mkdir", through_outside]
    engine = make_engine()
    messages = []
    for target in targets:
        if target == "mkdir":  # the same link once more, now that the outside path on its way exists
            (private / "probe").mkdir()
            continue
        _relink(link, target)
        err = _run_node(engine, {"type": "load_model", "inputs": {"source": str(snapshot)}}, tmp_path)
        assert (err.code, err.input) == ("model_load_failed", "source")
        assert "unet/config.json is a symbolic link that does not lead inside" in err.message
        assert "private-place" not in err.message and "someone" not in err.message
        assert "missing" not in err.message and "exist" not in err.message
        messages.append(err.message)
    assert len(set(messages)) == 1, "the message depends on the target"

    plain = _copy(tiny_dir, tmp_path / "plain")
    _relink(plain / "vae" / "config.json", os.path.relpath(private / "config.json", plain / "vae"))
    with pytest.raises(ModelLoadError, match=r"vae/config\.json is a symbolic link that does not lead inside the "
                                             r"model folder;") as info:
        load_model(str(plain), device="cpu")
    assert "private-place" not in str(info.value)
    linked_folder = _copy(tiny_dir, tmp_path / "linked-folder")
    shutil.move(linked_folder / "tokenizer", private / "tokenizer")
    (linked_folder / "tokenizer").symlink_to(private / "tokenizer")
    with pytest.raises(ModelLoadError, match="tokenizer is a symbolic link that does not lead inside"):
        load_model(str(linked_folder), device="cpu")

    # Links that stay inside the folder are fine, and so are the other loaders' rules.
    inside = _copy(tiny_dir, tmp_path / "inside")
    shutil.move(inside / "scheduler" / "scheduler_config.json", inside / "shared_scheduler.json")
    (inside / "scheduler" / "scheduler_config.json").symlink_to("../shared_scheduler.json")
    assert load_model(str(inside), device="cpu")[3].class_name == "DDIMScheduler"
    cn = _copy(ensure_tiny_controlnet(), tmp_path / "cn")
    _relink(cn / "config.json", private / "config.json")
    with pytest.raises(ControlNetLoadError, match=r"config\.json is a symbolic link that does not lead inside"):
        load_controlnet(str(cn), device="cpu")
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(ensure_tiny_controlnet() / "diffusion_pytorch_model.safetensors", single / "canny.safetensors")
    (single / "config.json").symlink_to(private / "config.json")
    with pytest.raises(ControlNetLoadError, match=r"config\.json is a symbolic link that does not lead inside"):
        load_controlnet(str(single / "canny.safetensors"), device="cpu")
    clip = _copy(ensure_tiny_clip(), tmp_path / "clip")
    _relink(clip / "preprocessor_config.json", private / "config.json")
    with pytest.raises(ClipLoadError, match=r"preprocessor_config\.json is a symbolic link that does not lead inside"):
        load_clip(str(clip), device="cpu")


def test_special_files_and_huge_folders_are_refused(tiny_dir: Path, tmp_path: Path) -> None:
    """A FIFO (reading it would block forever) is refused by name, and so is a folder with too many entries."""
    from reelgraph.nodes.model_safety import scan_folder

    folder = _copy(tiny_dir, tmp_path / "model")
    os.mkfifo(folder / "unet" / "notes.fifo")
    with pytest.raises(ModelLoadError, match=r"unet/notes\.fifo is neither a regular file nor a folder"):
        load_model(str(folder), device="cpu")
    with pytest.raises(ModelLoadError, match="holds more than 5 files and folders"):
        scan_folder(tiny_dir, ModelLoadError, max_entries=5)


# ------------------------------------------------------------------------------------------------- LoRA


def _peft_file(tiny: tuple, path: Path, metadata: Any, alpha: Any = None) -> Path:
    """A diffusers/PEFT LoRA on two of the tiny UNet's attention projections, with ``metadata`` as its
    ``lora_adapter_metadata`` (JSON text, or an object to dump) and optionally an ``alpha`` tensor value."""
    g = torch.Generator().manual_seed(3)
    modules = dict(tiny[0].module.named_modules())
    tensors = {}
    for name in ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
                 "down_blocks.0.temp_attentions.0.transformer_blocks.0.attn1.to_k"):
        weight = modules[name].weight
        tensors[f"unet.{name}.lora_A.weight"] = torch.randn(2, weight.shape[1], generator=g)
        tensors[f"unet.{name}.lora_B.weight"] = torch.randn(weight.shape[0], 2, generator=g)
        if alpha is not None:
            tensors[f"unet.{name}.alpha"] = torch.tensor(alpha)
    text = metadata if isinstance(metadata, str) else json.dumps(metadata)
    save_file(tensors, str(path), metadata={"lora_adapter_metadata": text})
    return path


def _lora_node(source: Path) -> dict[str, Any]:
    """A workflow's nodes: the tiny random model and ``load_lora`` of ``source`` on it."""
    inputs = {"unet": {"from": "m.unet"}, "text_encoder": {"from": "m.text_encoder"}, "source": str(source)}
    return {"m": {"type": "load_model", "inputs": {"source": "builtin:tiny-random", "device": "cpu"}},
            "n": {"type": "load_lora", "inputs": inputs}}


def test_catastrophic_alpha_pattern_returns_promptly(tiny: tuple, tmp_path: Path) -> None:
    """``(\\w+\\.?)+X`` takes exponential time as a regex on a real module name; as metadata it is refused at
    once as ``invalid_value`` on ``source`` naming the key (in a subprocess with a timeout: no hang)."""
    evil = _peft_file(tiny, tmp_path / "evil.safetensors", {"unet.lora_alpha": 2, "unet.alpha_pattern": {
        r"(\w+\.?)+X": 3.0}})
    (tmp_path / "nodes.json").write_text(json.dumps({"evil": _lora_node(evil)}))
    result = _run_script(_ENGINE_SCRIPT, tmp_path, timeout=120)["evil"]  # a hang fails as TimeoutExpired
    assert (result["code"], result["input"]) == ("invalid_value", "source"), result
    assert "lora_adapter_metadata 'unet.alpha_pattern'" in result["message"]
    assert "regular expressions are not run" in result["message"]


def test_reelgraph_and_peft_pattern_keys_keep_their_alphas(tiny: tuple, tmp_path: Path) -> None:
    """reelgraph's own files (``re.escape`` d names in ``alpha_pattern``) load with their alphas and merge to the
    very same weights as the in-memory adapter; PEFT-style plain names, suffixes and ``*`` globs match by name."""
    unet = tiny[0].module
    modules = dict(unet.named_modules())
    names = [n for n in modules if n.endswith(("attn1.to_q", "attn2.to_v", "proj_in"))][:6]
    g = torch.Generator().manual_seed(5)
    layers = {}
    for i, name in enumerate(names):
        weight = modules[name].weight
        down = torch.randn(2, weight[0].numel(), generator=g).reshape(2, *weight.shape[1:])
        up = torch.randn(weight.shape[0], 2, *[1] * (weight.ndim - 2), generator=g)
        layers[name] = LoraWeights(down=down, up=up, alpha=[4.0, 4.0, 1.5, 4.0, 0.25, 7.0][i])
    adapter = LoraAdapter(layers={"unet": layers}, name="own")
    path = adapter.save(tmp_path / "own.safetensors")
    pattern = json.loads(load_file_metadata(path)["lora_adapter_metadata"])["unet.alpha_pattern"]
    assert any("\\." in key for key in pattern)  # the escaped names this must keep reading
    parsed = read_lora(path)
    assert {m: w.alpha for m, w in parsed.layers["unet"].items()} == {m: w.alpha for m, w in layers.items()}
    from_file = merge_lora(unet, resolve_lora(parsed.layers["unet"], unet, "unet", False), 0.8)
    direct = merge_lora(unet, resolve_lora(adapter.layers["unet"], unet, "unet", False), 0.8)
    a, b = from_file.state_dict(), direct.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    full = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    peft = _peft_file(tiny, tmp_path / "peft.safetensors", {"unet.lora_alpha": 2, "unet.alpha_pattern": {
        full: 6.0, "attn1.to_q": 5.0, "temp_attentions.*.to_k": 7.0, "*k": 8.0}})
    alphas = {m: w.alpha for m, w in read_lora(peft).layers["unet"].items()}
    assert alphas == {full: 6.0, "down_blocks.0.temp_attentions.0.transformer_blocks.0.attn1.to_k": 7.0}
    suffix = _peft_file(tiny, tmp_path / "suffix.safetensors", {"unet.lora_alpha": 2, "unet.alpha_pattern": {
        "attn1.to_q": 5.0, "ttn1.to_k": 9.0}})
    alphas = {m: w.alpha for m, w in read_lora(suffix).layers["unet"].items()}
    assert alphas == {full: 5.0, "down_blocks.0.temp_attentions.0.transformer_blocks.0.attn1.to_k": 2.0}


def load_file_metadata(path: Path) -> dict[str, str]:
    """The safetensors header metadata of ``path``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


@pytest.mark.parametrize(("metadata", "alpha", "words"), [
    ("[1, 2]", None, "lora_adapter_metadata of 'bad.safetensors' must be a JSON object"),
    ({"unet.alpha_pattern": ["attn1"]}, None, "lora_adapter_metadata 'unet.alpha_pattern' must map module names"),
    ({"unet.alpha_pattern": {"attn1.to_q": "3"}}, None, "'unet.alpha_pattern' ['attn1.to_q']: the alpha must be a "
                                                        "finite number"),
    ('{"unet.alpha_pattern": {"attn1.to_q": NaN}}', None, "the alpha must be a finite number, got nan"),
    ('{"unet.lora_alpha": Infinity}', None, "lora_adapter_metadata 'unet.lora_alpha': the alpha must be a finite"),
    ({"unet.alpha_pattern": {"a" * 300: 1.0}}, None, "a key is 300 characters long, more than 256"),
    ({"unet.alpha_pattern": {r"attn\d": 1.0}}, None, "is a regular expression"),
    ({}, float("nan"), ".attn1.to_q.alpha': the alpha must be a finite number, got nan"),
    ({}, float("inf"), "the alpha must be a finite number, got inf"),
])
def test_bad_lora_metadata_and_alphas_are_invalid_values(metadata: Any, alpha: Any, words: str, tiny: tuple,
                                                         tmp_path: Path, make_engine: Callable[..., Engine]) -> None:
    """Metadata of the wrong type, non-numeric, NaN or infinite alphas, over-long or regex pattern keys, and NaN or
    infinite ``alpha`` tensors are a located ``invalid_value`` on ``source`` of ``load_lora`` naming the key."""
    path = _peft_file(tiny, tmp_path / "bad.safetensors", metadata, alpha)
    doc = {"reelgraph": 1, "name": "t", "nodes": _lora_node(path)}
    with pytest.raises(NodeFailed) as info:
        make_engine().run(doc, out_dir=tmp_path, allow_paths=[tmp_path])
    err = info.value
    assert (err.code, err.node, err.input) == ("invalid_value", "n", "source"), err.message
    assert words in err.message, err.message
    assert re.search(r"lora_adapter_metadata|alpha'", err.message)
