"""Residual-branch units: output channels of a conv whose result is added into a residual trunk.

A *branch end* is a conv or linear ``X`` whose output runs, through nothing but zero-preserving
steps (a BatchNorm right after ``X``, per-channel or scalar multiplies such as NAFNet's
``beta``/``gamma`` or a layer scale, reshapes/permutes, pixel shuffles, dropout), into an ``add``
with another tensor: NAF blocks' ``conv3``/``conv5``, the Half-UNet's upsample convs before the
skip add, a ResNet block's last conv (+ BN), ConvNeXt's ``pwconv2``, a transformer MLP's ``fc2``.

One output channel ``c`` of ``X`` is a unit of its own (``Unit.kind == "branch"``) and the trunk
stays whole:

* gate: zero channel ``c`` at the output of ``E`` (``X``, or the BatchNorm right after it;
  ``Unit.outputs``), so the add receives nothing from the branch at ``c``;
* removal: ``X`` (and ``E``) keep only their kept channels, and ``E`` becomes a
  :class:`ChannelScatter` of its own kind (``ScatterConv2d``, ``ScatterBatchNorm2d``, ...: the same
  parameters under the same names, plus an ``index`` buffer), which puts its result back at those
  channel indices of a zero tensor of the full width (``index_copy``; ``torch.export``,
  ``torch.jit.trace`` and ONNX trace it). What follows (the multiply by ``beta``, the add) sees
  exactly the gated tensor, so removed == gated by construction, and ``X``'s MACs fall with its
  channels.

Which branch ends become units is ``build_space(residual_branches=...)``: ``False`` (default) none;
``"auto"`` the ones whose channels no other layer of the space prunes (the trunk is blocked:
normalised by a LayerNorm, as in NAFNet/Half-UNet, ConvNeXt, ViT, Swin); ``True`` every branch end
(a prunable trunk, as in ResNet, is then kept whole). Off by default because on the trained F = 64
Half-UNet they made taylor-greedy's models slower and worse at equal MACs and changed neither for
hybrid-qubo (``make bench-rounding``): a branch conv's 1x1 output at full resolution is
memory-bound and its result is scattered back to the trunk's width. The paper's filters include
them (``benchmarks/paper_tables.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F
from torch_pruning import ops

from qprune.model.graph import graph_outputs
from qprune.model.mixing import op_base
from qprune.model.units import Slice, Unit, count_removed

__all__ = ["SCATTER_CLASSES", "BranchEnd", "ChannelScatter", "branch_units", "find_branch_ends", "prune_branch"]

_BN = nn.modules.batchnorm._BatchNorm
_SHUFFLES = (nn.PixelShuffle, nn.PixelUnshuffle)
# autograd ops that map a zero channel to a zero channel (one input from the branch)
_ZERO_PRESERVING = {
    "mul", "permute", "view", "unsafeview", "reshape", "reshapealias", "clone", "transpose", "expand",
    "nativedropout", "squeeze", "unsqueeze", "alias", "contiguous", "tocopy",
}
_MAX_STEPS = 32


class BranchEnd:
    """A branch end: ``x`` (the conv/linear), ``e`` (where the branch is gated and scattered
    back: ``x`` or the BatchNorm right after it), their paths and the channel dim of ``e``'s output."""

    def __init__(self, x: str, e: str, channels: int, dim: int) -> None:
        self.x, self.e, self.channels, self.dim = x, e, channels, dim

    def __repr__(self) -> str:
        return f"BranchEnd(x={self.x!r}, e={self.e!r}, channels={self.channels}, dim={self.dim})"


