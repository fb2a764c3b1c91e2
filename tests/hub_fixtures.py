"""Tiny ViTs and fake checkpoints in the layouts of the reference implementations (tests of mimkit.hub)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from pathlib import Path

import timm
import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

ARCH = "vit_tiny_patch16_224"
TINY: dict = dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2)
P, D, GRID, C = 4, 64, 8, 3  # patch, width, grid side, channels of TINY
L = GRID * GRID
LATENT_MIM_EPS = 1e-6  # Latent MIM builds its ViT with LayerNorm(eps=1e-6) and qkv_bias=True
PILAMIM_EPS = 1e-5  # PiLaMIM: Block(dim, heads) with timm 1.0.7's defaults: nn.LayerNorm (eps 1e-5), no qkv bias


def latent_mim_block() -> Block:
    return Block(D, TINY["num_heads"], qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=LATENT_MIM_EPS))


def pilamim_block() -> Block:
    return Block(D, TINY["num_heads"], qkv_bias=False, norm_layer=partial(nn.LayerNorm, eps=PILAMIM_EPS))


class Opaque:
    """A Python object that a safe (weights_only) torch.load refuses."""


def tiny_vit(seed: int = 0, **overrides) -> VisionTransformer:
    """A TINY timm ViT (num_classes=0) with every parameter drawn from N(0, 0.1^2)."""
    vit = timm.create_model(ARCH, pretrained=False, num_classes=0, **{**TINY, **overrides})
    randomize_(vit, seed)
    return vit.eval()


@torch.no_grad()
def randomize_(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.copy_(0.1 * torch.randn(p.shape, generator=g))


def timm_state(seed: int = 0, **overrides) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in tiny_vit(seed, **overrides).state_dict().items()}


def rand(*shape: int, seed: int) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- MAE


def mae_checkpoint(state: dict[str, Tensor]) -> dict:
    """A full MAE pre-training checkpoint: encoder in timm names + decoder, optimizer, args."""
    decoder = {
        "mask_token": rand(1, 1, 32, seed=1),
        "decoder_embed.weight": rand(32, D, seed=2),
        "decoder_embed.bias": rand(32, seed=3),
        "decoder_pos_embed": rand(1, 1 + L, 32, seed=4),
        "decoder_blocks.0.norm1.weight": rand(32, seed=5),
        "decoder_norm.weight": rand(32, seed=6),
        "decoder_pred.weight": rand(P * P * C, 32, seed=7),
    }
    return {
        "model": {**state, **decoder},
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
        "epoch": 799,
        "args": argparse.Namespace(model="mae_vit_tiny", mask_ratio=0.75, norm_pix_loss=True),
    }


# --------------------------------------------------------------------------- Latent MIM


def latent_mim_encoder(seed: int, prefix: str) -> dict[str, Tensor]:
    """Latent MIM encoder weights drawn directly in that layout (no timm involved)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: 0.1 * torch.randn(s, generator=g)  # noqa: E731
    sd = {
        f"{prefix}cls_token": r(1, 1, D),
        f"{prefix}pos_embed.pos_embeds": r(1 + L, D),  # (1+L, D), row 0 for CLS
        f"{prefix}embed.proj.weight": r(D, P * P * C),  # (D, P*P*C), pixels (row, col, channel)
        f"{prefix}embed.proj.bias": r(D),
        f"{prefix}norm.weight": 1 + r(D),
        f"{prefix}norm.bias": r(D),
        f"{prefix}head.0.weight": r(128, D),  # projector
        f"{prefix}head.0.bias": r(128),
    }
    for i in range(TINY["depth"]):
        for k, v in latent_mim_block().state_dict().items():
            sd[f"{prefix}blocks.{i}.{k}"] = r(*v.shape)
    return sd


def latent_mim_checkpoint(module_prefix: bool = False) -> dict:
    sd = {**latent_mim_encoder(10, "encoder."), **latent_mim_encoder(20, "target_encoder.")}
    sd["decoder.mask_token"] = rand(1, 1, D, seed=30)
    sd["decoder.blocks.0.attn.qkv.weight"] = rand(3 * D, D, seed=31)
    if module_prefix:
        sd = {f"module.{k}": v for k, v in sd.items()}
    return {"state_dict": sd, "epoch": 3, "global_step": 1200}


