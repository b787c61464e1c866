"""The released contract is guarded: `buf breaking` against the committed image
(protos/released-image.json, rules WIRE_JSON) fails on any change that breaks a
deployed caller's wire or JSON form, and the release step refreshes the image."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "protos" / "released-image.json"
SNAPSHOTS = Path("statekeeper") / "v1" / "snapshots.proto"
RUN_ID_OF_LOAD = "  string run_id = 1;\n}\n\n// Response of SnapshotService.LoadSnapshot."
"""The field of LoadSnapshotRequest, as snapshots.proto spells it."""
ADDED_FIELD = RUN_ID_OF_LOAD.replace("= 1;\n", "= 1;\n  bool include_history = 2;\n")
"""LoadSnapshotRequest with a new field."""


def buf() -> str:
    # buf-bin (dev extra) installs buf beside the interpreter running the tests.
    found = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")
    assert found is not None, "buf comes with the dev extra (buf-bin)"
    return found


def protos_copy(tmp_path: Path) -> Path:
    """A copy of protos/ (with its buf.yaml and the released image) to change freely."""
    return Path(shutil.copytree(ROOT / "protos", tmp_path / "protos"))


def edit(protos: Path, old: str, new: str) -> None:
    """Replace the one occurrence of `old` in snapshots.proto by `new`."""
    path = protos / SNAPSHOTS
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


def breaking(protos: Path) -> subprocess.CompletedProcess[str]:
    """`buf breaking` of `protos` against the committed image of the released contract."""
    return subprocess.run(
        [buf(), "breaking", "--against", str(IMAGE)],
        cwd=protos,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_protos_keep_the_released_contract(tmp_path: Path) -> None:
    done = breaking(protos_copy(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_contract_is_checked_with_the_wire_and_json_rules() -> None:
    done = subprocess.run(
        [buf(), "config", "ls-breaking-rules", "--configured-only", "--format", "json"],
        cwd=ROOT / "protos",
        capture_output=True,
        text=True,
        check=True,
    )
    rules = {json.loads(line)["id"] for line in done.stdout.splitlines()}
    assert {"FIELD_SAME_JSON_NAME", "PACKAGE_SERVICE_NO_DELETE", "RPC_NO_DELETE"} <= rules


def test_a_renumbered_field_breaks_the_contract(tmp_path: Path) -> None:
    protos = protos_copy(tmp_path)
    edit(protos, RUN_ID_OF_LOAD, RUN_ID_OF_LOAD.replace("= 1;", "= 2;"))
    done = breaking(protos)
    assert done.returncode != 0
    assert "LoadSnapshotRequest" in done.stdout


def test_a_renamed_rpc_breaks_the_contract(tmp_path: Path) -> None:
    protos = protos_copy(tmp_path)
    edit(protos, "rpc LoadSnapshot(", "rpc FetchSnapshot(")
    done = breaking(protos)
    assert done.returncode != 0
    assert '"LoadSnapshot"' in done.stdout


def test_a_renamed_field_breaks_the_json_contract(tmp_path: Path) -> None:
    # Same number, so the binary form is unchanged; JSON callers send "runId".
    protos = protos_copy(tmp_path)
    edit(protos, RUN_ID_OF_LOAD, RUN_ID_OF_LOAD.replace("run_id", "run_key"))
    done = breaking(protos)
    assert done.returncode != 0
    assert "run_id" in done.stdout


def test_an_added_field_keeps_the_contract(tmp_path: Path) -> None:
    protos = protos_copy(tmp_path)
    edit(protos, RUN_ID_OF_LOAD, ADDED_FIELD)
    done = breaking(protos)
    assert done.returncode == 0, done.stdout + done.stderr


# -- the release step ---------------------------------------------------------------


def checkout_copy(tmp_path: Path) -> Path:
    """The parts of a checkout the release step reads and writes: protos/ and pyproject.toml."""
    root = tmp_path / "checkout"
    shutil.copytree(ROOT / "protos", root / "protos")
    shutil.copyfile(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def release(root: Path, version: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "release.py"), version, "--root", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )


def version_of(root: Path) -> str:
    line = next(
        line
        for line in (root / "pyproject.toml").read_text().splitlines()
        if line.startswith("version = ")
    )
    return line.split('"')[1]


def next_version(version: str) -> str:
    major, minor, _ = version.split(".")
    return f"{major}.{int(minor) + 1}.0"


def image_fields(root: Path, message: str) -> list[str]:
    image = json.loads((root / "protos" / "released-image.json").read_text())
    return [
        field["name"]
        for file in image["file"]
        for described in file.get("messageType", [])
        if described["name"] == message
        for field in described.get("field", [])
    ]


def test_release_refreshes_the_image_and_bumps_the_version(tmp_path: Path) -> None:
    root = checkout_copy(tmp_path)
    before = version_of(root)
    edit(root / "protos", RUN_ID_OF_LOAD, ADDED_FIELD)
    done = release(root, next_version(before))
    assert done.returncode == 0, done.stdout + done.stderr
    assert version_of(root) == next_version(before)
    assert image_fields(root, "LoadSnapshotRequest") == ["run_id", "include_history"]
    # From now on the new field is part of the contract: removing it breaks it.
    edit(root / "protos", "  bool include_history = 2;\n", "")
    assert release(root, next_version(next_version(before))).returncode == 1


def test_release_refuses_a_change_that_breaks_the_released_contract(tmp_path: Path) -> None:
    root = checkout_copy(tmp_path)
    before = version_of(root)
    edit(root / "protos", RUN_ID_OF_LOAD, RUN_ID_OF_LOAD.replace("= 1;", "= 2;"))
    done = release(root, next_version(before))
    assert done.returncode == 1
    assert "breaking" in done.stderr
    assert version_of(root) == before
    assert (root / "protos" / "released-image.json").read_text() == IMAGE.read_text()


@pytest.mark.parametrize("version", ["0.0.1", "1.2", "v9.0.0"])
def test_release_refuses_a_version_that_is_not_above_the_current(
    tmp_path: Path, version: str
) -> None:
    root = checkout_copy(tmp_path)
    before = version_of(root)
    done = release(root, version)
    assert done.returncode == 1
    assert version in done.stderr
    assert version_of(root) == before
