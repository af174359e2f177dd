"""LoRA scale sweep memory: peak RSS of a 20-scale sweep in one engine against a 2-scale sweep.

Each scale gives ``load_lora`` a new cache key, so each run leaves a LoRA-patched UNet3D in the engine's
memory cache. The cache must count those handles at their real size (parameters and buffers) and evict
the least recently used ones once past its budget; it used to count a handle as 56 bytes and never
evicted one, so the sweep's memory grew with every scale. The model is wider than ``builtin:tiny``
(UNet3D ``block_out_channels`` 128/256) so that a patched copy weighs something; the engine's memory
budget is set to four UNet3Ds. Each sweep runs in a fresh process (peak RSS is per process). Goal:
the 20-scale sweep's peak within 1.3x of the 2-scale one.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Row, peak_rss_of, print_rows

UNET = {"sample_size": 8, "in_channels": 4, "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
        "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"], "block_out_channels": [128, 256],
        "layers_per_block": 1, "norm_num_groups": 32, "cross_attention_dim": 32, "attention_head_dim": 8}

BUILD = """
import json, shutil, torch
from pathlib import Path
from diffusers import UNet3DConditionModel
from safetensors.torch import save_file
from reelgraph.nodes.tiny_models import builtin_model
folder = Path({folder!r})
shutil.copytree(builtin_model("builtin:tiny-random"), folder)
torch.manual_seed(0)
unet = UNet3DConditionModel(**json.loads({unet!r}))
shutil.rmtree(folder / "unet")
unet.save_pretrained(folder / "unet", safe_serialization=True)
(folder / "SHA256SUMS").unlink(missing_ok=True)
g = torch.Generator().manual_seed(1)
tensors = {{}}
for name, module in unet.named_modules():
    if name.endswith(("to_q", "to_k", "to_v", "to_out.0")) and hasattr(module, "in_features"):
        key = "lora_unet_" + name.replace(".", "_")
        tensors[key + ".lora_down.weight"] = torch.randn(4, module.in_features, generator=g) * 0.05
        tensors[key + ".lora_up.weight"] = torch.randn(module.out_features, 4, generator=g) * 0.05
        tensors[key + ".alpha"] = torch.tensor(4.0)
save_file(tensors, str(folder.parent / "lora.safetensors"))
print("UNET_BYTES", sum(p.numel() * p.element_size() for p in unet.parameters()))
"""

SWEEP = """
from reelgraph import Engine
engine = Engine(memory_bytes={budget})
doc = {{"reelgraph": 1, "name": "sweep", "params": {{"scale": {{"type": "float", "default": 1.0}}}}, "nodes": {{
    "m": {{"type": "load_model", "inputs": {{"source": {folder!r}, "device": "cpu"}}}},
    "t": {{"type": "clip_text_encode", "inputs": {{"text_encoder": {{"from": "m.text_encoder"}}, "prompt": "a"}}}},
    "l": {{"type": "load_lora", "inputs": {{"unet": {{"from": "m.unet"}}, "text_encoder": {{"from": "m.text_encoder"}},
                                         "source": {lora!r}, "scale_unet": {{"param": "scale"}}}}}},
    "d": {{"type": "unet3d_denoise", "inputs": {{"unet": {{"from": "l.unet"}}, "scheduler": {{"from": "m.scheduler"}},
            "conditioning": {{"from": "t.conditioning"}}, "frames": 2, "height": 16, "width": 16, "steps": 1}}}}}}}}
for i in range({n}):
    engine.run(doc, {{"scale": 0.05 * (i + 1)}}, allow_paths=[{root!r}])
print("CACHED", len(engine.executor.memory), engine.executor.memory.nbytes)
"""


def run(quick: bool = False) -> list[Row]:
    """Peak RSS of a 2-scale and a 20-scale sweep (quick: 2 and 8)."""
    import subprocess

    counts = (2, 8) if quick else (2, 20)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "wide-model"
        out = subprocess.run([sys.executable, "-c", BUILD.format(folder=str(folder), unet=json.dumps(UNET))],
                             capture_output=True, text=True, check=True)
        unet_bytes = int(next(x for x in out.stdout.splitlines() if x.startswith("UNET_BYTES")).split()[1])
        budget = 4 * unet_bytes

        def peak(n: int, limit: int) -> int:
            code = SWEEP.format(budget=limit, folder=str(folder), lora=str(root / "lora.safetensors"), root=str(root),
                                n=n)
            return peak_rss_of(code, env={"REELGRAPH_THREADS": "1"})

        peaks = {n: peak(n, budget) for n in counts}
        unbounded = {n: peak(n, 2**40) for n in counts}  # never evicting: how a 56-byte handle behaved
    rows = []
    for label, found, goal in (("LoRA sweep memory", peaks, "<= 1.3x"),
                               ("LoRA sweep memory, no eviction", unbounded, "grows (contrast)")):
        ratio = found[counts[1]] / found[counts[0]]
        detail = ", ".join(f"{n} scales: {found[n] / 2**20:.0f} MiB" for n in counts)
        budget_text = f"{budget / 2**20:.0f} MiB" if found is peaks else "unlimited"
        rows.append(Row(label, f"peak RSS, one engine, UNet3D of {unet_bytes / 2**20:.0f} MiB, cache budget "
                        f"{budget_text} ({detail})", f"{ratio:.2f}x ({counts[0]} -> {counts[1]} scales)", goal,
                        ratio <= 1.3 if found is peaks else None))
    return rows


if __name__ == "__main__":
    print_rows(run(quick="--quick" in sys.argv))
