"""PyTorch side of `npm run bench:train`: the same network, batch and optimizer as bench/vgg-bench-model.ts,
on the CPU with one thread. Same line protocol as bench/train-worker.ts: prints {"ready": ...} after
warm-up steps, then answers each {"steps": N} line on stdin with {"ms": [wall ms per step],
"cpuMs": [CPU ms of this process per step]}."""
import json
import sys
import time

try:
    import torch
    import torch.nn as nn
except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
    print(json.dumps({"unavailable": f"PyTorch cannot be imported: {exc}"}), flush=True)
    sys.exit(0)

torch.set_num_threads(1)
torch.manual_seed(1)


def conv(i, o):
    return [nn.Conv2d(i, o, 3, padding=1), nn.ReLU()]


net = nn.Sequential(
    *conv(3, 16), nn.MaxPool2d(2),
    *conv(16, 32), nn.MaxPool2d(2),
    *conv(32, 64), *conv(64, 64), nn.MaxPool2d(2),
    *conv(64, 128), *conv(128, 128), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(4 * 4 * 128, 128), nn.ReLU(), nn.Linear(128, 4),
)
optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
loss_fn = nn.CrossEntropyLoss()
x = torch.rand(32, 3, 64, 64) * 2 - 1
y = torch.arange(32) % 4


def step():
    c0 = time.process_time()
    t0 = time.perf_counter()
    optimizer.zero_grad()
    loss = loss_fn(net(x), y)
    loss.backward()
    optimizer.step()
    loss.item()
    return (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000


warmup = int(sys.argv[1]) if len(sys.argv) > 1 else 2
for _ in range(warmup):
    step()
print(json.dumps({
    "ready": True,
    "backend": "pytorch-cpu",
    "detail": f"PyTorch {torch.__version__}, {torch.get_num_threads()} thread, mkldnn {torch.backends.mkldnn.is_available()}",
    "params": sum(p.numel() for p in net.parameters()),
}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd.get("quit"):
        break
    runs = [step() for _ in range(int(cmd.get("steps", 1)))]
    print(json.dumps({"ms": [r[0] for r in runs], "cpuMs": [r[1] for r in runs]}), flush=True)
