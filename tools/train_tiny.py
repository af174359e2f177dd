"""Train the tiny text-to-video model on the coloured-shapes world, resumably and deterministically (CPU).

Two phases share one step counter:

1. ``--vae-steps`` steps train a small ``AutoencoderKL`` (``builtin:tiny``'s config, factor 4, 4 latent
   channels) on single frames: a colour-weighted reconstruction loss plus a tiny KL term. At the switch the
   latent scaling factor is set to ``1 / std`` of the latents of a fixed batch.
2. ``--steps`` steps train ``builtin:tiny``'s ``UNet3DConditionModel`` *and* the tiny CLIP text encoder (all of
   it, token embeddings included, so "left" and "up" can drift apart) with the v-prediction objective on a
   cosine (``squaredcos_cap_v2``) schedule; the VAE is frozen. Captions are dropped (empty prompt) 10 % of the
   time, for classifier-free guidance.

Every random draw comes from the dataset seed (clips are drawn by index) or from one ``torch.Generator`` whose
state is checkpointed, so with the same ``--threads`` a run resumed from a checkpoint (``--resume``) continues
bit-identically. A checkpoint (``checkpoint.pt``: weights, optimiser states, generator state, losses) is written
atomically every ``--save-every`` steps and at the end, with the loss curve ``loss.png`` and ``losses.json``.
``--max-minutes`` stops cleanly (with a checkpoint) after that much wall time. ``export`` writes the diffusers
folder (fp16 safetensors, ``SHA256SUMS``); ``eval`` samples a prompt grid through the engine and tracks it.

Usage (see docs/default_model.md for the exact run)::

    python tools/train_tiny.py train --ckpt-dir tools/checkpoints/tiny-trained --resume
    python tools/train_tiny.py export --ckpt-dir tools/checkpoints/tiny-trained --out /tmp/tiny-trained
    python tools/train_tiny.py eval --model /tmp/tiny-trained --seeds 0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from reelgraph.nodes import tiny_models
from reelgraph.nodes.shapes_dataset import COLOURS, DIRECTIONS, SHAPES, caption, find_clips, make_batch

MAX_LENGTH = 77
#: The sampling scheduler shipped with the model: DDIM over the training schedule, v-prediction.
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 0,
    "prediction_type": "v_prediction",
    "timestep_spacing": "trailing",
}
_VAE_DATA_OFFSET = 0
_UNET_DATA_OFFSET = 50_000_000
_SCALE_DATA_OFFSET = 90_000_000
#: The dataset seed ``eval-edit`` draws its held-out source clips from (training uses ``--seed``).
EDIT_SEED = 1000


def _tokenizer() -> Any:
    from transformers import CLIPTokenizer

    vocab, merges = tiny_models.build_tiny_tokenizer_files()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)


def build_models(seed: int) -> tuple[Any, Any, Any]:
    """Fresh ``(vae, unet, text_encoder)`` with builtin:tiny's configs and diffusers' default init from ``seed``."""
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tiny_models_quiet()
    vocab, _ = tiny_models.build_tiny_tokenizer_files()
    text_config = CLIPTextConfig(vocab_size=len(vocab), bos_token_id=vocab["<|startoftext|>"],
                                 eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
                                 **tiny_models._TEXT_CONFIG)
    torch.manual_seed(seed)
    vae = AutoencoderKL(**tiny_models._VAE_CONFIG)
    unet = UNet3DConditionModel(**tiny_models._UNET_CONFIG)
    text = CLIPTextModel(text_config)
    return vae, unet, text


def tiny_models_quiet() -> None:
    """Silence diffusers/transformers progress bars and advisory warnings."""
    from reelgraph.nodes.model_loading import quiet_hf_libraries

    quiet_hf_libraries()


def new_scheduler() -> Any:
    """The DDPM training view of ``SCHEDULER_CONFIG`` (same betas), for ``add_noise``/``get_velocity``."""
    from diffusers import DDPMScheduler

    keep = ("num_train_timesteps", "beta_schedule", "prediction_type", "clip_sample")
    return DDPMScheduler(**{k: SCHEDULER_CONFIG[k] for k in keep})


class Trainer:
    """All training state: models, optimisers, generator, step, losses; ``state_dict`` round-trips it."""

    def __init__(self, args: argparse.Namespace) -> None:
        """Build fresh models and optimisers from ``args.seed``."""
        self.args = args
        self.vae, self.unet, self.text = build_models(args.seed)
        self.tokenizer = _tokenizer()
        self.scheduler = new_scheduler()
        self.opt_vae = torch.optim.AdamW(self.vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
        params = [*self.unet.parameters(), *self.text.parameters()]
        self.opt_unet = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
        self.generator = torch.Generator("cpu").manual_seed(args.seed + 1)
        # Dropout (0.1 in the UNet3D's temporal convolutions) draws from torch's global RNG: keep our own copy
        # of its state, swapped in around every step, so other users of the global RNG cannot disturb us.
        self.global_rng = torch.Generator("cpu").manual_seed(args.seed + 2).get_state()
        self.step = 0
        self.losses: list[list[float]] = []  # [step, phase (0 vae, 1 unet), loss]
        self.scaling_factor = 1.0
        self._ids: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically."""
        return {"step": self.step, "losses": self.losses, "scaling_factor": self.scaling_factor,
                "vae": self.vae.state_dict(), "unet": self.unet.state_dict(), "text": self.text.state_dict(),
                "opt_vae": self.opt_vae.state_dict(), "opt_unet": self.opt_unet.state_dict(),
                "generator": self.generator.get_state(), "global_rng": self.global_rng,
                "config": _config_of(self.args)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict`` output (the config must match, apart from run-length settings)."""
        mine = _config_of(self.args)
        # Checkpoints older than --timesteps / --motion-weight were uniform, without the motion term.
        theirs = {"timesteps": "uniform", "motion_weight": 0.0, "object_weight": 0.0, **state["config"]}
        if mine != theirs:
            raise SystemExit(f"checkpoint was trained with {theirs}, not {mine}")
        self.vae.load_state_dict(state["vae"])
        self.unet.load_state_dict(state["unet"])
        self.text.load_state_dict(state["text"])
        self.opt_vae.load_state_dict(state["opt_vae"])
        self.opt_unet.load_state_dict(state["opt_unet"])
        self.generator.set_state(state["generator"])
        self.global_rng = state["global_rng"]
        self.step = int(state["step"])
        self.losses = [list(x) for x in state["losses"]]
        self.scaling_factor = float(state["scaling_factor"])

    # ------------------------------------------------------------------------------------------ steps
    def ids(self, texts: list[str]) -> torch.Tensor:
        """Token ids ``[B, 77]`` padded like ``encode_prompt`` pads them (cached per caption)."""
        return token_ids(self.tokenizer, self._ids, texts)

    def vae_step(self) -> float:
        """One reconstruction step on ``vae_batch`` clips' frames."""
        a = self.args
        clips, _ = make_batch(a.seed, _VAE_DATA_OFFSET + self.step * a.vae_batch, a.vae_batch)
        x = clips.flatten(0, 1) * 2 - 1
        self.vae.train()
        dist = self.vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=self.generator)
        rec = self.vae.decode(z).sample
        # Shape pixels (saturated) weigh 8x: they are few, and they are what the tracker reads.
        chroma = (clips.flatten(0, 1).amax(1) - clips.flatten(0, 1).amin(1)).unsqueeze(1)
        weight = 1.0 + 7.0 * (chroma > 0.3).float()
        loss = (weight * (rec - x) ** 2).mean() + a.kl_weight * dist.kl().mean()
        self.opt_vae.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_vae.step()
        return float(loss.detach())

    @torch.no_grad()
    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        """Scaled latent means ``[B, C, F, h, w]`` of clips ``[B, F, 3, H, W]``."""
        return encode_latents(self.vae, clips, self.scaling_factor)

    def set_scaling_factor(self) -> None:
        """``1 / std`` of the (unscaled) latents of a fixed batch of 32 clips."""
        self.scaling_factor = 1.0
        clips, _ = make_batch(self.args.seed, _SCALE_DATA_OFFSET, 32)
        self.scaling_factor = float(1.0 / self.encode(clips).std())

    def unet_step(self) -> float:
        """One v-prediction step of the UNet3D and the text encoder."""
        a = self.args
        clips, params = make_batch(a.seed, _UNET_DATA_OFFSET + (self.step - a.vae_steps) * a.batch, a.batch)
        latents = self.encode(clips)
        drop = torch.rand(len(params), generator=self.generator) < a.caption_dropout
        texts = ["" if d else p.caption for d, p in zip(drop.tolist(), params, strict=True)]
        t, noisy, target = noisy_latents(self.scheduler, latents, a.timesteps, self.generator)
        self.unet.train()
        self.text.train()
        embeds = self.text(self.ids(texts))[0]
        pred = self.unet(noisy, t, encoder_hidden_states=embeds).sample
        if a.object_weight:
            # Latent cells under the shape (saturated pixels, max-pooled to the latent grid) weigh more: they
            # are few, and where the shape is in each frame is what the prompt's direction decides.
            chroma = (clips.amax(2) - clips.amin(2)) > 0.3  # [B, F, H, W]
            factor = clips.shape[-1] // latents.shape[-1]
            under = torch.nn.functional.max_pool2d(chroma.float(), factor).unsqueeze(1)  # [B, 1, F, h, w]
            weight = 1.0 + a.object_weight * under
            loss = (weight * (pred - target) ** 2).mean() / weight.mean()
        else:
            loss = torch.nn.functional.mse_loss(pred, target)
        loss = add_motion_loss(loss, pred, target, a.motion_weight)
        self.opt_unet.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*self.unet.parameters(), *self.text.parameters()], 1.0)
        self.opt_unet.step()
        return float(loss.detach())

    def train_step(self) -> float:
        """Run the step the counter is at (VAE, or UNet after the switch) and record its loss."""
        a = self.args
        if self.step < a.vae_steps:
            phase, loss = 0, with_own_rng(self, self.vae_step)
        else:
            phase, loss = 1, with_own_rng(self, self.unet_step)
        self.step += 1
        if self.step == a.vae_steps:  # the VAE is final: fix the latent scale before the UNet sees latents
            self.set_scaling_factor()
        self.losses.append([self.step, phase, loss])
        return loss

    @property
    def total_steps(self) -> int:
        """VAE steps plus UNet steps."""
        return self.args.vae_steps + self.args.steps

    def config(self) -> dict[str, Any]:
        """The settings that define the trajectory (recorded in checkpoints and exports)."""
        return _config_of(self.args)

    def phase_name(self) -> str:
        """What the last step trained, for the log."""
        return "vae" if self.step <= self.args.vae_steps else "unet"

    def milestones(self) -> tuple[int, ...]:
        """Steps that always get a checkpoint: the end of the VAE phase."""
        return (self.args.vae_steps,)


