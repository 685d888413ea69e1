#!/usr/bin/env python3
"""The PyTorch reference for `distill bench` (teacher): transformers'
BertForSequenceClassification loaded from the same HF model dir, fine-tuned with AdamW
(lr 2e-5, weight decay 0.01) on random full-length batches, and run for inference without
dropout: in FP32, under bf16 autocast, and (CPU) after dynamic int8 quantisation of the Linear
layers (`torch.ao.quantization.quantize_dynamic`). Prints one JSON line with sentences/s. `--device cuda --inference-only` measures
GPU inference alone (train_sentences_per_s is then 0), synchronising before each clock reading."""
import argparse
import json
import time

import torch
from torch import nn

try:
    from transformers import BertForSequenceClassification
except ImportError:  # e.g. a GPU machine with PyTorch only: see TorchBert
    BertForSequenceClassification = None


class TorchBert(nn.Module):
    """The same architecture in plain PyTorch (post-LN encoder layers, exact GELU, pooler,
    classifier) with random weights, for machines without transformers; the shape comes from
    the dir's config.json. Speed does not depend on the values."""

    def __init__(self, cfg):
        super().__init__()
        h = cfg["hidden_size"]
        self.config = type("Config", (), {"vocab_size": cfg["vocab_size"]})
        self.word = nn.Embedding(cfg["vocab_size"], h)
        self.position = nn.Embedding(cfg["max_position_embeddings"], h)
        self.token_type = nn.Embedding(cfg.get("type_vocab_size", 2), h)
        self.norm = nn.LayerNorm(h, eps=cfg.get("layer_norm_eps", 1e-12))
        layer = nn.TransformerEncoderLayer(h, cfg["num_attention_heads"], cfg["intermediate_size"], dropout=0.1,
                                           activation="gelu", batch_first=True, layer_norm_eps=cfg.get("layer_norm_eps", 1e-12))
        self.encoder = nn.TransformerEncoder(layer, cfg["num_hidden_layers"], enable_nested_tensor=False)
        self.pooler = nn.Linear(h, h)
        self.classifier = nn.Linear(h, 2)

    def forward(self, input_ids, attention_mask, labels=None):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.norm(self.word(input_ids) + self.position(positions)[None] + self.token_type(torch.zeros_like(input_ids)))
        x = self.encoder(x, src_key_padding_mask=attention_mask == 0)
        logits = self.classifier(torch.tanh(self.pooler(x[:, 0])))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return type("Output", (), {"logits": logits, "loss": loss})


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True)
    for name, default in [("batch", 32), ("seq-len", 32), ("infer-batch", 128), ("steps", 8),
                          ("infer-steps", 4), ("threads", 2)]:
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--device", default="cpu")
    p.add_argument("--inference-only", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    device = torch.device(a.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if BertForSequenceClassification is not None:
        # transformers' default attention (SDPA), the fastest PyTorch path.
        model = BertForSequenceClassification.from_pretrained(a.model_dir, num_labels=2, attn_implementation="sdpa")
    else:
        import os
        with open(os.path.join(a.model_dir, "config.json")) as f:
            model = TorchBert(json.load(f))
    model = model.to(device)
    vocab = model.config.vocab_size
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
    batches = [(torch.randint(1, vocab, (a.batch, a.seq_len), device=device), torch.randint(0, 2, (a.batch,), device=device))
               for _ in range(2)]

    def step(i):
        ids, labels = batches[i % 2]
        opt.zero_grad()
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
        out.loss.backward()
        opt.step()

    train = 0.0
    if not a.inference_only:
        model.train()
        step(0)
        sync()
        start = time.perf_counter()
        for i in range(a.steps):
            step(i)
        sync()
        train = a.steps * a.batch / (time.perf_counter() - start)

    model.eval()
    infer_batches = [torch.randint(1, vocab, (a.infer_batch, a.seq_len), device=device) for _ in range(2)]

    def infer_rate(m, autocast=False):
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            m(input_ids=infer_batches[0], attention_mask=torch.ones_like(infer_batches[0]))
            sync()
            start = time.perf_counter()
            for i in range(a.infer_steps):
                ids = infer_batches[i % 2]
                m(input_ids=ids, attention_mask=torch.ones_like(ids))
            sync()
            return a.infer_steps * a.infer_batch / (time.perf_counter() - start)

    infer = infer_rate(model)
    infer_bf16 = infer_rate(model, autocast=True)
    infer_int8 = None
    if device.type == "cpu":
        quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        infer_int8 = infer_rate(quantized)
    print(json.dumps({"train_sentences_per_s": train, "infer_sentences_per_s": infer,
                      "infer_bf16_sentences_per_s": infer_bf16, "infer_int8_sentences_per_s": infer_int8}))


if __name__ == "__main__":
    main()
