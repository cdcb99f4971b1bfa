"""Execution backends for latency measurement: one network, several runtimes, nothing substituted.

Spec §10 timed the authors' networks with TensorRT 5 (fp32, batch 1) and, when TensorRT was missing,
fell back to PyTorch *silently*. Here every backend is named, prepared explicitly, and either runs as
asked or is reported as ``unavailable`` (not installed / no such device) or ``failed`` (it exists but
could not build or run the network), with the reason. The caller decides what to do; we never fall back.

Backends: one row each in :data:`fasterseg_core.backend_table.BACKENDS` (precision, layout, device,
CUDA graph, runtime), re-exported here. :func:`prepare` reads the row and hands it to the preparer of its
runtime: eager PyTorch in the row's dtype and layout, optionally captured as a CUDA graph; ``torch.compile``;
ONNX Runtime fp32 or static QDQ int8; a TensorRT engine from the ONNX export.

Each backend returns a :class:`Prepared` with a zero-argument ``run()`` that executes one forward pass on
the fixed input already resident on the device (input transfer not timed, as in §10) and returns the
output as a torch tensor (for agreement checks), plus ``info`` describing what actually runs.
"""

from __future__ import annotations

import copy
import functools
import importlib
import io
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..backend_table import BACKENDS, Backend


class BackendUnavailable(RuntimeError):
    """The backend is not installed or does not apply to this device."""


class BackendFailed(RuntimeError):
    """The backend exists but could not build or run the network."""


@dataclass
class Prepared:
    """A network made runnable on one backend.

    Attributes:
        run: one forward pass on the fixed example already on the device (what is timed).
        info: what actually runs (backend, version, dtype, providers, …).
        sync: waits for the device (no-op on CPU).
        forward: any input (N, 3, H, W) float32 of the example's shape, on CPU → logits as a float32 CPU
            tensor (N, C, H, W); used for agreement checks between backends on real images.
    """

    run: Callable[[], torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)
    sync: Callable[[], None] = lambda: None
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None


class OutputOnly(nn.Module):
    """Wraps a network returning ``{"out": ...}`` (or a tensor, or torchvision's ``{"out": ...}``) so
    exporters and compilers see one tensor output: logits (N, C, H, W)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return y["out"] if isinstance(y, dict) else y


def _sync_for(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def export_onnx(
    net: nn.Module, example: torch.Tensor, path: str | Path | None = None, opset: int = 17
) -> bytes:
    """Export an eval network to ONNX (TorchScript-based exporter, static shapes).

    Args:
        net: network in eval mode returning ``{"out": logits}`` or a tensor.
        example: input (N, 3, H, W) float32 on CPU.
        path: optional file to write as well.

    Returns:
        The serialised ONNX model.
    """
    wrapped = OutputOnly(net).eval()
    buf = io.BytesIO()
    # The dynamo exporter needs onnxscript and is slower to export; the TorchScript exporter handles
    # every op of these networks (conv, BN, ReLU, resize, concat) and gives static shapes.
    torch.onnx.export(
        wrapped,
        (example.cpu(),),
        buf,
        dynamo=False,
        opset_version=opset,
        input_names=["image"],
        output_names=["logits"],
        do_constant_folding=True,
    )
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def _ort_session(model_bytes: bytes, device: torch.device, num_threads: int):
    try:
        ort = importlib.import_module("onnxruntime")
    except ImportError as e:  # pragma: no cover - onnxruntime is a dependency
        raise BackendUnavailable("onnxruntime is not installed (pip install onnxruntime)") from e
    available = ort.get_available_providers()
    if device.type == "cuda":
        wanted = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
        if not wanted:
            raise BackendUnavailable(
                f"onnxruntime has no CUDA provider (providers: {available}); install onnxruntime-gpu"
            )
    else:
        wanted = ["CPUExecutionProvider"]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if num_threads > 0:
        so.intra_op_num_threads = num_threads
        so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model_bytes, so, providers=wanted)
    return ort, sess


def _ort_prepared(
    model_bytes: bytes, example: torch.Tensor, device: torch.device, num_threads: int, extra: dict[str, Any]
) -> Prepared:
    ort, sess = _ort_session(model_bytes, device, num_threads)
    x_np = example.detach().cpu().numpy()
    info = {"backend_version": f"onnxruntime {ort.__version__}", "providers": sess.get_providers(), **extra}

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(sess.run(["logits"], {"image": x.detach().cpu().float().numpy()})[0])

    if device.type == "cuda":
        # Input stays on the device (IO binding), as the paper's TensorRT timing copied it once.
        binding = sess.io_binding()
        x_dev = example.to(device).contiguous()
        binding.bind_input(
            "image", "cuda", device.index or 0, x_np.dtype, list(x_dev.shape), x_dev.data_ptr()
        )
        # The output goes to a torch-owned device buffer: timing a 160 MB copy back per run would measure
        # PCIe, not the network.
        out_shape = [int(d) for d in sess.get_outputs()[0].shape]
        out_dev = torch.empty(out_shape, device=device, dtype=torch.float32)
        binding.bind_output("logits", "cuda", device.index or 0, x_np.dtype, out_shape, out_dev.data_ptr())

        def run() -> torch.Tensor:
            sess.run_with_iobinding(binding)
            return out_dev

        return Prepared(run, info, _sync_for(device), forward)

    def run_cpu() -> torch.Tensor:
        return torch.from_numpy(sess.run(["logits"], {"image": x_np})[0])

    return Prepared(run_cpu, info, forward=forward)


class _Calibration:
    """onnxruntime CalibrationDataReader over a list of (1, 3, H, W) images."""

    def __init__(self, images: Iterable[torch.Tensor]) -> None:
        self._it = iter([{"image": im.detach().cpu().numpy()} for im in images])

    def get_next(self):
        return next(self._it, None)


def quantize_int8(model_bytes: bytes, calibration_images: list[torch.Tensor]) -> bytes:
    """Static QDQ int8 quantisation (per-channel weights, uint8 activations) with ORT.

    Args:
        model_bytes: fp32 ONNX model.
        calibration_images: a few real training images, each (1, 3, H, W) normalised like the inputs.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, dst = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(model_bytes)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(dst),
            _Calibration(calibration_images),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        return dst.read_bytes()


