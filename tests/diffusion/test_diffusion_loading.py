"""Model loading: the builtin tiny folder, caching, the tokenizer files, and clear refusals."""

from __future__ import annotations

import json
import shutil
import threading
import warnings
from pathlib import Path

import pytest

from reelgraph.nodes.model_loading import ModelLoadError, load_model
from reelgraph.nodes.tiny_models import build_tiny_tokenizer_files, ensure_tiny_model

torch = pytest.importorskip("torch")
for _name in ("diffusers", "transformers", "safetensors"):
    pytest.importorskip(_name)


def test_builtin_tiny_loads_and_is_cached(tiny, tiny_dir: Path) -> None:
    unet, vae, text_encoder, scheduler = tiny
    assert unet.source == vae.source == text_encoder.source == scheduler.source == "builtin:tiny-random"
    assert type(unet.module).__name__ == "UNet3DConditionModel"
    assert unet.vae_scale_factor == vae.scale_factor == 4
    assert scheduler.class_name == "DDIMScheduler"
    assert text_encoder.tokenizer.model_max_length == 77
    assert load_model("builtin:tiny-random", device="cpu") is tiny
    assert load_model(str(tiny_dir), device="cpu")[0].source == str(tiny_dir)
    for sub in ("unet", "vae", "text_encoder"):
        assert list((tiny_dir / sub).glob("*.safetensors"))
        assert not [p for p in (tiny_dir / sub).iterdir() if p.suffix in (".bin", ".pt", ".ckpt")]


def test_folder_loads_with_the_diffusers_pipeline(tiny_dir: Path) -> None:
    from diffusers import TextToVideoSDPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = TextToVideoSDPipeline.from_pretrained(tiny_dir)
    assert pipe.vae_scale_factor == 4
    assert pipe.tokenizer.model_max_length == 77


def test_tokenizer_files_agree(tiny_dir: Path, tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    fast_only = tmp_path / "fast"
    slow_only = tmp_path / "slow"
    shutil.copytree(tiny_dir / "tokenizer", fast_only)
    shutil.copytree(tiny_dir / "tokenizer", slow_only)
    for name in ("vocab.json", "merges.txt"):
        (fast_only / name).unlink()
    (slow_only / "tokenizer.json").unlink()
    from_json = CLIPTokenizer.from_pretrained(fast_only)
    from_files = CLIPTokenizer.from_pretrained(slow_only)
    texts = ["a red ball bouncing", "An Astronaut riding a horse, cinematic!", "zebra quux 42", ""]
    for text in texts:
        a = from_json(text, padding="max_length", max_length=77, truncation=True).input_ids
        b = from_files(text, padding="max_length", max_length=77, truncation=True).input_ids
        assert a == b
    assert from_json.model_max_length == from_files.model_max_length == 77
    vocab, _ = build_tiny_tokenizer_files()
    config = json.loads((tiny_dir / "text_encoder" / "config.json").read_text())
    assert config["bos_token_id"] == vocab["<|startoftext|>"] == from_files.bos_token_id
    assert config["eos_token_id"] == vocab["<|endoftext|>"] == from_files.eos_token_id
    assert config["vocab_size"] == len(vocab)
    # The merges apply: a corpus word needs fewer tokens than characters.
    assert len(from_files("video").input_ids) < 2 + len("video")


def test_tokenizer_generation_is_deterministic() -> None:
    assert build_tiny_tokenizer_files() == build_tiny_tokenizer_files()


def test_tiny_build_is_deterministic_and_race_safe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   tiny_dir: Path) -> None:
    monkeypatch.setenv("REELGRAPH_HOME", str(tmp_path))
    results: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(ensure_tiny_model())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(set(results)) == 1
    folder = results[0]
    assert [p.name for p in folder.parent.iterdir()] == ["tiny-v1"]  # no temporary folders left behind
    from safetensors.torch import load_file

    for rel in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        ours, theirs = load_file(folder / rel), load_file(tiny_dir / rel)
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def _copy(tiny_dir: Path, dest: Path) -> Path:
    shutil.copytree(tiny_dir, dest)
    return dest


def test_pickle_weights_load_like_their_safetensors(tiny_dir: Path, tmp_path: Path) -> None:
    """A component with only a ``.bin`` loads (through torch.load(weights_only=True)) to the same weights."""
    from safetensors.torch import load_file

    folder = _copy(tiny_dir, tmp_path / "model")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), folder / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    ours = load_model(str(folder), device="cpu")[0].module.state_dict()
    theirs = load_model(str(tiny_dir), device="cpu")[0].module.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_refuses_missing_and_malformed_sources(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match=r"model_index\.json is missing"):
        load_model(str(tmp_path))
    with pytest.raises(ModelLoadError, match="unknown builtin"):
        load_model("builtin:huge")

    single = tmp_path / "model.safetensors"
    single.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"is a single weight file.* as unet"):
        load_model(str(single))

    bad_json = _copy(tiny_dir, tmp_path / "bad_json")
    (bad_json / "model_index.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_model(str(bad_json))

    unet2d = _copy(tiny_dir, tmp_path / "unet2d")
    index = json.loads((unet2d / "model_index.json").read_text())
    index["unet"] = ["diffusers", "UNet2DConditionModel"]
    (unet2d / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="only UNet3DConditionModel"):
        load_model(str(unet2d))

    no_vae = _copy(tiny_dir, tmp_path / "no_vae")
    shutil.rmtree(no_vae / "vae")
    with pytest.raises(ModelLoadError, match="vae/"):
        load_model(str(no_vae))

    corrupt = _copy(tiny_dir, tmp_path / "corrupt")
    weights = corrupt / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match=r"vae/.*diffusion_pytorch_model.safetensors.*not a readable safetensors"):
        load_model(str(corrupt), device="cpu")


def test_changed_folder_is_reloaded(tiny_dir: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_dir, tmp_path / "model")
    first = load_model(str(folder), device="cpu")
    assert load_model(str(folder), device="cpu") is first
    config = folder / "scheduler" / "scheduler_config.json"
    data = json.loads(config.read_text())
    data["steps_offset"] = 0
    config.write_text(json.dumps(data))
    second = load_model(str(folder), device="cpu")
    assert second is not first
    assert second[3].config["steps_offset"] == 0


def test_speed_flags_load_separately_and_keep_outputs(tiny, tiny_dir: Path) -> None:
    """channels_last gives the default output (to float rounding) from its own cached copy; compile wraps the
    UNet3D (not called here: compiling takes minutes on a CPU); an unknown memory format is refused."""
    source = str(tiny_dir)
    base = load_model(source, device="cpu")
    fast = load_model(source, device="cpu", memory_format="channels_last")
    assert fast is not base and fast is load_model(source, device="cpu", memory_format="channels_last")
    conv = fast[0].module.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert base[0].module.conv_in.weight.is_contiguous()  # the default copy is untouched
    gen = torch.Generator("cpu").manual_seed(0)
    x, emb = torch.randn((1, 4, 3, 8, 8), generator=gen), torch.randn((1, 77, 32), generator=gen)
    with torch.inference_mode():
        want = base[0].module(x, 10, encoder_hidden_states=emb).sample
        got = fast[0].module(x, 10, encoder_hidden_states=emb).sample
    assert (got - want).abs().max().item() < 1e-4
    compiled = load_model(source, device="cpu", compile=True)[0].module
    assert compiled._compiled_call_impl is not None and base[0].module._compiled_call_impl is None
    with pytest.raises(ModelLoadError, match="memory_format must be one of"):
        load_model(source, device="cpu", memory_format="channels_first")
