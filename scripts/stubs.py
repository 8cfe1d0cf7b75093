"""Regenerates python/isthmus/_core.pyi from the built extension, with pybind11-stubgen.

    make stubs                              # after `make install`; then commit the .pyi
    python scripts/stubs.py --output-dir D  # write D/isthmus/_core.pyi instead (the test does)

It imports `isthmus._core` as this interpreter finds it, so run it with the virtualenv the
extension was built into. Output is deterministic: any error in a signature (a C++ type that
was not registered before the function naming it, a default value with no Python literal)
stops it instead of being written as `...`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from pybind11_stubgen import CLIArgs, arg_parser, run, stub_parser_from_args
from pybind11_stubgen.printer import Printer
from pybind11_stubgen.structs import Function, QualifiedName, ResolvedType, Value
from pybind11_stubgen.writer import Writer

ROOT = Path(__file__).resolve().parents[1]
MODULE = "isthmus._core"


class _NoneDefaultIsOptional:
    """pybind11 converts a default through the argument's caster, so `x: T = None` accepts None;
    the signature it prints leaves that out, and mypy (PEP 484, no implicit Optional) refuses it."""

    def handle_function(self, path: QualifiedName, func: Any) -> list[Function]:
        functions: list[Function] = super().handle_function(path, func)  # type: ignore[misc]
        for function in functions:
            for arg in function.args:
                ann = arg.annotation
                if (isinstance(arg.default, Value) and arg.default.repr == "None"
                        and isinstance(ann, ResolvedType)
                        and str(ann.name) not in ("typing.Any", "typing.Optional", "None")):
                    arg.annotation = ResolvedType(QualifiedName.from_str("typing.Optional"), [ann])
        return functions


def generate(output_dir: Path) -> Path:
    args = arg_parser().parse_args(["--exit-code", MODULE], namespace=CLIArgs())
    base = type(stub_parser_from_args(args))
    parser = type("Parser", (_NoneDefaultIsOptional, base), {})()
    run(parser, Printer(invalid_expr_as_ellipses=True, print_value_comments=False), [MODULE],
        str(output_dir), root_suffix=None, dry_run=False, writer=Writer(stub_ext="pyi"))
    return output_dir / "isthmus" / "_core.pyi"


def main() -> int:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--output-dir", type=Path, default=ROOT / "python",
                     help="root to write isthmus/_core.pyi under (default: the source tree)")
    opts = cli.parse_args()
    logging.basicConfig(level=logging.WARNING, format="stubgen: %(levelname)s %(message)s")
    print(f"wrote {generate(opts.output_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
