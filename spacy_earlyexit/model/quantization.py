"""int8 inference for the encoder's linear layers (torch only).

Int8Linear replaces an nn.Linear of a layer (Q, K, V, attention output, both
feed-forward layers): its weight is stored as int8 with one float32 scale per
output channel (symmetric, [-127, 127]); at run time each input row is
quantized to int8 with its own scale (symmetric, dynamic), the product runs
in integers (torch._int_mm: int8 x int8 -> int32) and is scaled back to
float32. Because every row has its own activation scale, a row's result
does not depend on the other rows of the product: labels do not depend on
batch size or batch neighbours, as in float32.

Why not torch.ao.quantization.quantize_dynamic (fbgemm)? Its activation
scale is one per tensor, so a row's result depends on the rows it is
multiplied with (the packed path merges rows of many spans), it is less
accurate on MiniLM's states (one outlier row sets everyone's step), and
torch 2.13 deprecates both the API and the quantized tensors it is built
on. torch._int_mm is the core op that torchao's int8 path uses; calling it
directly avoids torchao's tensor-subclass overhead (see the benchmark note).
"""
from typing import Iterator, List, Sequence, Tuple, cast

import torch
from torch import nn

#: the linear layers of a BERT-structured layer that run in int8
INT8_LINEAR_PATHS: Tuple[Tuple[str, ...], ...] = (
    ("attention", "self", "query"),
    ("attention", "self", "key"),
    ("attention", "self", "value"),
    ("attention", "output", "dense"),
    ("intermediate", "dense"),
    ("output", "dense"),
)

#: rows per integer product: the int32 accumulator and its float copy stay
#: in cache (blocks ran faster than one large product on CPU)
INT8_BLOCK_ROWS = 256

#: the feed-forward block (packed_layer.feed_forward) of an int8 layer runs
#: in blocks of this many rows (its intermediate stays in cache)
INT8_FFN_BLOCK_ROWS = 256


def check_int8_support() -> None:
    """Raise a clear error when this torch build has no CPU int8 product."""
    if not hasattr(torch, "_int_mm"):
        raise RuntimeError(
            f"int8 inference needs torch._int_mm (torch >= 2.3); this is torch {torch.__version__}"
        )


