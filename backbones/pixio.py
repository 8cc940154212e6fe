"""Pixio (arXiv 2512.15715): an enhanced MAE encoder with 8 CLS tokens.

Plain pre-norm ViT/16, LayerNorm eps 1e-6, no LayerScale; ``cls_token`` is (1, 8, D) and the
learned ``pos_embed`` has a row per CLS token plus the 16×16 patch grid. Official files
``pixio_vit{b,l,h,1b,5b}16.pth`` are plain state dicts in exactly our layout; Hugging Face
repos ``facebook/pixio-vit*16`` use the transformers layout and are converted here.
"""

from __future__ import annotations

from functools import partial

import torch

from evalsuite.checkpoints import BackboneSpec, register_backbone
from evalsuite.contracts import BackboneMeta, Preprocess

from .mae import MaskedAutoencoder, random_masking
from .vit import ViT, from_transformers, is_transformers_layout, resample_bicubic

NUM_CLS = 8
PREPROCESS = Preprocess(size=(256, 256), resize="squash", interpolation="bicubic")
# Pixio's eval_knn.py: Resize(256, bicubic) of the short side, then CenterCrop(256), where its other
# evaluations squash the image
KNN_PREPROCESS = Preprocess(size=(256, 256), resize="resize-crop", resize_size=256, interpolation="bicubic")
# Keys a pretraining checkpoint (ours) carries beside the encoder; dropped on purpose.
PRETRAIN_ONLY = (r"decoder.*", r"mask_token")


