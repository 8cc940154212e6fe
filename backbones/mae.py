"""MAE (He et al. 2022) encoders: ViT with one CLS token and a fixed 2-D sin-cos position table.

Official ``mae_pretrain_vit_{base,large,huge}.pth`` files are ``{'model': encoder state dict}``
in timm-style keys, which is our layout; the sin-cos table is stored in the file and loaded as
a frozen parameter. Other resolutions interpolate the table bicubically, as MAE fine-tuning does.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from evalsuite.checkpoints import BackboneSpec, register_backbone
from evalsuite.contracts import BackboneMeta, Preprocess

from .vit import ViT, from_transformers, is_transformers_layout, preprocess_imagenet, resample_bicubic, sincos_pos_embed_2d

# Pretraining checkpoints (official "visualize" files and ours) carry the decoder; dropped on purpose.
PRETRAIN_ONLY = (r"decoder.*", r"mask_token")


class MAE(ViT):
    def global_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """The final-normed CLS token (MAE linear probing)."""
        return self.forward_features(images, norm=True).cls[-1][:, 0]


def convert(state: dict) -> dict:
    state = state.get("model", state)
    if is_transformers_layout(state):
        return from_transformers(state, ("vit.",))
    if any(k.startswith("encoder.") for k in state):
        return {k.removeprefix("encoder."): v for k, v in state.items()}
    return dict(state)


def make_spec(name: str, dim: int, depth: int, heads: int, patch: int, file: str | None,
              hf: str | None, img_size: int = 224, preprocess: Preprocess | None = None,
              decoder: dict | None = None) -> BackboneSpec:
    meta = BackboneMeta(name=name, family="mae", patch_size=patch, embed_dim=dim, depth=depth, num_cls_tokens=1,
                        preprocess=preprocess or preprocess_imagenet(img_size),
                        default_layers=tuple(depth // 4 * (s + 1) - 1 for s in range(4)))
    return BackboneSpec(
        name=name, family="mae",
        build=lambda: MAE(meta, img_size=img_size, num_heads=heads, pos_embed="sincos", resample=resample_bicubic),
        convert=convert, ignore=PRETRAIN_ONLY, weights_file=file, hf_repo=hf, random_by_default=file is None,
        pretrain=partial(MaskedAutoencoder, **(decoder or {})),
    )




# ---------------------------------------------------------------------------------------
# Pretraining objective (He et al. 2022); Pixio's (`backbones.pixio`) builds on it
# ---------------------------------------------------------------------------------------
def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """B×3×H×W → B×N×(p·p·3), patch pixels ordered (row, col, channel) as in MAE."""
    B, C, H, W = images.shape
    x = images.reshape(B, C, H // p, p, W // p, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(patches: torch.Tensor, p: int, hw: tuple[int, int]) -> torch.Tensor:
    B, _, _ = patches.shape
    h, w = hw
    x = patches.reshape(B, h, w, p, p, 3)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(B, 3, h * p, w * p)


def norm_pix_target(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch normalised pixels: mean and *unbiased* variance over the patch (MAE/Pixio)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=True)
    return (patches - mean) / (var + eps) ** 0.5


def random_masking(noise: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE masking from per-patch noise (B×N): keep the int(N·(1−r)) lowest-noise patches.

    Returns (ids_keep B×n_keep, mask B×N with 1 = masked, ids_restore B×N).
    """
    B, N = noise.shape
    n_keep = int(N * (1 - mask_ratio))
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    mask = torch.ones(B, N, device=noise.device)
    mask[:, :n_keep] = 0
    return ids_shuffle[:, :n_keep], torch.gather(mask, 1, ids_restore), ids_restore


