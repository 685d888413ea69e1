#!/usr/bin/env python3
"""The PyTorch reference for `distill bench`: the same Bi-LSTM student (nn.Embedding →
dropout → bidirectional nn.LSTM → tanh(fc) → output), Adadelta(rho=0.95), random
full-length batches at two training batch sizes, single-sentence latency and, with --transfer,
distill-stage training on real transfer-set rows, and (on the CPU) inference and latency
with dynamic int8 quantisation of the LSTM and Linear layers. Prints one JSON line with
sentences/s and milliseconds. `--device cuda` measures on the GPU (cuDNN's LSTM),
synchronising before each clock reading."""
import argparse
import json
import time

import torch
from torch import nn


class Student(nn.Module):
    def __init__(self, vocab, emb, hidden, fc=None, labels=2, dropout=0.4):
        super().__init__()
        fc = fc or hidden
        self.embedder = nn.Embedding(vocab, emb, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(emb, hidden, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, fc)
        self.output_layer = nn.Linear(fc, labels)

    def forward(self, ids, lengths=None):  # ids: [T, B]; lengths: [B] when rows differ in length
        x = self.dropout(self.embedder(ids))
        if lengths is not None:
            x = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        _, (h, _) = self.lstm(x)
        out = torch.cat([h[-2], h[-1]], dim=1)
        out = self.dropout(out)
        return self.output_layer(torch.tanh(self.fc(out)))


def timed(run, warmup, items, sync):
    """Seconds taken by `run` over `items`, after a call on each of `warmup`."""
    for item in warmup:
        run(item)
    sync()
    start = time.perf_counter()
    for item in items:
        run(item)
    sync()
    return time.perf_counter() - start


def transfer_rate(path, device, sync):
    """Rows/s of distill-stage training on the rows `distill bench` wrote: batches padded to
    their longest row and packed (pack_padded_sequence), alpha·CE + (1 − alpha)·(MSE or KL)
    against random teacher logits (the timing does not depend on their values), the
    experiment's shapes, optimizer, dropout and gradient clipping."""
    with open(path) as f:
        t = json.load(f)
    model = Student(t["vocab"], t["embedding_dim"], t["hidden"], t["fc"], t["labels"], t["dropout"]).to(device)
    if t["optimizer"] == "adadelta":
        opt = torch.optim.Adadelta(model.parameters(), lr=t["lr"], rho=0.95, eps=1e-6)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=t["lr"])
    alpha, batch = t["alpha"], t["batch"]
    rows = [r if r else [t["empty_id"]] for r in t["rows"]]
    batches = []
    for start in range(0, len(rows) - batch + 1, batch):
        chunk = rows[start:start + batch]
        lengths = torch.tensor([len(r) for r in chunk])
        ids = torch.zeros(int(lengths.max()), batch, dtype=torch.long)
        for j, r in enumerate(chunk):
            ids[:len(r), j] = torch.tensor(r)
        gold = torch.tensor(t["gold"][start:start + batch])
        teacher = torch.empty(batch, t["labels"]).uniform_(-3, 3)
        batches.append((ids.to(device), lengths, gold.to(device), teacher.to(device)))

    def step(b):
        ids, lengths, gold, teacher = b
        opt.zero_grad()
        logits = model(ids, lengths)
        if t["loss"] == "mse":
            soft = nn.functional.mse_loss(logits, teacher)
        else:
            temp = t["temperature"]
            soft = nn.functional.kl_div(nn.functional.log_softmax(logits / temp, dim=1),
                                        nn.functional.softmax(teacher / temp, dim=1), reduction="batchmean")
        loss = alpha * nn.functional.cross_entropy(logits, gold) + (1 - alpha) * soft
        loss.backward()
        if t["max_grad_norm"] > 0:
            nn.utils.clip_grad_norm_(model.parameters(), t["max_grad_norm"])
        opt.step()

    model.train()
    return (len(batches) - 2) * batch / timed(step, batches[:2], batches[2:], sync)


def main():
    p = argparse.ArgumentParser()
    for name, default in [("vocab", 30522), ("embedding-dim", 300), ("hidden", 300), ("seq-len", 30),
                          ("batch", 64), ("large-batch", 128), ("infer-batch", 256), ("steps", 30), ("infer-steps", 30),
                          ("latency-steps", 200), ("threads", 2)]:
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--device", default="cpu")
    p.add_argument("--transfer", help="rows written by `distill bench` for the transfer-set figure")
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

        def step(b):
            ids, labels = b
            opt.zero_grad()
            loss = loss_fn(model(ids), labels)
            loss.backward()
            opt.step()

        model.train()
        return a.steps * batch / timed(step, batches[:2], [batches[i % 4] for i in range(a.steps)], sync)

    train = train_rate(a.batch)
    train_large = train_rate(a.large_batch)

    model.eval()
    infer_batches = [torch.randint(1, a.vocab, (a.seq_len, a.infer_batch), device=device) for _ in range(4)]
    sentences = [torch.randint(1, a.vocab, (a.seq_len, 1), device=device) for _ in range(16)]
    with torch.inference_mode():
        seconds = timed(model, infer_batches[:2], [infer_batches[i % 4] for i in range(a.infer_steps)], sync)
        infer = a.infer_steps * a.infer_batch / seconds
        seconds = timed(model, sentences[:10], [sentences[i % 16] for i in range(a.latency_steps)], sync)
        latency_ms = 1e3 * seconds / max(a.latency_steps, 1)
    result = {"train_sentences_per_s": train, "infer_sentences_per_s": infer,
              "train_large_batch_sentences_per_s": train_large, "latency_ms": latency_ms}
    if device.type == "cpu":
        # PyTorch's own int8: dynamic quantisation of the LSTM and Linear weights.
        quantized = torch.ao.quantization.quantize_dynamic(model, {nn.LSTM, nn.Linear}, dtype=torch.qint8)
        with torch.inference_mode():
            seconds = timed(quantized, infer_batches[:2], [infer_batches[i % 4] for i in range(a.infer_steps)], sync)
            result["infer_int8_sentences_per_s"] = a.infer_steps * a.infer_batch / seconds
            seconds = timed(quantized, sentences[:10], [sentences[i % 16] for i in range(a.latency_steps)], sync)
            result["latency_int8_ms"] = 1e3 * seconds / max(a.latency_steps, 1)
    if a.transfer:
        result["transfer_rows_per_s"] = transfer_rate(a.transfer, device, sync)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
