"""Write README's runnable Python examples to FOLDER/example_N.py (a block
after a `<!-- no-test -->` line is a fragment and is left out)."""
import re
import sys
from pathlib import Path

BLOCK = re.compile(r"(<!-- no-test -->\s*\n)?```python\n(.*?)```", re.S)


def main(readme: str, folder: str) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    blocks = [code for skip, code in BLOCK.findall(Path(readme).read_text(encoding="utf8")) if not skip]
    if not blocks:
        raise SystemExit(f"{readme}: no runnable ```python block")
    for number, code in enumerate(blocks, 1):
        (out / f"example_{number}.py").write_text(code, encoding="utf8")


if __name__ == "__main__":
    main(*sys.argv[1:3])