def dense_layers(depth: int) -> tuple[int, ...]:
    """The 4 blocks Pixio's DPT head reads: ``depth//4·(s+1)−1`` for s = 0..3."""
    return tuple(depth // 4 * (s + 1) - 1 for s in range(4))


class Pixio(ViT):
    def global_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """Mean of the 8 final-normed CLS tokens (the HF ``pooler_output``)."""
        return self.forward_features(images, norm=True).cls[-1].mean(dim=1)

    def knn_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """Pixio's k-NN reads the mean of the 8 *un-normed* last-block CLS tokens."""
        return self.forward_features(images, norm=False).cls[-1].mean(dim=1)


def convert(state: dict) -> dict:
    """Official, Hugging Face or our pretraining layout → our (= official) keys."""
    state = state.get("model", state)
    if is_transformers_layout(state):
        return from_transformers(state, ("pixio.",))
    if any(k.startswith("encoder.") for k in state):  # our pretraining checkpoint
        return {k.removeprefix("encoder."): v for k, v in state.items()}
    return dict(state)


# ---------------------------------------------------------------------------------------
# Pretraining objective: MAE's, with block masking and a deeper decoder
# ---------------------------------------------------------------------------------------
def block_masking(noise: torch.Tensor, grid: tuple[int, int], mask_ratio: float, block: int):
    """Pixio's block masking: whole block×block squares of patches are masked or kept together.

    ``noise`` is B×n_blocks; the int(n_blocks·(1−r)) lowest-noise blocks are kept. Patch ids are
    ordered block by block (kept blocks first), so the MAE gather/restore machinery applies.
    """
    h, w = grid
    if h % block or w % block:
        raise ValueError(f"block masking needs a patch grid divisible by {block}, got {h}×{w}")
    B, n_blocks = noise.shape
    bw = w // block
    block_order = noise.argsort(dim=1)  # B×n_blocks
    rows = torch.div(block_order, bw, rounding_mode="floor")[..., None] * block + torch.arange(block).repeat_interleave(block)
    cols = (block_order % bw)[..., None] * block + torch.arange(block).repeat(block)
    ids_shuffle = (rows * w + cols).reshape(B, -1)
    ids_restore = ids_shuffle.argsort(dim=1)
    n_keep = int(n_blocks * (1 - mask_ratio)) * block * block
    mask = torch.ones(B, h * w, device=noise.device)
    mask[:, :n_keep] = 0
    return ids_shuffle[:, :n_keep], torch.gather(mask, 1, ids_restore), ids_restore



class PixioObjective(MaskedAutoencoder):
    """Pixio: 4×4-patch block masking at 0.75, 512-wide 32-block decoder with learned positions
    (a row per CLS token), norm-pix loss on masked patches, no flip augmentation. ``masking="random"``
    swaps in MAE's per-patch masking (for ablations)."""

    def __init__(self, encoder: ViT, *, decoder_dim: int = 512, decoder_depth: int = 32, decoder_heads: int = 16,
                 decoder_pos: str = "learned", mask_ratio: float = 0.75, norm_pix_loss: bool = True,
                 masking: str = "block", mask_block: int = 4, flip: bool = False,
                 image_size: tuple[int, int] | None = None):
        if masking not in ("block", "random"):
            raise ValueError(f"masking must be block or random, got {masking!r}")
        super().__init__(encoder, decoder_dim=decoder_dim, decoder_depth=decoder_depth, decoder_heads=decoder_heads,
                         decoder_pos=decoder_pos, mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss, flip=flip,
                         image_size=image_size)
        self.masking, self.mask_block = masking, mask_block

    def masks(self, noise: torch.Tensor, grid: tuple[int, int]):
        if self.masking == "block":
            return block_masking(noise, grid, self.mask_ratio, self.mask_block)
        return random_masking(noise, self.mask_ratio)

    def noise_shape(self, batch: int, grid: tuple[int, int]) -> tuple[int, int]:
        h, w = grid
        return (batch, (h // self.mask_block) * (w // self.mask_block)) if self.masking == "block" else (batch, h * w)


def make_spec(name: str, dim: int, depth: int, heads: int, file: str | None, hf: str | None,
              img_size: int = 256, patch: int = 16, preprocess: Preprocess = PREPROCESS,
              knn_preprocess: Preprocess = KNN_PREPROCESS, decoder: dict | None = None) -> BackboneSpec:
    meta = BackboneMeta(name=name, family="pixio", patch_size=patch, embed_dim=dim, depth=depth,
                        num_cls_tokens=NUM_CLS, preprocess=preprocess, default_layers=dense_layers(depth),
                        protocol_preprocess={"knn": knn_preprocess})
    return BackboneSpec(
        name=name, family="pixio",
        build=lambda: Pixio(meta, img_size=img_size, num_heads=heads, resample=resample_bicubic),
        convert=convert, ignore=PRETRAIN_ONLY, weights_file=file, hf_repo=hf,
        random_by_default=file is None, pretrain=partial(PixioObjective, **(decoder or {})),
    )


for _size, (_dim, _depth, _heads) in {
    "b": (768, 12, 12), "l": (1024, 24, 16), "h": (1280, 32, 16), "1b": (1536, 48, 24), "5b": (3072, 48, 32),
}.items():
    register_backbone(make_spec(f"pixio-{_size}16", _dim, _depth, _heads, f"pixio_vit{_size}16.pth", f"facebook/pixio-vit{_size}16"))

# CPU-sized twin on the same code path: 16×16 grid at 128 px like the real 256 px / 16, and a
# 96-wide 4-block decoder so that quickstart pretraining fits in minutes. Depth over width (MAE,
# Table 1a: a deeper decoder leaves the encoder's last blocks less specialised to pixels): for ≈15 %
# more time, 4×96 beat 2×128 by ≈3 top-1 on the seed-0 mini world, δ1 unchanged.
register_backbone(make_spec("pixio-tiny", 192, 8, 3, None, None, img_size=128, patch=8,
                            preprocess=Preprocess(size=(128, 128), resize="squash", interpolation="bicubic"),
                            knn_preprocess=Preprocess(size=(128, 128), resize="resize-crop", resize_size=128),
                            decoder={"decoder_dim": 96, "decoder_depth": 4, "decoder_heads": 4}))
