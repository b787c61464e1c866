"""Release the contract: refresh the image of the released protos and bump the version.

`python scripts/release.py 0.2.0` checks that `protos/` is lint- and
format-clean and compatible (buf breaking, rules in protos/buf.yaml) with the
image of the last release, then writes the image of `protos/` as it is now to
RELEASED_IMAGE and sets the version in pyproject.toml. CI runs `buf breaking`
against that image, so from the release on every change to the protos must
keep the wire and JSON forms of what was released. Commit both files and tag
the commit `v<version>`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASED_IMAGE = Path("protos") / "released-image.json"
"""The buf image of the last released contract (JSON, so that a release's diff can be read)."""
VERSION_LINE = re.compile(r'^version = "(\d+)\.(\d+)\.(\d+)"$', re.M)


class ReleaseError(Exception):
    """The release cannot go ahead; the message says why."""


def buf_command() -> str:
    """The buf executable: the one installed beside this interpreter (buf-bin), else PATH's."""
    found = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")
    if found is None:
        raise ReleaseError("buf is not installed: pip install buf-bin")
    return found


def run_buf(protos: Path, *args: str) -> None:
    """Run `buf ARGS` in `protos`; ReleaseError with buf's output if it fails."""
    done = subprocess.run(
        [buf_command(), *args], cwd=protos, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise ReleaseError(f"buf {args[0]} failed:\n{done.stdout}{done.stderr}")


def check_contract(root: Path) -> None:
    """`protos/` is lint-clean, formatted, and keeps the released image's wire and JSON forms."""
    protos = root / "protos"
    run_buf(protos, "lint")
    run_buf(protos, "format", "--diff", "--exit-code")
    released = root / RELEASED_IMAGE
    if released.exists():
        run_buf(protos, "breaking", "--against", str(released))


def write_image(root: Path) -> None:
    """Write the image of `protos/` (with its imports, without source info) to RELEASED_IMAGE."""
    with tempfile.TemporaryDirectory() as tmp:
        built = Path(tmp) / "image.json"
        run_buf(root / "protos", "build", "--exclude-source-info", "-o", str(built))
        image = json.loads(built.read_text())
    (root / RELEASED_IMAGE).write_text(json.dumps(image, indent=1) + "\n")


def parse_version(text: str) -> tuple[int, int, int]:
    """MAJOR.MINOR.PATCH as three numbers; ReleaseError for anything else."""
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", text)
    if match is None:
        raise ReleaseError(f"version {text!r} is not MAJOR.MINOR.PATCH")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def bump_version(root: Path, version: str) -> str:
    """Set pyproject.toml's version to `version`, which must be above the current one;
    return the version it replaces."""
    pyproject = root / "pyproject.toml"
    text = pyproject.read_text()
    current = VERSION_LINE.search(text)
    if current is None:
        raise ReleaseError("pyproject.toml has no version line")
    before = tuple(int(part) for part in current.groups())
    if parse_version(version) <= before:
        raise ReleaseError(
            f"version {version} is not above the current {'.'.join(current.groups())}"
        )
    pyproject.write_text(text[: current.start()] + f'version = "{version}"' + text[current.end() :])
    return ".".join(current.groups())


def release(root: Path, version: str) -> str:
    """Check the contract, then write the image and the new version; return the old version."""
    parse_version(version)
    check_contract(root)
    previous = bump_version(root, version)
    write_image(root)
    return previous


def main() -> int:
    """Release `version` in the checkout (or `--root`)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("version", help="the new version, MAJOR.MINOR.PATCH")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to release")
    args = parser.parse_args()
    try:
        previous = release(args.root, args.version)
    except ReleaseError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"released contract {args.version} (was {previous}): {RELEASED_IMAGE} refreshed")
    print(f'next: git commit -am "Release {args.version}" && git tag v{args.version}')
    return 0


if __name__ == "__main__":
    sys.exit(main())
