"""A small transformer over token ids (``model=transformer``), for ``data=modular``.

``x`` is ``[B, T]`` token ids (stored as floats, cast to integers here). The network:

- token embedding ``[vocab, width]`` plus a learned position embedding ``[T, width]``;
- ``depth`` pre-LayerNorm blocks, each ``h + attention(norm1(h))`` then ``h + mlp(norm2(h))``,
  with full (non-causal) multi-head self-attention of ``heads`` heads and an MLP
  ``Linear(width, 4 width) -> ReLU -> Linear(4 width, width)``;
- a final LayerNorm and an unembedding ``Linear(width, classes)`` reading the last position.

Attention is plain matmuls and a softmax (no fused kernels, no in-place ops, no data-dependent
control flow), so ``torch.func.functional_call`` under ``torch.func.vmap`` batches the whole
model over stacked parameters. The LayerNorms are named ``norm*`` and every bias ends in
``.bias``, so both ``optimizer.param_groups=names`` (the default ``no_decay_names``) and
``param_groups=timm`` exempt exactly the LayerNorm parameters and the biases; the embeddings
decay (as in Power et al. 2022 and Nanda et al. 2023).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"model.heads: {heads} does not divide model.width={width}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, last: bool = False) -> torch.Tensor:
        """``[B, T, width]`` -> ``[B, T, width]``; ``last``: only the last position's output
        ``[B, 1, width]`` (its query alone; the keys and values of every position)."""
        b, t, d = h.shape
        dh = d // self.heads
        q, k, v = self.qkv(h).reshape(b, t, 3, self.heads, dh).permute(2, 0, 3, 1, 4).unbind(0)
        if last:
            q, t = q[:, :, -1:], 1
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)  # [b, heads, t, T]
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width), nn.ReLU(), nn.Linear(mlp_ratio * width, width)
        )

    def forward(self, h: torch.Tensor, last: bool = False) -> torch.Tensor:
        """``last``: the block's output at the last position only, ``[B, 1, width]`` (what the
        final block computes: nothing reads the other positions after it)."""
        out = self.attn(self.norm1(h), last)
        h = (h[:, -1:] if last else h) + out
        return h + self.mlp(self.norm2(h))


class Transformer(nn.Module):
    def __init__(
        self,
        vocab: int,
        seq_len: int,
        num_classes: int,
        width: int,
        depth: int,
        heads: int,
        mlp_ratio: int = 4,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.randn(seq_len, width) * 0.02)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width)
        self.unembed = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.long()) + self.pos  # [B, T, width]
        for i, block in enumerate(self.blocks):
            h = block(h, last=i == len(self.blocks) - 1)
        return self.unembed(self.norm_out(h[:, -1]))


def build_transformer(
    input_shape: tuple[int, ...],
    num_classes: int,
    width: int,
    depth: int,
    heads: int = 4,
    vocab: int = 0,
) -> Transformer:
    """The transformer for sequences of ``input_shape[0]`` token ids; ``vocab=0``: the
    ``num_classes`` answer tokens and one separator (``data=modular``'s ``=``)."""
    if depth < 1:
        raise ValueError(f"model.depth: {depth} blocks; pass model.depth=<1 or more>")
    return Transformer(vocab or num_classes + 1, input_shape[0], num_classes, width, depth, heads)
