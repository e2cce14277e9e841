"""One :class:`Component` per attention head, found by inspecting a model's modules.

A head's component owns that head's slices of the query, key and value weights and biases
and the slice of the output projection that reads the head's output. The output bias is
shared by all heads of a layer and belongs to none of them. Nothing here imports
``transformers`` or ``lightning``: Hugging Face modules are recognised by their structure
(child and attribute names) and, where a fused layout needs it, by their class name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from lightning_devinterp.components.component import Component

_HEADS_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head")
_KV_HEADS_ATTRS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")
_HEAD_DIM_ATTRS = ("head_dim", "head_size", "d_head")
_OUT_NAMES = ("o_proj", "out_proj", "dense")
# Fused query_key_value layers whose output features are laid out head by head as
# [q_h, k_h, v_h] (checked against the transformers sources of these classes).
_INTERLEAVED_CLASSES = ("GPTNeoXAttention", "BloomAttention")

_LOOKED_FOR = (
    "torch.nn.MultiheadAttention (in_proj_weight or q/k/v_proj_weight, out_proj); "
    "TransformerLens-style modules with parameters W_Q, W_K, W_V [n_heads, d_model, d_head], "
    "W_O [n_heads, d_head, d_model] and optional b_Q, b_K, b_V [n_heads, d_head]; "
    "GPT-2-style modules with Conv1D children c_attn (d_model x 3*d_model) and c_proj plus "
    "num_heads and head_dim attributes; "
    f"{' / '.join(_INTERLEAVED_CLASSES)} (fused query_key_value and dense); "
    "modules with Linear children q_proj, k_proj, v_proj and one of "
    f"{', '.join(_OUT_NAMES)}, whose head count is an attribute "
    f"({', '.join(_HEADS_ATTRS)}) or config.num_attention_heads"
)

# A head's masks, keyed by the parameter object's name relative to its attention module.
_HeadMasks = dict[str, torch.Tensor]


def attention_heads(
    model: nn.Module, kv_sharing: Literal["shared", "exclude"] = "shared"
) -> list[Component]:
    """One component per attention head of ``model``, named ``l{layer}h{head}``.

    Attention modules are numbered ``layer = 0, 1, ...`` in the order in which
    ``model.named_modules()`` yields them, every attention module counting as one layer,
    and heads are numbered within their module. Each component has ``group=f"l{layer}"``.
    For an ``nn.Transformer`` (as in ``lightning.pytorch.demos.Transformer``) that order
    is: every encoder layer's ``self_attn``, then per decoder layer its ``self_attn``
    followed by its ``multihead_attn`` (cross-attention); with two encoder and two decoder
    layers, ``l0``-``l1`` are the encoder, ``l2``/``l3`` decoder layer 0 (self/cross) and
    ``l4``/``l5`` decoder layer 1.

    Supported layouts (``E`` model width, ``d`` head width, head ``h`` of ``H``):

    * ``nn.MultiheadAttention``: rows ``[h*d, (h+1)*d)`` of each of the q, k, v blocks of
      the fused ``in_proj_weight`` / ``in_proj_bias`` (or of the separate
      ``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight``), entries ``h*d:(h+1)*d`` of
      ``bias_k`` / ``bias_v`` if present, and the same columns of ``out_proj.weight``.
    * GPT-2 (``Conv1D`` weights are ``(in, out)``): the head's columns in each of the
      q, k, v blocks of ``c_attn.weight`` and ``c_attn.bias`` (cross-attention: q from
      ``q_attn``, k and v from ``c_attn``), and its rows of ``c_proj.weight``.
    * GPT-NeoX and BLOOM (fused ``query_key_value`` laid out head by head as
      ``[q_h, k_h, v_h]``): rows ``[3*h*d, 3*(h+1)*d)`` of its weight and bias, and the
      head's columns of ``dense.weight``.
    * LLaMA-style ``q_proj``, ``k_proj``, ``v_proj`` and ``o_proj`` (also ``out_proj``
      or ``dense``) Linear layers: the head's rows of the q/k/v weights and biases and its
      columns of the output weight.
    * TransformerLens-style ``W_Q``, ``W_K``, ``W_V`` ``[H, E, d]``, ``W_O`` ``[H, d, E]``,
      ``b_Q``, ``b_K``, ``b_V`` ``[H, d]``: index ``h`` of the leading axis (grouped
      ``_W_K`` / ``_W_V`` / ``_b_K`` / ``_b_V`` are read the same way as k/v heads).

    Grouped-query and multi-query attention: query head ``h`` reads key/value head
    ``h // (H // H_kv)``. With ``kv_sharing="shared"`` (default) every query head's
    component owns its own q and output slices plus the k/v slices of the key/value head
    it reads, so the components of the query heads in one group overlap on those k/v
    entries (a head's refined LLC then measures everything that head computes with). With
    ``kv_sharing="exclude"`` k/v slices read by more than one query head belong to no
    component, so components never overlap but heads lose their key/value weights. Without
    grouping (``H_kv == H``) the two options agree and heads never overlap.

    Other parameters of an attention module (output bias, q/k norms, rotary tables) are
    shared by its heads and belong to none of them.

    Args:
        model: the model (or a LightningModule wrapping it); mask names are the names in
            ``model.named_parameters()``.
        kv_sharing: ``"shared"`` or ``"exclude"``, see above.

    Returns:
        The head components, layer by layer, heads in order. Masks are bool tensors on the
        device of their parameters.

    Raises:
        ValueError: no supported attention module was found (the message lists what was
            looked for and how to pass components explicitly), a recognised attention
            module's head count or shapes are inconsistent, or ``kv_sharing`` is invalid.
    """
    if kv_sharing not in ("shared", "exclude"):
        raise ValueError(f"kv_sharing must be 'shared' or 'exclude', got {kv_sharing!r}.")
    global_names = {id(p): name for name, p in model.named_parameters()}
    components: list[Component] = []
    found: list[str] = []
    for path, module in model.named_modules():
        if any(parent == "" or path.startswith(parent + ".") for parent in found):
            continue
        heads = _detect(module, path, kv_sharing == "exclude")
        if heads is None:
            continue
        layer = len(found)
        found.append(path)
        for h, local_masks in enumerate(heads):
            masks = {}
            for local, mask in local_masks.items():
                param = module.get_parameter(local)
                if id(param) in global_names and bool(mask.any()):
                    masks[global_names[id(param)]] = mask.to(param.device)
            components.append(Component(f"l{layer}h{h}", masks, group=f"l{layer}"))
    if not found:
        raise ValueError(
            f"attention_heads found no attention module in {type(model).__name__}. It looks "
            f"for: {_LOOKED_FOR}. For another architecture pass the components explicitly, "
            "e.g. Component('l0h0', {param_name: bool_mask}) or "
            "Component.from_patterns(model, 'layers.0.attn.*')."
        )
    return components


def _detect(module: nn.Module, path: str, exclude_shared_kv: bool) -> list[_HeadMasks] | None:
    """Per-head masks of ``module`` if it is a supported attention module, else None."""
    detectors: tuple[Callable[[nn.Module, str], list[_HeadMasks] | None], ...] = (
        _transformer_lens,
        _multihead_attention,
        _gpt2,
        _interleaved_qkv,
        _separate_qkv,
    )
    for detect in detectors:
        heads = detect(module, path)
        if heads is not None:
            return _drop_shared_kv(heads) if exclude_shared_kv else heads
    return None


class _Builder:
    """Collects, for each head, boolean masks of a module's parameters."""

    def __init__(self, module: nn.Module, n_heads: int) -> None:
        self.module = module
        self.heads: list[_HeadMasks] = [{} for _ in range(n_heads)]

    def add(self, head: int, local: str, index: tuple) -> None:
        """Mark ``param[index]`` for ``head``; a missing parameter (no bias) is skipped."""
        try:
            param = self.module.get_parameter(local)
        except AttributeError:
            return
        if param is None:
            return
        masks = self.heads[head]
        if local not in masks:
            masks[local] = torch.zeros(param.shape, dtype=torch.bool)  # moved at the end
        masks[local][index] = True


def _drop_shared_kv(heads: list[_HeadMasks]) -> list[_HeadMasks]:
    """Remove entries owned by more than one head (the shared k/v slices)."""
    counts = {}
    for masks in heads:
        for local, mask in masks.items():
            counts[local] = counts.get(local, 0) + mask.long()
    return [
        {local: mask & (counts[local] == 1) for local, mask in masks.items()} for masks in heads
    ]


def _attr(module: nn.Module, names: tuple[str, ...]) -> int | None:
    """The first integer attribute among ``names`` on the module, then on its config."""
    for owner in (module, getattr(module, "config", None)):
        for name in names:
            value = getattr(owner, name, None) if owner is not None else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def _weight(module: nn.Module, child: str) -> torch.Tensor | None:
    """The 2-D ``weight`` of a direct child, or None."""
    sub = getattr(module, child, None)
    weight = getattr(sub, "weight", None) if isinstance(sub, nn.Module) else None
    return weight if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None


def _bad(path: str, what: str) -> ValueError:
    return ValueError(
        f"Attention module {path!r}: {what}. Pass its head components explicitly, e.g. with "
        "Component(name, masks)."
    )


def _transformer_lens(module: nn.Module, path: str) -> list[_HeadMasks] | None:
    """Parameters W_Q/W_K/W_V [H, E, d], W_O [H, d, E], biases [H, d]."""
    own = dict(module.named_parameters(recurse=False))
    k, v = ("W_K", "W_V") if "W_K" in own else ("_W_K", "_W_V")
    if not all(n in own for n in ("W_Q", "W_O", k, v)):
        return None
    w_q, w_o, w_k, w_v = own["W_Q"], own["W_O"], own[k], own[v]
    if any(w.dim() != 3 for w in (w_q, w_o, w_k, w_v)):
        return None
    n_heads, d_model, d_head = w_q.shape
    n_kv = w_k.shape[0]
    if (
        tuple(w_o.shape) != (n_heads, d_head, d_model)
        or tuple(w_k.shape[1:]) != (d_model, d_head)
        or w_v.shape != w_k.shape
        or n_heads % n_kv
    ):
        return None
    group = n_heads // n_kv
    biases = {"b_Q": n_heads, k.replace("W", "b"): n_kv, v.replace("W", "b"): n_kv}
    builder = _Builder(module, n_heads)
    for h in range(n_heads):
        for name in ("W_Q", "W_O"):
            builder.add(h, name, (h,))
        for name in (k, v):
            builder.add(h, name, (h // group,))
        for name, count in biases.items():
            if name in own and tuple(own[name].shape) == (count, d_head):
                builder.add(h, name, (h if count == n_heads else h // group,))
    return builder.heads


def _multihead_attention(module: nn.Module, path: str) -> list[_HeadMasks] | None:
    """``torch.nn.MultiheadAttention``, fused or separate input projections."""
    if not isinstance(module, nn.MultiheadAttention):
        return None
    n_heads, d_head, width = module.num_heads, module.head_dim, module.embed_dim
    builder = _Builder(module, n_heads)
    for h in range(n_heads):
        rows = slice(h * d_head, (h + 1) * d_head)
        for block in range(3):
            block_rows = slice(block * width + rows.start, block * width + rows.stop)
            if module._qkv_same_embed_dim:
                builder.add(h, "in_proj_weight", (block_rows,))
            else:
                builder.add(h, ("q_proj_weight", "k_proj_weight", "v_proj_weight")[block], (rows,))
            builder.add(h, "in_proj_bias", (block_rows,))
        for name in ("bias_k", "bias_v"):
            builder.add(h, name, (..., rows))
        builder.add(h, "out_proj.weight", (slice(None), rows))
    return builder.heads


def _gpt2(module: nn.Module, path: str) -> list[_HeadMasks] | None:
    """GPT-2 ``Conv1D`` layers: ``c_attn`` (E, 3E) [q | k | v] columns, ``c_proj`` rows."""
    c_attn, c_proj = _weight(module, "c_attn"), _weight(module, "c_proj")
    n_heads, d_head = _attr(module, ("num_heads",)), _attr(module, ("head_dim",))
    if c_attn is None or c_proj is None or n_heads is None or d_head is None:
        return None
    width = n_heads * d_head
    q_attn = _weight(module, "q_attn")  # cross-attention: q_attn [q], c_attn [k | v]
    fused = ["k", "v"] if q_attn is not None else ["q", "k", "v"]
    if c_attn.shape[1] != len(fused) * width or c_proj.shape[0] != width:
        return None
    if q_attn is not None and q_attn.shape[1] != width:
        raise _bad(path, f"q_attn.weight has shape {tuple(q_attn.shape)}, expected (*, {width})")
    builder = _Builder(module, n_heads)
    for h in range(n_heads):
        cols = slice(h * d_head, (h + 1) * d_head)
        if q_attn is not None:
            builder.add(h, "q_attn.weight", (slice(None), cols))
            builder.add(h, "q_attn.bias", (cols,))
        for block in range(len(fused)):
            block_cols = slice(block * width + cols.start, block * width + cols.stop)
            builder.add(h, "c_attn.weight", (slice(None), block_cols))
            builder.add(h, "c_attn.bias", (block_cols,))
        builder.add(h, "c_proj.weight", (cols,))
    return builder.heads


def _interleaved_qkv(module: nn.Module, path: str) -> list[_HeadMasks] | None:
    """GPT-NeoX / BLOOM: ``query_key_value`` rows grouped per head as [q_h, k_h, v_h]."""
    if type(module).__name__ not in _INTERLEAVED_CLASSES:
        return None
    qkv, dense = _weight(module, "query_key_value"), _weight(module, "dense")
    n_heads = _attr(module, _HEADS_ATTRS)
    if qkv is None or dense is None or n_heads is None:
        raise _bad(path, "expected query_key_value and dense Linear layers and a head count")
    d_head = _attr(module, _HEAD_DIM_ATTRS) or qkv.shape[0] // (3 * n_heads)
    if qkv.shape[0] != 3 * n_heads * d_head or dense.shape[1] != n_heads * d_head:
        raise _bad(
            path,
            f"query_key_value {tuple(qkv.shape)} / dense {tuple(dense.shape)} do not match "
            f"{n_heads} heads of width {d_head}",
        )
    builder = _Builder(module, n_heads)
    for h in range(n_heads):
        rows = slice(3 * h * d_head, 3 * (h + 1) * d_head)
        builder.add(h, "query_key_value.weight", (rows,))
        builder.add(h, "query_key_value.bias", (rows,))
        builder.add(h, "dense.weight", (slice(None), slice(h * d_head, (h + 1) * d_head)))
    return builder.heads


def _separate_qkv(module: nn.Module, path: str) -> list[_HeadMasks] | None:
    """Linear ``q_proj``/``k_proj``/``v_proj`` and ``o_proj``/``out_proj``/``dense``."""
    weights = [_weight(module, n) for n in ("q_proj", "k_proj", "v_proj")]
    out_name = next((n for n in _OUT_NAMES if _weight(module, n) is not None), None)
    if any(w is None for w in weights) or out_name is None:
        return None
    w_q, w_k, w_v = weights
    w_o = _weight(module, out_name)
    n_heads = _attr(module, _HEADS_ATTRS)
    if n_heads is None:
        raise _bad(
            path,
            f"has q_proj/k_proj/v_proj/{out_name} but no head count (looked for attributes "
            f"{', '.join(_HEADS_ATTRS)} on the module and on its config)",
        )
    d_head = _attr(module, _HEAD_DIM_ATTRS) or w_q.shape[0] // n_heads
    n_kv = _attr(module, _KV_HEADS_ATTRS) or w_k.shape[0] // d_head
    if (
        w_q.shape[0] != n_heads * d_head
        or w_o.shape[1] != n_heads * d_head
        or w_k.shape[0] != n_kv * d_head
        or w_v.shape[0] != n_kv * d_head
        or n_heads % n_kv
    ):
        raise _bad(
            path,
            f"q/k/v/{out_name} weights {[tuple(w.shape) for w in (w_q, w_k, w_v, w_o)]} do not "
            f"match {n_heads} query heads and {n_kv} key/value heads of width {d_head}",
        )
    group = n_heads // n_kv
    builder = _Builder(module, n_heads)
    for h in range(n_heads):
        rows = slice(h * d_head, (h + 1) * d_head)
        kv_head = h // group
        kv_rows = slice(kv_head * d_head, (kv_head + 1) * d_head)
        builder.add(h, "q_proj.weight", (rows,))
        builder.add(h, "q_proj.bias", (rows,))
        for name in ("k_proj", "v_proj"):
            builder.add(h, f"{name}.weight", (kv_rows,))
            builder.add(h, f"{name}.bias", (kv_rows,))
        builder.add(h, f"{out_name}.weight", (slice(None), rows))
    return builder.heads
