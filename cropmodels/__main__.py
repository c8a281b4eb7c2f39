"""Command line of the core: ``python -m cropmodels <command> ...``.

Each command is a function taking the parsed arguments and returning an exit code; later
commands (extract, train, evaluate, classify, models) are added to ``build_parser`` the
same way.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

from . import __version__

Command = Callable[[argparse.Namespace], int]


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import collect

    report = collect()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.to_text())
    return 1 if report.missing else 0


def _models_table(n_classes: int) -> list[dict[str, object]]:
    from .architectures import (
        get_model,
        get_spec,
        list_models,
        parameter_count,
        temporal_parameter_ratio,
    )

    rows = []
    for name in list_models():
        spec = get_spec(name)
        model = get_model(name, n_classes=n_classes)
        hp = model.hparams
        hidden = hp.get("hidden_size", hp.get("hidden_channels", hp.get("d_model")))
        rows.append(
            {
                "name": name,
                "title": spec.title,
                "input_kind": spec.input_kind,
                "kernels": ":".join(map(str, hp["kernels"])) if "kernels" in hp else None,
                "hidden": hidden,
                "temporal_ratio_total": temporal_parameter_ratio(model),
                "temporal_ratio_encoder": temporal_parameter_ratio(model, of="encoder"),
                "parameters": parameter_count(model),
                "paper_parameters": spec.paper_parameter_count,
                "paper_temporal_ratio": spec.paper.temporal_ratio if spec.paper else None,
            }
        )
    return rows


def cmd_models(args: argparse.Namespace) -> int:
    try:
        rows = _models_table(args.n_classes)
    except ImportError as exc:
        print(f"cannot build the models: {exc} (install torch; see `python -m cropmodels doctor`)")
        return 1
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"Table 1 of Garnot et al. (IGARSS 2019), rebuilt from the registry ({args.n_classes} "
        "classes)\n"
    )
    header = (
        "name",
        "title",
        "input",
        "kernels",
        "hidden",
        "temporal",
        "(encoder) (paper)",
        "parameters",
        "paper",
        "difference",
    )
    lines = [header]
    for r in rows:
        paper = r["paper_parameters"]
        if paper is None:
            paper_text, diff_text = "-", "beyond the paper"
        else:
            diff = r["parameters"] - paper
            paper_text = f"{paper:,}"
            diff_text = "exact" if diff == 0 else f"{diff:+,} ({diff / paper:+.2%})"
        lines.append(
            (
                r["name"],
                r["title"],
                r["input_kind"],
                r["kernels"] or "-",
                str(r["hidden"] or "-"),
                f"{r['temporal_ratio_total']:.2f}",
                f"{r['temporal_ratio_encoder']:.2f}"
                + (f" ({r['paper_temporal_ratio']})" if r["paper_temporal_ratio"] else ""),
                f"{r['parameters']:,}",
                paper_text,
                diff_text,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    print(
        "\ntemporal: share of all parameters in the recurrent (or attention) module, as stored in "
        "model cards.\n(encoder): the same share without the classifier MLP; this is how Table 1's "
        "ratio column\n  (0 / 0.7 / 0.8 / 0.9 / 1) was computed: GRU shows 1 there although its "
        "MLP holds 12% of its parameters.\nconvlstm: hidden is 16 channels (Table 1 says 64, read "
        "as its 4 x 16 gate kernels);\n  no natural design gives 95,353 exactly, see "
        "cropmodels/architectures/convlstm.py.\npse_ltae: hidden is d_model; Garnot and Landrieu "
        "2020, the authors' follow-up, for comparison."
    )
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    parser = argparse.ArgumentParser(
        prog="python -m cropmodels",
        description="Parcel crop classification after Garnot et al. (IGARSS 2019).",
    )
    parser.add_argument("--version", action="version", version=f"cropmodels {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands: dict[str, Command] = {}

    p = sub.add_parser("doctor", help="report versions, missing packages and the device in use")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    commands["doctor"] = cmd_doctor

    p = sub.add_parser("models", help="print the architectures and Table 1 from the registry")
    p.add_argument("--n-classes", type=int, default=19, help="output classes (19 in Table 1)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    commands["models"] = cmd_models

    return parser, commands


def main(argv: list[str] | None = None) -> int:
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 2
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