class ChannelScatter:
    """Mixin of a pruned branch end: its output (``len(index)`` channels along ``scatter_dim``)
    placed at channels ``index`` of a zero tensor with ``full_channels`` channels, so the trunk it
    is added into keeps its width. Combined with the module's own class (:data:`SCATTER_CLASSES`);
    the forwards call no ``super()``, so TorchScript can script them. Attributes (set by
    :func:`prune_branch`; no class annotations, which TorchScript would try to resolve):
    ``index``, ``zeros`` and ``source`` (buffers: the kept and the pruned channels, and the kept
    column of each full channel), ``full_channels``, ``scatter_dim``."""

    def _scatter(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``y`` at channels ``index`` of a zero tensor of ``full_channels``; channels-last when ``y``
        or ``like`` (the module's input) is."""
        if self.scatter_dim == 1 and y.dim() == 4 and (_is_nhwc(y) or _is_nhwc(like)):
            # an NHWC branch (behind a LayerNorm2d's permute) stays NHWC: scattered as NCHW, the trunk
            # add mixed layouts and the F = 64 Half-UNet at half its MACs ran slower than unpruned
            # (benchmarks/results/rounding.md). A one-channel result is also "contiguous": judged by
            # ``y`` alone it went NCHW and so did every layer after the trunk add
            rows = y.permute(0, 2, 3, 1)
            if 4 * y.size(1) > self.full_channels:
                # one gather per output element from [kept | one zero column]: a flat 0.8 ms at
                # 128x128x64 where a copy per kept channel cost up to 2.1 ms (k = 60 of 64)
                padded = F.pad(rows.reshape(-1, y.size(1)), (0, 1))
                out = padded.index_select(1, self.source).view(y.size(0), y.size(2), y.size(3), self.full_channels)
                return out.permute(0, 3, 1, 2)
            # few kept: zero-filled then copied is the faster order here
            nhwc = torch.zeros(y.size(0), y.size(2), y.size(3), self.full_channels, dtype=y.dtype, device=y.device)
            return nhwc.index_copy_(3, self.index, rows).permute(0, 3, 1, 2)
        # every element written once (kept channels copied, pruned ones zeroed): measured 3x
        # cheaper than zero-filling the whole tensor first and copying the kept channels over
        shape = list(y.shape)
        shape[self.scatter_dim] = self.full_channels
        out = torch.empty(shape, dtype=y.dtype, device=y.device)
        return out.index_copy_(self.scatter_dim, self.index, y).index_fill_(self.scatter_dim, self.zeros, 0.0)


def _is_nhwc(t: torch.Tensor) -> bool:
    """A 4-d tensor laid out channels-last and not also plain contiguous."""
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


class _ConvScatter(ChannelScatter):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution, its channels scattered back to the full width."""
        return self._scatter(self._conv_forward(x, self.weight, self.bias), x)  # type: ignore[attr-defined]


class _LinearScatter(ChannelScatter):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The linear layer, its features scattered back to the full width."""
        return self._scatter(F.linear(x, self.weight, self.bias), x)  # type: ignore[attr-defined]


class _BatchNormScatter(ChannelScatter):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``_BatchNorm.forward`` (copied: TorchScript has no ``super()``), then the scatter."""
        factor = 0.0 if self.momentum is None else self.momentum  # type: ignore[attr-defined]
        if self.training and self.track_running_stats:  # type: ignore[attr-defined]
            if self.num_batches_tracked is not None:  # type: ignore[attr-defined]
                self.num_batches_tracked.add_(1)  # type: ignore[attr-defined]
                factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None  # type: ignore[attr-defined]
                          else self.momentum)  # type: ignore[attr-defined]
        bn_training = self.training or (self.running_mean is None and self.running_var is None)  # type: ignore[attr-defined]
        track = not self.training or self.track_running_stats  # type: ignore[attr-defined]
        y = F.batch_norm(x, self.running_mean if track else None, self.running_var if track else None,  # type: ignore[attr-defined]
                         self.weight, self.bias, bn_training, factor, self.eps)  # type: ignore[attr-defined]
        return self._scatter(y, x)


def _scatter_class(base: type[nn.Module]) -> type[nn.Module]:
    if issubclass(base, nn.Linear):
        mixin: type = _LinearScatter
    elif issubclass(base, _BN):
        mixin = _BatchNormScatter
    elif issubclass(base, nn.modules.conv._ConvNd) and not issubclass(base, nn.modules.conv._ConvTransposeNd):
        mixin = _ConvScatter
    else:
        raise TypeError(f"a branch end of type {base.__name__} cannot scatter its channels back")
    return type(f"Scatter{base.__name__}", (mixin, base), {"__module__": __name__})


#: module class of a branch end -> its scattering subclass (module-level classes: picklable)
SCATTER_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    base: _scatter_class(base) for base in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d,
                                            nn.BatchNorm2d, nn.BatchNorm3d)
}
globals().update({cls.__name__: cls for cls in SCATTER_CLASSES.values()})


def find_branch_ends(model: nn.Module, dg: Any) -> dict[str, BranchEnd]:
    """Every branch end of the traced model, by the conv/linear path ``x`` (module order)."""
    names = {m: n for n, m in model.named_modules()}
    outputs = graph_outputs(dg)
    found: dict[str, BranchEnd] = {}
    for name, m in model.named_modules():
        if not isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) or m not in dg.module2node:
            continue
        if isinstance(m, nn.modules.conv._ConvNd) and (m.groups > 1 or m.transposed):
            continue  # a depthwise/grouped conv's outputs are tied to its inputs; no transposed scatter
        e = _walk(dg.module2node[m], outputs)
        if e is not None:
            dim = -1 if isinstance(e, nn.Linear) else 1
            n = m.out_features if isinstance(m, nn.Linear) else m.out_channels
            found[name] = BranchEnd(name, names[e], int(n), dim)
    return found


def _walk(node: Any, outputs: set[Any]) -> nn.Module | None:
    """``E`` if the output of ``node`` runs into a residual add through zero-preserving steps only."""
    end, cur = node.module, node
    for _ in range(_MAX_STEPS):
        if len(cur.outputs) != 1:
            return None  # the output is used elsewhere too: not a branch
        nxt = cur.outputs[0]
        m = nxt.module
        if isinstance(m, _BN) and cur is node and len(nxt.inputs) == 1:
            end = m
        elif isinstance(m, _SHUFFLES) or isinstance(m, ops._ReshapeOp):
            pass
        elif isinstance(m, ops._ElementWiseOp) and nxt.grad_fn is not None and hasattr(nxt.grad_fn, "name"):
            base = op_base(nxt.grad_fn.name())
            if base == "add":
                others = [i for i in nxt.inputs if i is not cur and not isinstance(i.module, nn.Parameter)]
                # the add of a denoiser's global residual is the model output: not a trunk
                return end if others and nxt.grad_fn not in outputs else None
            if base not in _ZERO_PRESERVING:
                return None
        else:
            return None
        cur = nxt
    return None


def branch_units(
    model: nn.Module, end: BranchEnd, shapes: Mapping[str, tuple[int, ...]],
) -> list[Unit]:
    """One ``"branch"`` unit per output channel of ``end.x`` (label ``"<x>:<c>"``)."""
    modules = dict(model.named_modules())
    x, e = modules[end.x], modules[end.e]
    odim = 1 if getattr(x, "transposed", False) else 0
    per_row = x.weight.numel() // x.weight.shape[odim]
    units = []
    for c in range(end.channels):
        filters: list[Slice] = [(f"{end.x}.weight", odim, (c,))]
        if x.bias is not None:
            filters.append((f"{end.x}.bias", 0, (c,)))
        slices = list(filters)
        if e is not x and getattr(e, "affine", False):
            slices += [(f"{end.e}.weight", 0, (c,)), (f"{end.e}.bias", 0, (c,))]
        slices.sort()
        units.append(Unit(
            label=f"{end.x}:{c}", layer=end.x, channel=c, members=((end.x, c),),
            params=int(count_removed(shapes, [slices])),
            filter_params=per_row + (1 if x.bias is not None else 0),
            inputs=(), slices=tuple(slices), kind="branch", outputs=((end.e, c),), filters=tuple(filters),
        ))
    return units


def prune_branch(model: nn.Module, x_path: str, e_path: str, pruned: Sequence[int], channels: int, dim: int) -> None:
    """Remove output channels ``pruned`` of branch end ``x_path`` in place; ``e_path`` becomes a
    :class:`ChannelScatter` so the trunk still receives ``channels`` channels."""
    modules = dict(model.named_modules())
    x, e = modules[x_path], modules[e_path]
    idxs = sorted(set(int(i) for i in pruned))
    if isinstance(x, nn.Linear):
        tp.prune_linear_out_channels(x, idxs)
    else:
        tp.prune_conv_out_channels(x, idxs)
    if e is not x:
        tp.prune_batchnorm_out_channels(e, idxs)
    gone = set(idxs)
    cls = SCATTER_CLASSES.get(type(e))
    if cls is None:  # a subclass of a conv/linear/BN (e.g. a quantisation-friendly Linear)
        cls = SCATTER_CLASSES[type(e)] = _scatter_class(type(e))
        globals().setdefault(cls.__name__, cls)
    e.__class__ = cls  # same object, same parameter names: only the forward scatters
    device = e.weight.device if getattr(e, "weight", None) is not None else None
    e.register_buffer("index", torch.tensor([c for c in range(channels) if c not in gone], dtype=torch.long,
                                            device=device))
    e.register_buffer("zeros", torch.tensor(idxs, dtype=torch.long, device=device))
    # full channel c <- kept column source[c], or the zero column len(index) for a pruned one
    source = torch.full((channels,), channels - len(gone), dtype=torch.long, device=device)
    source[e.index] = torch.arange(len(e.index), device=device)
    e.register_buffer("source", source)
    e.full_channels, e.scatter_dim = int(channels), int(dim)
