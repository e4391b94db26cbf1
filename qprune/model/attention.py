"""Attention heads as units: ``nn.MultiheadAttention``, torchvision's Swin window attention, timm's
``Attention``.

A head ``h`` is one unit (``Unit.kind == "head"``, label ``"<attention module>:<h>"``): its rows
of the q/k/v projections (weights and biases; its column of Swin's relative-position-bias table)
and its columns of the output projection. Heads are computed independently (softmax within the
head), so zeroing head ``h``'s output at the output projection's input equals removing the head:

* gate: a pre-hook on the output projection zeroes the head's columns (``Unit.inputs``). Where the
  module's own forward uses the projection's weights functionally (``nn.MultiheadAttention``,
  torchvision's ``ShiftedWindowAttention``) the hook would never fire, so gates and probes install
  a *routed* forward (:func:`routed`): the same computation with the projections called as
  modules, the head count read from the weights' shapes (so cut weights work too);
* removal: :class:`HeadMultiheadAttention` / :class:`HeadWindowAttention` (ours; the same
  parameter names, fewer heads) replace the torch/torchvision modules; timm's module is cut in
  place (``num_heads``, ``attn_dim``).

Not supported (the reason goes to ``FilterSpace.excluded``): ``add_bias_kv`` / ``add_zero_attn``,
Swin V2's cosine attention (per-head logit scale and position-bias MLP), timm attention with an
output gate or a norm over the heads' outputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F

from qprune.model.units import Slice

__all__ = [
    "ADAPTERS", "HeadMultiheadAttention", "HeadWindowAttention", "adapter_for", "head_geometry", "routed",
]

_ROUTE = "forward"  # the instance attribute that overrides the class's forward while routed


def _is_swin(m: nn.Module) -> bool:
    return type(m).__name__ == "ShiftedWindowAttention" and type(m).__module__.startswith("torchvision")


def _is_timm(m: nn.Module) -> bool:
    return type(m).__name__ == "Attention" and type(m).__module__.startswith("timm") and all(
        hasattr(m, a) for a in ("qkv", "proj", "num_heads", "head_dim", "attn_dim"))


def adapter_for(m: nn.Module) -> str | None:
    """The adapter kind for an attention module (a key of :data:`ADAPTERS`), or None."""
    if isinstance(m, (nn.MultiheadAttention, HeadMultiheadAttention)):
        return "mha"
    if _is_swin(m) or isinstance(m, HeadWindowAttention):
        return "swin"
    if _is_timm(m):
        return "timm"
    return None


def unsupported(m: nn.Module) -> str | None:
    """Why an attention module's heads cannot be units (None: they can); also flags Swin V2."""
    if type(m).__name__ == "ShiftedWindowAttentionV2":
        return "Swin V2 attention (per-head logit scale and position-bias MLP) is not supported"
    kind = adapter_for(m)
    if kind == "mha" and isinstance(m, nn.MultiheadAttention):
        if m.bias_k is not None or m.add_zero_attn:
            return "MultiheadAttention with add_bias_kv / add_zero_attn is not supported"
    if kind == "timm":
        if getattr(m, "gate", None) is not None or not isinstance(getattr(m, "norm", nn.Identity()), nn.Identity):
            return "timm attention with an output gate or a norm over the heads is not supported"
    return None if kind is not None else "not an attention module qprune knows"


