r"""LoRA for the UNet3D and the CLIP text encoder: read a LoRA file, map its keys onto the model, and build a
patched copy of the model with the adapted weights merged in.

Why not diffusers or PEFT at run time: ``load_lora_weights`` does not work on ``UNet3DConditionModel`` (it
lacks ``PeftAdapterMixin``), and PEFT's ``inject_adapter_in_model`` changes the module in place, which a
shared, cached model must never be. Instead each targeted weight becomes

    W' = W + scale * (alpha / rank) * up @ down

(``up @ down`` flattened over a convolution's kernel), stored in a **patched shallow copy** of the model:
new module objects only on the paths from the root to the adapted layers, every other submodule, parameter
and buffer shared with the original. Applying costs one small matmul per adapted weight and memory for
those weights only; removing costs nothing (drop the copy; the loaded model was never touched); sampling
with the copy runs at the plain model's speed (no adapter branch per call). Stacking LoRAs patches the
patched copy, so the deltas add up.

Formats (keys are validated, and any key that is not understood or matches no layer is an error):

* diffusers / PEFT: ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` (also ``text_encoder.…``, a
  ``base_model.model.`` prefix, PEFT's unprefixed UNet keys, and the older ``.lora.down/.up``,
  ``.lora_linear_layer.down/.up`` and ``processor.to_q_lora.down`` spellings). ``alpha`` comes from a
  ``<module>.alpha`` tensor, else from diffusers' ``lora_adapter_metadata`` (``lora_alpha`` and
  ``alpha_pattern``; ``use_rslora`` makes the factor ``alpha / sqrt(rank)`` as in PEFT), else equals the rank.
  The older spellings are also those of the AnimateDiff project's motion LoRAs, whose motion-module names
  (``temporal_transformer``, ``attention_blocks.<n>``) map onto an AnimateDiff UNet (see :mod:`.lora_keys`).
* kohya / A1111: ``lora_unet_<module_with_underscores>`` and ``lora_te_<…>`` with ``lora_down.weight``,
  ``lora_up.weight`` and ``alpha``. Module names are matched against the model's own names with dots
  replaced by underscores, so temporal attention (``temp_attentions``), temporal convolutions,
  ``transformer_in`` and AnimateDiff's ``motion_modules`` map like any other layer; on an AnimateDiff UNet
  SD 1.5's LDM names (``lora_unet_input_blocks_1_1_…``) map too. LoCon convolutions: a ``k x k`` down and a
  ``1 x 1`` up. Text-encoder names may carry CLIP's ``text_model.`` prefix, which transformers 5 no longer has.
* Text-To-Video-Finetuning (its Stable-LoRA, loralib-style files): ``<module>.lora_A`` / ``<module>.lora_B``
  without ``.weight``, alpha equal to the rank. Its ``full_weights/`` files use diffusers' UNet names (and
  transformers 4's ``text_model.…`` names in the ``_text`` file); its webui files use ModelScope's original UNet
  names (``input_blocks.1.1.…``, mapped by ``modelscope_convert.unet_module_name``, including the spellings its
  converter gives the first mid-block resnet and the upsamplers) and OpenCLIP's text names
  (``resblocks.<i>.attn.q_proj``, ``.mlp.c_fc`` …), in fp16. Convolutions keep loralib's layout: ``lora_B @
  lora_A`` (``[out*k, r*k] @ [r*k, in*k]``) viewed as the ``k x k`` kernel, and for the ``(k, 1, 1)`` temporal
  convolutions viewed as ``[out, in, k, k, 1]`` and averaged over the fourth axis, as its ``Conv2d`` / ``Conv3d``
  layers compute them.

A LoRA file is data from a stranger. Its ``alpha_pattern`` keys are never run as regular expressions (PEFT
does, and a pattern such as ``(\w+\.?)+X`` takes exponential time on an ordinary module name): a key is a
module name, or a glob in which ``*`` matches any run of characters, and it applies to a module whose name
is the key or ends with ``.`` + the key (PEFT's suffix rule); the first matching key in the file's order
gives the alpha, as in PEFT. ``re.escape`` d names, as reelgraph writes them (``down_blocks\.0\.attn1``), are read
as the names they escape. Keys may hold only module-name characters (letters, digits, ``_``, ``.``) and
``*``, at most ``MAX_PATTERN_LENGTH`` of them; every alpha must be a finite number. Anything else is a
``LoraValueError`` naming the metadata key (the node reports ``invalid_value`` on ``source``), as is an
``alpha`` tensor that is empty, NaN or infinite.
"""

