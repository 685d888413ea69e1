#!/usr/bin/env python3
"""The PyTorch reference for `distill bench`: the same Bi-LSTM student (nn.Embedding →
dropout → bidirectional nn.LSTM → tanh(fc) → output), Adadelta(rho=0.95), random
full-length batches at two training batch sizes, and single-sentence latency. Prints one JSON
line with sentences/s and milliseconds. `--device cuda` measures on the GPU (cuDNN's LSTM),
synchronising before each clock reading."""
import argparse
import json
import time

import torch
from torch import nn


class Student(nn.Module):
    def __init__(self, vocab, emb, hidden):
        super().__init__()
        self.embedder = nn.Embedding(vocab, emb, padding_idx=0)
        self.dropout = nn.Dropout(0.4)
        self.lstm = nn.LSTM(emb, hidden, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, hidden)
        self.output_layer = nn.Linear(hidden, 2)

    def forward(self, ids):  # ids: [T, B]
        x = self.dropout(self.embedder(ids))
        _, (h, _) = self.lstm(x)
        out = torch.cat([h[-2], h[-1]], dim=1)
        out = self.dropout(out)
        return self.output_layer(torch.tanh(self.fc(out)))


def main():
    p = argparse.ArgumentParser()
    for name, default in [("vocab", 30522), ("embedding-dim", 300), ("hidden", 300), ("seq-len", 30),
                          ("batch", 64), ("large-batch", 128), ("infer-batch", 256), ("steps", 30), ("infer-steps", 30),
                          ("latency-steps", 200), ("threads", 2)]:
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    device = torch.device(a.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = Student(a.vocab, a.embedding_dim, a.hidden).to(device)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0, rho=0.95, eps=1e-6)
    loss_fn = nn.CrossEntropyLoss()
    def train_rate(batch):
        batches = [(torch.randint(1, a.vocab, (a.seq_len, batch), device=device), torch.randint(0, 2, (batch,), device=device))
                   for _ in range(4)]

        def step(i):
            ids, labels = batches[i % 4]
            opt.zero_grad()
            loss = loss_fn(model(ids), labels)
            loss.backward()
            opt.step()

        model.train()
        for i in range(2):
            step(i)
        sync()
        start = time.perf_counter()
        for i in range(a.steps):
            step(i)
        sync()
        return a.steps * batch / (time.perf_counter() - start)

    train = train_rate(a.batch)
    train_large = train_rate(a.large_batch)

    model.eval()
    infer_batches = [torch.randint(1, a.vocab, (a.seq_len, a.infer_batch), device=device) for _ in range(4)]
    sentences = [torch.randint(1, a.vocab, (a.seq_len, 1), device=device) for _ in range(16)]
    with torch.inference_mode():
        for i in range(2):
            model(infer_batches[i])
        sync()
        start = time.perf_counter()
        for i in range(a.infer_steps):
            model(infer_batches[i % 4])
        sync()
        infer = a.infer_steps * a.infer_batch / (time.perf_counter() - start)
        for i in range(10):
            model(sentences[i])
        sync()
        start = time.perf_counter()
        for i in range(a.latency_steps):
            model(sentences[i % 16])
        sync()
        latency_ms = 1e3 * (time.perf_counter() - start) / max(a.latency_steps, 1)
    print(json.dumps({"train_sentences_per_s": train, "infer_sentences_per_s": infer,
                      "train_large_batch_sentences_per_s": train_large, "latency_ms": latency_ms}))


if __name__ == "__main__":
    main()