class MaskedAutoencoder(nn.Module):
    """MAE's objective: encoder (a registered ViT) + lightweight decoder predicting the pixels of
    masked patches; random masking 0.75, 8-block 512-wide decoder with fixed sin-cos positions,
    norm-pix loss, flips.

    Keys: ``encoder.*`` and ``decoder_*`` / ``mask_token`` (the official MAE names), so a checkpoint
    loads into the encoder with the decoder dropped explicitly (``PRETRAIN_ONLY``).
    """

    def __init__(self, encoder: ViT, *, decoder_dim: int = 512, decoder_depth: int = 8, decoder_heads: int = 16,
                 decoder_pos: str = "sincos", mask_ratio: float = 0.75, norm_pix_loss: bool = True, flip: bool = True,
                 image_size: tuple[int, int] | None = None):
        super().__init__()
        from timm.models.vision_transformer import Block

        if decoder_pos not in ("sincos", "learned"):
            raise ValueError(f"decoder_pos must be sincos or learned, got {decoder_pos!r}")
        self.encoder = encoder
        self.mask_ratio, self.norm_pix_loss, self.flip = mask_ratio, norm_pix_loss, flip
        self.image_size = tuple(image_size or encoder.meta.image_size)
        dim, p, n_cls = encoder.meta.embed_dim, encoder.meta.patch_size, encoder.num_cls_tokens
        gh, gw = self.image_size[0] // p, self.image_size[1] // p
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        if decoder_pos == "sincos":
            self.decoder_pos_embed = nn.Parameter(sincos_pos_embed_2d(decoder_dim, gh, gw, n_cls), requires_grad=False)
        else:
            self.decoder_pos_embed = nn.Parameter(torch.zeros(1, n_cls + gh * gw, decoder_dim))
            nn.init.trunc_normal_(self.decoder_pos_embed, std=0.02)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, decoder_heads, 4.0, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
            for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, p * p * 3)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in [self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def augment(self, image, gen: torch.Generator) -> torch.Tensor:
        """RandomResizedCrop(scale 0.2–1, bicubic) to the encoder's size, flipped if ``flip`` (MAE, not Pixio)."""
        from evalsuite.pretrain import crop_resize, to_normalised_tensor

        pre = self.encoder.meta.preprocess
        return to_normalised_tensor(crop_resize(image, gen, self.image_size, (0.2, 1.0), self.flip), pre.mean, pre.std)

    def masks(self, noise: torch.Tensor, grid: tuple[int, int]):
        """(ids_keep, mask, ids_restore) from the step's noise: MAE's per-patch random masking."""
        return random_masking(noise, self.mask_ratio)

    def noise_shape(self, batch: int, grid: tuple[int, int]) -> tuple[int, int]:
        return batch, grid[0] * grid[1]

    def reconstruction_error(self, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Per image: the mean squared error over its masked patches (of the loss's target), which is
        what Pixio's soft self-curation scores."""
        out = self(images, noise)
        target = patchify(images, self.encoder.meta.patch_size)
        if self.norm_pix_loss:
            target = norm_pix_target(target)
        per_patch = ((out["pred"] - target) ** 2).mean(-1)
        return (per_patch * out["mask"]).sum(1) / out["mask"].sum(1)

    def forward(self, images: torch.Tensor, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.encoder.meta.patch_size
        grid = (images.shape[-2] // p, images.shape[-1] // p)
        ids_keep, mask, ids_restore = self.masks(noise, grid)
        latent = self.encoder.forward_visible(images, ids_keep)
        pred = self.decode(latent, ids_restore)
        target = patchify(images, p)
        if self.norm_pix_loss:
            target = norm_pix_target(target)
        per_patch = ((pred - target) ** 2).mean(dim=-1)
        loss = (per_patch * mask).sum() / mask.sum()
        return {"loss": loss, "pred": pred, "mask": mask}

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        n = self.encoder.num_cls_tokens
        x = self.decoder_embed(latent)
        B, N = ids_restore.shape
        tokens = torch.cat([x[:, n:], self.mask_token.expand(B, N - (x.shape[1] - n), -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :n], tokens], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, n:]


register_backbone(make_spec("mae-b16", 768, 12, 12, 16, "mae_pretrain_vit_base.pth", "facebook/vit-mae-base"))
register_backbone(make_spec("mae-l16", 1024, 24, 16, 16, "mae_pretrain_vit_large.pth", "facebook/vit-mae-large"))
register_backbone(make_spec("mae-h14", 1280, 32, 16, 14, "mae_pretrain_vit_huge.pth", "facebook/vit-mae-huge"))
# CPU twin: a 96-wide, 4-block decoder keeps quickstart pretraining within minutes (depth over width,
# as for pixio-tiny: +3 to +9 top-1 over 2×128 on the seed-0 mini world for ≈18 % more time, δ1
# unchanged; pretrained mae-tiny also beats its random twin on an independent seed-1 world).
register_backbone(make_spec("mae-tiny", 192, 8, 3, 8, None, None, img_size=128,
                            preprocess=Preprocess(size=(128, 128), resize="squash", interpolation="bicubic"),
                            decoder={"decoder_dim": 96, "decoder_depth": 4, "decoder_heads": 4}))


def pretrain_from_transformers(state: dict) -> dict:
    """``ViTMAEForPreTraining`` weights → our `MaskedAutoencoder` keys (continue pretraining an HF model)."""
    from .vit import from_transformers

    encoder = from_transformers({k: v for k, v in state.items() if k.startswith("vit.")}, ("vit.",))
    decoder_layers = from_transformers(
        {k.replace("decoder.decoder_layers.", "layers."): v for k, v in state.items() if k.startswith("decoder.decoder_layers.")})
    out = {f"encoder.{k}": v for k, v in encoder.items()}
    out |= {k.replace("blocks.", "decoder_blocks.", 1): v for k, v in decoder_layers.items()}
    for k, v in state.items():
        if k.startswith("decoder.") and not k.startswith("decoder.decoder_layers."):
            out[k.removeprefix("decoder.")] = v
    return out
