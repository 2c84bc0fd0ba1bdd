"""weft's Hugging Face import and export against `transformers`, the reference implementation.

transformers makes a random-initialised tiny GPT2LMHeadModel and LlamaForCausalLM (grouped-query
with 2 kv heads, an untied lm_head, rope_theta 5000) and saves each with save_pretrained, beside a
byte-level BPE tokenizer trained by `tokenizers` on a Debian text (its vocabulary is the models').
Then, for each model and at tp 1, 2 and 4 (mpirun):
- gpt_eval --load HFDIR: its loss over consecutive windows of another text equals transformers'
  loss on the same windows (rel 1e-5), and its logits of the first windows (--dump-logits) agree
  with transformers' (f32, rel 1e-4 of the largest);
- gpt_generate --load HFDIR --temperature 0: the 32 greedy tokens equal transformers' greedy ones;
and once per model: weft_ckpt import-hf (tp 2) then export-hf, and transformers loads the export
and gives the original model's logits (rel 1e-5); gpt_train --load-hf at tp 2 x pp 2 with
learning rate 0 saves (and exports) the very weights transformers made.

    python hf_model_reference.py BIN_DIR MPIEXEC WORKDIR
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

TRAIN = "/usr/share/common-licenses/GPL-3"  # base-files: on every Debian
EVAL = "/usr/share/common-licenses/Apache-2.0"
VOCAB = 300
SEQ = 16  # tokens per evaluation window
WINDOWS = 24  # the text is cut to this many windows, to keep the test short
BATCH = 4  # windows whose logits are compared
PROMPT = "The licence grants"
NEW_TOKENS = 32
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def make_models(work):
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train([TRAIN], trainer)
    assert tokenizer.get_vocab_size() == VOCAB, tokenizer.get_vocab_size()
    torch.manual_seed(7)
    # A larger init than the default 0.02: logits far apart, so that greedy choices are not ties.
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2,
                                      n_head=4, initializer_range=0.3, resid_pdrop=0.0,
                                      embd_pdrop=0.0, attn_pdrop=0.0))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, max_position_embeddings=64,
                                         rope_theta=5000.0, rms_norm_eps=1e-5,
                                         tie_word_embeddings=False, initializer_range=0.3))
    out = {}
    for name, model in (("gpt2", gpt2), ("llama", llama)):
        d = work / name
        model.eval()
        model.save_pretrained(d, safe_serialization=True)
        tokenizer.save(str(d / "tokenizer.json"))
        out[name] = (d, model)
    return tokenizer, out


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)).logits.double().numpy()


def run(cmd):
    env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=env)
    if p.returncode != 0:
        print(" ".join(cmd), "\n", p.stdout, p.stderr, file=sys.stderr)
        raise SystemExit(f"{cmd[0]} failed with exit {p.returncode}")
    return p.stdout


def main():
    bin_dir, mpiexec, work = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tokenizer, made = make_models(work)
    ids = tokenizer.encode(pathlib.Path(EVAL).read_text()).ids[: WINDOWS * SEQ + 1]
    text = tokenizer.decode(ids)
    # The text weft evaluates must give the same ids again.
    assert tokenizer.encode(text).ids == ids, "the cut text does not re-encode to its ids"
    (work / "eval.txt").write_text(text)
    windows = [ids[w * SEQ:(w + 1) * SEQ + 1] for w in range(WINDOWS)]
    inputs = np.array([w[:-1] for w in windows])
    targets = np.array([w[1:] for w in windows])
    prompt = tokenizer.encode(PROMPT).ids

    for name, (hf_dir, model) in made.items():
        logits = logits_of(model, inputs)  # [windows, seq, vocab]
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        ref_loss = float(-np.take_along_axis(logp, targets[..., None], -1).mean())
        greedy = list(prompt)
        with torch.no_grad():
            for _ in range(NEW_TOKENS):
                next_logits = model(torch.tensor([greedy])).logits[0, -1]
                greedy.append(int(torch.argmax(next_logits)))
        ref_tokens = greedy[len(prompt):]
        for tp in (1, 2, 4):
            mpi = [mpiexec, "-np", str(tp), "--oversubscribe"]
            dump = work / f"{name}-tp{tp}.logits"
            out = run(mpi + [str(bin_dir / "gpt_eval"), "--load", str(hf_dir), "--data",
                             str(work / "eval.txt"), "--seq-len", str(SEQ), "--batch", str(BATCH),
                             "--tp", str(tp), "--log-json", "--dump-logits", str(dump)])
            result = json.loads(out.strip().splitlines()[-1])
            check(result["windows"] == WINDOWS, f"{name} tp {tp}: gpt_eval counts {result['windows']} windows")
            err = abs(result["loss"] - ref_loss) / ref_loss
            check(err <= 1e-5, f"{name} tp {tp}: gpt_eval loss {result['loss']:.8f} vs transformers "
                               f"{ref_loss:.8f} (rel {err:.2e})")
            mine = np.fromfile(dump, dtype="<f4").reshape(SEQ, BATCH, VOCAB).transpose(1, 0, 2)
            err = rel(mine.astype(np.float64), logits[:BATCH])
            check(err <= 1e-4, f"{name} tp {tp}: logits of {BATCH} windows (rel {err:.2e})")
            out = run(mpi + [str(bin_dir / "gpt_generate"), "--load", str(hf_dir), "--prompt",
                             PROMPT, "--max-new-tokens", str(NEW_TOKENS), "--temperature", "0",
                             "--tp", str(tp), "--print-ids"])
            got = [int(x) for x in out.strip().splitlines()[-1].split()[1:]]
            check(got == ref_tokens, f"{name} tp {tp}: {NEW_TOKENS} greedy tokens"
                                     + ("" if got == ref_tokens else f": weft {got} vs {ref_tokens}"))

        # Through a weft checkpoint at tp 2 and back out: transformers reads weft's export.
        ckpt, back = work / f"{name}-weft", work / f"{name}-export"
        run([str(bin_dir / "weft_ckpt"), "import-hf", str(hf_dir), "--out", str(ckpt), "--tp", "2"])
        run([str(bin_dir / "weft_ckpt"), "export-hf", str(ckpt), "--out", str(back)])
        cls = GPT2LMHeadModel if name == "gpt2" else LlamaForCausalLM
        exported = cls.from_pretrained(back)
        exported.eval()
        err = rel(logits_of(exported, inputs), logits)
        check(err <= 1e-5, f"{name}: transformers on weft's export gives the logits (rel {err:.2e})")
        check((back / "tokenizer.json").is_file(), f"{name}: the export carries tokenizer.json")

        # gpt_train --load-hf at tp 2 x pp 2 (the output layer on the second stage), 2 steps at
        # learning rate 0, saved and exported: the weights transformers made, whatever the layout.
        tuned, tuned_hf = work / f"{name}-tuned", work / f"{name}-tuned-export"
        run([mpiexec, "-np", "4", "--oversubscribe", str(bin_dir / "gpt_train"), "--load-hf",
             str(hf_dir), "--tp", "2", "--pp", "2", "--data", str(work / "eval.txt"), "--steps",
             "2", "--seq-len", str(SEQ), "--micro-batch", "2", "--global-batch", "4", "--lr", "0",
             "--min-lr", "0", "--warmup", "1", "--save", str(tuned)])
        run([str(bin_dir / "weft_ckpt"), "export-hf", str(tuned), "--out", str(tuned_hf)])
        err = rel(logits_of(cls.from_pretrained(tuned_hf).eval(), inputs), logits)
        check(err == 0.0, f"{name}: gpt_train --load-hf at tp 2 x pp 2 keeps the weights "
                          f"(rel {err:.2e})")
    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