def head_geometry(m: nn.Module) -> tuple[int, int]:
    """``(heads, head_dim)`` of an attention module, from its weights' shapes."""
    kind = adapter_for(m)
    if kind == "mha":
        rows = (m.in_proj_weight.shape[0] // 3 if m.in_proj_weight is not None else m.q_proj_weight.shape[0])
        return rows // m.head_dim, int(m.head_dim)
    if kind == "swin":
        hd = _swin_head_dim(m)
        return m.qkv.weight.shape[0] // (3 * hd), hd
    return m.qkv.weight.shape[0] // (3 * m.head_dim), int(m.head_dim)


def _swin_head_dim(m: nn.Module) -> int:
    return int(getattr(m, "head_dim", 0) or m.qkv.weight.shape[0] // 3 // m.num_heads)


def out_projection(path: str, m: nn.Module) -> str:
    """Path of the module whose input columns carry the heads' outputs (the gate site)."""
    return f"{path}.out_proj" if adapter_for(m) == "mha" else f"{path}.proj"


def head_slices(path: str, m: nn.Module, h: int) -> tuple[tuple[Slice, ...], tuple[Slice, ...]]:
    """``(slices, filters)`` of head ``h``: everything it removes, and its q/k/v rows + biases."""
    heads, hd = head_geometry(m)
    cols = tuple(range(h * hd, (h + 1) * hd))
    kind = adapter_for(m)
    if kind == "mha":
        filters: list[Slice]
        if m.in_proj_weight is not None:
            rows = tuple(s * heads * hd + c for s in range(3) for c in cols)
            filters = [(f"{path}.in_proj_weight", 0, rows)]
        else:
            filters = [(f"{path}.{w}_proj_weight", 0, cols) for w in "qkv"]
            rows = tuple(s * heads * hd + c for s in range(3) for c in cols)
        if m.in_proj_bias is not None:
            filters.append((f"{path}.in_proj_bias", 0, rows))
        extra: list[Slice] = [(f"{path}.out_proj.weight", 1, cols)]
    else:
        rows = tuple(s * heads * hd + c for s in range(3) for c in cols)
        filters = [(f"{path}.qkv.weight", 0, rows)]
        if m.qkv.bias is not None:
            filters.append((f"{path}.qkv.bias", 0, rows))
        extra = [(f"{path}.proj.weight", 1, cols)]
        if kind == "swin":
            extra.append((f"{path}.relative_position_bias_table", 1, (h,)))
    return tuple(sorted(filters + extra)), tuple(sorted(filters))


# ----------------------------------------------------------------------------- routed forwards
def _mha_forward(
    m: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None, need_weights: bool = True, attn_mask: torch.Tensor | None = None,
    average_attn_weights: bool = True, is_causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``nn.MultiheadAttention``'s computation with ``out_proj`` called as a module."""
    if not m.batch_first:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    hd = int(m.head_dim)
    if m.in_proj_weight is not None:
        wq, wk, wv = m.in_proj_weight.chunk(3)
    else:
        wq, wk, wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
    bq = bk = bv = None
    if m.in_proj_bias is not None:
        bq, bk, bv = m.in_proj_bias.chunk(3)
    h = wq.shape[0] // hd
    n, lq, lk = query.shape[0], query.shape[1], key.shape[1]
    q = F.linear(query, wq, bq).view(n, lq, h, hd).transpose(1, 2)
    k = F.linear(key, wk, bk).view(n, lk, h, hd).transpose(1, 2)
    v = F.linear(value, wv, bv).view(n, lk, h, hd).transpose(1, 2)
    scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
    bias = _mask_bias(m, attn_mask, key_padding_mask, is_causal, n, h, lq, lk, scores.dtype, scores.device)
    if bias is not None:
        scores = scores + bias
    attn = F.dropout(torch.softmax(scores, dim=-1), p=float(m.dropout), training=m.training)
    out = torch.matmul(attn, v).transpose(1, 2).reshape(n, lq, h * hd)
    out = m.out_proj(out)
    if not m.batch_first:
        out = out.transpose(0, 1)
    weights = (attn.mean(dim=1) if average_attn_weights else attn) if need_weights else None
    return out, weights


def _mask_bias(
    m: nn.Module, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, is_causal: bool,
    n: int, h: int, lq: int, lk: int, dtype: torch.dtype, device: torch.device,
) -> torch.Tensor | None:
    """The additive mask ``[n or 1, h or 1, lq, lk]`` from MultiheadAttention's mask arguments."""
    def additive(mask: torch.Tensor) -> torch.Tensor:
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(mask, float("-inf"))
        return mask.to(dtype)

    bias = None
    if attn_mask is None and is_causal:
        attn_mask = torch.ones(lq, lk, dtype=torch.bool, device=device).triu(1)
    if attn_mask is not None:
        a = additive(attn_mask)
        if a.dim() == 3:  # [n * heads, lq, lk] with the module's heads at construction
            a = a.view(n, -1, lq, lk)
            kept = getattr(m, "source_heads", None)
            if kept is not None:
                a = a[:, list(kept)]
        bias = a
    if key_padding_mask is not None:
        kp = additive(key_padding_mask).view(n, 1, 1, lk)
        bias = kp if bias is None else bias + kp
    return bias


def _window_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision's ``shifted_window_attention`` (V1) with ``qkv``/``proj`` called as modules and
    the head size explicit (torchvision derives it from the input width, which pruning keeps)."""
    b, hh, ww, c = x.shape
    ws, shift = list(m.window_size), list(m.shift_size)
    hd = _swin_head_dim(m)
    pad_r, pad_b = (ws[1] - ww % ws[1]) % ws[1], (ws[0] - hh % ws[0]) % ws[0]
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    _, ph, pw, _ = x.shape
    if ws[0] >= ph:
        shift[0] = 0
    if ws[1] >= pw:
        shift[1] = 0
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    nw = (ph // ws[0]) * (pw // ws[1])
    x = x.view(b, ph // ws[0], ws[0], pw // ws[1], ws[1], c).permute(0, 1, 3, 2, 4, 5).reshape(b * nw, ws[0] * ws[1], c)
    qkv = m.qkv(x)
    heads = qkv.shape[-1] // (3 * hd)
    qkv = qkv.reshape(x.size(0), x.size(1), 3, heads, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q * hd ** -0.5).matmul(k.transpose(-2, -1)) + m.get_relative_position_bias()
    if sum(shift) > 0:
        mask = x.new_zeros((ph, pw))
        count = 0
        for hs in ((0, -ws[0]), (-ws[0], -shift[0]), (-shift[0], None)):
            for wsl in ((0, -ws[1]), (-ws[1], -shift[1]), (-shift[1], None)):
                mask[hs[0]:hs[1], wsl[0]:wsl[1]] = count
                count += 1
        mask = mask.view(ph // ws[0], ws[0], pw // ws[1], ws[1]).permute(0, 2, 1, 3).reshape(nw, ws[0] * ws[1])
        mask = mask.unsqueeze(1) - mask.unsqueeze(2)
        mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
        attn = attn.view(x.size(0) // nw, nw, heads, x.size(1), x.size(1)) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, x.size(1), x.size(1))
    attn = F.dropout(F.softmax(attn, dim=-1), p=float(m.attention_dropout), training=m.training)
    x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), heads * hd)
    x = F.dropout(m.proj(x), p=float(m.dropout), training=m.training)
    x = x.view(b, ph // ws[0], pw // ws[1], ws[0], ws[1], -1).permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, -1)
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    return x[:, :hh, :ww, :].contiguous()


def _timm_forward(m: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                  is_causal: bool = False) -> torch.Tensor:
    """timm's ``Attention.forward`` with the head count read from ``qkv``'s weight (cut weights)."""
    b, n, _ = x.shape
    hd = int(m.head_dim)
    qkv = m.qkv(x)
    heads = qkv.shape[-1] // (3 * hd)
    q, k, v = qkv.reshape(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = m.q_norm(q), m.k_norm(k)
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                       dropout_p=m.attn_drop.p if m.training else 0.0)
    x = m.norm(x.transpose(1, 2).reshape(b, n, heads * hd))
    return m.proj_drop(m.proj(x))


_FORWARDS = {"mha": _mha_forward, "swin": _window_forward, "timm": _timm_forward}
#: adapter kind -> whether gates need the routed forward (the module uses its projection functionally)
ADAPTERS: dict[str, bool] = {"mha": True, "swin": True, "timm": False}


class _Routed:
    """A module's routed forward (an instance attribute: ``nn.Module.__call__`` finds it first)."""

    def __init__(self, module: nn.Module, kind: str) -> None:
        self.module, self.kind, self.count = module, kind, 1

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _FORWARDS[self.kind](self.module, *args, **kwargs)


class routed:  # noqa: N801 - used like a function: ``with routed(modules): ...`` or .close()
    """Install the routed forward on ``modules`` (counted: nested routes share one); ``close()``
    (or leaving the ``with`` block) takes it off again."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = list(modules)
        for m in self.modules:
            r = m.__dict__.get(_ROUTE)
            if isinstance(r, _Routed):
                r.count += 1
            else:
                m.__dict__[_ROUTE] = _Routed(m, adapter_for(m) or "")

    def close(self) -> None:
        """Take the routes off (idempotent)."""
        for m in self.modules:
            r = m.__dict__.get(_ROUTE)
            if isinstance(r, _Routed):
                r.count -= 1
                if r.count <= 0:
                    del m.__dict__[_ROUTE]
        self.modules = []

    def __enter__(self) -> routed:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def strip_routes(model: nn.Module) -> None:
    """Remove every routed forward (e.g. the ones a deep copy of a gated model carries)."""
    for m in model.modules():
        if isinstance(m.__dict__.get(_ROUTE), _Routed):
            del m.__dict__[_ROUTE]


# ----------------------------------------------------------------------------- removal
def _rows(heads: int, hd: int, keep: Sequence[int]) -> list[int]:
    return [s * heads * hd + h * hd + j for s in range(3) for h in keep for j in range(hd)]


def _select(p: torch.Tensor | None, dim: int, idx: Sequence[int]) -> nn.Parameter | None:
    if p is None:
        return None
    return nn.Parameter(p.detach().index_select(dim, torch.as_tensor(list(idx), device=p.device)).clone(),
                        requires_grad=p.requires_grad)


class HeadMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with only some of its heads (same call signature and parameter names)."""

    def __init__(self, src: nn.Module, keep: Sequence[int]) -> None:
        super().__init__()
        heads, hd = head_geometry(src)
        keep = sorted(int(h) for h in keep)
        self.embed_dim, self.kdim, self.vdim = src.embed_dim, src.kdim, src.vdim
        self.num_heads, self.head_dim, self.batch_first = len(keep), hd, src.batch_first
        self.dropout = float(src.dropout)
        self._qkv_same_embed_dim = src.in_proj_weight is not None
        base = list(getattr(src, "source_heads", range(heads)))
        self.source_heads = [base[h] for h in keep]  # the original heads, for per-head 3-D masks
        rows = _rows(heads, hd, keep)
        cols = [h * hd + j for h in keep for j in range(hd)]
        self.in_proj_weight = _select(src.in_proj_weight, 0, rows)
        for w in "qkv":
            setattr(self, f"{w}_proj_weight", _select(getattr(src, f"{w}_proj_weight", None), 0, cols))
        self.in_proj_bias = _select(src.in_proj_bias, 0, rows)
        self.out_proj = nn.Linear(len(cols), src.out_proj.out_features, bias=src.out_proj.bias is not None)
        self.out_proj.weight = _select(src.out_proj.weight, 1, cols)
        if src.out_proj.bias is not None:
            self.out_proj.bias = nn.Parameter(src.out_proj.bias.detach().clone())

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_padding_mask:
                torch.Tensor | None = None, need_weights: bool = True, attn_mask: torch.Tensor | None = None,
                average_attn_weights: bool = True, is_causal: bool = False) -> tuple[torch.Tensor, Any]:
        """Same arguments and results as ``nn.MultiheadAttention.forward`` (weights over the kept heads)."""
        return _mha_forward(self, query, key, value, key_padding_mask, need_weights, attn_mask,
                            average_attn_weights, is_causal)


class HeadWindowAttention(nn.Module):
    """torchvision's ``ShiftedWindowAttention`` with only some of its heads (same parameter names)."""

    def __init__(self, src: nn.Module, keep: Sequence[int]) -> None:
        super().__init__()
        heads, hd = head_geometry(src)
        keep = sorted(int(h) for h in keep)
        self.window_size, self.shift_size = list(src.window_size), list(src.shift_size)
        self.num_heads, self.head_dim = len(keep), hd
        self.attention_dropout, self.dropout = float(src.attention_dropout), float(src.dropout)
        rows = _rows(heads, hd, keep)
        cols = [h * hd + j for h in keep for j in range(hd)]
        self.qkv = nn.Linear(src.qkv.in_features, len(rows), bias=src.qkv.bias is not None)
        self.qkv.weight = _select(src.qkv.weight, 0, rows)
        self.qkv.bias = _select(src.qkv.bias, 0, rows)
        self.proj = nn.Linear(len(cols), src.proj.out_features, bias=src.proj.bias is not None)
        self.proj.weight = _select(src.proj.weight, 1, cols)
        if src.proj.bias is not None:
            self.proj.bias = nn.Parameter(src.proj.bias.detach().clone())
        self.relative_position_bias_table = _select(src.relative_position_bias_table, 1, keep)
        self.register_buffer("relative_position_index", src.relative_position_index.detach().clone())

    def get_relative_position_bias(self) -> torch.Tensor:
        """``[1, heads, N, N]`` bias of the kept heads (as torchvision builds it)."""
        n = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index]
        return bias.view(n, n, -1).permute(2, 0, 1).contiguous().unsqueeze(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, C]`` -> ``[B, H, W, C]``, as the module it replaces."""
        return _window_forward(self, x)


def prune_heads(model: nn.Module, path: str, pruned: Sequence[int]) -> None:
    """Remove heads ``pruned`` of the attention module at ``path`` (in place, replacing the module
    by ours where the original cannot hold fewer heads)."""
    modules = dict(model.named_modules())
    m = modules[path]
    heads, hd = head_geometry(m)
    gone = set(int(h) for h in pruned)
    keep = [h for h in range(heads) if h not in gone]
    kind = adapter_for(m)
    if kind == "timm":  # timm's module reads num_heads/attn_dim: cut it in place with torch-pruning's pruners
        tp.prune_linear_out_channels(m.qkv, [r for r in range(3 * heads * hd) if r not in set(_rows(heads, hd, keep))])
        tp.prune_linear_in_channels(m.proj, [h * hd + j for h in sorted(gone) for j in range(hd)])
        m.num_heads, m.attn_dim = len(keep), len(keep) * hd
        return
    new = HeadMultiheadAttention(m, keep) if kind == "mha" else HeadWindowAttention(m, keep)
    new.train(m.training)
    parent_path, _, leaf = path.rpartition(".")
    parent = modules[parent_path] if parent_path else model
    setattr(parent, leaf, new)


# ----------------------------------------------------------------------------- MACs
def head_macs(m: nn.Module, args: tuple, kwargs: dict, out: Any) -> tuple[int, bool]:
    """``(MACs per head of this call, whether the projections are counted here)``.

    MultiheadAttention and Swin use their projections functionally, so their q/k/v and output
    projections are counted here, per head, with the two attention products; timm calls its
    ``qkv``/``proj`` as modules (counted as linears), so only the products are counted here.
    """
    kind = adapter_for(m)
    _, hd = head_geometry(m)
    if kind == "mha":
        q = args[0] if args else kwargs["query"]
        k = args[1] if len(args) > 1 else kwargs["key"]
        v = args[2] if len(args) > 2 else kwargs["value"]
        bdim = 0 if m.batch_first else 1
        n, lq, lk = q.shape[bdim], q.shape[1 - bdim], k.shape[1 - bdim]
        e_out = m.out_proj.out_features
        per = hd * (q.shape[-1] * lq + k.shape[-1] * lk + v.shape[-1] * lk + e_out * lq + 2 * lq * lk)
        return int(n * per), True
    x = args[0] if args else kwargs["x"]
    if kind == "swin":
        b, hh, ww, c = x.shape
        ws = m.window_size
        ph, pw = hh + (ws[0] - hh % ws[0]) % ws[0], ww + (ws[1] - ww % ws[1]) % ws[1]
        tokens = b * ph * pw
        per = tokens * hd * (3 * c + m.proj.out_features) + 2 * tokens * ws[0] * ws[1] * hd
        return int(per), True
    b, n, _ = x.shape
    return int(2 * b * n * n * hd), False
