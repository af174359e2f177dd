"""The job of ``reelgraph run workflows/text2video.json`` as a plain diffusers script (cold-start reference).

Loads the same ``builtin:tiny`` folder with ``TextToVideoSDPipeline``, renders the workflow's default prompt,
seed, size, steps and guidance, and writes an mp4 with PyAV, as a user without reelgraph would.
Run: ``python bench/plain_t2v.py MODEL_FOLDER OUTPUT.mp4``; ``bench/cold_start.py`` times it in fresh processes.
"""

from __future__ import annotations

import sys

import av
import torch
from diffusers import TextToVideoSDPipeline


def main(folder: str, output: str) -> None:
    """Render the default prompt and write it to ``output``."""
    torch.set_num_threads(1)
    pipe = TextToVideoSDPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe("a red circle moving left", negative_prompt="", num_frames=8, height=32, width=32,
                  num_inference_steps=20, guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(7),
                  output_type="pt").frames[0]
    pixels = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    with av.open(output, "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for image in pixels:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
