"""Train builtin:tiny's companions on the coloured-shapes world: a ControlNet and a concept LoRA (CPU).

Both train on top of the shipped, frozen ``builtin:tiny`` (``nodes/models/tiny-shapes-v1``, its SHA256SUMS
checked and its digest recorded in every checkpoint) with the pieces of ``tools/train_tiny.py``: the same
v-prediction objective with the motion term, the ``high-top`` timesteps, one ``torch.Generator`` for every
draw, the same checkpoint files and the same training loop (``train_tiny.run_training``), so ``--resume``
continues bit-identically at the same ``--threads``.

* ``controlnet``: a 2D ``ControlNetModel`` lined up with the UNet3D (``tiny_models._CONTROLNET_CONFIG``),
  initialised from the UNet3D's spatial layers with zero output convolutions, conditioned on the Canny edges
  of the clip computed exactly as the ``canny_edges`` node computes them (thresholds 100/200, as
  ``workflows/controlnet_video.json`` does). With probability ``--swap-direction`` a caption's direction is
  replaced by another one, so the ControlNet learns to put the shape where the edges are even when the prompt
  says otherwise; the colour always stays the caption's (edges carry none).
* ``lora``: a DreamBooth-style rank-``--rank`` LoRA on every attention projection of the UNet3D and the text
  encoder (the targets of ``builtin:tiny-lora``) that teaches a shape the model has never seen, the 12 x 4
  pixel horizontal ``bar`` (``shapes_dataset.CONCEPT_SHAPES``), from ``--instance-clips`` fixed clips
  (``INSTANCE_PAIRS``: each colour twice, each direction twice), with prior preservation: every batch also
  holds ``--prior-batch`` fresh clips of the ordinary world under their own captions.

``export`` writes fp16 safetensors with ``training.json`` and ``SHA256SUMS`` (the folders the builtins ship);
``eval`` measures them with the tracker: for the ControlNet, the path distance between generated and control
clips with the control on and off, on held-out control clips whose direction differs from the prompt's; for
the LoRA, the rate of ``bar`` (``tracking.aspect`` at least ``BAR_ASPECT``) with the LoRA on and off.

Usage (see docs/default_model.md for the exact runs)::

    python tools/train_companions.py train controlnet --ckpt-dir tools/checkpoints/tiny-controlnet --resume
    python tools/train_companions.py export controlnet --ckpt-dir tools/checkpoints/tiny-controlnet
    python tools/train_companions.py eval controlnet --source builtin:tiny
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_tiny as tt

from reelgraph.nodes import tiny_models
from reelgraph.nodes.shapes_dataset import COLOURS, DIRECTIONS, caption, concept_clip, make_batch

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "nodes" / "models"
#: Where the clips of each run come from (dataset seed offsets; the base model trained on seed 9 from 0 up).
_CONTROL_DATA_OFFSET = 200_000_000
_PRIOR_DATA_OFFSET = 300_000_000
#: The dataset seed of the LoRA's instance clips, and of the held-out control clips ``eval controlnet`` uses.
INSTANCE_SEED = 2000
CONTROL_EVAL_SEED = 3000
#: The concept the LoRA teaches, and its instance clips' (colour, direction), in the order ``--instance-clips``
#: takes them: the first 8 hold each colour and each direction twice, the next 8 are the other combinations.
CONCEPT = "bar"
INSTANCE_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "left"), ("red", "down"), ("green", "up"), ("green", "right"),
    ("blue", "left"), ("blue", "down"), ("yellow", "up"), ("yellow", "right"),
    ("red", "right"), ("red", "up"), ("green", "left"), ("green", "down"),
    ("blue", "right"), ("blue", "up"), ("yellow", "left"), ("yellow", "down"))
#: ``tracking.aspect`` at or above this reads as a bar: the tiny VAE's reconstructions of bars measure about
#: 1.7, the base model's circles, squares and triangles (and its drawings for "bar" prompts) at most 1.05.
BAR_ASPECT = 1.3
CANNY = (100, 200)


# ---------------------------------------------------------------------------------------------- shared
def load_base() -> tuple[Any, Any, Any, float, str]:
    """The shipped ``builtin:tiny`` as fresh float32 modules ``(vae, unet, text_encoder)`` in eval mode with
    gradients off, its latent scaling factor and its SHA256SUMS digest (checked first)."""
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextModel

    tt.tiny_models_quiet()
    folder = tiny_models.trained_model_dir()
    digest = tiny_models.verify_sha256sums(folder)
    vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch.float32)
    unet = UNet3DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32)
    text = CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32)
    for module in (vae, unet, text):
        module.eval().requires_grad_(False)
    return vae, unet, text, float(vae.config.scaling_factor), digest


class _Null:
    def progress(self, i: int, n: int) -> None:
        pass


def canny(clips: torch.Tensor) -> torch.Tensor:
    """Canny edge frames ``[B, F, 3, H, W]`` of clips ``[B, F, 3, H, W]``, by the ``canny_edges`` node itself
    with ``controlnet_video.json``'s thresholds."""
    from reelgraph.nodes.preprocess_nodes import canny_edges
    from reelgraph.nodes.values import Video

    return torch.stack([canny_edges(Video(c), _Null(), *CANNY).frames for c in clips])  # type: ignore[arg-type]


