"""The workflow's scripts beside project.yml (scripts/*.py): help with
defaults, and one-line errors naming the flag or the file and line for user
mistakes (exit status 1, no traceback); options that do nothing alone are
refused."""
import importlib
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest
import typer

from spacy_earlyexit.cli._util import run_app

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ("convert", "convert_zh", "fetch_zh", "fetch_wnut", "fetch_backbone", "fetch_demo_assets", "char_bert",
           "demo_annotate")


def run(script: str, argv: List[str]) -> Tuple[int, str]:
    """(exit status, stderr line) of scripts/<script>.py run in this process
    (a SystemExit with a message is status 1 and that line on stderr)."""
    module = importlib.import_module(script)
    try:
        run_app(module.app, argv, prog_name=f"python scripts/{script}.py")
    except SystemExit as exit:
        if isinstance(exit.code, str):
            return 1, exit.code
        return exit.code or 0, ""
    return 0, ""


def assert_one_line_error(script: str, argv: List[str], *expected: str) -> str:
    status, message = run(script, argv)
    assert status == 1, (script, argv, status, message)
    assert message.startswith("error: ") and "\n" not in message, message
    for part in expected:
        assert part in message, (part, message)
    return message


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_option_has_help_and_a_shown_default(script):
    command = typer.main.get_command(importlib.import_module(script).app)
    commands = getattr(command, "commands", None) or {script: command}
    for sub in commands.values():
        for param in sub.params:
            if param.name == "help":
                continue
            assert param.help, (script, param.name)
            if getattr(param, "is_flag", False) or param.required:
                continue
            assert param.show_default and (param.default is not None or isinstance(param.show_default, str)), (
                script, param.name)


def test_convert_help_shows_defaults(capsys):
    assert run("convert", ["--help"]) == (0, "")
    text = " ".join(capsys.readouterr().out.split())
    assert "[default: en]" in text and "[default: (0.1)]" in text and "--dev-output" in text


def test_convert_mistakes(tmp_path):
    out = str(tmp_path / "out.spacy")
    assert_one_line_error("convert", [str(tmp_path / "none.txt"), out], "INPUT", "none.txt", "no such file")
    good = tmp_path / "good.txt"
    good.write_text("a\tO\nb\tB-PER\n", encoding="utf8")
    assert_one_line_error("convert", [str(good), out, "--lang", "xx1"], "--lang xx1", "no language")
    assert_one_line_error("convert", [str(good), out, "--dev-share", "0.2"], "--dev-share does nothing without --dev-output")
    assert_one_line_error("convert", [str(good), out, "--seed", "1"], "--seed does nothing without --dev-output")
    assert_one_line_error("convert", [str(good), out, "--dev-output", str(tmp_path / "dev.spacy"), "--dev-share", "1.5"],
                          "--dev-share")
    assert_one_line_error("convert", [str(good), out, "--dev-share", "abc"], "--dev-share")
    assert_one_line_error("convert", [str(good), out, "--format", "xml"], "--format")
    assert not Path(out).exists()


def test_convert_bio_errors_name_file_and_line(tmp_path):
    out = str(tmp_path / "out.spacy")
    bad_tag = tmp_path / "bad_tag.txt"
    bad_tag.write_text("a\tO\n\nb\tO\nc\tX-PER\n", encoding="utf8")
    assert_one_line_error("convert", [str(bad_tag), out], f"{bad_tag}:4", "X-PER")
    one_field = tmp_path / "one_field.txt"
    one_field.write_text("a\tO\nlonely\n", encoding="utf8")
    assert_one_line_error("convert", [str(one_field), out], f"{one_field}:2", "expected a word and a tag")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"a\tO\n\xff\xfe\tO\n")
    assert_one_line_error("convert", [str(binary), out], str(binary), "not utf8")
    conllu = tmp_path / "bad.conllu"
    conllu.write_text("# text = a b\n1\ta\ta\tNOUN\tNN\t_\t0\troot\t_\t_\n2 b b\n", encoding="utf8")
    assert_one_line_error("convert", [str(conllu), out], f"{conllu}:3", "10 tab-separated fields")
    assert not Path(out).exists()


def test_convert_writes_a_split(tmp_path, capsys):
    source = tmp_path / "ner.txt"
    source.write_text("".join(f"w{i}\tB-PER\nx\tO\n\n" for i in range(10)), encoding="utf8")
    assert run("convert", [str(source), str(tmp_path / "train.spacy"), "--dev-output", str(tmp_path / "dev.spacy"),
                           "--dev-share", "0.2", "--seed", "1"]) == (0, "")
    assert "8 docs" in capsys.readouterr().out and (tmp_path / "dev.spacy").exists()


def test_convert_zh_mistakes(tmp_path):
    pku = tmp_path / "pku.txt"
    pku.write_text("19980101-01-001-001/m  迈向/v  充满/v\n\n中国/ns 好/a 坏\n", encoding="utf8")
    out = str(tmp_path / "out.spacy")
    assert_one_line_error("convert_zh", ["pku", str(pku), out, "--test-share", "0.1"],
                          "--test-share does nothing without --test-output")
    assert_one_line_error("convert_zh", ["pku", str(pku), out, "--seed", "3"], "--seed does nothing without")
    assert_one_line_error("convert_zh", ["pku", str(pku), out], f"{pku}:3", "not a word/TAG token")
    msra = tmp_path / "msra.txt"
    msra.write_text("中 B-LOC\n国 E-LOC\n\n好 Q-X\n", encoding="utf8")
    assert_one_line_error("convert_zh", ["msra", str(msra), out], f"{msra}:4", "not an MSRA tag")
    assert_one_line_error("convert_zh", ["msra", str(msra), out, "--dev-share", "0.1"],
                          "--dev-share does nothing without --dev-output")
    assert_one_line_error("convert_zh", ["ud", str(tmp_path / "none.conllu"), out], "no such file")
    assert_one_line_error("convert_zh", ["nosuch"], "No such command")


def test_fetch_and_build_mistakes(tmp_path):
    assert_one_line_error("fetch_backbone", [str(tmp_path / "b"), "--name", "bert-huge"], "--name", "bert-huge")
    assert_one_line_error("fetch_backbone", [str(tmp_path / "b"), "--e5-file", "x.bin"],
                          "--e5-file is for multilingual-e5-small only")
    assert_one_line_error("fetch_backbone", [str(tmp_path / "b"), "--name", "multilingual-e5-small",
                                             "--e5-file", str(tmp_path / "none.bin")], "--e5-file", "no such file")
    assert_one_line_error("fetch_zh", ["wiki", str(tmp_path / "x")], "CORPUS", "wiki")
    assert_one_line_error("char_bert", [str(tmp_path / "none.spacy"), str(tmp_path / "bert")], "CORPUS", "no such file")
    assert_one_line_error("char_bert", [str(tmp_path / "bert")], "at least one CORPUS")
    assert_one_line_error("demo_annotate", [str(tmp_path / "none")], "PIPELINE", "no such folder")
    assert not (tmp_path / "b").exists() and not (tmp_path / "bert").exists()


def test_a_script_process_prints_one_line_and_exits_1(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("a\tO\nb\tX-PER\n", encoding="utf8")
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "convert.py"), str(bad), str(tmp_path / "o.spacy")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert out.stderr.strip() == f"error: {bad}:2: not a BIO/IOB tag: 'X-PER' (expected O, B-TYPE or I-TYPE)"
    assert "Traceback" not in out.stdout + out.stderr