def prepare(
    net: nn.Module,
    example: torch.Tensor,
    backend: str,
    device: torch.device | str = "cpu",
    *,
    num_threads: int = 0,
    calibration_images: list[torch.Tensor] | None = None,
    copy_model: bool = True,
) -> Prepared:
    """Make ``net`` runnable on ``backend``.

    Args:
        net: a segmentation network. The backend works on a deep copy in eval mode, so memory-format and
            dtype changes never leak into the caller's network.
        example: the fixed input (N, 3, H, W) float32.
        backend: a key of :data:`BACKENDS`; its row says how to prepare it.
        device: where to run.
        num_threads: intra-op threads for ONNX Runtime (0 = its default).
        calibration_images: required for ``ort_int8``.
        copy_model: work on a deep copy (default); False for throw-away modules (lookup-table entries).

    Raises:
        BackendUnavailable: not installed / not for this device.
        BackendFailed: it exists but could not build or run this network.
    """
    spec = BACKENDS.get(backend)
    if spec is None:
        raise ValueError(f"unknown backend {backend!r}; valid: {list(BACKENDS)}")
    device = torch.device(device)
    if spec.device not in ("either", device.type):
        raise BackendUnavailable(spec.device_reason)
    net = (copy.deepcopy(net) if copy_model else net).eval().to(device)
    info: dict[str, Any] = {"backend": backend}
    return _PREPARERS[spec.runtime](net, example, spec, device, info, num_threads, calibration_images)


# The torch dtype of each precision the torch runtimes compute in (int8 is ONNX Runtime's alone).
_TORCH_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _prepare_torch(net: nn.Module, example: torch.Tensor, spec: Backend, device: torch.device,
                   info: dict[str, Any], num_threads: int, calibration_images: list[torch.Tensor] | None,
                   ) -> Prepared:
    """Eager PyTorch in the row's dtype and layout, torch.compile, and CUDA graphs of the eager module
    (``num_threads`` and ``calibration_images`` are ONNX Runtime's: torch uses its own thread setting)."""
    x = example.to(device)
    dtype = _TORCH_DTYPE[spec.precision]
    graphed = spec.cuda_graph
    # Low precision casts the weights and activations themselves (CPU autocast re-casts every weight on every
    # call and measured ~8x slower than this here); the table puts it in NHWC.
    compiled = spec.runtime == "torch.compile"
    cpu_compile = compiled and device.type == "cpu"
    nhwc = spec.channels_last_on(device.type)
    wrapped = OutputOnly(net).eval()
    if dtype != torch.float32:
        wrapped, x = wrapped.to(dtype), x.to(dtype)
    if nhwc:
        wrapped = wrapped.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    fn: Callable[[torch.Tensor], torch.Tensor] = _compiled(wrapped, x, cpu_compile) if compiled else wrapped
    info.update(
        backend_version=f"torch {torch.__version__}" + (" (CUDA graph of eager)" if graphed else "")
        + (" (inductor, frozen weights)" if cpu_compile else ""),
        dtype=str(dtype).replace("torch.", ""),
        memory_format="channels_last" if nhwc else "contiguous",
    )
    if graphed:
        try:  # the graph owns its input buffer (x may alias the caller's example)
            graph, static_out = _capture_graph(wrapped, x.clone(memory_format=torch.preserve_format))
        except Exception as e:
            raise BackendFailed(f"CUDA graph capture failed: {type(e).__name__}: {str(e)[:400]}") from e
        # Agreement on new images captures a graph on each image and replays it once: copying new images into
        # the timed graph's input buffer gave stale or NaN outputs on an H200 with torch 2.11
        # (benchmarks/cudagraph_check.py), while replay on the captured input matched eager.
        fn = functools.partial(_replay_once, wrapped)

        def run() -> torch.Tensor:
            graph.replay()
            return static_out

    else:

        def run() -> torch.Tensor:
            with torch.inference_mode():
                return fn(x)

    def forward_any(inp: torch.Tensor) -> torch.Tensor:
        inp = inp.to(device, dtype)
        if nhwc:
            inp = inp.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return fn(inp).float().cpu()

    return Prepared(run, info, _sync_for(device), forward_any)


