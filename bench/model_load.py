"""Model load time and peak memory: ``load_model`` against diffusers' ``TextToVideoSDPipeline.from_pretrained``.

The benchmark builds its own model: the ModelScope 1.7B UNet3D architecture at half its width
(``block_out_channels`` 160/320/640/640, everything else as in the shipped
``nodes/models/modelscope-t2v-1.7b/unet/config.json``: 347 M parameters, 1.3 GiB in fp32), with random weights,
next to ``builtin:tiny-random``'s small VAE, text encoder, tokenizer and scheduler. Building and writing the full
1.41 B-parameter UNet's file sets (5.6 GB in fp32, an fp16 twin and a ``.bin`` copy) would take this 2-core,
24 GiB machine several minutes; load memory and time scale linearly with the weights, so the ratios carry
over. Its file sets, as the hub ships them:

* ``fp32``: ``diffusion_pytorch_model.safetensors`` (with a ``*.fp16.safetensors`` twin beside it);
* ``fp32 only``: the same without the fp16 twin (float16 must be cast from fp32 files);
* ``pickle``: ``diffusion_pytorch_model.bin`` only (Zeroscope's file set).

Each load runs in a fresh process after a warm-up load of the tiny model (imports and first-call costs are not
the load's), with the files in the page cache. A load is measured until every weight has been read once
(a sum over each tensor): diffusers maps safetensors and ``.bin`` files into memory and reads their pages only
when they are first used, so its ``from_pretrained`` returns before reading anything; reelgraph reads the
weights during ``load_model``. The peak is the resident set's high-water mark over that span minus the resident
set before it (``/proc/self/clear_refs``; mapped file pages count once read), the time is the span's. Rows: per
precision and file set, reelgraph's and diffusers' peak and time, and their ratio (diffusers' peak at return,
before reading, in brackets); and reelgraph's float16 peak against its float32 peak (goal: at most 0.6x). Goal
for every load: peak at most 1.2x the weights.

Run: ``python bench/model_load.py [--quick] [--repeats 2] [--width 160]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, Row, print_rows

BUILD = """
    import json, shutil, sys, torch
    from pathlib import Path
    from diffusers import UNet3DConditionModel
    from reelgraph.nodes.modelscope_convert import modelscope_unet_config
    from reelgraph.nodes.tiny_models import builtin_model
    folder, width = Path(sys.argv[1]), int(sys.argv[2])
    shutil.copytree(builtin_model("builtin:tiny-random"), folder)
    (folder / "SHA256SUMS").unlink(missing_ok=True)
    config = modelscope_unet_config()
    config["block_out_channels"] = [width, 2 * width, 4 * width, 4 * width]
    config["attention_head_dim"] = width // 5  # 64 at the real width (320)
    text = json.loads((folder / "text_encoder" / "config.json").read_text())
    config["cross_attention_dim"] = text["hidden_size"]
    torch.manual_seed(0)
    unet = UNet3DConditionModel.from_config(config)
    shutil.rmtree(folder / "unet")
    unet.save_pretrained(folder / "unet")
    unet.half().save_pretrained(folder / "unet", variant="fp16")
    print("PARAMS", sum(p.numel() for p in unet.parameters()))
"""

LOAD = """
    import json, sys, time, warnings, torch
    torch.set_num_threads(1)
    side, folder, dtype, variant = sys.argv[1:5]
    variant = None if variant == "-" else variant

    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024

    if side == "reelgraph":
        from reelgraph.nodes.model_loading import load_model
        load_model("builtin:tiny-random", device="cpu", dtype=dtype)
        load = lambda: load_model(folder, device="cpu", dtype=dtype)[0].module  # variant auto: by dtype
    else:
        from diffusers import TextToVideoSDPipeline
        from diffusers.utils import logging
        from reelgraph.nodes.tiny_models import builtin_model
        logging.set_verbosity_error()
        logging.disable_progress_bar()
        warnings.simplefilter("ignore")
        TextToVideoSDPipeline.from_pretrained(builtin_model("builtin:tiny-random"), torch_dtype=getattr(torch, dtype))
        load = lambda: TextToVideoSDPipeline.from_pretrained(folder, torch_dtype=getattr(torch, dtype),
                                                             variant=variant).unet
    open("/proc/self/clear_refs", "w").write("5")
    before = rss("VmRSS:")
    start = time.perf_counter()
    unet = load()
    lazy = rss("VmHWM:") - before
    with torch.no_grad():  # read every weight once: a memory-mapped load pays its reading here
        for tensor in unet.state_dict().values():
            tensor.sum()
    seconds = time.perf_counter() - start
    peak = rss("VmHWM:") - before
    nbytes = sum(t.numel() * t.element_size() for t in unet.state_dict().values())
    print("RESULT" + json.dumps({"peak": peak, "lazy": lazy, "seconds": seconds, "nbytes": nbytes,
                                 "dtype": str(unet.dtype)}))
