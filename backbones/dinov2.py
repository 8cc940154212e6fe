"""DINOv2 (Oquab et al. 2023): ViT/14 with LayerScale, optional 4 registers, SwiGLU for ViT-g.

Official hub files (``dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth``) are plain state dicts in our
layout, ``mask_token`` included (iBOT). Position-embedding interpolation follows the official
rule: bicubic with a 0.1 offset on the scale factor for the original models, plain size with
antialiasing for the register models.
"""

from __future__ import annotations

import math
import re
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from evalsuite.checkpoints import BackboneSpec, register_backbone
from evalsuite.contracts import BackboneMeta

from .vit import ViT, from_transformers, is_transformers_layout, preprocess_imagenet


def resample_offset(grid: torch.Tensor, size: tuple[int, int], offset: float = 0.1) -> torch.Tensor:
    """DINOv2 without registers: scale factor (new + 0.1)/old, which is not the same as size=new."""
    h, w = grid.shape[-2:]
    scale = ((size[0] + offset) / h, (size[1] + offset) / w)
    return F.interpolate(grid, scale_factor=scale, mode="bicubic", align_corners=False)


def resample_antialias(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(grid, size=size, mode="bicubic", align_corners=False, antialias=True)


# A DINO pretraining checkpoint (ours) exports the teacher as ``encoder.*``; the rest is dropped on purpose.
PRETRAIN_ONLY = (r"student\..*", r"student_head\..*", r"head\..*", r"center", r"patch_center")


class DINOv2(ViT):
    def global_embedding(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_features(images, norm=True).cls[-1][:, 0]


_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")


def convert(state: dict) -> dict:
    """Official, Hugging Face, chunked or our pretraining layout → our (= official) keys.

    DINOv2 models built with ``block_chunks > 0`` (its training configs) store block i of chunk c as
    ``blocks.c.i.…``, i being the global index (each chunk is padded with Identity placeholders)."""
    state = state.get("model", state)
    if is_transformers_layout(state):
        return from_transformers(state, ("dinov2.",))
    if any(k.startswith("encoder.") for k in state):
        return {k.removeprefix("encoder."): v for k, v in state.items()}
    return {_CHUNKED_BLOCK.sub(r"blocks.\1.", k): v for k, v in state.items()}


def make_spec(name: str, dim: int, depth: int, heads: int, registers: int, swiglu: bool, file: str | None,
              hf: str | None, patch: int = 14, img_size: int = 518, eval_size: int = 224,
              objective: dict | None = None) -> BackboneSpec:
    meta = BackboneMeta(name=name, family="dinov2", patch_size=patch, embed_dim=dim, depth=depth, num_cls_tokens=1,
                        preprocess=preprocess_imagenet(eval_size), default_layers=tuple(range(depth - 4, depth)))
    resample = resample_antialias if registers else partial(resample_offset, offset=0.1)
    return BackboneSpec(
        name=name, family="dinov2",
        build=lambda: DINOv2(meta, img_size=img_size, num_heads=heads, num_register_tokens=registers,
                             resample=resample, init_values=1e-5, swiglu=swiglu, mask_token=True),
        convert=convert, ignore=PRETRAIN_ONLY, weights_file=file, hf_repo=hf, random_by_default=file is None,
        pretrain=partial(DINOObjective, **(objective or {})),
    )


# ---------------------------------------------------------------------------------------
# Pretraining objective: DINO self-distillation (Caron et al. 2021) with DINOv2's iBOT and KoLeo
# ---------------------------------------------------------------------------------------
class DINOHead(nn.Module):
    """MLP → L2-normalised bottleneck → cosine against ``out_dim`` prototypes.

    The prototype matrix is normalised in the forward pass, which is DINO's weight-normalised last
    layer with its norm frozen at 1 (``norm_last_layer=True``).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 2048, bottleneck: int = 256, layers: int = 3):
        super().__init__()
        dims = [in_dim] + [hidden] * (layers - 1)
        mlp: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            mlp += [nn.Linear(a, b), nn.GELU()]
        self.mlp = nn.Sequential(*mlp, nn.Linear(dims[-1], bottleneck))
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(x), dim=-1) @ F.normalize(self.prototypes, dim=-1).T


def dino_loss(student_logits: list[torch.Tensor], teacher_logits: list[torch.Tensor], center: torch.Tensor,
              student_temp: float, teacher_temp: float) -> torch.Tensor:
    """Cross-entropy between the centred, sharpened teacher of each global view and the student of
    every *other* view, averaged over the (teacher, student) pairs."""
    targets = [F.softmax((t - center) / teacher_temp, dim=-1) for t in teacher_logits]
    log_probs = [F.log_softmax(s / student_temp, dim=-1) for s in student_logits]
    total, pairs = 0.0, 0
    for i, target in enumerate(targets):
        for j, log_prob in enumerate(log_probs):
            if i == j:
                continue
            total = total + (-(target * log_prob).sum(dim=-1)).mean()
            pairs += 1
    return total / pairs


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko–Leonenko entropy estimator on L2-normalised rows: −mean log(distance to nearest neighbour)."""
    x = F.normalize(x, dim=-1)
    dist = torch.cdist(x, x)
    dist = dist + torch.eye(len(x), device=x.device) * 1e4  # exclude self
    return -torch.log(dist.min(dim=1).values + eps).mean()


def ema_momentum(step: int, total: int, base: float) -> float:
    """Teacher momentum, cosine from ``base`` to 1 over training (DINO)."""
    return 1 - (1 - base) * (math.cos(math.pi * step / total) + 1) / 2


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)


class DINOObjective(nn.Module):
    """Student + EMA teacher. ``encoder``/``head`` are the teacher (what DINO evaluates and exports);
    ``student``/``student_head`` are trained. Keys outside ``encoder.*`` are dropped on loading."""

    def __init__(self, encoder: ViT, *, out_dim: int = 65536, hidden: int = 2048, bottleneck: int = 256,
                 n_local: int = 8, global_scale=(0.32, 1.0), local_scale=(0.05, 0.32), local_size: int | None = None,
                 student_temp: float = 0.1, teacher_temp: float = 0.07, warmup_teacher_temp: float = 0.04,
                 teacher_temp_warmup: float = 0.3, center_momentum: float = 0.9, teacher_momentum: float = 0.996,
                 ibot: bool = False, ibot_weight: float = 1.0, ibot_mask_prob: float = 0.5, ibot_ratio=(0.1, 0.5),
                 koleo_weight: float = 0.0, image_size: tuple[int, int] | None = None):
        super().__init__()
        import copy

        self.student = encoder
        self.student_head = DINOHead(encoder.meta.embed_dim, out_dim, hidden, bottleneck)
        self.encoder, self.head = copy.deepcopy(self.student), copy.deepcopy(self.student_head)
        for p in [*self.encoder.parameters(), *self.head.parameters()]:
            p.requires_grad_(False)
        if self.student.mask_token is not None:
            self.student.mask_token.requires_grad_(ibot)  # unused without iBOT; DDP wants every trained param used
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("patch_center", torch.zeros(1, out_dim))
        self.global_size = tuple(image_size or encoder.meta.image_size)
        g, p = self.global_size[0], encoder.meta.patch_size
        side = local_size or max(p, (int(g * 96 / 224) // p) * p)  # 96 px for 224 px globals
        self.local_size = (side, side)
        self.n_local, self.global_scale, self.local_scale = n_local, global_scale, local_scale
        self.student_temp, self.teacher_temp, self.warmup_teacher_temp = student_temp, teacher_temp, warmup_teacher_temp
        self.teacher_temp_warmup, self.center_momentum, self.teacher_momentum = teacher_temp_warmup, center_momentum, teacher_momentum
        self.ibot, self.ibot_weight, self.ibot_mask_prob, self.ibot_ratio = ibot, ibot_weight, ibot_mask_prob, ibot_ratio
        self.koleo_weight = koleo_weight
        self.progress = 0.0  # share of training done, for the teacher-temperature warm-up

    # -- data -----------------------------------------------------------------------------
    def augment(self, image, gen: torch.Generator) -> list[torch.Tensor]:
        """2 global + ``n_local`` local crops with DINO's colour jitter, grey, blur and solarisation."""
        from evalsuite.pretrain import crop_resize, to_normalised_tensor

        pre = self.encoder.meta.preprocess
        views = []
        for k in range(2 + self.n_local):
            is_global = k < 2
            crop = crop_resize(image, gen, self.global_size if is_global else self.local_size,
                               self.global_scale if is_global else self.local_scale, flip=True)
            blur_p, solarize_p = ((1.0, 0.0), (0.1, 0.2))[k] if is_global else (0.5, 0.0)
            views.append(to_normalised_tensor(photometric(crop, gen, blur_p, solarize_p), pre.mean, pre.std))
        return views

    def noise_shape(self, batch: int, grid: tuple[int, int]) -> tuple[int, int, int]:
        return batch, 2, grid[0] * grid[1] + 2  # per global view: mask?, ratio, one number per patch

    def ibot_masks(self, noise: torch.Tensor) -> torch.Tensor:
        """B×2×N bool: with probability ``ibot_mask_prob`` a view masks a random share in ``ibot_ratio``."""
        lo, hi = self.ibot_ratio
        masked = noise[..., :1] < self.ibot_mask_prob
        ratio = lo + (hi - lo) * noise[..., 1:2]
        return masked & (noise[..., 2:] < ratio)

    # -- training -------------------------------------------------------------------------
    def teacher_temperature(self) -> float:
        if self.progress >= self.teacher_temp_warmup:
            return self.teacher_temp
        t = self.progress / self.teacher_temp_warmup
        return self.warmup_teacher_temp + t * (self.teacher_temp - self.warmup_teacher_temp)

    def forward(self, views: list[torch.Tensor], noise: torch.Tensor) -> dict[str, torch.Tensor]:
        n_prefix = self.encoder.num_prefix_tokens
        masks = self.ibot_masks(noise) if self.ibot else None
        with torch.no_grad():
            t_tokens = [self.encoder.forward_tokens(v) for v in views[:2]]
            t_cls = [self.head(t[:, 0]) for t in t_tokens]
        s_tokens = [self.student.forward_tokens(v, masks[:, i] if masks is not None and i < 2 else None)
                    for i, v in enumerate(views)]
        s_cls = [self.student_head(t[:, 0]) for t in s_tokens]
        temp = self.teacher_temperature()
        loss = dino_loss(s_cls, t_cls, self.center, self.student_temp, temp)
        with torch.no_grad():  # the part of the loss the student cannot change: dino − this = KL(teacher ‖ student)
            targets = torch.cat([F.softmax((t - self.center) / temp, dim=-1) for t in t_cls])
            entropy = -(targets * targets.clamp_min(1e-12).log()).sum(-1).mean()
        out = {"dino": loss.detach(), "teacher_entropy": entropy}
        patch_logits = []
        if self.ibot:
            ibot_total = 0.0
            for i in range(2):
                m = masks[:, i]
                if m.any():
                    with torch.no_grad():
                        t_patch = self.head(t_tokens[i][:, n_prefix:][m])
                    s_patch = self.student_head(s_tokens[i][:, n_prefix:][m])
                    target = F.softmax((t_patch - self.patch_center) / temp, dim=-1)
                    ibot_total = ibot_total + (-(target * F.log_softmax(s_patch / self.student_temp, dim=-1)).sum(-1)).mean()
                    patch_logits.append(t_patch)
            loss = loss + self.ibot_weight * ibot_total / 2
            out["ibot"] = torch.as_tensor(ibot_total).detach()
        if self.koleo_weight:
            koleo = sum(koleo_loss(t[:, 0]) for t in s_tokens[:2]) / 2
            loss = loss + self.koleo_weight * koleo
            out["koleo"] = koleo.detach()
        if self.training:
            self.update_center(torch.cat(t_cls), self.center)
            if patch_logits:
                self.update_center(torch.cat(patch_logits), self.patch_center)
        return {**out, "loss": loss}

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor, center: torch.Tensor) -> None:
        """center ← m·center + (1 − m)·mean of this step's teacher logits over the *global* batch."""
        batch_sum = teacher_logits.sum(dim=0, keepdim=True)
        count = torch.tensor([len(teacher_logits)], dtype=batch_sum.dtype, device=batch_sum.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(batch_sum)
            torch.distributed.all_reduce(count)
        center.mul_(self.center_momentum).add_(batch_sum / count, alpha=1 - self.center_momentum)

    def after_step(self, step: int, total: int) -> None:
        m = ema_momentum(step, total, self.teacher_momentum)
        ema_update(self.encoder, self.student, m)
        ema_update(self.head, self.student_head, m)
        self.progress = (step + 1) / total


def photometric(image, gen: torch.Generator, blur_p: float, solarize_p: float):
    """DINO's colour augmentations from ``gen``: jitter (0.4, 0.4, 0.2, 0.1) p 0.8 in a fixed order,
    greyscale p 0.2, Gaussian blur σ∈[0.1, 2] with ``blur_p``, solarisation with ``solarize_p``."""
    from PIL import ImageFilter, ImageOps
    from torchvision.transforms import functional as TF

    u = torch.rand(9, generator=gen).tolist()
    if u[0] < 0.8:
        image = TF.adjust_brightness(image, 0.6 + 0.8 * u[1])
        image = TF.adjust_contrast(image, 0.6 + 0.8 * u[2])
        image = TF.adjust_saturation(image, 0.8 + 0.4 * u[3])
        image = TF.adjust_hue(image, -0.1 + 0.2 * u[4])
    if u[5] < 0.2:
        image = TF.to_grayscale(image, num_output_channels=3)
    if u[6] < blur_p:
        image = image.filter(ImageFilter.GaussianBlur(radius=0.1 + 1.9 * u[7]))
    if u[8] < solarize_p:
        image = ImageOps.solarize(image, 128)
    return image


_HF_NAMES = {"s": "small", "b": "base", "l": "large", "g": "giant"}
for _size, (_dim, _depth, _heads, _swiglu) in {
    "s": (384, 12, 6, False), "b": (768, 12, 12, False), "l": (1024, 24, 16, False), "g": (1536, 40, 24, True),
}.items():
    register_backbone(make_spec(f"dinov2-{_size}14", _dim, _depth, _heads, 0, _swiglu, f"dinov2_vit{_size}14_pretrain.pth",
          f"facebook/dinov2-{_HF_NAMES[_size]}"))
    register_backbone(make_spec(f"dinov2-{_size}14-reg", _dim, _depth, _heads, 4, _swiglu, f"dinov2_vit{_size}14_reg4_pretrain.pth",
          f"facebook/dinov2-with-registers-{_HF_NAMES[_size]}"))

# CPU twin: 48 px local crops, a 256-wide head with 1024 prototypes.
register_backbone(make_spec("dino-tiny", 192, 8, 3, 0, False, None, None, patch=8, img_size=128, eval_size=128,
                            objective={"out_dim": 1024, "hidden": 256, "bottleneck": 64, "n_local": 2, "local_size": 48}))
