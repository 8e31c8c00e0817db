"""OpenVINO inference for plain U-Nets on CPU: the same function, compiled by OpenVINO.

The graph is built directly from the model's tensors, with the U-Net's own wiring
(`UNet.forward_units`, called with OpenVINO nodes instead of tensors), so no export step, file or
cache is involved and the topology is still written once. Each unit becomes the OpenVINO
operations of its torch module: convolutions, transposed convolutions, inference-mode BatchNorm
and ReLU; OpenVINO then fuses and schedules the graph for the CPU it runs on. A plain U-Net's
eval-mode forward is a per-slice function, and so is this graph.

Precision: FP32 (`bf16=False`) computes what torch computes up to float rounding (masks equal on
10 benchmark heads, Dice >= 0.99999): in FP32 the convolutions of this network already run near
the CPU's arithmetic peak, and OpenVINO wins by what it does around them (1.3x). With
`bf16=True` OpenVINO runs every convolution and its fused BatchNorm/ReLU/residual in BF16 (where
the CPU has native BF16), 1.6x faster than torch's BF16 copy but further from FP32 (see
inference.check_engine). bench/speed.py measures both against torch in the same run.

Only plain `UNet`s (pretrained models, finetune-* results and exported global policies) run here;
an instance-policy SpotTUNet chooses twins per slice and runs in torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from spottune.ml.network import PreActivation, ResBlock, UNet

PRECISIONS = {False: "f32", True: "bf16"}
BATCH = 1
"""Slices per inference request. Static shapes, 1 thread, a 192x224 head box: BF16 10.0 /
10.2 / 10.7 / 11.2 ms per slice at batch 1 / 4 / 8 / 16, FP32 45.7 / 46.0 / 48.3 / 56.4."""


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy().copy()


class _GraphBuilder:
    """OpenVINO nodes for the units of one U-Net (eval-mode semantics)."""

    def __init__(self, model: UNet) -> None:
        import openvino.opset13 as ops

        self.ops = ops
        self.model = model

    def unit(self, name: str, x: Any) -> Any:
        return self.module(self.model.get_submodule(name), x)

    def module(self, module: nn.Module, x: Any) -> Any:
        ops = self.ops
        if isinstance(module, ResBlock):
            return x + self.module(module.unit2, self.module(module.unit1, x))
        if isinstance(module, PreActivation):
            return self.module(module.conv, ops.relu(self.module(module.norm, x)))
        if isinstance(module, nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            channels = module.num_features
            weight = (module.weight if module.weight is not None
                      else torch.ones(channels))
            bias = module.bias if module.bias is not None else torch.zeros(channels)
            return ops.batch_norm_inference(
                x, _array(weight), _array(bias), _array(module.running_mean),
                _array(module.running_var), float(module.eps))
        if isinstance(module, nn.ConvTranspose2d):
            if module.groups != 1 or any(p != 0 for p in module.padding):
                raise ValueError(f"unsupported transposed convolution {module}")
            y = ops.convolution_backprop_data(
                x, ops.constant(_array(module.weight)), list(module.stride),
                pads_begin=[0, 0], pads_end=[0, 0], dilations=list(module.dilation))
            return self._bias(y, module.bias)
        if isinstance(module, nn.Conv2d):
            if (module.groups != 1 or isinstance(module.padding, str)
                    or module.padding_mode != "zeros"):
                raise ValueError(f"unsupported convolution {module}")
            pads = [int(p) for p in module.padding]
            y = ops.convolution(x, ops.constant(_array(module.weight)), list(module.stride),
                                pads, pads, list(module.dilation))
            return self._bias(y, module.bias)
        raise ValueError(f"no OpenVINO translation for {type(module).__name__}")

    def _bias(self, y: Any, bias: torch.Tensor | None) -> Any:
        if bias is None:
            return y
        return y + self.ops.constant(_array(bias).reshape(1, -1, 1, 1))

    def graph(self) -> Any:
        import openvino as ov

        ops = self.ops
        x = ops.parameter([-1, self.model.in_channels, -1, -1], np.float32, name="slices")
        logits = self.model.forward_units(x, self.unit)
        return ov.Model([logits], [x], "spottune-unet")


class OpenVinoUNet:
    """A plain U-Net compiled by OpenVINO for the CPU: float32 [B, C, H, W] slices (H, W
    multiples of 2**depth) -> float32 foreground probabilities [B, 1, H, W].

    The graph is compiled for each input shape it meets (about 0.1 s; a volume's slices share
    one): on 2 Xeon cores a static shape ran 1.3x faster per slice than OpenVINO's dynamic
    shapes. `batch_size` is the batch of one request (bench/speed.py); a shorter last batch is
    padded to it rather than compiled for.

    Streams: with several threads, each thread runs a request of its own (one OpenVINO stream
    per thread) instead of all threads sharing one slice's convolutions. Slices are independent,
    so the results are the same bits. On 2 AVX2 EPYC cores a 192x224 slice took 81 ms instead of
    89, and a whole 1 mm head 12.5 s instead of 13.6 s in process (README, speed; bench/speed.py
    has "1 stream" rows). One call at a time per engine: a call owns the requests' callback.

    Args:
        model: the plain U-Net (its current weights and BatchNorm statistics are copied in).
        bf16: BF16 convolutions (where the CPU has native BF16) instead of FP32.
        threads: CPU threads; default torch.get_num_threads(), so the worker's thread cap and
            a caller's torch.set_num_threads hold for this engine too.
        streams: requests run at once, each on threads // streams threads; default one per
            thread (1: every thread works on the same request).
    """

    batch_size = BATCH
    default_streams: int | None = None  # None: one per thread (bench/speed.py compares 1)

    def __init__(self, model: UNet, *, bf16: bool = False, threads: int | None = None,
                 streams: int | None = None) -> None:
        if type(model) is not UNet:
            raise ValueError(f"the OpenVINO engine runs plain U-Nets, not {type(model).__name__}")
        import openvino as ov

        self.depth = model.depth
        self.bf16 = bf16
        self.threads = threads or torch.get_num_threads()
        self.streams = max(1, min(streams or self.default_streams or self.threads,
                                   self.threads))
        self._core = ov.Core()
        self._graph = _GraphBuilder(model).graph()
        self._queues: dict[tuple[int, ...], Any] = {}

    def _queue(self, shape: tuple[int, ...]) -> Any:
        """The compiled graph for `shape`, as a queue of `streams` requests."""
        queue = self._queues.get(shape)
        if queue is None:
            import openvino as ov

            graph = self._graph.clone()
            graph.reshape(list(shape))
            settings: dict[str, Any] = {
                "INFERENCE_PRECISION_HINT": PRECISIONS[self.bf16],
                "INFERENCE_NUM_THREADS": self.threads,
                # the worker shares its machine with the API: no thread pinned to a core
                "ENABLE_CPU_PINNING": False,
            }
            if self.streams > 1:
                settings |= {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": self.streams}
            else:
                settings["PERFORMANCE_HINT"] = "LATENCY"
            compiled = self._core.compile_model(graph, "CPU", settings)
            queue = self._queues[shape] = ov.AsyncInferQueue(compiled, self.streams)
        return queue

    def __call__(self, x: np.ndarray,
                 progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Probabilities of slices [N, C, H, W], `batch_size` per request, `streams` requests
        at a time; the result is the caller's own array. `progress(done, N)` is called from
        the calling thread as requests finish."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        n, batch = x.shape[0], self.batch_size
        out = np.empty((n, 1, *x.shape[2:]), dtype=np.float32)
        if n == 0:
            return out
        queue = self._queue((batch, *x.shape[1:]))
        finished = [0]  # slices stored so far (written by the requests' callback only)

        def store(request: Any, start: int) -> None:
            count = min(batch, n - start)
            logits = request.get_output_tensor(0).data[:count]
            # the sigmoid in FP32 here, not in the graph: in BF16 the probabilities near 0.5
            # would be rounded to steps of 2**-9, and every one rounded onto 0.5 would turn
            # foreground
            out[start : start + count] = 1.0 / (1.0 + np.exp(-logits, dtype=np.float32))
            finished[0] += count

        queue.set_callback(store)
        reported = 0
        for start in range(0, n, batch):
            part = x[start : start + batch]
            if part.shape[0] < batch:  # a short last batch: padded, not compiled for
                part = np.concatenate(
                    [part, np.zeros((batch - part.shape[0], *x.shape[1:]), np.float32)])
            queue.start_async({0: part}, start)  # waits for a free request
            if progress is not None and finished[0] > reported:
                reported = finished[0]
                progress(reported, n)
        queue.wait_all()
        if progress is not None and reported < n:
            progress(n, n)
        return out