"""


def _script(folder: Path, name: str, code: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(code), encoding="utf-8")
    return path


def _measure(script: Path, side: str, folder: Path, dtype: str, variant: str | None) -> dict[str, float]:
    proc = subprocess.run([sys.executable, str(script), side, str(folder), dtype, variant or "-"], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{side} load of {folder.name} failed: {proc.stderr.strip()[-800:]}")
    return json.loads(line[len("RESULT"):])


def _warm(folder: Path) -> None:
    """Read every file once so both sides find them in the page cache."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                while handle.read(64 * 1024**2):
                    pass


def _mib(n: float) -> str:
    return f"{n / 1024**2:.0f} MiB"


def run(quick: bool = False, repeats: int | None = None, width: int = 160) -> list[Row]:
    """Rows: peak RSS and time of each load, reelgraph / diffusers, and reelgraph's fp16 / fp32 peak."""
    repeats = repeats or (1 if quick else 2)
    if not Path("/proc/self/clear_refs").exists():
        return [Row("model load", "needs Linux /proc (peak-RSS reset)", "-", "-", None)]
    work = Path(tempfile.mkdtemp(prefix="reelgraph-bench-load-"))
    try:
        build, load = _script(work, "build.py", BUILD), _script(work, "load.py", LOAD)
        both = work / "fp32"
        proc = subprocess.run([sys.executable, str(build), str(both), str(width)], capture_output=True, text=True,
                              cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-800:])
        params = int(next(x for x in proc.stdout.splitlines() if x.startswith("PARAMS")).split()[1])
        only32 = work / "fp32-only"
        shutil.copytree(both, only32, copy_function=os.link)
        (only32 / "unet" / "diffusion_pytorch_model.fp16.safetensors").unlink()
        pickle = work / "pickle"
        shutil.copytree(only32, pickle, copy_function=os.link)
        subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            import torch
            from safetensors.torch import load_file
            unet = {str(pickle / 'unet')!r}
            torch.save(load_file(unet + "/diffusion_pytorch_model.safetensors"), unet + "/diffusion_pytorch_model.bin")
        """)], check=True)
        (pickle / "unet" / "diffusion_pytorch_model.safetensors").unlink()
        cases = [  # (label, folder, dtype, variant for diffusers)
            ("fp32 safetensors -> float32", both, "float32", None),
            ("fp16 safetensors -> float16", both, "float16", "fp16"),
            ("fp32 safetensors only -> float16 (cast)", only32, "float16", None),
            ("fp32 .bin only -> float32", pickle, "float32", None),
        ]
        rows: list[Row] = []
        peaks: dict[str, float] = {}
        for label, folder, dtype, variant in cases:
            _warm(folder)
            ours, theirs = [], []
            for _ in range(repeats):
                ours.append(_measure(load, "reelgraph", folder, dtype, variant))
                theirs.append(_measure(load, "diffusers", folder, dtype, variant))
            peak_a = statistics.median(r["peak"] for r in ours)
            peak_b = statistics.median(r["peak"] for r in theirs)
            lazy_b = statistics.median(r["lazy"] for r in theirs)
            time_a = statistics.median(r["seconds"] for r in ours)
            time_b = statistics.median(r["seconds"] for r in theirs)
            nbytes = ours[0]["nbytes"]
            peaks[label] = peak_a
            rows.append(Row(f"model load: {label}",
                            f"UNet3D {params / 1e6:.0f} M params ({_mib(nbytes)} loaded), peak RSS added by load + "
                            f"first read: reelgraph {_mib(peak_a)} ({peak_a / nbytes:.2f}x the weights) / diffusers "
                            f"{_mib(peak_b)} ({peak_b / nbytes:.2f}x; {_mib(lazy_b)} at return); time {time_a:.2f} s / "
                            f"{time_b:.2f} s",
                            f"{peak_a / peak_b:.2f}x memory, {time_a / time_b:.2f}x time",
                            "peak <= 1.2x the weights", peak_a <= 1.2 * nbytes))
        fp32 = peaks["fp32 safetensors -> float32"]
        for label in ("fp16 safetensors -> float16", "fp32 safetensors only -> float16 (cast)"):
            ratio = peaks[label] / fp32
            rows.append(Row("model load: float16 vs float32", f"reelgraph peak, {label} / fp32 -> float32",
                            f"{ratio:.2f}x", "<= 0.6x", ratio <= 0.6))
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--width", type=int, default=160, help="first block's channels (320: the real 1.41 B UNet)")
    args = parser.parse_args()
    print_rows(run(args.quick, args.repeats, args.width))