def with_own_rng(holder: Any, fn: Any) -> Any:
    """Call ``fn()`` with torch's global RNG set to ``holder.global_rng`` (dropout draws from it), then keep
    its new state there and put the caller's back, so other users of the global RNG cannot disturb a run."""
    outside = torch.get_rng_state()
    torch.set_rng_state(holder.global_rng)
    try:
        result = fn()
        holder.global_rng = torch.get_rng_state()
    finally:
        torch.set_rng_state(outside)
    return result


def token_ids(tokenizer: Any, cache: dict[str, torch.Tensor], texts: list[str]) -> torch.Tensor:
    """Token ids ``[B, 77]`` of ``texts`` padded like ``encode_prompt`` pads them (cached per caption in ``cache``)."""
    for t in texts:
        if t not in cache:
            cache[t] = tokenizer([t], padding="max_length", max_length=MAX_LENGTH, truncation=True,
                                 return_tensors="pt").input_ids[0]
    return torch.stack([cache[t] for t in texts])


@torch.no_grad()
def encode_latents(vae: Any, clips: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Scaled latent means ``[B, C, F, h, w]`` of clips ``[B, F, 3, H, W]`` under ``vae`` (put in eval mode)."""
    vae.eval()
    b, f = clips.shape[:2]
    z = vae.encode(clips.flatten(0, 1) * 2 - 1).latent_dist.mean * scaling_factor
    return z.view(b, f, *z.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()


def noisy_latents(scheduler: Any, latents: torch.Tensor, mode: str,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Timesteps (``sample_timesteps`` with ``mode``), then noise, drawn from ``generator``: ``(t, noisy latents,
    v-prediction target)``."""
    t = sample_timesteps(latents.shape[0], scheduler.config.num_train_timesteps, mode, generator)
    noise = torch.randn(latents.shape, generator=generator)
    return t, scheduler.add_noise(latents, noise, t), scheduler.get_velocity(latents, noise, t)


def add_motion_loss(loss: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, weight: float) -> torch.Tensor:
    """``loss`` plus ``weight`` times the MSE of the frame-to-frame differences of ``pred`` and ``target``
    (``[B, C, F, h, w]``): the differences carry the motion, so weighting them makes direction errors cost more."""
    if not weight:
        return loss
    return loss + weight * torch.nn.functional.mse_loss(pred.diff(dim=2), target.diff(dim=2))


def sample_timesteps(count: int, total: int, mode: str, generator: torch.Generator) -> torch.Tensor:
    """Training timesteps: ``uniform`` over ``[0, total)``; ``high``: ``total * sqrt(u)``, a density rising
    linearly with t (mean 2/3 of ``total``), so more steps are spent where the clip must come from the text
    alone: at low noise the noisy input already shows the direction, and the text barely matters; or
    ``high-top``: the first half of the batch from the last 50 timesteps (almost pure noise, where only the
    caption can say which way the shape goes), the rest ``high``."""
    u = torch.rand(count, generator=generator)
    if mode == "uniform":
        return (u * total).long().clamp(max=total - 1)
    high = (u.sqrt() * total).long().clamp(max=total - 1)
    if mode == "high":
        return high
    if mode == "high-top":
        top = (total - 50 + torch.rand(count, generator=generator) * 50).long().clamp(max=total - 1)
        return torch.where(torch.arange(count) < count // 2, top, high)
    raise ValueError(f"unknown timestep sampling {mode!r}; use uniform, high or high-top")


def _config_of(args: argparse.Namespace) -> dict[str, Any]:
    """The settings that define the trajectory (a resumed run must use the same)."""
    keys = ("seed", "vae_steps", "vae_batch", "vae_lr", "kl_weight", "batch", "lr", "caption_dropout",
            "timesteps", "motion_weight", "object_weight")
    return {k: getattr(args, k) for k in keys}


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(trainer: Any, folder: Path) -> Path:
    """Write ``checkpoint.pt``, ``losses.json`` and ``loss.png`` into ``folder`` atomically (any trainer with
    ``state_dict()``, ``config()`` and ``losses``: this one, or those of ``train_companions.py``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "checkpoint.pt"
    _atomic_write(path, lambda tmp: torch.save(trainer.state_dict(), tmp))
    _atomic_write(folder / "losses.json",
                  lambda tmp: tmp.write_text(json.dumps({"config": trainer.config(),
                                                         "losses": trainer.losses}) + "\n"))
    if trainer.losses:
        write_loss_png(trainer.losses, folder / "loss.png")
    return path


def load_checkpoint(trainer: Any, folder: Path) -> bool:
    """Restore ``folder/checkpoint.pt`` into ``trainer`` if it exists; return whether it did."""
    path = folder / "checkpoint.pt"
    if not path.is_file():
        return False
    from reelgraph.nodes.weights import load_checkpoint as read_checkpoint

    trainer.load_state_dict(read_checkpoint(path))
    return True


# ------------------------------------------------------------------------------------------------ plot
#: Loss-curve colours (raw, smoothed) per phase: 0 VAE, 1 UNet, 2 ControlNet, 3 LoRA.
PHASE_COLOURS: dict[int, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    0: ((120, 70, 20), (255, 150, 40)), 1: ((20, 90, 110), (60, 220, 255)),
    2: ((110, 30, 100), (240, 80, 220)), 3: ((30, 100, 30), (90, 240, 90))}

def _smooth(values: list[float], k: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= k:
            acc -= values[i - k]
        out.append(acc / min(i + 1, k))
    return out


def write_loss_png(losses: list[list[float]], path: Path, width: int = 640, height: int = 320) -> None:
    """Plot log10(loss) against step (VAE phase orange, UNet phase cyan, ControlNet magenta, LoRA green; raw
    faint, smoothed bright) as PNG."""
    import math

    from reelgraph.nodes.report import write_png

    img = torch.full((height, width, 3), 20, dtype=torch.uint8)
    pad = 12
    steps = [s for s, _, _ in losses]
    logs = [math.log10(max(v, 1e-8)) for _, _, v in losses]
    lo, hi = min(logs), max(logs)
    hi = hi if hi > lo else lo + 1
    n = max(steps)

    def xy(step: float, value: float) -> tuple[int, int]:
        x = pad + round((step / n) * (width - 2 * pad - 1))
        y = pad + round((hi - value) / (hi - lo) * (height - 2 * pad - 1))
        return x, y

    for decade in range(math.floor(lo), math.ceil(hi) + 1):  # grid line per decade
        if lo <= decade <= hi:
            img[xy(0, decade)[1], pad:width - pad] = 60
    for phase, colours in PHASE_COLOURS.items():
        pts = [(s, v) for (s, p, _), v in zip(losses, logs, strict=True) if p == phase]
        if not pts:
            continue
        smooth = _smooth([v for _, v in pts], 25)
        for s, v in pts:
            x, y = xy(s, v)
            img[y, x] = torch.tensor(colours[0], dtype=torch.uint8)
        prev = None
        for (s, _), sv in zip(pts, smooth, strict=True):
            x, y = xy(s, sv)
            if prev is not None:  # vertical run joins consecutive points
                y0, y1 = sorted((prev[1], y))
                img[y0:y1 + 1, x] = torch.tensor(colours[1], dtype=torch.uint8)
            img[y, x] = torch.tensor(colours[1], dtype=torch.uint8)
            prev = (x, y)
    write_png(img, path)


# ---------------------------------------------------------------------------------------------- export
def export_model(trainer: Trainer, out: Path) -> Path:
    """Write the diffusers text-to-video folder (fp16 safetensors + ``SHA256SUMS``) to ``out``, atomically."""
    import diffusers
    from diffusers import DDIMScheduler

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        vae_cfg = dict(trainer.vae.config)
        trainer.vae.register_to_config(scaling_factor=trainer.scaling_factor)
        for name, module in (("unet", trainer.unet), ("vae", trainer.vae)):
            copy = type(module).from_config(module.config)
            copy.load_state_dict(module.state_dict())
            copy.to(torch.float16).save_pretrained(tmp / name, safe_serialization=True)
        trainer.vae.register_to_config(scaling_factor=vae_cfg["scaling_factor"])
        text = type(trainer.text)(trainer.text.config)
        text.load_state_dict(trainer.text.state_dict())
        text.to(torch.float16).save_pretrained(tmp / "text_encoder", safe_serialization=True)
        DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(tmp / "scheduler")
        tok_dir = tmp / "tokenizer"
        trainer.tokenizer.save_pretrained(tok_dir)
        vocab, merges = tiny_models.build_tiny_tokenizer_files()
        (tok_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (tok_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                            encoding="utf-8")
        index = {"_class_name": "TextToVideoSDPipeline", "_diffusers_version": diffusers.__version__,
                 "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
                 "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet3DConditionModel"],
                 "vae": ["diffusers", "AutoencoderKL"]}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        (tmp / "training.json").write_text(json.dumps({"step": trainer.step, "config": _config_of(trainer.args),
                                                       "scaling_factor": trainer.scaling_factor}, indent=2) + "\n")

    return publish_folder(out, write)


def publish_folder(out: Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` into a temporary sibling of ``out``, add ``SHA256SUMS``, then rename it into place (a
    reader never sees a half-written folder; a failed export leaves ``out`` as it was)."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        write_sha256sums(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def write_sha256sums(folder: Path) -> None:
    """Write ``folder/SHA256SUMS``: the sha256 of every file under it (sorted paths), as ``sha256sum`` prints."""
    sums = []
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "SHA256SUMS"):
        sums.append(f"{hashlib.sha256(file.read_bytes()).hexdigest()}  {file.relative_to(folder).as_posix()}\n")
    (folder / "SHA256SUMS").write_text("".join(sums), encoding="utf-8")


# ------------------------------------------------------------------------------------------------ eval
def write_sheet(clips: list[torch.Tensor], path: Path, scale: int = 3) -> None:
    """One row per clip ``[F, 3, H, W]`` (its frames left to right, 2 px gaps), upscaled ``scale``x, as a PNG."""
    from reelgraph.nodes.report import write_png

    frames, _, height, width = clips[0].shape
    tile_h, tile_w = height * scale + 2, width * scale + 2
    img = torch.full((len(clips) * tile_h, frames * tile_w, 3), 40, dtype=torch.uint8)
    for r, clip in enumerate(clips):
        big = (clip.clamp(0, 1) * 255).round().to(torch.uint8).repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        for f in range(frames):
            img[r * tile_h:r * tile_h + height * scale, f * tile_w:f * tile_w + width * scale] = big[f].permute(1, 2, 0)
    write_png(img, path)


def evaluate(model: str, seeds: list[int], shapes: list[str], steps: int, guidance: float,
             negative: str, sheet: Path | None = None) -> dict[str, Any]:
    """Sample every colour x direction x shape x seed through the engine and track each clip; with ``sheet``,
    also write every generated clip as a row of a PNG, in the order of the returned rows."""
    from reelgraph.nodes.model_loading import load_model
    from reelgraph.nodes.sampling import denoise, encode_prompt, vae_decode
    from reelgraph.nodes.tracking import track

    unet, vae, text, sched = load_model(model, device="cpu")
    rows, hits = [], {"colour": 0, "direction": 0, "both": 0}
    confusion: dict[str, dict[str, int]] = {}
    clips: list[torch.Tensor] = []
    for colour in sorted(COLOURS):
        for direction in sorted(DIRECTIONS):
            for shape in shapes:
                for seed in seeds:
                    prompt = caption(colour, shape, direction)
                    cond = encode_prompt(text, prompt, negative, guidance)
                    lat = denoise(unet, sched, cond, frames=8, height=32, width=32, steps=steps,
                                  guidance_scale=guidance, seed=seed)
                    frames = vae_decode(vae, lat).frames
                    clips.append(frames)
                    got = track(frames)
                    ok_c, ok_d = got.colour == colour, got.direction == direction
                    hits["colour"] += ok_c
                    hits["direction"] += ok_d
                    hits["both"] += ok_c and ok_d
                    key = f"{colour} {direction}"
                    cell = confusion.setdefault(key, {})
                    cell[f"{got.colour} {got.direction}"] = cell.get(f"{got.colour} {got.direction}", 0) + 1
                    rows.append({"prompt": prompt, "seed": seed, "colour": got.colour, "direction": got.direction,
                                 "confidence": round(got.confidence, 3)})
    n = len(rows)
    if sheet is not None:
        write_sheet(clips, sheet)
    return {"n": n, "rates": {k: v / n for k, v in hits.items()}, "confusion": confusion, "rows": rows}


def _path_distance(a: Any, b: Any) -> float:
    """Mean distance in pixels between two tracks' centroids over the frames where both were found."""
    pairs = [(p, q) for p, q in zip(a.path, b.path, strict=True) if p is not None and q is not None]
    if not pairs:
        return float("inf")
    return sum(((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2) ** 0.5 for p, q in pairs) / len(pairs)


def evaluate_edit(model: str, clips: int, steps: int, guidance: float, target_colour: str = "blue",
                  sheet: Path | None = None) -> dict[str, Any]:
    """Run ``workflows/edit_video.json`` on held-out "red circle moving right" clips (written as mp4 and read
    back), editing to ``target_colour``; track the results, and measure the inversion round trip (invert and
    regenerate under the source caption) against the source as PSNR."""
    import tempfile

    from reelgraph import Engine
    from reelgraph.nodes.metrics import psnr_per_frame
    from reelgraph.nodes.tracking import track
    from reelgraph.nodes.values import Video
    from reelgraph.nodes.video_io import write_video

    workflow = Path(__file__).resolve().parents[1] / "workflows" / "edit_video.json"
    engine = Engine(entry_points=False, env=False)
    rows, hits, rows_png = [], 0, []
    with tempfile.TemporaryDirectory() as tmp:
        roots = [tmp] + ([model] if not model.startswith("builtin:") else [])
        for i, (frames, clip) in enumerate(find_clips(EDIT_SEED, "red", "circle", "right", clips)):
            src = write_video(Video(frames, fps=8.0), Path(tmp) / f"source-{i}.mp4", crf=18)
            base = {"model": model, "source": str(src), "source_caption": clip.caption, "steps": steps,
                    "guidance_scale": guidance, "seed": i}
            want = ["clip.video", "decode.video"]
            edited = engine.run(workflow, {**base, "prompt": caption(target_colour, clip.shape, clip.direction)},
                                outputs=want, out_dir=tmp, allow_paths=roots).outputs
            same = engine.run(workflow, {**base, "prompt": clip.caption, "guidance_scale": 1.0},
                              outputs=["decode.video"], out_dir=tmp, allow_paths=roots).outputs
            source = edited["clip.video"].frames
            out = edited["decode.video"].frames
            t_src, t_out = track(source), track(out)
            ok = t_out.colour == target_colour and t_out.direction == clip.direction
            hits += ok
            roundtrip = statistics.fmean(psnr_per_frame(same["decode.video"].frames, source))
            rows.append({"clip": i, "colour": t_out.colour, "direction": t_out.direction, "ok": ok,
                         "trajectory_px": round(_path_distance(t_src, t_out), 2),
                         "roundtrip_psnr_db": round(roundtrip, 2)})
            rows_png += [source, out, same["decode.video"].frames]
    if sheet is not None:
        write_sheet(rows_png, sheet)
    n = len(rows)
    finite = [r["trajectory_px"] for r in rows if r["trajectory_px"] != float("inf")]
    return {"n": n, "rate": hits / n, "mean_trajectory_px": sum(finite) / max(len(finite), 1),
            "max_trajectory_px": max(finite, default=float("inf")),
            "mean_roundtrip_psnr_db": sum(r["roundtrip_psnr_db"] for r in rows) / n, "rows": rows}


# ------------------------------------------------------------------------------------------------- cli
def parser() -> argparse.ArgumentParser:
    """The command line: ``train``, ``export`` and ``eval``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("train", "export"):
        s = sub.add_parser(name)
        s.add_argument("--ckpt-dir", type=Path, default=Path("tools/checkpoints/tiny-trained"))
        s.add_argument("--seed", type=int, default=9)
        s.add_argument("--vae-steps", type=int, default=1200)
        s.add_argument("--vae-batch", type=int, default=4, help="clips per VAE step (x8 frames)")
        s.add_argument("--vae-lr", type=float, default=2e-3)
        s.add_argument("--kl-weight", type=float, default=1e-6)
        s.add_argument("--steps", type=int, default=20000, help="UNet steps after the VAE steps")
        s.add_argument("--batch", type=int, default=16)
        s.add_argument("--lr", type=float, default=1e-3)
        s.add_argument("--caption-dropout", type=float, default=0.1)
        s.add_argument("--timesteps", choices=("high-top", "high", "uniform"), default="high-top",
                       help="UNet timestep sampling: uniform, or density rising with t")
        s.add_argument("--motion-weight", type=float, default=2.0,
                       help="weight of the extra loss on frame-to-frame differences of the v target")
        s.add_argument("--object-weight", type=float, default=0.0,
                       help="extra loss weight on latent cells under the shape (0 = plain MSE)")
        s.add_argument("--threads", type=int, default=1)
        s.add_argument("--save-every", type=int, default=250)
        s.add_argument("--log-every", type=int, default=20)
        s.add_argument("--max-minutes", type=float, default=0.0, help="stop (with a checkpoint) after this; 0 = off")
        s.add_argument("--resume", action="store_true", help="continue from --ckpt-dir/checkpoint.pt if present")
        s.add_argument("--out", type=Path, default=None, help="export: the model folder to write")
    e = sub.add_parser("eval")
    e.add_argument("--model", required=True)
    e.add_argument("--seeds", type=int, nargs="+", default=[0])
    e.add_argument("--shapes", nargs="+", default=["circle"], choices=SHAPES)
    e.add_argument("--steps", type=int, default=20)
    e.add_argument("--guidance", type=float, default=5.0, help="the text2video workflow's default")
    e.add_argument("--negative", default="")
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--json", type=Path, default=None)
    e.add_argument("--sheet", type=Path, default=None, help="write the generated clips as a PNG, one per row")
    d = sub.add_parser("eval-edit", help="edit held-out red-circle-right clips to blue; inversion round trip")
    d.add_argument("--model", required=True)
    d.add_argument("--clips", type=int, default=10)
    d.add_argument("--steps", type=int, default=20)
    d.add_argument("--guidance", type=float, default=5.0)
    d.add_argument("--threads", type=int, default=1)
    d.add_argument("--json", type=Path, default=None)
    d.add_argument("--sheet", type=Path, default=None, help="rows: source, edit, round trip")
    return p


def train(args: argparse.Namespace) -> Trainer:
    """Train (or continue) until ``vae_steps + steps`` or ``max_minutes``, checkpointing as it goes."""
    return run_training(Trainer(args), args)


def run_training(trainer: Any, args: argparse.Namespace) -> Any:
    """The training loop shared with ``train_companions.py``: resume from ``args.ckpt_dir`` (``--resume``), run
    ``trainer.train_step()`` until ``trainer.total_steps`` or ``args.max_minutes``, log every ``log_every``
    steps, and checkpoint every ``save_every`` steps, at ``trainer.milestones()``, on time-out and at the end."""
    if args.resume and load_checkpoint(trainer, args.ckpt_dir):
        print(f"resumed at step {trainer.step}", flush=True)
    start, last_save = time.monotonic(), trainer.step
    while trainer.step < trainer.total_steps:
        t0 = time.monotonic()
        loss = trainer.train_step()
        if trainer.step % args.log_every == 0:
            print(f"step {trainer.step} {trainer.phase_name()} loss {loss:.5f} ({time.monotonic() - t0:.2f} s/step)",
                  flush=True)
        timed_out = args.max_minutes and time.monotonic() - start > args.max_minutes * 60
        if trainer.step % args.save_every == 0 or trainer.step in trainer.milestones() or timed_out:
            save_checkpoint(trainer, args.ckpt_dir)
            last_save = trainer.step
            print(f"checkpoint at step {trainer.step}", flush=True)
        if timed_out:
            break
    if trainer.step != last_save:
        save_checkpoint(trainer, args.ckpt_dir)
    return trainer


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "train":
        train(args)
    elif args.command == "export":
        trainer = Trainer(args)
        if not load_checkpoint(trainer, args.ckpt_dir):
            raise SystemExit(f"no checkpoint in {args.ckpt_dir}")
        out = export_model(trainer, args.out or args.ckpt_dir / "model")
        print(f"exported step {trainer.step} to {out}")
    elif args.command == "eval-edit":
        result = evaluate_edit(args.model, args.clips, args.steps, args.guidance, sheet=args.sheet)
        print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1) + "\n")
    else:
        result = evaluate(args.model, args.seeds, args.shapes, args.steps, args.guidance, args.negative,
                          args.sheet)
        print(json.dumps({"n": result["n"], "rates": result["rates"], "confusion": result["confusion"]}, indent=1))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
