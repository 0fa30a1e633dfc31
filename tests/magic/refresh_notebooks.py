"""Write notebooks/quickstart.ipynb and notebooks/widgets.ipynb and store the outputs nbval compares.

    .venv/bin/python tests/magic/refresh_notebooks.py [quickstart|widgets ...]

Each notebook runs top to bottom in a real ``python3`` kernel; its outputs are recorded the way nbval
collects them (display updates are not applied: nbval ignores them too). Run it after changing a
notebook's cells or ptjupyter's output format, then check ``pytest --nbval`` passes.
"""
from __future__ import annotations

import os
import sys
import time

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

HERE = os.path.dirname(os.path.abspath(__file__))
NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(HERE)), "notebooks")

QUICKSTART = [
    ("md", "# ptjupyter quickstart: DDP training from a notebook cell\n\n"
           "`%%pytorch_elastic` runs a cell on every rank of a torch elastic job: here 2 local processes on "
           "CPU (gloo). Each rank's output appears while it runs, prefixed `[rankN]`; the value of the cell's "
           "last expression on rank 0 becomes the cell's result."),
    ("code", "%load_ext ptjupyter"),
    ("code", "%%pytorch_elastic --nproc-per-node 2 --rank0-only\n"
             "import torch.distributed as dist\n"
             "dist.init_process_group(\"gloo\")\n"
             "print(f\"hello from rank {dist.get_rank()} of {dist.get_world_size()}\")\n"
             "dist.get_world_size()"),
    ("md", "The data set and the model class live in the notebook. The cell below reads them, so ptjupyter "
           "ships them to the ranks by value (cloudpickle): no module file needed. Names the cell assigns "
           "(`model`, `losses`, ...) stay on the ranks; `--out losses` brings rank 0's result back."),
    ("code", "import torch\n"
             "\n"
             "torch.manual_seed(0)\n"
             "X = torch.randn(1024, 8)\n"
             "true_w = torch.randn(8, 1)\n"
             "Y = X @ true_w + 0.05 * torch.randn(1024, 1)\n"
             "\n"
             "\n"
             "class MLP(torch.nn.Module):\n"
             "    def __init__(self):\n"
             "        super().__init__()\n"
             "        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))\n"
             "\n"
             "    def forward(self, x):\n"
             "        return self.net(x)"),
    ("code", "%%pytorch_elastic --nproc-per-node 2 --rank0-only --out losses\n"
             "import torch\n"
             "import torch.distributed as dist\n"
             "from torch.nn.parallel import DistributedDataParallel as DDP\n"
             "\n"
             "dist.init_process_group(\"gloo\")\n"
             "rank, world = dist.get_rank(), dist.get_world_size()\n"
             "torch.manual_seed(0)  # same initial weights on every rank (DDP also broadcasts rank 0's)\n"
             "model = DDP(MLP())\n"
             "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
             "xs, ys = X[rank::world], Y[rank::world]  # each rank trains on its own shard\n"
             "losses = []\n"
             "for step in range(100):\n"
             "    opt.zero_grad()\n"
             "    loss = torch.nn.functional.mse_loss(model(xs), ys)\n"
             "    loss.backward()  # DDP averages the gradients of both ranks here\n"
             "    opt.step()\n"
             "    losses.append(loss.item())\n"
             "    if step % 25 == 0:\n"
             "        print(f\"step {step:3d}  loss {loss.item():.2f}\")\n"
             "losses;"),
    ("md", "The result is an ordinary notebook variable now:"),
    ("code", "%matplotlib inline\n"
             "import matplotlib.pyplot as plt\n"
             "\n"
             "fig, ax = plt.subplots(figsize=(5, 3))\n"
             "ax.plot(losses)\n"
             "ax.set_xlabel(\"step\")\n"
             "ax.set_ylabel(\"MSE loss (rank 0 shard)\")\n"
             "plt.show()\n"
             "print(f\"{len(losses)} steps; final loss under 1% of the first: {losses[-1] < 0.01 * losses[0]}\")"),
]

WIDGETS = [
    ("md", "# The `%%pytorch_elastic` widget panel\n\n"
           "An explicit panel (not `interact`: nothing runs when you change a value). Values you change "
           "there override `%config` for the next cells; a `--config` object and the cell's own flags still "
           "win. A bad value shows its error in the panel and is not applied. Here the values are set in code, "
           "as typing into the boxes would."),
    ("code", "%load_ext ptjupyter\n%config PytorchElastic.nproc_per_node = 1"),
    ("code", "panel = %pytorch_elastic_widgets\npanel"),
    ("code", "panel.nproc_per_node.value = 2  # as if typed into the box\nprint(panel.text())"),
    ("code", "%%pytorch_elastic --rank0-only\n"
             "import os\n"
             "print(\"world size\", os.environ[\"WORLD_SIZE\"])\n"
             "int(os.environ[\"WORLD_SIZE\"])"),
    ("md", "`--dry-run` shows where each value came from, and starts nothing:"),
    ("code", "%%pytorch_elastic --dry-run\n1"),
    ("md", "A bad value is reported in the panel, in one line; the last valid values stay in force:"),
    ("code", "panel.nproc_per_node.value = 0\nprint(panel.text())"),
    ("code", "panel.nproc_per_node.value = 2\npanel.nnodes.value = \"2\"  # several nodes need the k8s target\n"
             "print(panel.text())"),
    ("md", "Cell flags beat the panel (one process: a plain call in the kernel, no subprocess):"),
    ("code", "%%pytorch_elastic --nproc-per-node 1 --dry-run\n1"),
    ("md", "Switching the target to Kubernetes makes `nnodes=2` valid (a PyTorchJob); `reset()` drops the overrides:"),
    ("code", "panel.target.value = \"k8s\"\nprint(panel.text())"),
    ("code", "panel.reset()\nprint(panel.text())"),
]


def build(cells):
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, src in cells:
        nb.cells.append(new_markdown_cell(src) if kind == "md" else new_code_cell(src))
    return nb


def execute(nb, cwd):
    from jupyter_client import KernelManager

    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=cwd)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=120)
    count = 0
    try:
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            msg_id = kc.execute(cell.source)
            outputs = []
            while True:
                msg = kc.get_iopub_msg(timeout=300)
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                t, c = msg["msg_type"], msg["content"]
                if t == "status" and c["execution_state"] == "idle":
                    break
                if t == "stream":
                    if outputs and outputs[-1].output_type == "stream" and outputs[-1].name == c["name"]:
                        outputs[-1].text += c["text"]
                    else:
                        outputs.append(new_output("stream", name=c["name"], text=c["text"]))
                elif t in ("display_data", "execute_result"):
                    kw = {"data": c["data"], "metadata": c.get("metadata", {})}
                    if t == "execute_result":
                        kw["execution_count"] = c["execution_count"]
                    outputs.append(new_output(t, **kw))
                elif t == "error":
                    outputs.append(new_output("error", ename=c["ename"], evalue=c["evalue"], traceback=c["traceback"]))
                    raise RuntimeError(f"cell failed: {c['ename']}: {c['evalue']}\n{cell.source}")
            count += 1
            cell.execution_count = count
            cell.outputs = outputs
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def main(names):
    for name, cells in (("quickstart", QUICKSTART), ("widgets", WIDGETS)):
        if names and name not in names:
            continue
        nb = build(cells)
        t = time.monotonic()
        execute(nb, NOTEBOOKS)
        path = os.path.join(NOTEBOOKS, f"{name}.ipynb")
        nbformat.validate(nb)
        nbformat.write(nb, path)
        print(f"{path}: {time.monotonic() - t:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
