"""Write notebooks/sessions.ipynb and store the outputs nbval compares (run it after changing the cells).

    .venv/bin/python tests/session/make_sessions_notebook.py
"""
from __future__ import annotations

import os

import nbformat
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "notebooks",
                    "sessions.ipynb")
S = "%%pytorch_elastic --session --rank0-only\n"
CELLS = [
    ("md", "# Sessions: a DDP model that lives across notebook cells\n\n"
           "`%pytorch_elastic_session start` starts the ranks once (torch elastic's rendezvous, the torchrun "
           "environment on every rank, `init_process_group` called once). `%%pytorch_elastic --session` cells "
           "then run in each rank's own, persistent namespace: build the model in one cell, train it in the "
           "next ones, pull what you need into the notebook."),
    ("code", "%load_ext ptjupyter\n"
             "%config PytorchElastic.status = \"text\"  # summary lines only: the saved outputs stay comparable"),
    ("code", "%pytorch_elastic_session start --nproc-per-node 2 --backend gloo"),
    ("md", "Cell 1 builds the data shard, the DDP model and a `train` function on every rank. The names stay "
           "on the ranks; `--rank0-only` shows rank 0's lines."),
    ("code", S + "import torch\nimport torch.distributed as dist\n"
                 "from torch.nn.parallel import DistributedDataParallel as DDP\n\n"
                 "rank = dist.get_rank()\ntorch.manual_seed(0)  # the same initial weights everywhere\n"
                 "model = DDP(torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)))\n"
                 "opt = torch.optim.SGD(model.parameters(), lr=0.05)\n"
                 "g = torch.Generator().manual_seed(rank)  # each rank its own shard\n"
                 "X = torch.randn(512, 8, generator=g)\nY = X @ torch.linspace(-1, 1, 8).unsqueeze(1)\n\n\n"
                 "def train(steps):\n    losses = []\n    for _ in range(steps):\n        opt.zero_grad()\n"
                 "        loss = torch.nn.functional.mse_loss(model(X), Y)\n        loss.backward()\n"
                 "        opt.step()\n        losses.append(round(loss.item(), 4))\n    return losses\n\n\n"
                 "print(f\"rank {rank} of {dist.get_world_size()}: model built\")"),
    ("md", "Cells 2-4 train 20 steps each: the model and optimizer carry over from cell to cell."),
    ("code", S.replace("--rank0-only", "--rank0-only --out epoch1") + "l = train(20)\n"
             "print(f\"loss {l[0]:.4f} -> {l[-1]:.4f}\")\nl"),
    ("code", S.replace("--rank0-only", "--rank0-only --out epoch2") + "l = train(20)\n"
             "print(f\"loss {l[0]:.4f} -> {l[-1]:.4f}\")\nl;"),
    ("code", S.replace("--rank0-only", "--rank0-only --out epoch3") + "l = train(20)\n"
             "print(f\"loss {l[0]:.4f} -> {l[-1]:.4f}\")\nl;"),
    ("md", "`pull NAME --all` brings a rank value from every rank (a dict rank -> value): DDP kept the "
           "replicas equal."),
    ("code", S + "state = model.module.state_dict()"),
    ("code", "import torch\n\nstates = %pytorch_elastic_session pull state --all\n"
             "print(sorted(states), all(torch.equal(states[0][k], states[1][k]) for k in states[0]))"),
    ("code", "%matplotlib inline\nimport matplotlib.pyplot as plt\n\nlosses = epoch1 + epoch2 + epoch3\n"
             "fig, ax = plt.subplots(figsize=(5, 3))\nax.plot(losses)\n"
             "for x in (20, 40):\n    ax.axvline(x, color=\"#bbb\", lw=1)  # cell boundaries\n"
             "ax.set_xlabel(\"step (3 cells of 20)\")\nax.set_ylabel(\"MSE loss (rank 0 shard)\")\nplt.show()\n"
             "print(\"the loss kept falling across cells:\", epoch1[-1] > epoch2[-1] > epoch3[-1])"),
    ("code", "%pytorch_elastic_session stop"),
]


def main() -> None:
    nb = new_notebook(cells=[new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in CELLS])
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": os.path.dirname(PATH)}}
                   ).execute()
    nbformat.write(nb, PATH)
    print("wrote", PATH)


if __name__ == "__main__":
    main()
