"""Book-keeping clipping for stacks of ``Conv2d``, ``Linear`` and parameter-free layers.

For a linear layer on a (batch, features) input, sample i's weight gradient is the outer product
``g_i a_i^T`` of its output gradient and its input, so its squared norm is
``|g_i|^2 (|a_i|^2 + 1)`` (the ``+ 1`` is the bias). A convolution is a linear layer applied at
every output position t to the unfolded input patch: sample i's weight gradient is
``G_i U_i^T`` with ``G_i`` (out_channels x T) its output gradient and ``U_i``
(in_channels*kh*kw x T) its unfolded input, and its bias gradient is ``G_i 1``. When the batch's
per-sample weight gradients fit in ``MATERIALISE_BYTES`` they are materialised (one batched
matmul): the squared norm is ``|G_i U_i^T|^2`` and the clipped sum ``sum_i c_i (G_i U_i^T)`` a
matrix-vector product. Otherwise the norm is the ghost norm ``<G_i^T G_i, U_i^T U_i>`` (Li et
al. 2022) and the clipped sum the convolution's own weight-gradient kernel applied to the scaled
output gradients ``c_i G_i``. Materialising costs fewer operations whenever memory allows,
because the ghost route still runs that kernel. Image activations are kept channels-last (NHWC),
where CPU pooling is several times faster and the patches gather contiguous channel runs.

The forward pass runs without autograd, keeping each layer's input (and max-pooling's argmax);
the backward pass to every parametric layer's *output* is written out layer by layer with the
ATen backward kernels autograd itself would call. That gives every ``g``; the per-sample norms,
the clipping factors ``c_i = min(1, C / (|grad_i| + 1e-6))`` (Opacus' flat clipping) and the
clipped gradient sum then cost a few matmuls per layer. Opacus' ghost clipping computes the same
sum with a second backward pass; this "book-keeping" variant (Bu et al., 2023) skips it. The
clipped sum is handed to a ``DPOptimizerFastGradientClipping``, which adds the noise, scales and
steps the accountant.

Every per-sample quantity that enters the sum is finite: a sample whose loss or squared norm is
not (a row whose activations overflow float32, e.g. ``|a|^2 = inf`` with ``g = 0`` gives
``0 * inf = NaN``) is left out and the step recomputed without it, so its contribution is exactly
zero and the sensitivity stays at most ``max_grad_norm``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
from torch import nn
from torch.nn import functional as F

from veil.sdk.errors import ConfigError

__all__ = ["MATERIALISE_BYTES", "BookKeepingClipper", "supports_bookkeeping"]

# A convolution's per-sample weight gradients (batch x out_channels x in_channels*kh*kw) are
# materialised when they fit in this many bytes: that is fewer operations than the ghost norm
# (which must still run the convolution's weight-gradient kernel for the clipped sum), so the
# ghost norm is only for layers whose per-sample gradients would not fit.
MATERIALISE_BYTES = 64 * 2**20

_PARAMETER_FREE = (
    nn.Flatten,
    nn.ReLU,
    nn.Tanh,
    nn.GELU,
    nn.ELU,
    nn.SiLU,
    nn.Identity,
    nn.MaxPool2d,
    nn.AvgPool2d,
)


def _plain_conv(layer: nn.Conv2d) -> bool:
    """A convolution ``F.unfold`` reproduces: zero padding given as integers, one group, bias."""
    return (
        layer.bias is not None
        and layer.groups == 1
        and layer.padding_mode == "zeros"
        and not isinstance(layer.padding, str)
    )


def supports_bookkeeping(module: nn.Module) -> bool:
    """True for an ``nn.Sequential`` of ``Conv2d`` layers (with bias, one group, integer zero
    padding), then an ``nn.Flatten``, then ``nn.Linear`` layers (with bias), with parameter-free
    layers anywhere in between. Every linear layer thus sees (batch, features); with no
    convolution the first layer must be the ``Flatten``."""
    if not isinstance(module, nn.Sequential) or not len(module):
        return False
    flattened = convolved = False
    for i, layer in enumerate(module):
        if isinstance(layer, nn.Flatten):
            if flattened or (i > 0 and not convolved):
                return False
            flattened = True
        elif isinstance(layer, nn.Linear):
            if not flattened or layer.bias is None:
                return False
        elif isinstance(layer, nn.Conv2d):
            if flattened or not _plain_conv(layer):
                return False
            convolved = True
        elif not isinstance(layer, _PARAMETER_FREE):
            return False
    return flattened


def _patches(layer: nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
    """The input patches every output position of ``layer`` sees: (B, Ho*Wo, kh*kw*C), each
    patch in (kh, kw, C) order, gathered from the zero-padded NHWC input."""
    ph, pw = cast(tuple[int, int], layer.padding)  # ints (see _plain_conv)
    sh, sw = layer.stride
    dh, dw = layer.dilation
    kh, kw = layer.kernel_size
    nhwc = F.pad(a.permute(0, 2, 3, 1), (0, 0, pw, pw, ph, ph)).contiguous()
    b, hp, wp, c = nhwc.shape
    ho = (hp - dh * (kh - 1) - 1) // sh + 1
    wo = (wp - dw * (kw - 1) - 1) // sw + 1
    if c < 8:  # short channel runs: one slice per kernel offset, concatenated, is faster
        hs, ws = sh * (ho - 1) + 1, sw * (wo - 1) + 1
        shifted = [
            nhwc[:, i * dh : i * dh + hs : sh, j * dw : j * dw + ws : sw, :]
            for i in range(kh)
            for j in range(kw)
        ]
        return torch.cat(shifted, dim=3).view(b, ho * wo, kh * kw * c)
    s0, s1, s2, _ = nhwc.stride()
    view = nhwc.as_strided((b, ho, wo, kh, kw, c), (s0, sh * s1, sw * s2, dh * s1, dw * s2, 1))
    return view.reshape(b, ho * wo, kh * kw * c)


class BookKeepingClipper:
    """Computes the clipped per-sample gradient sum of a cross-entropy loss into ``p.grad``."""

    def __init__(
        self,
        module: nn.Module,
        max_grad_norm: float,
        *,
        materialise_bytes: int = MATERIALISE_BYTES,
    ) -> None:
        if not isinstance(module, nn.Sequential) or not supports_bookkeeping(module):
            raise ConfigError(
                "book-keeping clipping needs Conv2d, then Linear, and parameter-free layers only"
            )
        self._module = module
        self._layers = [m for m in module if isinstance(m, nn.Linear | nn.Conv2d)]
        self._max_grad_norm = max_grad_norm
        self._materialise_bytes = materialise_bytes
        # Layer by layer: (forward, backward, parametric?). Backward stops at the first
        # parametric layer: nothing before it has parameters.
        self._passes = [(*_passes(m), isinstance(m, nn.Linear | nn.Conv2d)) for m in module]
        self._first = next(i for i, (_, _, param) in enumerate(self._passes) if param)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Set each parameter's ``grad`` to the sum over the batch of clipped per-sample
        gradients and return the mean loss (detached; NaN for an empty batch).

        A sample whose loss or gradient norm is not finite (a row whose activations overflow
        float32) contributes exactly zero: the step is recomputed without it, so nothing
        non-finite reaches the sum and every contribution stays within ``max_grad_norm``.
        """
        with torch.no_grad():
            while x.shape[0]:
                loss, finite = self._clipped_sum(x, y)
                if finite is None:
                    return loss
                x, y = x[finite], y[finite]
        for layer_ in self._layers:
            for p in layer_.parameters():
                p.grad = torch.zeros_like(p)
        return torch.tensor(float("nan"), device=x.device)

    def _clipped_sum(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The clipped sum into ``p.grad`` and the mean loss, or (when some sample's loss or
        norm is not finite) nothing written and the mask of the finite samples."""
        # Forward without autograd, keeping what each layer's backward needs.
        tape: list[_Taped] = []
        h = x
        if x.dim() == 4:
            # NHWC: convolutions and pooling are faster, and patches gather contiguous channels.
            h = x.contiguous(memory_format=torch.channels_last)
        for forward, _, _ in self._passes:
            tape.append(forward(h))
            h = tape[-1].output
        logp = torch.log_softmax(h, dim=1)
        labels = y[:, None]
        losses = logp.gather(1, labels).neg_()
        # Gradient of the summed loss at the logits: softmax minus one-hot, one row per sample.
        minus_one = torch.full(labels.shape, -1.0, dtype=logp.dtype, device=logp.device)
        g = logp.exp().scatter_add_(1, labels, minus_one)
        # Backward by hand to every parametric layer's output (no input gradient for the
        # first one): the same ATen backward kernels autograd would run, without its graph.
        grads: list[torch.Tensor] = []
        inputs: list[torch.Tensor] = []
        for i in range(len(tape) - 1, self._first - 1, -1):
            _, backward, param = self._passes[i]
            if param:
                grads.append(g)
                inputs.append(tape[i].input)
            if i > self._first:
                g = backward(tape[i], g)
        grads.reverse()
        inputs.reverse()
        batch = x.shape[0]
        sq_norms = torch.zeros(batch, dtype=h.dtype, device=h.device)
        # Per layer: (output grads, input activations, per-sample bias grads, per-sample weight
        # grads if materialised).
        parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]]
        parts = []
        for layer, a, g in zip(self._layers, inputs, grads, strict=True):
            if isinstance(layer, nn.Linear):
                g_sq = _sq_norms(g)
                sq_norms.addcmul_(g_sq, _sq_norms(a)).add_(g_sq)  # |g|^2 (|a|^2 + 1)
                parts.append((g, a, None, None))
                continue
            gg = g.reshape(batch, g.shape[1], -1)  # (B, Cout, T), a view of the NHWC gradient
            bias = gg.sum(dim=2)  # (B, Cout)
            sq_norms += _sq_norms(bias)
            patches = _patches(layer, a)  # (B, T, K), K in (kh, kw, C) order
            cout, k = gg.shape[1], patches.shape[2]
            if batch * cout * k * patches.element_size() <= self._materialise_bytes:
                per_sample = torch.bmm(gg, patches).view(batch, cout * k)
                sq_norms += _sq_norms(per_sample)
                parts.append((g, a, bias, per_sample))
            else:  # ghost norm: no (B, Cout, K) tensor
                ggt = torch.bmm(gg.transpose(1, 2), gg)  # (B, T, T)
                uut = torch.bmm(patches, patches.transpose(1, 2))
                sq_norms += (ggt * uut).sum(dim=(1, 2))
                parts.append((g, a, bias, None))
        # Norms and losses are >= 0: a finite total means every one is finite (one check).
        if not math.isfinite(float(sq_norms.sum() + losses.sum())):
            finite = torch.isfinite(sq_norms) & torch.isfinite(losses[:, 0])
            if not bool(finite.all()):
                return losses.mean(), finite
        factor = (self._max_grad_norm / (sq_norms.sqrt_().add_(1e-6))).clamp_(max=1.0)
        column = factor[:, None]
        for layer, (g, a, bias_grads, materialised) in zip(self._layers, parts, strict=True):
            assert layer.bias is not None
            if isinstance(layer, nn.Linear):
                scaled = g * column
                layer.weight.grad = torch.mm(scaled.T, a)
                layer.bias.grad = scaled.sum(dim=0)
                continue
            assert bias_grads is not None
            bias = torch.mv(bias_grads.T, factor)
            if materialised is not None:
                cout, cin, kh, kw = layer.weight.shape
                flat = torch.mv(materialised.T, factor)
                weight = flat.view(cout, kh, kw, cin).permute(0, 3, 1, 2)
            else:
                scaled = g * factor[:, None, None, None]  # (B, Cout, Ho, Wo)
                # The weight gradient of a batch whose output gradient is ``scaled``: the
                # clipped sum, by the convolution's own backward kernel (torch.nn.grad).
                weight = _conv_backward(layer, scaled, a, weight=True)
            layer.weight.grad = weight.contiguous()
            layer.bias.grad = bias
        return losses.mean(), None


class _Taped:
    """One layer's forward pass as its backward needs it: the input, the output, and for max
    pooling the argmax indices."""

    __slots__ = ("indices", "input", "output")

    def __init__(
        self, a: torch.Tensor, out: torch.Tensor, indices: torch.Tensor | None = None
    ) -> None:
        self.input, self.output, self.indices = a, out, indices


_Forward = Callable[[torch.Tensor], _Taped]
_Backward = Callable[[_Taped, torch.Tensor], torch.Tensor]


def _passes(layer: nn.Module) -> tuple[_Forward, _Backward]:
    """``layer``'s forward (run under ``torch.no_grad``, keeping what its backward needs) and
    backward (the gradient at its input from the gradient at its output, by the ATen kernel
    autograd uses for that layer), bound once so a step pays no dispatch on layer types."""
    aten = torch.ops.aten
    if isinstance(layer, nn.Linear):
        w, b = layer.weight, layer.bias
        return (lambda a: _Taped(a, F.linear(a, w, b))), (lambda t, g: torch.mm(g, w))
    if isinstance(layer, nn.Conv2d):
        conv = layer

        def conv_forward(a: torch.Tensor) -> _Taped:
            # Keep activations NHWC (a 1-channel input leaves the output NCHW).
            return _Taped(a, conv(a).contiguous(memory_format=torch.channels_last))

        def conv_backward(t: _Taped, g: torch.Tensor) -> torch.Tensor:
            return _conv_backward(conv, g, t.input, weight=False)

        return conv_forward, conv_backward
    if isinstance(layer, nn.MaxPool2d):
        k, s, p, d = (
            _pair(v) for v in (layer.kernel_size, layer.stride, layer.padding, layer.dilation)
        )
        ceil = layer.ceil_mode

        def max_forward(a: torch.Tensor) -> _Taped:
            # Pooling NCHW is several times slower than NHWC on CPU (torch 2.13).
            a = a.contiguous(memory_format=torch.channels_last)
            out, indices = F.max_pool2d(a, k, s, p, d, ceil_mode=ceil, return_indices=True)
            return _Taped(a, out, indices)

        def max_backward(t: _Taped, g: torch.Tensor) -> torch.Tensor:
            return cast(
                torch.Tensor,
                aten.max_pool2d_with_indices_backward(g, t.input, k, s, p, d, ceil, t.indices),
            )

        return max_forward, max_backward
    if isinstance(layer, nn.AvgPool2d):
        pool = layer
        k, s, p = (_pair(v) for v in (layer.kernel_size, layer.stride, layer.padding))

        def avg_forward(a: torch.Tensor) -> _Taped:
            a = a.contiguous(memory_format=torch.channels_last)
            return _Taped(a, pool(a))

        def avg_backward(t: _Taped, g: torch.Tensor) -> torch.Tensor:
            return cast(
                torch.Tensor,
                aten.avg_pool2d_backward(
                    g,
                    t.input,
                    k,
                    s,
                    p,
                    pool.ceil_mode,
                    pool.count_include_pad,
                    pool.divisor_override,
                ),
            )

        return avg_forward, avg_backward
    # Activations in functional form: an ``inplace=True`` module would overwrite the input
    # its backward reads.
    if isinstance(layer, nn.ReLU):
        return (
            lambda a: _Taped(a, torch.relu(a)),
            lambda t, g: aten.threshold_backward(g, t.output, 0),
        )
    if isinstance(layer, nn.Tanh):
        return (
            lambda a: _Taped(a, torch.tanh(a)),
            lambda t, g: aten.tanh_backward(g, t.output),
        )
    if isinstance(layer, nn.GELU):
        approximate = layer.approximate
        return (
            lambda a: _Taped(a, F.gelu(a, approximate=approximate)),
            lambda t, g: aten.gelu_backward(g, t.input, approximate=approximate),
        )
    if isinstance(layer, nn.ELU):
        alpha = layer.alpha
        return (
            lambda a: _Taped(a, F.elu(a, alpha)),
            lambda t, g: aten.elu_backward(g, alpha, 1, 1, False, t.input),
        )
    if isinstance(layer, nn.SiLU):
        return (
            lambda a: _Taped(a, F.silu(a)),
            lambda t, g: aten.silu_backward(g, t.input),
        )
    if isinstance(layer, nn.Flatten):
        flatten = layer
        return (lambda a: _Taped(a, flatten(a))), (lambda t, g: g.reshape(t.input.shape))
    if isinstance(layer, nn.Identity):
        return (lambda a: _Taped(a, a)), (lambda t, g: g)
    raise ConfigError(f"book-keeping clipping cannot run {type(layer).__name__}")


def _conv_backward(
    conv: nn.Conv2d, grad_out: torch.Tensor, a: torch.Tensor, *, weight: bool
) -> torch.Tensor:
    """The convolution's own backward kernel on output gradient ``grad_out`` for input ``a``:
    the weight gradient (``weight``) or the input gradient."""
    grads = torch.ops.aten.convolution_backward(
        grad_out,
        a,
        conv.weight,
        None,
        conv.stride,
        conv.padding,
        conv.dilation,
        False,
        [0, 0],
        1,
        (not weight, weight, False),
    )
    return cast(torch.Tensor, grads[1 if weight else 0])


def _sq_norms(rows: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm of each row (one reduction, no squared copy of ``rows``)."""
    norms: torch.Tensor = torch.linalg.vector_norm(rows, dim=1)
    return norms.square_()


def _pair(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return (value, value) if isinstance(value, int) else tuple(value)