class CompanionTrainer:
    """State shared by the two companions: the frozen base, tokenizer, schedule, generator, step, losses."""

    phase = 2
    name = "companion"

    def __init__(self, args: argparse.Namespace) -> None:
        """Load the frozen base and seed the generators from ``args.seed``."""
        self.args = args
        self.vae, self.unet, self.text, self.scaling_factor, self.base_digest = load_base()
        self.tokenizer = tt._tokenizer()
        self.scheduler = tt.new_scheduler()
        self.generator = torch.Generator("cpu").manual_seed(args.seed + 1)
        self.global_rng = torch.Generator("cpu").manual_seed(args.seed + 2).get_state()
        self.step = 0
        self.losses: list[list[float]] = []
        self._ids: dict[str, torch.Tensor] = {}

    @property
    def total_steps(self) -> int:
        """The run's length."""
        return self.args.steps

    def phase_name(self) -> str:
        """For the log."""
        return self.name

    def milestones(self) -> tuple[int, ...]:
        """No extra checkpoints."""
        return ()

    def config(self) -> dict[str, Any]:
        """The settings that define the trajectory (a resumed run must use the same), with the base's digest."""
        return {"part": self.name, "base_sha256sums": self.base_digest,
                **{k: getattr(self.args, k) for k in self.config_keys}}

    config_keys: tuple[str, ...] = ("seed", "lr", "caption_dropout", "timesteps", "motion_weight")

    def trained(self) -> dict[str, torch.Tensor]:
        """The trained tensors (subclasses)."""
        raise NotImplementedError

    def optimiser(self) -> torch.optim.Optimizer:
        """The optimiser (subclasses)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically."""
        return {"step": self.step, "losses": self.losses, "weights": self.trained(),
                "opt": self.optimiser().state_dict(), "generator": self.generator.get_state(),
                "global_rng": self.global_rng, "config": self.config()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict`` output; the settings and the base model must be the same."""
        if state["config"] != self.config():
            raise SystemExit(f"checkpoint was trained with {state['config']}, not {self.config()}")
        with torch.no_grad():
            for key, value in self.trained().items():
                value.copy_(state["weights"][key])
        self.optimiser().load_state_dict(state["opt"])
        self.generator.set_state(state["generator"])
        self.global_rng = state["global_rng"]
        self.step = int(state["step"])
        self.losses = [list(x) for x in state["losses"]]

    def train_step(self) -> float:
        """One step, with the run's own global RNG state; records the loss."""
        loss = tt.with_own_rng(self, self.one_step)
        self.step += 1
        self.losses.append([self.step, self.phase, loss])
        return loss

    def one_step(self) -> float:
        """Subclasses."""
        raise NotImplementedError

    def dropped(self, texts: list[str]) -> list[str]:
        """``texts`` with ``caption_dropout`` of them replaced by ``""`` (drawn from the generator)."""
        drop = torch.rand(len(texts), generator=self.generator) < self.args.caption_dropout
        return ["" if d else t for d, t in zip(drop.tolist(), texts, strict=True)]

    def finish(self, loss: torch.Tensor, params: list[torch.Tensor]) -> float:
        """Backward, clip the gradient norm at 1, step."""
        opt = self.optimiser()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss.detach())