def latent_mim_features(sd: dict[str, Tensor], images: Tensor, prefix: str = "encoder.") -> Tensor:
    """The Latent MIM encoder computed by hand in its own layout: images (B, C, H, W) -> (B, 1+L, D)."""
    B, _, H, W = images.shape
    gh, gw = H // P, W // P
    patches = images.reshape(B, C, gh, P, gw, P).permute(0, 2, 4, 3, 5, 1).reshape(B, gh * gw, P * P * C)  # (row, col, channel)
    x = patches @ sd[f"{prefix}embed.proj.weight"].T + sd[f"{prefix}embed.proj.bias"]  # (B, L, D)
    pos = sd[f"{prefix}pos_embed.pos_embeds"]  # (1+L, D)
    x = x + pos[1:]
    cls = sd[f"{prefix}cls_token"].reshape(1, 1, D).expand(B, -1, -1) + pos[0]  # (B, 1, D)
    x = _run_blocks(torch.cat([cls, x], dim=1), sd, f"{prefix}blocks.", latent_mim_block)
    return nn.functional.layer_norm(x, (D,), sd[f"{prefix}norm.weight"], sd[f"{prefix}norm.bias"], eps=LATENT_MIM_EPS)


# --------------------------------------------------------------------------- PiLaMIM


def pilamim_encoder(seed: int, prefix: str) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: 0.1 * torch.randn(s, generator=g)  # noqa: E731
    sd = {
        f"{prefix}cls_token": r(1, 1, D),
        f"{prefix}pos_embedding": r(L, 1, D),  # (L, 1, D), no CLS position
        f"{prefix}patchify.weight": r(D, C, P, P),
        f"{prefix}patchify.bias": r(D),
        f"{prefix}layer_norm.weight": 1 + r(D),
        f"{prefix}layer_norm.bias": r(D),
    }
    for i in range(TINY["depth"]):
        for k, v in pilamim_block().state_dict().items():
            sd[f"{prefix}transformer.{i}.{k}"] = r(*v.shape)
    return sd


def pilamim_checkpoint() -> dict[str, Tensor]:
    sd = {**pilamim_encoder(40, "encoder."), **pilamim_encoder(50, "target_encoder.")}
    sd["decoder.mask_token"] = rand(1, 1, D, seed=60)
    sd["decoder.pos_embedding"] = rand(L + 1, 1, D, seed=61)
    return sd


def pilamim_features(sd: dict[str, Tensor], images: Tensor, prefix: str = "encoder.") -> Tensor:
    """PiLaMIM's encoder computed by hand: conv patches + positions, CLS without one -> (B, 1+L, D)."""
    B = images.shape[0]
    x = nn.functional.conv2d(images, sd[f"{prefix}patchify.weight"], sd[f"{prefix}patchify.bias"], stride=P)  # (B, D, gh, gw)
    x = x.flatten(2).transpose(1, 2) + sd[f"{prefix}pos_embedding"].transpose(0, 1)  # (B, L, D)
    cls = sd[f"{prefix}cls_token"].expand(B, -1, -1)
    x = _run_blocks(torch.cat([cls, x], dim=1), sd, f"{prefix}transformer.", pilamim_block)
    return nn.functional.layer_norm(x, (D,), sd[f"{prefix}layer_norm.weight"], sd[f"{prefix}layer_norm.bias"], eps=PILAMIM_EPS)


def _run_blocks(x: Tensor, sd: dict[str, Tensor], blocks: str, make_block: Callable[[], Block]) -> Tensor:
    """x: (B, N, D) through the source's own blocks, loaded from ``sd`` under ``blocks``."""
    for i in range(TINY["depth"]):
        blk = make_block().eval()
        blk.load_state_dict({k[len(f"{blocks}{i}.") :]: v for k, v in sd.items() if k.startswith(f"{blocks}{i}.")})
        x = blk(x)
    return x


# --------------------------------------------------------------------------- Hugging Face cache


def populate_hf_cache(cache: Path, repo_id: str, files_from: Path, commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """Lay out ``models--OWNER--NAME/{refs/main, snapshots/<commit>/...}`` as huggingface_hub does."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in files_from.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot
