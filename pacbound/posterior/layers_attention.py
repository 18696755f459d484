"""Multi-head attention with every parameter drawn from a diagonal Gaussian, per example.

``nn.MultiheadAttention`` computes with four tensors: its own ``in_proj_weight`` and
``in_proj_bias`` and the ``weight``/``bias`` of its child ``out_proj`` (a Linear whose
tensors ``F.multi_head_attention_forward`` uses raw: the child's own forward never runs).
:class:`GaussianMultiheadAttention` therefore replaces the whole module, child included:
the registry entry (:mod:`pacbound.posterior.samplers`) lists ``out_proj`` as a covered
child, so the child gets no sampler and no draw of its own.

In ``"per_example"`` mode example i gets **one** draw of all four tensors, used for every
query, key and value position of it (MATH.md §10): the projections are batched matmuls with
per-example weights, the attention is the module's scaled dot-product softmax per example
and head, and the output projection is a batched matmul again. The noise is drawn per block
of examples, keyed like the generic functional path's (the input projection's pair, then the
child ``out_proj``'s pair), and examples are evaluated in chunks within ``--max-memory``.

Only the exact subset of the module is implemented (the registry refuses the rest):
``batch_first=True``, one embedding size for query, key and value, no ``bias_k``/``bias_v``,
``add_zero_attn=False``, ``dropout=0.0``; at call time no ``attn_mask``, no
``key_padding_mask`` and ``is_causal=False``. ``need_weights`` returns ``None`` or the
attention weights (averaged over heads or not) as the module does.

``"shared"`` (training only): one draw per call. ``"mean"``: the module's own computation at μ.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from pacbound.errors import InvalidInputError
from pacbound.posterior.layers import GaussianModule

#: The drawn tensors, in the module's ``named_parameters`` order (``out_proj.weight`` is
#: ``out_proj_weight`` here).
_DRAWN = ("in_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias")


def attention_unsupported(module: nn.Module) -> list[str]:
    """The settings of an ``nn.MultiheadAttention`` the Gaussian layer does not implement."""
    assert isinstance(module, nn.MultiheadAttention)
    why = []
    if not module.batch_first:
        why.append("batch_first=False (the batch must be the leading dimension)")
    if not module._qkv_same_embed_dim:
        why.append("kdim/vdim differ from embed_dim (separate q/k/v projections)")
    if module.in_proj_bias is None:
        why.append("bias=False")
    if module.bias_k is not None or module.bias_v is not None:
        why.append("add_bias_kv=True")
    if module.add_zero_attn:
        why.append("add_zero_attn=True")
    if module.dropout != 0.0:
        why.append(f"dropout={module.dropout} (random in training mode)")
    out = module.out_proj
    if type(out) not in (nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear):
        why.append(f"out_proj of type {type(out).__name__}")
    elif out.bias is None or set(out._parameters) != {"weight", "bias"}:
        why.append("out_proj holds other parameters than weight and bias")
    if out._modules:
        why.append("out_proj has submodules")
    return why


class GaussianMultiheadAttention(GaussianModule):
    """An ``nn.MultiheadAttention`` (the exact subset of the module doc) whose four tensors
    ~ N(μ, diag σ²), one draw of all of them per example."""

    budgeted = True
    drawn = _DRAWN

    def __init__(self, base: nn.MultiheadAttention, log_sigma_init: float) -> None:
        nn.Module.__init__(self)
        self.mode = "per_example"
        self.generator = None
        tensors = (base.in_proj_weight, base.in_proj_bias, base.out_proj.weight, base.out_proj.bias)
        for name, value in zip(_DRAWN, tensors, strict=True):
            self.register_parameter(f"{name}_mu", nn.Parameter(value.detach().clone()))
            self.register_parameter(
                f"{name}_log_sigma", nn.Parameter(torch.full_like(value.detach(), log_sigma_init))
            )
        # The module's configuration (plain values; containers such as TransformerEncoderLayer
        # read some of them before calling it). Its tensors are only the drawn ones.
        self.embed_dim = base.embed_dim
        self.num_heads = base.num_heads
        self.head_dim = base.head_dim
        self.batch_first = base.batch_first
        self.dropout = base.dropout
        self.kdim, self.vdim = base.kdim, base.vdim
        self._qkv_same_embed_dim = base._qkv_same_embed_dim
        # The module's own code, run at given tensors (``"mean"``, ``"shared"``): a shell
        # without values (meta tensors, never computed with), not registered as a submodule.
        shell = nn.MultiheadAttention(
            base.embed_dim, base.num_heads, batch_first=True, device="meta"
        )
        object.__setattr__(self, "_shell", shell)

    def __getattr__(self, name: str) -> Any:
        if name == "out_proj":  # the child's tensors are drawn here
            return super().__getattr__("out_proj_weight")
        return super().__getattr__(name)

    def _mu_sigma(self) -> list[tuple[Tensor, Tensor]]:
        return [(getattr(self, f"{n}_mu"), getattr(self, f"{n}_log_sigma")) for n in _DRAWN]

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        self._enter(query)
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise InvalidInputError(
                f"module {self.layer_name!r} is called with an attention mask (attn_mask, "
                "key_padding_mask or is_causal): its Gaussian layer implements unmasked "
                "attention only. Use --sampler functional"
            )
        if self.mode == "mean":
            params = [mu for mu, _ in self._mu_sigma()]
            return self._module_at(query, key, value, params, need_weights, average_attn_weights)
        if self.mode == "shared":
            params = [self._shared_draw(mu, ls) for mu, ls in self._mu_sigma()]
            return self._module_at(query, key, value, params, need_weights, average_attn_weights)
        if query.dim() != 3 or key.dim() != 3 or value.dim() != 3:
            raise InvalidInputError(
                f"module {self.layer_name!r} receives query/key/value of shapes "
                f"{list(query.shape)}, {list(key.shape)}, {list(value.shape)}; per-example "
                "weights need batched (B, L, E) inputs"
            )
        if not (query.shape[0] == key.shape[0] == value.shape[0]):
            raise InvalidInputError(
                f"module {self.layer_name!r} receives query, key and value with different "
                "batch sizes: their per-example weight draws would not be per example"
            )
        return self._per_example(query, key, value, need_weights, average_attn_weights)

    def _module_at(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        params: list[Tensor],
        need_weights: bool,
        average: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """What ``nn.MultiheadAttention`` computes at the tensors ``params``: its own forward
        (fast path included, where it takes it), every tensor supplied per call."""
        shell: nn.MultiheadAttention = self.__dict__["_shell"]
        shell.training = self.training
        tensors = dict(zip(("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"),
                           params, strict=True))  # fmt: skip
        out: tuple[Tensor, Tensor | None] = functional_call(
            shell,
            tensors,
            (query, key, value),
            {"need_weights": need_weights, "average_attn_weights": average},
        )
        return out

    def _per_example(
        self, query: Tensor, key: Tensor, value: Tensor, need_weights: bool, average: bool
    ) -> tuple[Tensor, Tensor | None]:
        b = int(query.shape[0])
        # Examples in chunks within the memory budget; the input projection's and the output
        # projection's tensors are keyed as the generic functional path keys them (by their
        # owning module), so both paths draw the same noise.
        step = self._plan(b)
        outs: list[Tensor] = []
        weights: list[Tensor] = []
        for start in range(0, b, step):
            rows = min(step, b - start)
            drawn = [
                *self._draw_group(_DRAWN[:2], rows, start),
                *self._draw_group(_DRAWN[2:], rows, start),
            ]
            sl = slice(start, start + rows)
            out, w = self._attend(query[sl], key[sl], value[sl], drawn, need_weights, average)
            outs.append(out)
            if w is not None:
                weights.append(w)
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        if not need_weights:
            return out, None
        return out, weights[0] if len(weights) == 1 else torch.cat(weights)

    def _attend(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        drawn: list[Tensor | None],
        need_weights: bool,
        average: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """Each example with its own drawn tensors (``drawn[k][i]`` for example ``i``)."""
        w_in, b_in, w_out, b_out = drawn
        assert w_in is not None and b_in is not None and w_out is not None and b_out is not None
        b, e, h, d = int(query.shape[0]), self.embed_dim, self.num_heads, self.head_dim

        def project(x: Tensor, part: int) -> Tensor:  # (B, L, E) → (B, H, L, d)
            rows = slice(part * e, (part + 1) * e)
            y = torch.baddbmm(b_in[:, None, rows], x, w_in[:, rows].transpose(1, 2))
            return y.view(b, -1, h, d).transpose(1, 2)

        q, k, v = project(query, 0), project(key, 1), project(value, 2)
        if need_weights:
            scores = torch.matmul(q * (1.0 / math.sqrt(d)), k.transpose(-2, -1))
            attn = torch.softmax(scores, dim=-1)
            ctx = torch.matmul(attn, v)
        else:
            ctx = F.scaled_dot_product_attention(q, k, v)
        ctx = ctx.transpose(1, 2).reshape(b, -1, e)
        out = torch.baddbmm(b_out[:, None, :], ctx, w_out.transpose(1, 2))
        if not need_weights:
            return out, None
        return out, attn.mean(dim=1) if average else attn
