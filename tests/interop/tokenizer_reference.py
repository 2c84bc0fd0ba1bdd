"""weft's byte-level BPE against Hugging Face `tokenizers`, the reference implementation.

Trains a byte-level BPE tokenizer (vocabulary 2000) with `tokenizers` on a Debian text, saves its
tokenizer.json, encodes several other texts with it (English licences, GnuPG's help in German,
French, Russian, Greek, Japanese and Chinese, and a text of edge cases), and has weft's checker
compare its own ids with these on the whole of each text, and decode(encode(x)) with x; then
the ids on two of the texts with the pre-tokenizer's add_prefix_space on, and both checks with
its use_regex off.

    python tokenizer_reference.py CHECKER WORKDIR
"""
import json
import pathlib
import subprocess
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

TRAIN = "/usr/share/common-licenses/GPL-3"  # base-files: on every Debian
TEXTS = [
    "/usr/share/common-licenses/GPL-2",
    "/usr/share/common-licenses/Apache-2.0",
    # gnupg-l10n (scripts/lib.sh installs it): one help text in many languages.
    "/usr/share/gnupg/help.txt",
    "/usr/share/gnupg/help.de.txt",
    "/usr/share/gnupg/help.fr.txt",
    "/usr/share/gnupg/help.ru.txt",
    "/usr/share/gnupg/help.el.txt",
    "/usr/share/gnupg/help.ja.txt",
    "/usr/share/gnupg/help.zh_CN.txt",
]
# What the texts above may lack: the special token inside text, contractions, runs of mixed white
# space (tabs, no-break and ideographic spaces, line and paragraph separators), digits of other
# scripts, combining marks, emoji with joiners, symbols, and white space at both ends.
EDGE_CASES = (
    "  <|endoftext|>It's they'll I'd WE'RE you've\t\t tab\u00a0nbsp\u3000ideographic "
    "line\u2028para\u2029end \r\n\r\n  \n"
    "digits 1234567890 \u0661\u0662\u0663 \u0967\u0968 \u2167 \u00bd x\u00b2 "
    "e\u0301 n\u0303 \U0001F469\u200d\U0001F4BB \U0001F600!? \u20ac5 \u00a7\u00b6 "
    "<|endoftext|><|endoftext|> mongolian\u180evowel zero\u200bwidth soft\u00adhyphen "
    "\ufeffbom ..., --- ((( ))) \"quoted\" 'single' `tick` a'b 'll 's\n\n\n   "
)


def main() -> int:
    checker, work = sys.argv[1], pathlib.Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    missing = [p for p in [TRAIN] + TEXTS if not pathlib.Path(p).is_file()]
    if missing:
        print("missing Debian texts (scripts/lib.sh installs base-files' licences and "
              f"gnupg-l10n): {', '.join(missing)}", file=sys.stderr)
        return 1

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train([TRAIN], trainer)
    tokenizer_json = work / "tokenizer.json"
    tokenizer.save(str(tokenizer_json))
    print(f"tokenizers trained on {TRAIN}: vocabulary {tokenizer.get_vocab_size()}")

    texts = [(pathlib.Path(p).name, pathlib.Path(p).read_text(encoding="utf-8")) for p in TEXTS]
    texts.append(("edge-cases", EDGE_CASES))
    failed = check([checker], tokenizer, tokenizer_json, texts, work / "plain")

    # The pre-tokenizer's options, on two of the texts: a space put before each stretch of text
    # between added tokens, and no pattern (each such stretch one word).
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    some = [t for t in texts if t[0] in ("help.de.txt", "edge-cases")]
    for name, option, value in [("prefix-space", "add_prefix_space", True),
                                ("no-regex", "use_regex", False)]:
        spec["pre_tokenizer"][option] = value
        variant_json = work / f"tokenizer-{name}.json"
        variant_json.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        spec["pre_tokenizer"][option] = not value
        variant = Tokenizer.from_file(str(variant_json))
        print(f"variant: pre_tokenizer.{option} = {value}")
        # A prefix space is text the decoder gives back: only the ids are compared there.
        command = [checker, "--ids-only"] if option == "add_prefix_space" else [checker]
        failed |= check(command, variant, variant_json, some, work / name)
    return 1 if failed else 0


def check(command, tokenizer, tokenizer_json, texts, folder):
    """Writes each text and `tokenizer`'s ids for it, and runs weft's checker on them all."""
    folder.mkdir(exist_ok=True)
    args = command + [str(tokenizer_json)]
    for name, text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        text_path, ids_path = folder / f"{name}.text", folder / f"{name}.ids"
        text_path.write_bytes(text.encode("utf-8"))
        ids_path.write_text(" ".join(map(str, ids)) + "\n")
        args += [str(text_path), str(ids_path)]
    sys.stdout.flush()
    return subprocess.run(args, check=False).returncode != 0


if __name__ == "__main__":
    sys.exit(main())