from __future__ import annotations

import copy
import json
import math
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .lora_keys import family_hint, is_motion_unet, ldm_aliases, motion_module_name

if TYPE_CHECKING:
    import torch

__all__ = [
    "COMPONENTS",
    "LoraAdapter",
    "LoraError",
    "LoraFile",
    "LoraValueError",
    "LoraWeights",
    "lora_deltas",
    "merge_lora",
    "parse_lora",
    "patched_copy",
    "read_lora",
    "resolve_lora",
]

#: The model parts a LoRA file can adapt, in the order they are reported.
COMPONENTS = ("unet", "text_encoder")
_MAX_LISTED = 40
#: Longest ``alpha_pattern`` key (module names are well under 200 characters).
MAX_PATTERN_LENGTH = 256
_MAX_PATTERNS = 100_000
_MAX_GLOB_PATTERNS = 1_000
_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "_.")
_METADATA = "lora_adapter_metadata"

# Suffixes of diffusers/PEFT keys: (regex on the part after the module name, role, module-name rewrite).
_DIFFUSERS_SUFFIXES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^(?P<mod>.+)\.lora_A(?:\.default)?\.weight$"), "down"),
    (re.compile(r"^(?P<mod>.+)\.lora_B(?:\.default)?\.weight$"), "up"),
    (re.compile(r"^(?P<mod>.+)\.lora(?:_linear_layer)?\.down\.weight$"), "down"),
    (re.compile(r"^(?P<mod>.+)\.lora(?:_linear_layer)?\.up\.weight$"), "up"),
    (re.compile(r"^(?P<mod>.+)\.alpha$"), "alpha"),
    (re.compile(r"^(?P<mod>.+)\.lora_A$"), "down_loralib"),
    (re.compile(r"^(?P<mod>.+)\.lora_B$"), "up_loralib"),
)
#: Unprefixed names that belong to the text encoder: transformers 4's CLIP names, transformers 5's, and the
#: OpenCLIP names of Text-To-Video-Finetuning's webui files.
_TEXT_NAMES = ("text_model.", "encoder.layers.", "resblocks.", "transformer.resblocks.")
_PROCESSOR = re.compile(r"^(?P<base>.+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<role>down|up)\.weight$")
_KOHYA = re.compile(r"^lora_(?P<comp>unet|te)_(?P<mod>[^.]+)\.(?P<role>lora_down\.weight|lora_up\.weight|alpha)$")
_KOHYA_ROLES = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}


class LoraError(ValueError):
    """A LoRA file cannot be applied: unreadable, unsupported keys, or keys that match no layer of the model."""