def _compiled(wrapped: nn.Module, x: torch.Tensor, freeze: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.compile`` (default inductor mode: minutes of autotuning buy little here), compiled now so that
    failures surface here and not inside the timing loop; ``freeze`` folds the weights in (CPU)."""
    try:
        import torch._inductor.config as inductor_config

        fn = torch.compile(wrapped)
        # freezing is read when the graph is compiled, so patching it around this first call is enough
        with inductor_config.patch(freezing=freeze), torch.inference_mode():
            fn(x)
    except Exception as e:
        raise BackendFailed(f"torch.compile failed: {type(e).__name__}: {str(e)[:400]}") from e
    return fn


def _prepare_onnx(net: nn.Module, example: torch.Tensor, spec: Backend, device: torch.device,
                  info: dict[str, Any], num_threads: int, calibration_images: list[torch.Tensor] | None
                  ) -> Prepared:
    """ONNX Runtime on the exported graph: fp32, or int8 with static QDQ quantisation (CPU)."""
    try:
        model_bytes = export_onnx(net.cpu(), example.cpu())
    except Exception as e:
        raise BackendFailed(f"ONNX export failed: {type(e).__name__}: {str(e)[:400]}") from e
    finally:
        net.to(device)
    extra: dict[str, Any] = {"dtype": "float32", "onnx_opset": 17}
    if spec.precision == "int8":
        if not calibration_images:
            raise ValueError(f"{spec.name} needs calibration_images (a few real training images)")
        try:
            model_bytes = quantize_int8(model_bytes, calibration_images)
        except Exception as e:
            raise BackendFailed(f"int8 quantisation failed: {type(e).__name__}: {str(e)[:400]}") from e
        extra = {"dtype": "int8 (static QDQ, per-channel weights)", "calibration_images": len(calibration_images)}
    return _ort_prepared(model_bytes, example, device, num_threads, {**info, **extra})


def _capture_graph(wrapped: nn.Module, static_in: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Capture one eval forward pass of ``wrapped`` on ``static_in`` as a CUDA graph → (graph, output)."""
    # Warm up on a side stream first (cuDNN algorithm choice and allocator growth must not be captured).
    side = torch.cuda.Stream(static_in.device)
    side.wait_stream(torch.cuda.current_stream(static_in.device))
    with torch.cuda.stream(side), torch.inference_mode():
        for _ in range(3):
            wrapped(static_in)
    torch.cuda.current_stream(static_in.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        static_out = wrapped(static_in)
    return graph, static_out


def _replay_once(wrapped: nn.Module, inp: torch.Tensor) -> torch.Tensor:
    """Output of a CUDA graph captured on ``inp`` and replayed once (the path the timed ``run`` takes)."""
    graph, out = _capture_graph(wrapped, inp)
    graph.replay()
    return out


def _prepare_tensorrt(net: nn.Module, example: torch.Tensor, spec: Backend, device: torch.device,
                      info: dict[str, Any], num_threads: int, calibration_images: list[torch.Tensor] | None,
                      ) -> Prepared:
    """fp32 TensorRT engine from the ONNX export, executed on torch-owned device buffers."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as e:
        raise BackendUnavailable("tensorrt is not installed (pip install tensorrt)") from e
    try:
        model_bytes = export_onnx(net.cpu(), example.cpu())
        net.to(device)
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(model_bytes):
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendFailed(f"TensorRT could not parse the ONNX model: {errs}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)  # §10: 1 GiB workspace
        engine = trt.Runtime(logger).deserialize_cuda_engine(
            builder.build_serialized_network(network, config)
        )
        context = engine.create_execution_context()
        x = example.to(device).contiguous()
        out_name = engine.get_tensor_name(1)
        out = torch.empty(tuple(context.get_tensor_shape(out_name)), device=device)
        context.set_tensor_address(engine.get_tensor_name(0), x.data_ptr())
        context.set_tensor_address(out_name, out.data_ptr())
        stream = torch.cuda.Stream(device)
    except BackendFailed:
        raise
    except Exception as e:
        raise BackendFailed(f"TensorRT build failed: {type(e).__name__}: {str(e)[:400]}") from e

    def run() -> torch.Tensor:
        context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        return out

    def forward(inp: torch.Tensor) -> torch.Tensor:
        x.copy_(inp.to(device))
        return run().float().cpu()

    info.update(backend_version=f"tensorrt {trt.__version__}", dtype="float32")
    return Prepared(run, info, _sync_for(device), forward)


# The code that prepares each runtime of the table (``Backend.runtime``); a row whose runtime is missing here
# fails tests/test_latency.py.
_PREPARERS: dict[str, Callable[..., Prepared]] = {
    "torch": _prepare_torch,
    "torch.compile": _prepare_torch,
    "onnxruntime": _prepare_onnx,
    "tensorrt": _prepare_tensorrt,
}
