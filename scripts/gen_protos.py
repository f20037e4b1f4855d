"""Generate service/_proto from protos/: the one step that writes the committed gRPC code.

    .venv/bin/python scripts/gen_protos.py            # regenerate in place, after editing protos/
    .venv/bin/python scripts/gen_protos.py --out DIR  # write the tree under DIR instead

Every ``protos/**/*.proto`` is compiled with the virtual include path ``service/_proto=protos``,
so ``protos/tta_serve/v1/classifier.proto`` becomes
``service/_proto/tta_serve/v1/classifier_pb2.py`` and the generated imports are
package-absolute (``from service._proto.tta_serve.v1 import ...``). Empty ``__init__.py``
files make every generated folder a package. The generated code is never edited by hand;
tests/grpc/test_protos.py regenerates into a temp dir and fails when the committed copy
differs.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO_ROOT / "protos"
PACKAGE_PREFIX = "service/_proto"  # where protos/ appears inside the Python package tree


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Every .proto under protos/, relative to it, in a stable order."""
    return sorted(p.relative_to(proto_root) for p in proto_root.rglob("*.proto"))


def generate(out_root: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Compile every proto into ``out_root/service/_proto``; return the files written."""
    from grpc_tools import protoc

    files = proto_files(proto_root)
    if not files:
        raise SystemExit(f"no .proto files under {proto_root}")
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"  # google/protobuf/*.proto
    args = [
        "grpc_tools.protoc",
        f"-I{PACKAGE_PREFIX}={proto_root}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(f"{PACKAGE_PREFIX}/{f.as_posix()}" for f in files),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    package_root = out_root / PACKAGE_PREFIX
    for folder in [package_root, *(p for p in package_root.rglob("*") if p.is_dir())]:
        if folder.name != "__pycache__":
            (folder / "__init__.py").touch()
    return sorted(
        p for p in package_root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT,
                        help="root to write service/_proto under (default: the repository)")
    args = parser.parse_args(argv)
    written = generate(args.out)
    for path in written:
        print(path.relative_to(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
