#!/usr/bin/env python3
"""Loads a teacher dir saved by `distill` with Hugging Face transformers (unchanged: the
BertForSequenceClassification class, its tokenizer) and prints its dev accuracy on a GLUE-style
TSV, to compare with the accuracy distill reported. Needs torch and transformers.

    scripts/check_teacher_dir.py runs/sst2-HASH/teacher ../shared/data/SST-2/dev.tsv
"""
import csv
import sys

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def main():
    model_dir, tsv = sys.argv[1], sys.argv[2]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with open(tsv, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if "sentence" in rows[0]:
        texts, labels = [(r["sentence"], None) for r in rows], [int(r["label"]) for r in rows]
    else:  # MRPC
        texts, labels = [(r["#1 String"], r["#2 String"]) for r in rows], [int(r["Quality"]) for r in rows]
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(texts), 64):
            chunk = texts[i:i + 64]
            a = [t[0] for t in chunk]
            b = [t[1] for t in chunk] if chunk[0][1] is not None else None
            enc = tok(a, b, padding=True, truncation=True, max_length=128, return_tensors="pt")
            pred = model(**enc).logits.argmax(-1)
            correct += sum(int(p) == l for p, l in zip(pred, labels[i:i + 64]))
    print(f"{model_dir}: transformers dev accuracy {correct / len(texts):.4f} on {len(texts)} rows")


if __name__ == "__main__":
    main()
