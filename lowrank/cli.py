"""The ``lowrank`` command line: ``list``, ``show``, and (from :mod:`lowrank.train.cli`) ``train``,
``predict`` and ``evaluate``.

Examples::

    lowrank --version
    lowrank list solvers
    lowrank show "factorizer(matricize=swin(patch=4, head_dim=8))" --channels 32 --size 16 16 16
    lowrank show swin_factorizer --in-channels 4 --out-channels 3 --size 64 64 64

``list`` prints a preset's definition under its summary (``= resunet(conv=...)``); ``show``
prints the part's effective defaults and, for a preset, its base and overrides.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .export import add_export_command
from .preset import effective_defaults, preset_spec
from .registry import KINDS, get_part_info, list_parts
from .spec import Spec, SpecError
from .train.cli import add_commands as add_train_commands

__all__ = ["main", "build_parser"]


def _kind(text: str) -> str:
    """A kind of part, singular or plural (``solver`` or ``solvers``)."""
    for kind in KINDS:
        if text.lower() in (kind, kind + "s", kind + "es"):
            return kind
    raise argparse.ArgumentTypeError(f"{text!r} is not a kind of part; choose from {', '.join(KINDS)}")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("lowrank")
    except Exception:  # not installed (a source checkout on PYTHONPATH)
        from . import __version__

        return __version__


def _cmd_list(args: argparse.Namespace) -> int:
    kinds = [args.kind] if args.kind else list(KINDS)
    for kind in kinds:
        names = list_parts(kind, args.pattern)
        if not names:
            continue
        print(f"{kind}: {KINDS[kind]}")
        width = max(len(n) for n in names)
        for name in names:
            info = get_part_info(kind, name)
            alias = f" (alias: {', '.join(info.aliases)})" if info.aliases else ""
            summary = info.summary.replace("``", "")
            print(f"  {name:<{width}}  {summary}{alias}")
            if info.base is not None:
                print(f"  {'':<{width}}    = {preset_spec(info)}")
        print()
    return 0


def _format_shapes(out) -> str:
    import torch

    if isinstance(out, torch.Tensor):
        return str(tuple(out.shape))
    if isinstance(out, (list, tuple)):
        return "[" + ", ".join(_format_shapes(o) for o in out) + "]"
    return type(out).__name__


def _cmd_show(args: argparse.Namespace) -> int:
    import torch

    from .build import as_spec, build

    spec = as_spec(args.spec)
    candidates = [k for k in ("net", "block") if spec.name in list_parts(k)]
    if args.kind:
        candidates = [args.kind]
    if not candidates:
        # let the registry produce the "did you mean" message over nets and blocks
        names = list_parts("net") + list_parts("block")
        from .registry import did_you_mean

        raise spec.error(
            f"{spec.name!r} is not a registered net or block;{did_you_mean(spec.name, names)} "
            "see `lowrank list net` and `lowrank list block`"
        )
    kind = candidates[0]
    dims = len(args.size)
    if kind == "net":
        module = build(
            "net",
            spec,
            in_channels=args.in_channels,
            out_channels=args.out_channels,
            spatial_dims=dims,
        )
        channels = args.in_channels
    else:
        channels = args.channels or args.in_channels
        module = build("block", spec, channels=channels, spatial_dims=dims)
    n_params = sum(p.numel() for p in module.parameters())
    info = get_part_info(kind, spec.name)
    print(f"spec:       {getattr(module, 'spec', spec)}")
    print(f"kind:       {kind} ({type(module).__module__}.{type(module).__qualname__})")
    if info.base is not None:
        print(f"preset:     {info.name} = {preset_spec(info)}")
    defaults = effective_defaults(info.obj, kind)
    print(f"defaults:   {Spec(info.name, defaults) if defaults else '(none)'}")
    print(f"parameters: {n_params:,}")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, channels, *args.size, generator=generator)
    module.train(args.train)
    with torch.no_grad():
        out = module(x)
    print(f"input:      {tuple(x.shape)}")
    print(f"output:     {_format_shapes(out)} ({'train' if args.train else 'eval'} mode)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``lowrank`` command."""
    parser = argparse.ArgumentParser(
        prog="lowrank", description="Matrix and tensor factorizations as deep-learning layers."
    )
    parser.add_argument("--version", action="version", version=f"lowrank {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p_list = sub.add_parser("list", help="list the registered parts with one-line summaries")
    p_list.add_argument(
        "kind", nargs="?", type=_kind, help=f"only this kind: {', '.join(KINDS)} (plural accepted)"
    )
    p_list.add_argument("--pattern", default="*", help="fnmatch pattern on names (default *)")
    p_list.set_defaults(func=_cmd_list)

    p_show = sub.add_parser("show", help="build a net or block from a spec and run it on a random input")
    p_show.add_argument("spec", help='e.g. "swin_factorizer(channels=[16, 32, 64])"')
    p_show.add_argument("--kind", choices=["net", "block"], help="kind of the spec (default: guessed)")
    p_show.add_argument("--in-channels", type=int, default=1, help="input channels (nets)")
    p_show.add_argument("--out-channels", type=int, default=2, help="output channels (nets)")
    p_show.add_argument("--channels", type=int, default=None, help="channels (blocks)")
    p_show.add_argument("--size", type=int, nargs="+", default=[32, 32, 32], help="spatial size")
    p_show.add_argument("--batch", type=int, default=1, help="batch size")
    p_show.add_argument("--train", action="store_true", help="run in training mode")
    p_show.set_defaults(func=_cmd_show)

    add_train_commands(sub)
    add_export_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lowrank`` console script; returns the exit code.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``, as from the shell). Called from Python,
            the process is never restarted (see ``--retain-memory``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = argv is None  # run from the shell (not called from Python with arguments)
    try:
        return int(args.func(args) or 0)
    except SpecError as err:
        print(f"lowrank {args.command}: invalid spec: {err}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as err:
        print(f"lowrank {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `lowrank list | head`: the reader left; not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
