"""Generate the Python stubs of `protos/` into `client/statekeeper/v1/`.

One script produces every generated file (`_pb2.py`, `_pb2_grpc.py` and the
typed `.pyi` of both, including the aio stubs), with the generator versions
pinned in pyproject.toml's `dev` extra. With `--check` it generates into a
temporary directory and exits non-zero if the committed files differ.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_PACKAGE = Path("statekeeper") / "v1"
CLIENT_ROOT = ROOT / "client"


def generate(out_root: Path) -> None:
    """Run protoc with the python, grpc and mypy plugins into `out_root`."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out_root / OUT_PACKAGE / "__init__.py").write_text(
        '"""Generated protobuf and gRPC stubs of the statekeeper.v1 API."""\n'
    )


def generated_files(root: Path) -> set[str]:
    """Names of the generated files under `root`'s output package."""
    return {p.name for p in (root / OUT_PACKAGE).iterdir() if p.is_file()}


def main() -> int:
    """Generate the stubs, or with --check verify the committed ones."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed stubs drift")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as tmp:
        tmp_root = Path(tmp)
        (tmp_root / OUT_PACKAGE).mkdir(parents=True)
        generate(tmp_root)
        fresh = generated_files(tmp_root)
        target = CLIENT_ROOT / OUT_PACKAGE
        target.mkdir(parents=True, exist_ok=True)
        committed = generated_files(CLIENT_ROOT)
        if check:
            drift = sorted(
                name
                for name in fresh | committed
                if name not in fresh
                or name not in committed
                or not filecmp.cmp(tmp_root / OUT_PACKAGE / name, target / name, shallow=False)
            )
            if drift:
                print("generated stubs drift from protos/: " + ", ".join(drift), file=sys.stderr)
                print("run: python scripts/generate_protos.py", file=sys.stderr)
                return 1
            print("generated stubs match protos/")
            return 0
        for name in committed - fresh:
            (target / name).unlink()
        for name in fresh:
            shutil.copyfile(tmp_root / OUT_PACKAGE / name, target / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