class LoraValueError(LoraError):
    """A value in a LoRA file is unusable: metadata of the wrong type, a regex or over-long ``alpha_pattern``
    key, a NaN or infinite alpha. ``key`` names it (a metadata key or a tensor key)."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True, eq=False)
class LoraWeights:
    """One adapted layer: ``down`` ``[r, in, *kernel]``, ``up`` ``[out, r, *1]`` and ``alpha``."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float
    #: ``lora``: a convolution's ``down`` carries the kernel (``[r, in, *kernel]``); ``loralib``: Text-To-Video-
    #: Finetuning's convolutions, ``up @ down`` viewed as the kernel (see the module docstring).
    layout: str = "lora"

    @property
    def rank(self) -> int:
        """The LoRA rank ``r`` (rows of ``down``)."""
        return int(self.down.shape[0])

    def _loralib_kernel(self, weight: torch.Tensor) -> int | None:
        """The kernel size ``k`` of a loralib convolution whose factors fit ``weight``, or None (then the plain
        ``up @ down`` rule applies: linear layers and 1x1 convolutions)."""
        if self.layout != "loralib" or weight.ndim not in (4, 5) or self.up.ndim != 2 or self.down.ndim != 2:
            return None
        k = int(weight.shape[2])
        square = tuple(weight.shape[2:]) == (k, k) if weight.ndim == 4 else tuple(weight.shape[3:]) == (1, 1)
        if not square or k == 1:
            return None
        out, inp = int(weight.shape[0]), int(weight.shape[1])
        fits = (int(self.up.shape[0]) == out * k and int(self.down.shape[1]) == inp * k
                and int(self.up.shape[1]) == int(self.down.shape[0]))
        return k if fits else None

    def fits(self, weight: torch.Tensor) -> bool:
        """Whether ``up`` and ``down`` can adapt ``weight``."""
        if self._loralib_kernel(weight) is not None:
            return True
        up, down = self.up, self.down
        return (up.ndim >= 2 and down.ndim >= 2 and int(up.shape[0]) == int(weight.shape[0])
                and int(up.shape[1]) == self.rank and up[0, 0].numel() == 1 and down[0].numel() == weight[0].numel())

    def delta(self, weight: torch.Tensor, scale: float) -> torch.Tensor:
        """``scale * (alpha / rank) * up @ down`` shaped like ``weight``, in float32 on its device."""
        import torch

        up = self.up.to(device=weight.device, dtype=torch.float32).flatten(1)
        down = self.down.to(device=weight.device, dtype=torch.float32).flatten(1)
        product = up @ down
        k = self._loralib_kernel(weight)
        if k is not None and weight.ndim == 5:
            out, inp = int(weight.shape[0]), int(weight.shape[1])
            product = product.reshape(out, inp, k, k, 1).mean(dim=-2, keepdim=True)
        return (scale * (self.alpha / self.rank)) * product.reshape(weight.shape)


@dataclass
class LoraFile:
    """A parsed LoRA: per component, module key (as spelled in the file) -> weights; and the file's format."""

    layers: dict[str, dict[str, LoraWeights]] = field(default_factory=lambda: {c: {} for c in COMPONENTS})
    format: str = "diffusers"
    kohya_keys: bool = False

    def __len__(self) -> int:
        """Number of adapted layers over all components."""
        return sum(len(v) for v in self.layers.values())


_A_SUFFIX = ".lora_A.weight"
_B_SUFFIX = ".lora_B.weight"


