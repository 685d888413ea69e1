#!/usr/bin/env python3
"""The PyTorch reference for `distill bench` (teacher): transformers'
BertForSequenceClassification loaded from the same HF model dir, fine-tuned with AdamW
(lr 2e-5, weight decay 0.01) on random full-length batches, and run for inference without
dropout. Prints one JSON line with sentences/s."""
import argparse
import json
import time

import torch
from transformers import BertForSequenceClassification


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True)
    for name, default in [("batch", 32), ("seq-len", 32), ("infer-batch", 128), ("steps", 8),
                          ("infer-steps", 4), ("threads", 2)]:
        p.add_argument(f"--{name}", type=int, default=default)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    # transformers' default attention (SDPA), the fastest PyTorch path.
    model = BertForSequenceClassification.from_pretrained(a.model_dir, num_labels=2, attn_implementation="sdpa")
    vocab = model.config.vocab_size
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
    batches = [(torch.randint(1, vocab, (a.batch, a.seq_len)), torch.randint(0, 2, (a.batch,))) for _ in range(2)]

    def step(i):
        ids, labels = batches[i % 2]
        opt.zero_grad()
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
        out.loss.backward()
        opt.step()

    model.train()
    step(0)
    start = time.perf_counter()
    for i in range(a.steps):
        step(i)
    train = a.steps * a.batch / (time.perf_counter() - start)

    model.eval()
    infer_batches = [torch.randint(1, vocab, (a.infer_batch, a.seq_len)) for _ in range(2)]
    with torch.inference_mode():
        model(input_ids=infer_batches[0], attention_mask=torch.ones_like(infer_batches[0]))
        start = time.perf_counter()
        for i in range(a.infer_steps):
            ids = infer_batches[i % 2]
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
        infer = a.infer_steps * a.infer_batch / (time.perf_counter() - start)
    print(json.dumps({"train_sentences_per_s": train, "infer_sentences_per_s": infer}))


if __name__ == "__main__":
    main()
