"""``mambaseg export``: a training checkpoint (or a pretrained folder) as an ONNX model or a pretrained folder."""

from __future__ import annotations

import argparse
import os

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export", help="export a checkpoint as ONNX (onnxruntime) or as a pretrained folder (config + safetensors)",
        description="Export a trained model. --format onnx writes one ONNX file (opset 17, standard operators, "
                    "dynamic batch axis; input 'image', output 'logits' or 'probabilities'); --format folder "
                    "writes config.json + model.safetensors + README.md (model card), loadable with "
                    "mambaseg.models.from_pretrained and usable as `mambaseg predict --ckpt FOLDER`.")
    p.add_argument("--ckpt", required=True, help="RUN/checkpoints/best.ckpt (or a pretrained folder)")
    p.add_argument("--format", choices=["onnx", "folder"], default="onnx")
    p.add_argument("--out", "-o", required=True, help="output .onnx file or folder")
    p.add_argument("--size", type=int, nargs="+", default=None, metavar="N",
                   help="ONNX input size: N (a square, or a cube for a 3-D model), H W, or D H W for a 3-D model "
                        "(default: the checkpoint's training size)")
    p.add_argument("--output", choices=["logits", "probabilities"], default="logits", help="ONNX output")
    p.add_argument("--chunk", type=int, default=None, help="scan steps per ONNX Scan iteration (default 16)")
    p.add_argument("--check", action="store_true", help="after ONNX export, compare onnxruntime with PyTorch")
    return p


def _load(ckpt: str):
    """(network, input size, metadata) from a training checkpoint or a pretrained folder."""
    from mambaseg.models.hub import from_pretrained, is_pretrained_folder
    if is_pretrained_folder(ckpt):
        net = from_pretrained(ckpt)
        return net, tuple(net.pretrained_config.get("input_size") or ()), net.pretrained_config
    from mambaseg.export import _checkpoint_size, network_from_checkpoint, read_training_checkpoint
    data = read_training_checkpoint(ckpt)
    hp = dict(data["hyper_parameters"])
    net = network_from_checkpoint(data)
    return net, tuple(_checkpoint_size(hp, net) or ()), hp


def _size_for(net, size) -> tuple:
    """``--size`` for this network: one int is a square (a cube for a 3-D network), else one int per axis."""
    from mambaseg.export import ExportError
    nd = int(getattr(net, "spatial_dims", 2))
    if len(size) == 1:
        return tuple(size) * nd
    if len(size) != nd:
        want = "N or D H W (a cube or one size per axis)" if nd == 3 else "N or H W"
        raise ExportError(f"--size {' '.join(map(str, size))}: {getattr(net, 'model_name', type(net).__name__)} is "
                          f"a {nd}-D network; give {want}")
    return tuple(size)


def run(args) -> int:
    from mambaseg.export import ExportError, check_chunk, checkpoint_to_folder, onnx_session, run_onnx, to_onnx
    if args.size is not None and len(args.size) not in (1, 2, 3):
        raise ExportError(f"--size takes N, H W, or D H W for a 3-D model, got {args.size}")
    from mambaseg.engine.io import check_writable
    from mambaseg.models.limits import check_input_size
    if args.size is not None:  # 0, -64: one line; 100000: refused before allocating, with the number
        check_input_size(list(args.size) * (2 if len(args.size) == 1 else 1), "--size")  # per axis; 3-D below
    check_chunk(args.chunk)
    check_writable(args.out if args.format == "folder" else os.path.dirname(os.path.abspath(args.out)),
                   "export folder", "--out")
    if args.format == "folder":
        if args.size is not None or args.output != "logits" or args.chunk is not None or args.check:
            raise ExportError("--size/--output/--chunk/--check apply to --format onnx only")
        for f in ("config.json", "model.safetensors", "README.md"):
            if os.path.exists(os.path.join(args.out, f)):
                raise FileExistsError(f"{os.path.join(args.out, f)} exists; choose another --out (nothing is "
                                      f"overwritten)")
        from mambaseg.models.hub import is_pretrained_folder
        if is_pretrained_folder(args.ckpt):
            raise ExportError(f"{args.ckpt} is already a pretrained folder; copy it instead")
        d = checkpoint_to_folder(args.ckpt, args.out)
        print(f"wrote {d}/config.json, model.safetensors, README.md")
        return 0
    if os.path.exists(args.out):
        raise FileExistsError(f"{args.out} exists; choose another --out (nothing is overwritten)")
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ExportError("ONNX export needs onnx and onnxruntime: pip install 'mambaseg[export]'") from None
    net, size, _ = _load(args.ckpt)
    if args.size:
        size = _size_for(net, args.size)
    info = to_onnx(net, args.out, size=size or None, output=args.output, chunk=args.chunk)
    print(f"wrote {info['path']}: {info['nodes']} nodes ({info['scan_nodes']} scans), "
          f"{info['bytes'] / 1e6:.1f} MB, input (batch, {', '.join(map(str, info['input_shape']))}), "
          f"{info['export_seconds']:.1f} s")
    if args.check:
        import torch
        x = torch.randn(2, *info["input_shape"], generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = net.eval()(x)
        if args.output == "probabilities":
            ref = torch.sigmoid(ref) if ref.shape[1] == 1 else torch.softmax(ref, 1)
        got = torch.from_numpy(run_onnx(onnx_session(info["path"]), x))
        print(f"onnxruntime vs PyTorch on a random batch of 2: max abs {args.output} difference "
              f"{(got - ref).abs().max().item():.2e}")
    return 0