def quantize_weight(weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """weight: [out, in] float -> (int8 [out, in], float32 scale [out]);
    weight ~= int8 * scale[:, None] (symmetric per output channel)."""
    weight = weight.detach().float()
    scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    values = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return values, scale


class Int8Linear(nn.Module):
    """y = x W^T + b with W in int8 (per-channel scales) and x quantized per row.

    Buffers (saved in the state dict, as safetensors): weight_int8 [out, in]
    int8, weight_scale [out] float32, bias [out] float32.
    """

    #: rows per block of the feed-forward block when this is its first layer
    #: (read by packed_layer.feed_forward)
    ffn_block_rows = INT8_FFN_BLOCK_ROWS

    weight_int8: torch.Tensor
    weight_scale: torch.Tensor
    bias: torch.Tensor

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        check_int8_support()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32))
        #: [in, out] int8, the transposed weight torch._int_mm takes (not
        #: saved; rebuilt when weight_int8 changes: loading, moving)
        self._weight_t: torch.Tensor = self.weight_int8.t().contiguous()
        self._weight_t_of = self._weight_key()

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        module = cls(linear.in_features, linear.out_features)
        values, scale = quantize_weight(linear.weight)
        module.weight_int8.copy_(values)
        module.weight_scale.copy_(scale)
        if linear.bias is not None:
            module.bias.copy_(linear.bias.detach().float())
        module.refresh()
        return module.to(linear.weight.device)

    def _weight_key(self) -> Tuple[int, int]:
        return (self.weight_int8.data_ptr(), self.weight_int8._version)

    def refresh(self) -> None:
        """Rebuild the transposed weight from weight_int8."""
        self._weight_t = self.weight_int8.t().contiguous()
        self._weight_t_of = self._weight_key()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, precision=int8"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in] float -> [..., out] float32."""
        if x.dim() == 2 and x.dtype == torch.float32 and 0 < x.shape[0] <= INT8_BLOCK_ROWS:
            return self.quantized_product(*quantize_rows(x))  # the packed path's rows
        shape = x.shape
        rows = x.reshape(-1, self.in_features).float()
        if rows.shape[0] <= INT8_BLOCK_ROWS:
            out = self._rows(rows)
        else:
            out = torch.cat([self._rows(part) for part in rows.split(INT8_BLOCK_ROWS)])
        return out.view(*shape[:-1], self.out_features)

    def _rows(self, rows: torch.Tensor) -> torch.Tensor:
        """rows: [N, in] float32 -> [N, out] float32."""
        if rows.shape[0] == 0:
            return rows.new_zeros(0, self.out_features)
        return self.quantized_product(*quantize_rows(rows))

    def quantized_product(self, values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The layer on rows already quantized (quantize_rows): values [N, in]
        int8, scale [N, 1] float32 -> [N, out] float32."""
        if self._weight_t_of != self._weight_key():
            self.refresh()
        accumulated = torch._int_mm(values, self._weight_t)  # [N, out] int32
        # int32 * float32 is computed in float32, as a float copy times the scales would be
        return torch.addcmul(self.bias, accumulated * self.weight_scale, scale)


def quantize_rows(rows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """rows: [N, in] float32 (N > 0) -> (int8 [N, in], float32 scale [N, 1]):
    each row symmetric on [-127, 127] with its own scale."""
    scale = rows.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12).div_(127.0)  # [N, 1]
    scaled = rows / scale
    scaled.round_()
    return scaled.to(torch.int8), scale


def same_input_products(modules: Sequence[nn.Module], x: torch.Tensor) -> List[torch.Tensor]:
    """[module(x) for module in modules] (x: [N, in]), with x quantized once
    when they are all Int8Linear and N is at most one block
    (INT8_BLOCK_ROWS): the same results, one quantization instead of one per
    module."""
    rows = x.shape[0]
    int8 = [module for module in modules if type(module) is Int8Linear]
    if 0 < rows <= INT8_BLOCK_ROWS and len(int8) == len(modules):
        values, scale = quantize_rows(x.float())
        return [cast(Int8Linear, module).quantized_product(values, scale) for module in int8]
    return [module(x) for module in modules]


def _parent_and_name(layer: nn.Module, path: Tuple[str, ...]) -> Tuple[nn.Module, str]:
    module = layer
    for name in path[:-1]:
        module = getattr(module, name)
    return module, path[-1]


def quantizable_linears(layers: nn.ModuleList) -> Iterator[Tuple[int, Tuple[str, ...], nn.Module]]:
    """(layer index, path, module) of every linear layer that runs in int8."""
    for index, layer in enumerate(layers):
        for path in INT8_LINEAR_PATHS:
            parent, name = _parent_and_name(layer, path)
            module = getattr(parent, name, None)
            if module is None:
                raise ValueError(
                    f"layer {index} ({type(layer).__name__}) has no {'.'.join(path)}: int8 "
                    "supports BERT-structured layers (BERT, RoBERTa, XLM-R, ELECTRA, MiniLM)"
                )
            yield index, path, module


def quantize_layers(layers: nn.ModuleList, copy_weights: bool = True) -> int:
    """Replace the nn.Linear modules of INT8_LINEAR_PATHS by Int8Linear, in place.
    Already quantized modules are kept. copy_weights=False builds the int8
    structure only (zero weights, to load a saved int8 state into).
    Returns how many were replaced."""
    check_int8_support()
    replaced = 0
    for index, path, module in list(quantizable_linears(layers)):
        if isinstance(module, Int8Linear):
            continue
        if not isinstance(module, nn.Linear):
            raise ValueError(f"layer {index}: {'.'.join(path)} is a {type(module).__name__}, not nn.Linear")
        parent, name = _parent_and_name(layers[index], path)
        int8 = (
            Int8Linear.from_linear(module) if copy_weights
            else Int8Linear(module.in_features, module.out_features).to(module.weight.device)
        )
        setattr(parent, name, int8)
        replaced += 1
    return replaced


def precision_of(layers: nn.ModuleList) -> str:
    """"int8" when every linear layer of INT8_LINEAR_PATHS is an Int8Linear,
    "float32" when none is (or the layers are not BERT-structured: no int8
    for them); a mixture is an error."""
    if not any(isinstance(module, Int8Linear) for module in layers.modules()):
        return "float32"
    kinds = {isinstance(module, Int8Linear) for _, _, module in quantizable_linears(layers)}
    if kinds == {True}:
        return "int8"
    if kinds == {False} or not kinds:
        return "float32"
    raise ValueError("the encoder is partly quantized: quantize all its layers or none")