# ------------------------------------------------------------------------------------------- controlnet
def init_controlnet(unet: Any, seed: int) -> Any:
    """A ``ControlNetModel`` with ``_CONTROLNET_CONFIG``: diffusers' init from ``seed`` (zero output
    convolutions, zero last conditioning-embedding layer), then every tensor whose name and shape the UNet3D
    shares (input convolution, time embedding, spatial resnets and attentions, mid block) copied from it
    (reshaped where a 1x1 convolution here is a linear projection there)."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    controlnet = ControlNetModel(**tiny_models._CONTROLNET_CONFIG)
    source = unet.state_dict()
    with torch.no_grad():
        for name, tensor in controlnet.state_dict().items():
            theirs = source.get(name)
            # A 1x1 convolution here may be a linear projection there (the transformers' proj_in/proj_out).
            if theirs is not None and theirs.squeeze().shape == tensor.squeeze().shape:
                tensor.copy_(theirs.reshape(tensor.shape))
    return controlnet


class ControlNetTrainer(CompanionTrainer):
    """The ControlNet on Canny edges, the base frozen."""

    phase = 2
    name = "controlnet"
    config_keys = (*CompanionTrainer.config_keys, "batch", "swap_direction")

    def __init__(self, args: argparse.Namespace) -> None:
        """Base, then the ControlNet from the UNet3D, then its AdamW."""
        super().__init__(args)
        self.controlnet = init_controlnet(self.unet, args.seed)
        self.opt = torch.optim.AdamW(self.controlnet.parameters(), lr=args.lr, weight_decay=0.0)

    def trained(self) -> dict[str, torch.Tensor]:
        """The ControlNet's tensors."""
        return self.controlnet.state_dict()

    def optimiser(self) -> torch.optim.Optimizer:
        """The ControlNet's AdamW."""
        return self.opt

    def one_step(self) -> float:
        """One v-prediction step: the frozen UNet3D with the ControlNet's residuals, frames folded as the
        engine folds them (``b * F + f``)."""
        a = self.args
        clips, params = make_batch(a.seed, _CONTROL_DATA_OFFSET + self.step * a.batch, a.batch)
        latents = tt.encode_latents(self.vae, clips, self.scaling_factor)
        swap = torch.rand(len(params), generator=self.generator) < a.swap_direction
        pick = torch.randint(0, len(DIRECTIONS) - 1, (len(params),), generator=self.generator)
        texts = []
        for p, s, k in zip(params, swap.tolist(), pick.tolist(), strict=True):
            others = [d for d in sorted(DIRECTIONS) if d != p.direction]
            texts.append(caption(p.colour, p.shape, others[k]) if s else p.caption)
        texts = self.dropped(texts)
        t, noisy, target = tt.noisy_latents(self.scheduler, latents, a.timesteps, self.generator)
        b, c, f, h, w = noisy.shape
        with torch.no_grad():
            embeds = self.text(tt.token_ids(self.tokenizer, self._ids, texts))[0]
        edges = canny(clips).flatten(0, 1)
        self.controlnet.train()
        down, mid = self.controlnet(noisy.transpose(1, 2).reshape(b * f, c, h, w), t.repeat_interleave(f),
                                    encoder_hidden_states=embeds.repeat_interleave(f, dim=0), controlnet_cond=edges,
                                    conditioning_scale=1.0, return_dict=False)
        pred = self.unet(noisy, t, encoder_hidden_states=embeds, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample
        loss = tt.add_motion_loss(torch.nn.functional.mse_loss(pred, target), pred, target, a.motion_weight)
        return self.finish(loss, list(self.controlnet.parameters()))

    def export(self, out: Path) -> Path:
        """The diffusers ControlNet folder: fp16 safetensors, config, ``training.json``, ``SHA256SUMS``."""
        def write(tmp: Path) -> None:
            copy = type(self.controlnet).from_config(self.controlnet.config)
            copy.load_state_dict(self.controlnet.state_dict())
            copy.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
            _write_training_json(self, tmp)

        return tt.publish_folder(out, write)


# ------------------------------------------------------------------------------------------------ lora
def conv_targets(unet: Any) -> dict[str, str]:
    """Kohya key -> module name of the UNet3D's spatial 3x3 convolutions that ``--conv`` adapts: every resnet's
    ``conv1`` and ``conv2`` and the output convolution."""
    return {"lora_unet_" + name.replace(".", "_"): name for name, module in unet.named_modules()
            if isinstance(module, torch.nn.Conv2d) and tuple(module.kernel_size) == (3, 3)
            and ((".resnets." in name and name.endswith((".conv1", ".conv2"))) or name == "conv_out")}


def instance_clips(count: int) -> tuple[torch.Tensor, list[Any]]:
    """The LoRA's instance clips: ``count`` bars, the ``INSTANCE_PAIRS`` in order (then round again, with the
    next clip of each combination)."""
    pairs = [concept_clip(INSTANCE_SEED, i // len(INSTANCE_PAIRS), CONCEPT, *INSTANCE_PAIRS[i % len(INSTANCE_PAIRS)])
             for i in range(count)]
    return torch.stack([p[0] for p in pairs]), [p[1] for p in pairs]


class LoraTrainer(CompanionTrainer):
    """The concept LoRA on the UNet3D's and the text encoder's attention projections, the base frozen."""

    phase = 3
    name = "lora"
    config_keys = (*CompanionTrainer.config_keys, "rank", "alpha", "instance_clips", "prior_batch", "conv")

    def __init__(self, args: argparse.Namespace) -> None:
        """Base, then the LoRA's down (seeded normal, std ``1/sqrt(fan in)``) and up (zero) factors, hooked onto
        the target layers (every attention projection; with ``--conv`` also the spatial 3x3 convolutions of the
        UNet3D's resnets and its ``conv_out``, where the shapes are drawn), then their AdamW."""
        super().__init__(args)
        gen = torch.Generator("cpu").manual_seed(args.seed)
        self.layers: dict[str, dict[str, torch.Tensor]] = {}
        modules = {"lora_unet_": dict(self.unet.named_modules()),
                   "lora_te_text_model_": dict(self.text.named_modules())}
        self._hooks = []
        targets = {key: name for key, (name, _) in tiny_models._lora_targets().items()}
        if args.conv:
            targets.update(conv_targets(self.unet))
        for key, name in sorted(targets.items()):
            prefix = "lora_unet_" if key.startswith("lora_unet_") else "lora_te_text_model_"
            module = modules[prefix][name]
            weight = module.weight
            fan_in = weight[0].numel()
            down = torch.randn(args.rank, *weight.shape[1:], generator=gen) * fan_in**-0.5
            up = torch.zeros(weight.shape[0], args.rank, *(1,) * (weight.ndim - 2))
            self.layers[key] = {"down": down.requires_grad_(True), "up": up.requires_grad_(True)}
            self._hooks.append(module.register_forward_hook(self._hook(self.layers[key]["down"],
                                                                       self.layers[key]["up"])))
        self.opt = torch.optim.AdamW(self.parameters(), lr=args.lr, weight_decay=0.0)
        self.instances, self.instance_params = instance_clips(args.instance_clips)
        self.instance_latents = tt.encode_latents(self.vae, self.instances, self.scaling_factor)

    def _hook(self, down: torch.Tensor, up: torch.Tensor) -> Any:
        scale = self.args.alpha / self.args.rank
        functional = torch.nn.functional

        def hook(module: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            if down.ndim == 4:  # kohya's conv LoRA: the kernel in ``down``, a 1x1 ``up``
                inner = functional.conv2d(inputs[0], down, stride=module.stride, padding=module.padding)
                return output + functional.conv2d(inner, up) * scale
            return output + functional.linear(functional.linear(inputs[0], down), up) * scale

        return hook

    def parameters(self) -> list[torch.Tensor]:
        """Every down and up matrix, in key order."""
        return [layer[part] for _, layer in sorted(self.layers.items()) for part in ("down", "up")]

    def trained(self) -> dict[str, torch.Tensor]:
        """The LoRA matrices by kohya key."""
        return {f"{key}.lora_{part}.weight": layer[part] for key, layer in self.layers.items()
                for part in ("down", "up")}

    def optimiser(self) -> torch.optim.Optimizer:
        """The LoRA's AdamW."""
        return self.opt

    def one_step(self) -> float:
        """One v-prediction step on every instance clip plus ``prior_batch`` fresh clips of the world."""
        a = self.args
        prior, params = make_batch(a.seed, _PRIOR_DATA_OFFSET + self.step * a.prior_batch, a.prior_batch)
        latents = torch.cat([self.instance_latents, tt.encode_latents(self.vae, prior, self.scaling_factor)])
        texts = self.dropped([p.caption for p in (*self.instance_params, *params)])
        t, noisy, target = tt.noisy_latents(self.scheduler, latents, a.timesteps, self.generator)
        embeds = self.text(tt.token_ids(self.tokenizer, self._ids, texts))[0]
        pred = self.unet(noisy, t, encoder_hidden_states=embeds).sample
        loss = tt.add_motion_loss(torch.nn.functional.mse_loss(pred, target), pred, target, a.motion_weight)
        return self.finish(loss, self.parameters())

    def export(self, out: Path) -> Path:
        """A folder with the kohya-format fp16 LoRA file ``<folder name>.safetensors`` (``lora_down``,
        ``lora_up``, ``alpha`` per layer), ``training.json`` and ``SHA256SUMS``."""
        from safetensors.torch import save_file

        def write(tmp: Path) -> None:
            tmp.mkdir(parents=True)
            tensors: dict[str, torch.Tensor] = {}
            for key, layer in sorted(self.layers.items()):
                tensors[f"{key}.lora_down.weight"] = layer["down"].detach().to(torch.float16).contiguous()
                tensors[f"{key}.lora_up.weight"] = layer["up"].detach().to(torch.float16).contiguous()
                tensors[f"{key}.alpha"] = torch.tensor(float(self.args.alpha), dtype=torch.float16)
            # One metadata key only: safetensors orders a header's metadata by a randomly seeded hash map, so
            # two keys can come out in either order and the export would not be byte-identical.
            save_file(tensors, str(tmp / f"{out.name}.safetensors"), metadata={"format": "pt"})
            _write_training_json(self, tmp, concept=CONCEPT)

        return tt.publish_folder(out, write)


# ---------------------------------------------------------------------------------------------- export
def _write_training_json(trainer: CompanionTrainer, folder: Path, **extra: Any) -> None:
    (folder / "training.json").write_text(json.dumps({"step": trainer.step, "config": trainer.config(), **extra},
                                                     indent=2) + "\n")


# ------------------------------------------------------------------------------------------------ eval
def _sample(unet: Any, vae: Any, text: Any, sched: Any, prompt: str, seed: int, steps: int, guidance: float,
            control: Any = None) -> torch.Tensor:
    """Decoded frames ``[8, 3, 32, 32]`` for ``prompt`` through the engine's own sampling functions."""
    from reelgraph.nodes.sampling import denoise, encode_prompt, vae_decode

    cond = encode_prompt(text, prompt, "", guidance)
    if control is not None:
        cond = cond.with_control(control)
    latents = denoise(unet, sched, cond, frames=8, height=32, width=32, steps=steps, guidance_scale=guidance,
                      seed=seed)
    return vae_decode(vae, latents).frames


def control_cases(count: int) -> list[tuple[torch.Tensor, Any, str]]:
    """Held-out control clips (dataset ``CONTROL_EVAL_SEED``) and, for each, a prompt of the clip's colour
    and shape with another direction (the three others in turn)."""
    cases = []
    for i in range(count):
        frames, clip = make_batch(CONTROL_EVAL_SEED, i, 1)
        others = [d for d in sorted(DIRECTIONS) if d != clip[0].direction]
        cases.append((frames[0], clip[0], caption(clip[0].colour, clip[0].shape, others[i % 3])))
    return cases


def evaluate_controlnet(model: str, controlnet: str, clips: int, seeds: list[int], steps: int,
                        guidance: float, scales: tuple[float, ...] = (1.0, 0.0)) -> dict[str, Any]:
    """For each held-out control clip, prompt and seed, sample with the ControlNet at each of ``scales`` and
    track: the mean centroid distance to the control clip's path (px), whether the direction is the control's
    and whether the colour is the prompt's."""
    from reelgraph.nodes.controlnet import load_controlnet
    from reelgraph.nodes.model_loading import load_model
    from reelgraph.nodes.tracking import parse_prompt, track
    from reelgraph.nodes.values import Control

    unet, vae, text, sched = load_model(model, device="cpu")
    cn = load_controlnet(controlnet, device="cpu")
    rows = []
    for i, (frames, clip, prompt) in enumerate(control_cases(clips)):
        edges = canny(frames[None])[0]
        truth = track(frames)
        for seed in seeds:
            for scale in scales:
                out = _sample(unet, vae, text, sched, prompt, seed, steps, guidance, Control(cn, edges, scale=scale))
                got = track(out)
                rows.append({"clip": i, "control": clip.caption, "prompt": prompt, "seed": seed, "scale": scale,
                             "colour": got.colour, "direction": got.direction,
                             "colour_ok": got.colour == parse_prompt(prompt)[0],
                             "follows_control": got.direction == clip.direction,
                             "path_px": round(tt._path_distance(truth, got), 3)})
    summary = {}
    for scale in scales:
        mine = [r for r in rows if r["scale"] == scale]
        finite = [r["path_px"] for r in mine if r["path_px"] != float("inf")]
        summary[str(scale)] = {"n": len(mine), "mean_path_px": statistics.fmean(finite) if finite else None,
                               "max_path_px": max(finite, default=None), "lost": len(mine) - len(finite),
                               "follows_control": sum(r["follows_control"] for r in mine) / len(mine),
                               "colour_ok": sum(r["colour_ok"] for r in mine) / len(mine)}
    return {"summary": summary, "rows": rows}


def instance_count(lora: str) -> int:
    """How many instance clips the LoRA file was trained on (its folder's ``training.json``; 0 if unknown)."""
    path = tiny_models.builtin_lora(lora) if lora.startswith("builtin:") else Path(lora)
    info = path.parent / "training.json"
    return int(json.loads(info.read_text())["config"]["instance_clips"]) if info.is_file() else 0


def evaluate_lora(model: str, lora: str, seeds: list[int], steps: int, guidance: float) -> dict[str, Any]:
    """Every colour x direction ``a <colour> bar moving <direction>`` with the LoRA at scale 1 and 0 (both
    parts), and ``a <colour> circle moving <direction>`` with it at 1 (does the rest of the world survive?):
    the rate of bars (``aspect >= BAR_ASPECT``), of the right colour and direction, for the combinations in
    the instance clips and for the held-out ones."""
    from reelgraph.nodes.lora_nodes import load_lora
    from reelgraph.nodes.model_loading import load_model
    from reelgraph.nodes.tracking import aspect, track

    unet, vae, text, sched = load_model(model, device="cpu")
    on = load_lora(unet, text, lora, scale_unet=1.0, scale_text=1.0)
    variants = {"on": (on.unet, on.text_encoder, CONCEPT), "off": (unet, text, CONCEPT),
                "on_circle": (on.unet, on.text_encoder, "circle")}
    seen_pairs = set(INSTANCE_PAIRS[:instance_count(lora)])
    rows = []
    for name, (u, te, shape) in variants.items():
        for colour in sorted(COLOURS):
            for direction in sorted(DIRECTIONS):
                for seed in seeds:
                    prompt = caption(colour, shape, direction)
                    out = _sample(u, vae, te, sched, prompt, seed, steps, guidance)
                    got = track(out)
                    ratio = aspect(out, got.colour) if got.colour != "none" else 0.0
                    rows.append({"lora": name, "prompt": prompt, "seed": seed, "seen": (colour, direction) in
                                 seen_pairs, "colour": got.colour, "direction": got.direction,
                                 "aspect": round(ratio, 3), "bar": ratio >= BAR_ASPECT,
                                 "match": got.colour == colour and got.direction == direction})
    summary: dict[str, Any] = {}
    for name in variants:
        for subset, keep in (("all", lambda r: True), ("seen", lambda r: r["seen"]),
                             ("held_out", lambda r: not r["seen"])):
            mine = [r for r in rows if r["lora"] == name and keep(r)]
            if not mine:
                continue
            summary[f"{name}/{subset}"] = {"n": len(mine), "bar": sum(r["bar"] for r in mine) / len(mine),
                                           "match": sum(r["match"] for r in mine) / len(mine),
                                           "mean_aspect": round(statistics.fmean(r["aspect"] for r in mine), 3)}
    return {"summary": summary, "rows": rows}


def trained_from_checkpoint(part: str, ckpt_dir: Path) -> CompanionTrainer:
    """The trainer of ``part`` restored from ``ckpt_dir``, with the settings its ``losses.json`` records (so
    ``export`` needs no training flags)."""
    args = parser().parse_args(["export", part, "--ckpt-dir", str(ckpt_dir)])
    info = ckpt_dir / "losses.json"
    if not info.is_file():
        raise SystemExit(f"no checkpoint in {ckpt_dir}")
    for key, value in json.loads(info.read_text())["config"].items():
        if key not in ("part", "base_sha256sums"):
            setattr(args, key, value)
    trainer = PARTS[part](args)
    if not tt.load_checkpoint(trainer, ckpt_dir):
        raise SystemExit(f"no checkpoint in {ckpt_dir}")
    return trainer


def export_check(part: str, ckpt_dir: Path, shipped: Path) -> list[str]:
    """Export ``ckpt_dir`` again into a temporary folder and compare it with ``shipped`` byte for byte: the
    names of the files that differ or exist on one side only (empty: the export is reproducible)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        again = trained_from_checkpoint(part, ckpt_dir).export(Path(tmp) / shipped.name)
        names = {p.relative_to(again).as_posix() for p in again.rglob("*") if p.is_file()}
        names |= {p.relative_to(shipped).as_posix() for p in shipped.rglob("*") if p.is_file()}
        return sorted(n for n in names if not (again / n).is_file() or not (shipped / n).is_file()
                      or (again / n).read_bytes() != (shipped / n).read_bytes())


# ------------------------------------------------------------------------------------------------- cli
PARTS = {"controlnet": ControlNetTrainer, "lora": LoraTrainer}
DEFAULT_DIRS = {"controlnet": ROOT / "tools" / "checkpoints" / "tiny-controlnet",
                "lora": ROOT / "tools" / "checkpoints" / "tiny-lora"}
DEFAULT_OUT = {"controlnet": MODELS / tiny_models.TINY_CONTROLNET_NAME, "lora": MODELS / tiny_models.TINY_LORA_NAME}


def parser() -> argparse.ArgumentParser:
    """``train``, ``export`` and ``eval``, each for ``controlnet`` or ``lora``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("train", "export"):
        s = sub.add_parser(name)
        s.add_argument("part", choices=sorted(PARTS))
        s.add_argument("--ckpt-dir", type=Path, default=None, help="default tools/checkpoints/tiny-<part>")
        s.add_argument("--seed", type=int, default=11)
        s.add_argument("--steps", type=int, default=3000)
        s.add_argument("--batch", type=int, default=8, help="controlnet: clips per step")
        s.add_argument("--lr", type=float, default=1e-3)
        s.add_argument("--caption-dropout", type=float, default=0.1)
        s.add_argument("--timesteps", choices=("high-top", "high", "uniform"), default="high-top")
        s.add_argument("--motion-weight", type=float, default=2.0)
        s.add_argument("--swap-direction", type=float, default=0.5,
                       help="controlnet: share of captions whose direction is replaced by another one")
        s.add_argument("--rank", type=int, default=4, help="lora")
        s.add_argument("--alpha", type=float, default=4.0, help="lora")
        s.add_argument("--instance-clips", type=int, default=8, help="lora: the concept's clips")
        s.add_argument("--prior-batch", type=int, default=8, help="lora: world clips per step (prior preservation)")
        s.add_argument("--conv", action="store_true", help="lora: adapt the resnets' 3x3 convolutions too")
        s.add_argument("--threads", type=int, default=1)
        s.add_argument("--save-every", type=int, default=100)
        s.add_argument("--log-every", type=int, default=10)
        s.add_argument("--max-minutes", type=float, default=0.0)
        s.add_argument("--resume", action="store_true")
        s.add_argument("--out", type=Path, default=None, help="export: default nodes/models/<builtin folder>")
        s.add_argument("--check", action="store_true",
                       help="export: compare a re-export with --out byte for byte instead of writing (exit 1 if not)")
    e = sub.add_parser("eval")
    e.add_argument("part", choices=sorted(PARTS))
    e.add_argument("--model", default="builtin:tiny")
    e.add_argument("--source", default=None, help="the ControlNet or LoRA (default: the builtin)")
    e.add_argument("--clips", type=int, default=8, help="controlnet: held-out control clips")
    e.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    e.add_argument("--steps", type=int, default=20)
    e.add_argument("--guidance", type=float, default=5.0)
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--json", type=Path, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "eval":
        if args.part == "controlnet":
            result = evaluate_controlnet(args.model, args.source or tiny_models.TINY_CONTROLNET_SOURCE, args.clips,
                                         args.seeds, args.steps, args.guidance)
        else:
            result = evaluate_lora(args.model, args.source or tiny_models.TINY_LORA_SOURCE, args.seeds, args.steps,
                                   args.guidance)
        print(json.dumps(result["summary"], indent=1))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1) + "\n")
        return 0
    args.ckpt_dir = args.ckpt_dir or DEFAULT_DIRS[args.part]
    if args.command == "train":
        tt.run_training(PARTS[args.part](args), args)
        return 0
    out = args.out or DEFAULT_OUT[args.part]
    if args.check:
        differ = export_check(args.part, args.ckpt_dir, out)
        print(f"{out}: " + (f"differs from a re-export: {', '.join(differ)}" if differ else
                            "byte-identical to a re-export of the checkpoint"))
        return 1 if differ else 0
    trainer = trained_from_checkpoint(args.part, args.ckpt_dir)
    trainer.export(out)
    print(f"exported {args.part} step {trainer.step} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
