"""Export a trained net for deployment: ``torch.export`` (``.pt2``), ONNX (``.onnx``), TorchScript (``.ts``).

``lowrank export CHECKPOINT -o model.onnx`` (or ``model.pt2``, ``model.ts``) rebuilds the net of
a ``lowrank train`` checkpoint, puts it in eval mode and exports it for one fixed input shape
``(batch, in_channels, *size)`` (default: batch 1 and the training patch), the shape a sliding
window inferer feeds it. The exported program computes what the eager net computes in eval
mode (within float rounding; :func:`export_model` checks it on an example input):

- ``.pt2``: :func:`torch.export.export`, saved with :func:`torch.export.save`; load with
  ``torch.export.load(path).module()``;
- ``.onnx``: the ``torch.export`` program translated by :func:`torch.onnx.export`
  (``dynamo=True``; needs the ``export`` extra: ``pip install "lowrank[export]"``), checked in
  onnxruntime when it is installed;
- ``.ts``: TorchScript (e.g. a MONAI bundle's ``model.ts``): :func:`torch.jit.trace` of the
  ``torch.export`` program (plain ATen ops) under ``torch.no_grad()``.

The net's spec, channels, classes, spacing and the exported shape are stored with the model
(ONNX metadata ``lowrank.*``; a ``lowrank.json`` extra file in ``.pt2`` and ``.ts``).
``torch.jit.script`` and a direct ``torch.jit.trace`` of a net are not supported (the nets are
built from specs with Python control flow, and their factorization layers run custom autograd
nodes): both raise one :class:`TorchScriptError`, which says to use this module.

Example:
    >>> from lowrank.export import export_checkpoint
    >>> export_checkpoint("runs/default/checkpoint.pt", "model.onnx")  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .files import atomic_path

__all__ = [
    "FORMATS",
    "TorchScriptError",
    "add_export_command",
    "export_checkpoint",
    "export_model",
    "example_input",
    "script_error",
]

#: file suffix → format
FORMATS = {".pt2": "torch.export", ".onnx": "onnx", ".ts": "torchscript"}
#: the largest |exported - eager| accepted by the check after export
TOLERANCE = 1e-4


class TorchScriptError(RuntimeError):
    """``torch.jit.script`` of a lowrank net (not supported): use ``torch.export`` or ONNX."""


def script_error(module: nn.Module, *, traced: bool = False) -> TorchScriptError:
    """The one error of ``torch.jit.script`` (a net's ``__prepare_scriptable__`` raises it) and
    of ``torch.jit.trace`` (the net's forward raises it while traced) on a lowrank net."""
    what = "torch.jit.trace" if traced else "torch.jit.script"
    why = (
        "the factorization layers run custom autograd nodes that TorchScript cannot save"
        if traced
        else "built from specs, with Python control flow over sizes"
    )
    return TorchScriptError(
        f"{what} does not support lowrank nets directly ({type(module).__name__}: {why}). Use "
        "torch.export or ONNX: `lowrank export CHECKPOINT -o model.pt2` (or model.onnx), or "
        "lowrank.export.export_model(net, path, example). For TorchScript (e.g. a MONAI bundle's "
        "model.ts), `-o model.ts` traces the torch.export program, whose ops are plain ATen ops: "
        "torch.jit.trace(torch.export.export(net.eval(), (x,)).module(), x) under torch.no_grad()."
    )


def example_input(
    in_channels: int, size: Sequence[int], *, batch: int = 1, image: torch.Tensor | None = None
) -> torch.Tensor:
    """An input ``(batch, in_channels, *size)`` to export with and to check the export on.

    Args:
        in_channels: the net's input channels.
        size: the spatial size.
        batch: the batch size.
        image: ``(C, *S)`` to crop the example from (the center crop, zero-padded when ``S`` is
            smaller); ``None``: the embedded template when its channels match, else seeded
            normal noise (the global RNG is not touched).

    Returns:
        A float32 tensor.
    """
    size = tuple(int(s) for s in size)
    if image is None and in_channels == 1:
        from .data import load_template

        image = torch.from_numpy(load_template().image)
        if image.dim() - 1 != len(size):  # 2-D nets: the middle axial slice
            image = image[..., image.shape[-1] // 2]
    if image is None or image.shape[0] != in_channels or image.dim() - 1 != len(size):
        generator = torch.Generator().manual_seed(0)
        return torch.randn(batch, in_channels, *size, generator=generator)
    out = image.new_zeros((in_channels, *size))
    src, dst = [slice(None)], [slice(None)]
    for have, want in zip(image.shape[1:], size):
        n = min(have, want)
        start = (have - n) // 2
        src.append(slice(start, start + n))
        dst.append(slice(0, n))
    out[tuple(dst)] = image[tuple(src)]
    return out.unsqueeze(0).expand(batch, *out.shape).contiguous().float()


def _format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"cannot tell the export format from {path.name!r}: name the output *.onnx (ONNX), "
            "*.pt2 (torch.export) or *.ts (TorchScript)"
        )
    return fmt


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress chatter (warnings and INFO/WARNING logs)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _broadcast_copies(program: torch.export.ExportedProgram) -> int:
    """Make every broadcasting ``aten.copy(dst, src)`` copy an explicitly expanded ``src``.

    ``copy`` broadcasts ``src`` to ``dst``'s shape, but torch.onnx's translation returns
    ``src``'s shape (the swin matricizer's window mask, built with a broadcasting in-place
    assignment, then fails in onnxruntime at sizes that need padded windows). An ``expand``
    before the copy means the same and translates correctly. Returns the number of copies changed.
    """
    graph, changed = program.graph, 0
    for node in list(graph.nodes):
        if node.target is not torch.ops.aten.copy.default:
            continue
        dst, src = node.args[:2]
        shape = tuple(dst.meta["val"].shape)
        if tuple(src.meta["val"].shape) == shape:
            continue
        with graph.inserting_before(node):
            expanded = graph.call_function(torch.ops.aten.expand.default, (src, list(shape)))
        expanded.meta["val"] = src.meta["val"].expand(shape)
        node.args = (dst, expanded, *node.args[2:])
        changed += 1
    if changed:
        graph.lint()
        program.graph_module.recompile()
    return changed


def _onnx_run(path: Path, x: torch.Tensor) -> torch.Tensor | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    return torch.from_numpy(out)


def export_model(
    model: nn.Module,
    path: str | Path,
    example: torch.Tensor,
    *,
    metadata: dict[str, Any] | None = None,
    check: bool = True,
) -> dict[str, Any]:
    """Export ``model`` (put in eval mode) for inputs shaped like ``example`` to ``path``.

    The format follows the suffix (:data:`FORMATS`). The file is written atomically.

    Args:
        model: the net (any ``nn.Module`` mapping ``(B, C, *S)`` to one tensor in eval mode).
        path: ``*.pt2``, ``*.onnx`` or ``*.ts``.
        example: the input ``(B, C, *S)`` it is exported for (shapes are fixed).
        metadata: strings stored with the model (e.g. the spec, classes, spacing).
        check: run the exported model on ``example`` (ONNX: in onnxruntime when installed) and
            compare with the eager output.

    Returns:
        ``{"path", "format", "input_shape", "max_abs_error"}`` (the error ``None`` when not checked).

    Raises:
        ValueError: an unknown suffix, or an exported model whose output differs from the
            eager one by more than ``TOLERANCE`` (1e-4).
        ImportError: ONNX without the ``onnx``/``onnxscript`` packages (with the install command).
    """
    path = Path(path)
    fmt = _format(path)
    model = model.eval()
    x = example.detach().float()
    info = {"input_shape": list(x.shape), **(metadata or {})}
    meta = {f"lowrank.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in info.items()}
    with torch.no_grad():
        reference = model(x)
    if not isinstance(reference, torch.Tensor):
        raise ValueError(
            f"{type(model).__name__} returns {type(reference).__name__} in eval mode; export needs one tensor"
        )
    got: torch.Tensor | None = None
    with _quiet(), atomic_path(path, suffix=path.suffix) as tmp:
        if fmt == "torch.export":
            program = torch.export.export(model, (x,))
            torch.export.save(program, tmp, extra_files={"lowrank.json": json.dumps(info)})
            if check:
                got = torch.export.load(tmp).module()(x)
        elif fmt == "onnx":
            for package in ("onnx", "onnxscript"):
                try:
                    __import__(package)
                except ImportError:
                    raise ImportError(
                        f'ONNX export needs the {package!r} package: pip install "lowrank[export]" '
                        "(onnx, onnxscript, onnxruntime)"
                    ) from None
            program = torch.export.export(model, (x,)).run_decompositions()
            _broadcast_copies(program)
            # optimize=False: onnxscript's graph optimizer (0.7) drops the eps² guard of the rank-1
            # NMF normalization (sqrt(|r|² + eps²)), giving 0/0 = NaN on windows of zeros;
            # onnxruntime optimizes the graph itself when it loads it
            program = torch.onnx.export(
                program, (x,), dynamo=True, verbose=False, optimize=False, input_names=["image"]
            )
            program.model.metadata_props.update(meta)
            program.save(str(tmp))
            got = _onnx_run(tmp, x) if check else None
        else:  # trace the exported program: plain ATen ops, no autograd nodes to save
            program = torch.export.export(model, (x,))
            with torch.no_grad():
                traced = torch.jit.trace(program.module(), x, check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={"lowrank.json": json.dumps(info)})
            if check:
                with torch.no_grad():
                    got = torch.jit.load(str(tmp))(x)
        error = None if got is None else float((got.detach().float() - reference).abs().max())
        if error is not None and not error <= TOLERANCE:
            raise ValueError(
                f"the exported {fmt} model differs from the eager net by {error:.3g} (> {TOLERANCE}); "
                "nothing was written. Please report this with the spec."
            )
    return {"path": str(path), "format": fmt, "input_shape": list(x.shape), "max_abs_error": error}


def export_checkpoint(
    checkpoint: str | Path,
    path: str | Path,
    *,
    size: Sequence[int] | None = None,
    batch: int = 1,
    check: bool = True,
) -> dict[str, Any]:
    """Export the net of a ``lowrank train`` checkpoint (see :func:`export_model`).

    Args:
        checkpoint: the ``checkpoint.pt`` of a run.
        path: ``*.pt2``, ``*.onnx`` or ``*.ts``.
        size: the spatial input size (default: the training patch).
        batch: the batch size of the exported input.
        check: compare the exported model with the eager net on a crop of the embedded
            template (or seeded noise for other channel counts).

    Returns:
        As :func:`export_model`.

    Raises:
        CheckpointError: a missing, corrupt or mismatching checkpoint.
        ValueError: a bad size or batch, or a failed check.
    """
    from .train.predict import load_model

    _format(Path(path))  # a bad suffix fails before the checkpoint is read
    model, info = load_model(checkpoint, "cpu")
    dims = int(info["spatial_dims"])
    size = list(info["patch"]) if size is None else [int(s) for s in size]
    if len(size) != dims or min(size) < 1:
        raise ValueError(f"--size needs {dims} positive ints (the net is {dims}-D), got {size}")
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    x = example_input(int(info["in_channels"]), size, batch=batch)
    keys = ("in_channels", "out_channels", "spatial_dims", "classes", "spacing", "patch")
    metadata = {"spec": str(getattr(model, "spec", "")), **{k: info[k] for k in keys if k in info}}
    return export_model(model, path, x, metadata=metadata, check=check)


def _cmd_export(args: argparse.Namespace) -> int:
    """``lowrank export``; bad input (``ValueError``, ``CheckpointError``) is reported by the CLI."""
    try:
        result = export_checkpoint(
            args.checkpoint, args.output, size=args.size, batch=args.batch, check=not args.no_check
        )
    except ImportError as err:
        print(f"lowrank export: error: {err}", file=sys.stderr)
        return 2
    checked = (
        f", max |exported - eager| = {result['max_abs_error']:.2g}"
        if result["max_abs_error"] is not None
        else ""
    )
    print(f"wrote {result['path']} ({result['format']}, input {tuple(result['input_shape'])}{checked})")
    return 0


def add_export_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``lowrank export`` on the ``lowrank`` command's subparsers."""
    p = subparsers.add_parser(
        "export",
        help="export a trained checkpoint to ONNX (.onnx), torch.export (.pt2) or TorchScript (.ts)",
        description=(
            "Export the net of a `lowrank train` checkpoint in eval mode for one fixed input shape "
            "(batch 1 and the training patch by default), check it against the eager net, and "
            "write it atomically. The format follows the output's suffix."
        ),
    )
    p.add_argument("checkpoint", help="the run's checkpoint.pt")
    p.add_argument("-o", "--output", required=True, help="model.onnx, model.pt2 or model.ts")
    p.add_argument(
        "--size", type=int, nargs="+", default=None, help="spatial input size (default: the patch)"
    )
    p.add_argument("--batch", type=int, default=1, help="batch size of the exported input (default 1)")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with the eager net")
    p.set_defaults(func=_cmd_export)
    return p