@dataclass(eq=False)
class LoraAdapter:
    """An in-memory LoRA on a graph wire (``tune_video.lora`` into ``load_lora.lora``), no file needed.

    ``layers`` maps a component (``unet``, ``text_encoder``) to the model's own dotted module names and
    their ``LoraWeights``, so it applies without any key conversion. ``name`` is what ``load_lora`` records
    in the model's ``loras``; ``info`` is JSON-able provenance (e.g. the tuning's caption, seed and losses).

    It implements the engine's persistence protocol, so the disk cache keeps it like any tensor value, and
    :meth:`state_dict` / :meth:`file_metadata` give the diffusers/PEFT file layout (``unet.<module>.lora_A.weight``
    / ``lora_B.weight``, alpha in ``lora_adapter_metadata``) that :func:`read_lora` parses back to the same
    weights.
    """

    layers: dict[str, dict[str, LoraWeights]]
    name: str = "lora"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse components other than ``COMPONENTS`` early, where the mistake was made."""
        unknown = sorted(set(self.layers) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"LoraAdapter components must be among {COMPONENTS}, got {unknown}")
        self.layers = {c: dict(self.layers.get(c, {})) for c in COMPONENTS}

    def __len__(self) -> int:
        """Number of adapted layers over all components."""
        return sum(len(v) for v in self.layers.values())

    def as_lora_file(self) -> LoraFile:
        """The adapter as a parsed LoRA (what :func:`read_lora` returns for its file), for :func:`resolve_lora`."""
        return LoraFile(layers={c: dict(v) for c, v in self.layers.items()}, format="diffusers", kohya_keys=False)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """diffusers/PEFT keys: ``<component>.<module>.lora_A.weight`` (down) and ``lora_B.weight`` (up)."""
        out: dict[str, torch.Tensor] = {}
        for component, layers in self.layers.items():
            for module, weights in sorted(layers.items()):
                out[f"{component}.{module}{_A_SUFFIX}"] = weights.down
                out[f"{component}.{module}{_B_SUFFIX}"] = weights.up
        return out

    def file_metadata(self) -> dict[str, str]:
        """safetensors header entries: diffusers' ``lora_adapter_metadata`` (``r``, ``lora_alpha``,
        ``target_modules`` per component, with ``alpha_pattern`` / ``rank_pattern`` for layers that differ
        from the most common value) and ``reelgraph.lora`` (the name and ``info``)."""
        meta: dict[str, Any] = {}
        for component, layers in self.layers.items():
            if not layers:
                continue
            for key, values in (("r", {m: w.rank for m, w in layers.items()}),
                                ("lora_alpha", {m: w.alpha for m, w in layers.items()})):
                common = max(sorted(set(values.values())), key=list(values.values()).count)
                meta[f"{component}.{key}"] = common
                pattern = {re.escape(m): v for m, v in sorted(values.items()) if v != common}
                if pattern:
                    meta[f"{component}.{'rank' if key == 'r' else 'alpha'}_pattern"] = pattern
            meta[f"{component}.target_modules"] = sorted(layers)
        return {"format": "pt", "lora_adapter_metadata": json.dumps(meta),
                "reelgraph.lora": json.dumps({"name": self.name, "info": self.info})}

    def save(self, path: str | Path) -> Path:
        """Write the adapter as a ``.safetensors`` file in the diffusers/PEFT layout (see :meth:`state_dict`)."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(path), metadata=self.file_metadata())
        return Path(path)

    def __reelgraph_nbytes__(self) -> int:
        """Bytes held by the down/up matrices (for the engine's memory budget)."""
        return sum(t.element_size() * t.numel() for t in self.state_dict().values())

    def __reelgraph_state__(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Persistence protocol: the down/up tensors in file layout; alphas, name and info as metadata."""
        alphas = {f"{c}.{m}": w.alpha for c, layers in self.layers.items() for m, w in layers.items()}
        return self.state_dict(), {"name": self.name, "info": self.info, "alphas": alphas}

    @classmethod
    def __reelgraph_restore__(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> LoraAdapter:
        """Persistence protocol: rebuild from ``__reelgraph_state__`` output."""
        layers: dict[str, dict[str, LoraWeights]] = {c: {} for c in COMPONENTS}
        for key, alpha in meta["alphas"].items():
            component, module = key.split(".", 1)
            layers[component][module] = LoraWeights(down=tensors[f"{key}{_A_SUFFIX}"], up=tensors[f"{key}{_B_SUFFIX}"],
                                                    alpha=float(alpha))
        return cls(layers=layers, name=str(meta["name"]), info=dict(meta["info"]))

    def __repr__(self) -> str:
        """Name the adapter and count its layers, never the tensors."""
        counts = ", ".join(f"{c}={len(v)}" for c, v in self.layers.items() if v)
        return f"LoraAdapter({self.name!r}, {counts or 'empty'})"


def _listing(items: Iterable[str]) -> str:
    """Up to ``_MAX_LISTED`` items, comma-separated, with a count of the rest."""
    items = list(items)
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", … and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def _finite(value: Any, where: str) -> float:
    """``value`` as a float if it is a finite JSON number (not a bool), else a ``LoraValueError`` at ``where``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LoraValueError(f"{where}: the alpha must be a finite number, got {value!r}", where)
    return float(value)


def _pattern_text(key: Any, where: str) -> str:
    """An ``alpha_pattern`` key as a module name or ``*`` glob: ``\\.`` and ``\\_`` (``re.escape`` of a name)
    become the character; anything else that is not a module-name character or ``*`` is refused."""
    if not isinstance(key, str) or not key:
        raise LoraValueError(f"{where}: keys must be non-empty module names, got {key!r}", where)
    if len(key) > MAX_PATTERN_LENGTH:
        raise LoraValueError(f"{where}: a key is {len(key)} characters long, more than {MAX_PATTERN_LENGTH} "
                             f"(it starts {key[:40]!r})", where)
    out: list[str] = []
    chars = iter(key)
    for char in chars:
        if char == "\\":
            char = next(chars, "")
            if char not in (".", "_"):
                raise LoraValueError(f"{where}: the key {key!r} is a regular expression; alpha_pattern keys are "
                                     "module names or globs with '*' (regular expressions are not run)", where)
            out.append(char)
        elif char in _NAME_CHARS or char == "*":
            out.append(char)
        else:
            raise LoraValueError(f"{where}: the key {key!r} has the character {char!r}; alpha_pattern keys are "
                                 "module names or globs with '*' (regular expressions are not run)", where)
    return "".join(out)


def _glob_fullmatch(pattern: str, text: str) -> bool:
    """Whether ``text`` matches ``pattern`` whole, ``*`` matching any run of characters.

    Each fixed piece between stars is placed at its leftmost occurrence (always right for ``*``-only globs),
    so the cost is linear in ``len(text) * len(pattern)`` at worst and there is no backtracking to blow up.
    """
    head, *middle, tail = pattern.split("*") if "*" in pattern else (pattern, None)
    if tail is None:
        return text == pattern
    if not text.startswith(head):
        return False
    pos = len(head)
    for piece in middle:
        found = text.find(piece, pos)
        if found < 0:
            return False
        pos = found + len(piece)
    return len(text) - pos >= len(tail) and text.endswith(tail)


@dataclass(frozen=True)
class _AlphaRules:
    """One component's alphas from ``lora_adapter_metadata``: its pattern keys (in file order), the default, and
    whether PEFT's rank-stabilised scaling (``use_rslora``: ``alpha / sqrt(rank)`` instead of ``alpha / rank``)
    applies."""

    literal: dict[str, tuple[int, float]]
    globs: tuple[tuple[int, str, float], ...]
    default: float | None
    rslora: bool = False

    def alpha(self, module: str, rank: int) -> float:
        """The alpha of ``module``: that of the first key (in the file's order, as PEFT takes them) matching its
        whole name or a suffix after a ``.``, else ``lora_alpha``, else the rank; with ``use_rslora`` times
        ``sqrt(rank)``, so that ``alpha / rank`` is PEFT's ``lora_alpha / sqrt(rank)``."""
        value = self._alpha(module, rank)
        return value * math.sqrt(rank) if self.rslora else value

    def _alpha(self, module: str, rank: int) -> float:
        """The alpha the metadata gives ``module`` (see :meth:`alpha`), before ``use_rslora``."""
        best: tuple[int, float] | None = None
        parts = module.split(".")
        for start in range(len(parts)):
            hit = self.literal.get(".".join(parts[start:]))
            if hit is not None and (best is None or hit[0] < best[0]):
                best = hit
        for order, pattern, value in self.globs:
            if best is not None and order > best[0]:
                break
            if _glob_fullmatch(pattern, module) or _glob_fullmatch("*." + pattern, module):
                best = (order, value)
                break
        if best is not None:
            return best[1]
        return self.default if self.default is not None else float(rank)


def _alpha_rules(meta: dict[str, Any], component: str) -> _AlphaRules:
    """Validate and compile one component's ``lora_alpha`` and ``alpha_pattern`` (see the module docstring)."""
    default_key, pattern_key = f"{component}.lora_alpha", f"{component}.alpha_pattern"
    default = meta.get(default_key)
    default = None if default is None else _finite(default, f"{_METADATA} {default_key!r}")
    patterns = meta.get(pattern_key) or {}
    where = f"{_METADATA} {pattern_key!r}"
    if not isinstance(patterns, dict):
        raise LoraValueError(f"{where} must map module names to alphas, got {type(patterns).__name__}", where)
    if len(patterns) > _MAX_PATTERNS:
        raise LoraValueError(f"{where} has {len(patterns)} keys, more than {_MAX_PATTERNS}", where)
    literal: dict[str, tuple[int, float]] = {}
    globs: list[tuple[int, str, float]] = []
    for order, (key, value) in enumerate(patterns.items()):
        text = _pattern_text(key, where)
        alpha = _finite(value, f"{where} [{key!r}]")
        if "*" in text:
            globs.append((order, text, alpha))
        else:
            literal.setdefault(text, (order, alpha))
    if len(globs) > _MAX_GLOB_PATTERNS:
        raise LoraValueError(f"{where} has {len(globs)} keys with '*', more than {_MAX_GLOB_PATTERNS}", where)
    rslora_key = f"{component}.use_rslora"
    rslora = meta.get(rslora_key, False)
    if not isinstance(rslora, bool) and rslora is not None:
        raise LoraValueError(f"{_METADATA} {rslora_key!r} must be true or false, got {rslora!r}",
                             f"{_METADATA} {rslora_key!r}")
    return _AlphaRules(literal, tuple(globs), default, bool(rslora))


def _tensor_alpha(tensor: Any, key: str) -> float:
    """The alpha an ``alpha`` tensor holds (its first element); empty, NaN or infinite is a ``LoraValueError``."""
    if tensor.numel() < 1:
        raise LoraValueError(f"the tensor {key!r} is empty; an alpha tensor holds one number", key)
    value = float(tensor.reshape(-1)[0].item())
    if not math.isfinite(value):
        raise LoraValueError(f"the tensor {key!r}: the alpha must be a finite number, got {value}", key)
    return value


def parse_lora(state: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None) -> LoraFile:
    """Group a LoRA state dict's keys into per-layer ``LoraWeights``, in either supported format.

    ``metadata`` is diffusers' parsed ``lora_adapter_metadata`` (alphas of PEFT-format files), if any.
    Raises ``LoraError`` listing every key that is not a LoRA down/up/alpha of a supported format, and every
    layer that lacks its down or up matrix; ``LoraValueError`` for bad metadata or a non-finite alpha.
    """
    if metadata is not None and not isinstance(metadata, dict):
        raise LoraValueError(f"{_METADATA} must be a JSON object, got {type(metadata).__name__}", _METADATA)
    meta = metadata or {}
    rules = {component: _alpha_rules(meta, component) for component in COMPONENTS}
    parts: dict[tuple[str, str], dict[str, Any]] = {}
    alpha_keys: dict[tuple[str, str], str] = {}
    unknown: list[str] = []
    kohya = any(_KOHYA.match(k) for k in state)
    for key, tensor in state.items():
        if kohya:
            m = _KOHYA.match(key)
            if m is None:
                unknown.append(key)
                continue
            component = "unet" if m["comp"] == "unet" else "text_encoder"
            parts.setdefault((component, m["mod"]), {})[_KOHYA_ROLES[m["role"]]] = tensor
            if m["role"] == "alpha":
                alpha_keys[(component, m["mod"])] = key
            continue
        name = key.removeprefix("base_model.model.")
        component = "text_encoder" if name.startswith(_TEXT_NAMES) else "unet"
        for prefix in COMPONENTS:
            if name.startswith(prefix + "."):
                component, name = prefix, name[len(prefix) + 1:]
                break
        proc = _PROCESSOR.match(name)
        if proc is not None:
            proj = "to_out.0" if proc["proj"] == "to_out" else proc["proj"]
            parts.setdefault((component, f"{proc['base']}.{proj}"), {})[proc["role"]] = tensor
            continue
        for pattern, role in _DIFFUSERS_SUFFIXES:
            m = pattern.match(name)
            if m is not None:
                entry = parts.setdefault((component, m["mod"]), {})
                if role.endswith("_loralib"):
                    role = role.removesuffix("_loralib")
                    entry["layout"] = "loralib"
                entry[role] = tensor
                if role == "alpha":
                    alpha_keys[(component, m["mod"])] = key
                break
        else:
            unknown.append(key)
    if unknown:
        raise LoraError(f"{len(unknown)} key(s) are not LoRA down/up/alpha weights of a supported format (diffusers/"
                        f"PEFT lora_A/lora_B, Text-To-Video-Finetuning lora_A/lora_B, or kohya lora_down/lora_up/"
                        f"alpha): {_listing(sorted(unknown))}")
    loralib = any("layout" in roles for roles in parts.values())
    out = LoraFile(format="kohya" if kohya else "text-to-video-finetuning" if loralib else "diffusers",
                   kohya_keys=kohya)
    incomplete: list[str] = []
    for (component, module), roles in sorted(parts.items(), key=lambda item: item[0]):
        layout = roles.pop("layout", "lora")
        if "down" not in roles or "up" not in roles:
            incomplete.append(f"{module} (has only {', '.join(sorted(roles))})")
            continue
        down, up = roles["down"], roles["up"]
        rank = int(down.shape[0])
        if "alpha" in roles:
            alpha = _tensor_alpha(roles["alpha"], alpha_keys[(component, module)])
        else:
            alpha = rules[component].alpha(module, rank)
        out.layers[component][module] = LoraWeights(down=down, up=up, alpha=alpha, layout=layout)
    if incomplete:
        raise LoraError(f"{len(incomplete)} layer(s) lack their down or up matrix: {_listing(incomplete)}")
    if not len(out):
        raise LoraError("the file holds no LoRA weights")
    return out


def _read_metadata(path: Path) -> dict[str, Any]:
    """diffusers' ``lora_adapter_metadata`` from a safetensors header (JSON only; no tensor is read)."""
    if path.suffix.lower() != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            raw = (handle.metadata() or {}).get(_METADATA)
    except (OSError, ValueError) as exc:
        raise LoraError(f"{str(path)!r} has unreadable metadata: {exc}") from exc
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise LoraValueError(f"{_METADATA} of {path.name!r} is not valid JSON: {exc}", _METADATA) from None
    if not isinstance(meta, dict):
        raise LoraValueError(f"{_METADATA} of {path.name!r} must be a JSON object, got {type(meta).__name__}",
                             _METADATA)
    return meta


def read_lora(path: str | Path) -> LoraFile:
    """Read and parse a LoRA file: ``.safetensors``, or a pickle format only through
    ``torch.load(weights_only=True)`` (see :mod:`reelgraph.nodes.weights`); anything else is refused."""
    from .weights import WeightsError, load_state_dict

    p = Path(path)
    try:
        state = load_state_dict(p)
    except WeightsError as exc:
        raise LoraError(str(exc)) from exc
    return parse_lora(state, _read_metadata(p))


def _adaptable(model: Any) -> dict[str, Any]:
    """Layers a LoRA may adapt: every linear or convolution module, by its dotted name."""
    import torch

    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    return {name: module for name, module in model.named_modules() if isinstance(module, kinds)}


_OPENCLIP_TEXT = (("resblocks.", "encoder.layers."), (".attn.", ".self_attn."), (".mlp.c_fc", ".mlp.fc1"),
                  (".mlp.c_proj", ".mlp.fc2"))


def _other_layouts(key: str, model: Any, component: str, aliases: dict[str, str]) -> list[str]:
    """The model's names for a module named in another layout: on an AnimateDiff UNet the AnimateDiff project's
    motion-module names and SD's LDM names (``aliases``, see :mod:`reelgraph.nodes.lora_keys`), on another UNet
    ModelScope's original names, and the OpenCLIP text names of Text-To-Video-Finetuning's webui files
    (``[transformer.]resblocks.<i>.attn.q_proj`` …)."""
    if component == "unet":
        if is_motion_unet(model):
            name = motion_module_name(key) or aliases.get(key)
            return [name] if name else []
        config = getattr(model, "config", None)
        if config is None or "down_block_types" not in config:
            return []
        from .modelscope_convert import is_original_layout, unet_module_name

        if not is_original_layout([key]):
            return []
        name = unet_module_name(key, config, lenient=True)
        return [name] if name else []
    name = key.removeprefix("transformer.")
    if not name.startswith("resblocks."):
        return []
    for old, new in _OPENCLIP_TEXT:
        name = name.replace(old, new)
    return [name, "text_model." + name]


def resolve_lora(layers: dict[str, LoraWeights], model: Any, component: str, kohya: bool) -> dict[str, LoraWeights]:
    """Map one component's LoRA layers onto ``model``'s module names, checking every shape.

    Raises ``LoraError`` listing every key that matches no linear/conv layer (a LoRA for another
    architecture) and every layer whose down/up shapes do not fit the weight.
    """
    modules = _adaptable(model)
    by_underscore: dict[str, str | None] = {}
    aliases = ldm_aliases(model) if component == "unet" and is_motion_unet(model) else {}
    for name in [*modules, *aliases]:
        flat = name.replace(".", "_")
        target = aliases.get(name, name)
        by_underscore[flat] = None if by_underscore.get(flat, target) != target else target  # None: ambiguous
    resolved: dict[str, LoraWeights] = {}
    unmatched: list[str] = []
    misfits: list[str] = []
    for key, weights in layers.items():
        candidates = [key]
        prefix = "text_model_" if kohya else "text_model."
        if component == "text_encoder" and key.startswith(prefix):
            candidates.append(key[len(prefix):])
        if not kohya:
            candidates += _other_layouts(key, model, component, aliases)
        name = None
        for candidate in candidates:
            name = by_underscore.get(candidate) if kohya else (candidate if candidate in modules else None)
            if name is not None:
                break
        if name is None:
            unmatched.append(f"lora_{'unet' if component == 'unet' else 'te'}_{key}" if kohya else f"{component}.{key}")
            continue
        weight = modules[name].weight
        down, up = weights.down, weights.up
        if not weights.fits(weight):
            misfits.append(f"{name}: weight {tuple(weight.shape)}, up {tuple(up.shape)}, down {tuple(down.shape)}")
            continue
        resolved[name] = weights
    problems = []
    if unmatched:
        problems.append(f"{len(unmatched)} LoRA key(s) match no layer of the {component} (a LoRA for another "
                        f"architecture?): {_listing(sorted(unmatched))}"
                        f"{family_hint(unmatched, model) if component == 'unet' else ''}")
    if misfits:
        problems.append(f"{len(misfits)} layer(s) of the {component} have other shapes than the LoRA's: "
                        f"{_listing(sorted(misfits))}")
    if problems:
        raise LoraError("; ".join(problems))
    return resolved


def lora_deltas(model: Any, targets: dict[str, LoraWeights], scale: float) -> dict[str, torch.Tensor]:
    """The merged weights ``W + scale * (alpha / rank) * up @ down`` by parameter name (``<module>.weight``),
    computed in float32 and cast to each weight's dtype."""
    import torch

    modules = dict(model.named_modules())
    merged: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, weights in targets.items():
            weight = modules[name].weight
            merged[f"{name}.weight"] = (weight.to(torch.float32) + weights.delta(weight, scale)).to(weight.dtype)
    return merged


def _shallow(module: Any) -> Any:
    """A new module object sharing everything with ``module`` but owning its tables of children, parameters,
    buffers and hooks (so a hook later added to the original does not leak into the copy, or back)."""
    clone = copy.copy(module)
    for name, value in vars(module).items():
        if name in ("_modules", "_parameters", "_buffers") or (name.endswith("hooks") and isinstance(value, dict)):
            setattr(clone, name, copy.copy(value))
    return clone


def patched_copy(model: Any, new_params: dict[str, torch.Tensor]) -> Any:
    """A copy of ``model`` in which the parameters named in ``new_params`` are replaced.

    Only the modules on the paths from the root to those parameters are new objects; every other submodule,
    parameter and buffer is the original's (shared, not copied), and ``model`` itself is left unchanged.
    """
    import torch

    root = _shallow(model)
    copies: dict[str, Any] = {"": root}
    for param_name, tensor in new_params.items():
        *path, leaf = param_name.split(".")
        prefix = ""
        parent = root
        for part in path:
            prefix = f"{prefix}.{part}" if prefix else part
            child = copies.get(prefix)
            if child is None:
                child = _shallow(parent._modules[part])
                parent._modules[part] = child
                copies[prefix] = child
            parent = child
        if leaf not in parent._parameters:
            raise KeyError(f"{param_name} is not a parameter of the model")
        parent._parameters[leaf] = torch.nn.Parameter(tensor, requires_grad=False)
    return root


def merge_lora(model: Any, targets: dict[str, LoraWeights], scale: float) -> Any:
    """``model`` with the resolved ``targets`` (see :func:`resolve_lora`) merged at ``scale``, as a patched
    copy; ``model`` itself when there is nothing to merge or ``scale`` is 0 (so the result is exactly it)."""
    if not targets or scale == 0:
        return model
    return patched_copy(model, lora_deltas(model, targets, scale))
