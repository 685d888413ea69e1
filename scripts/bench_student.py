#!/usr/bin/env python3
"""The PyTorch reference for `distill bench`: the same Bi-LSTM student (nn.Embedding →
dropout → bidirectional nn.LSTM → tanh(fc) → output), Adadelta(rho=0.95), random
full-length batches. Prints one JSON line with sentences/s. `--device cuda` measures on the
GPU (cuDNN's LSTM), synchronising before each clock reading."""
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
                          ("batch", 64), ("infer-batch", 256), ("steps", 30), ("infer-steps", 30), ("threads", 2)]:
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
    batches = [(torch.randint(1, a.vocab, (a.seq_len, a.batch), device=device), torch.randint(0, 2, (a.batch,), device=device))
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
    train = a.steps * a.batch / (time.perf_counter() - start)

    model.eval()
    infer_batches = [torch.randint(1, a.vocab, (a.seq_len, a.infer_batch), device=device) for _ in range(4)]
    with torch.inference_mode():
        for i in range(2):
            model(infer_batches[i])
        sync()
        start = time.perf_counter()
        for i in range(a.infer_steps):
            model(infer_batches[i % 4])
        sync()
        infer = a.infer_steps * a.infer_batch / (time.perf_counter() - start)
    print(json.dumps({"train_sentences_per_s": train, "infer_sentences_per_s": infer}))


if __name__ == "__main__":
    main()
