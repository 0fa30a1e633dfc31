"""Regenerate notebooks/kubernetes.ipynb (and execute it, so nbval has outputs to compare).

    .venv/bin/python tests/k8s/make_k8s_notebook.py
"""
from __future__ import annotations

import os
import sys

import nbformat
from nbclient import NotebookClient

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "notebooks", "kubernetes.ipynb")

md = nbformat.v4.new_markdown_cell
code = nbformat.v4.new_code_cell

CELLS = [
    md("# ptjupyter on Kubernetes: a cell as a Kubeflow PyTorchJob\n\n"
       "`%%pytorch_elastic --target k8s` runs the same cell, with the same `Elastic`/`PyTorch` config, on a cluster:\n\n"
       "- **several nodes** (`--nnodes 2`, `\"2:4\"`, or a `PyTorch(worker=Worker(replicas=N))` config) -> a Kubeflow "
       "`PyTorchJob` (kubeflow.org/v1) shaped like the one Flyte's kfpytorch backend builds: container `pytorch`, "
       "Worker-only with `elasticPolicy` for `Elastic`, Master + Worker for `PyTorch`;\n"
       "- **one node** -> a plain `batch/v1` Job (no training operator needed), `torchrun --standalone` inside it.\n\n"
       "The cell function is pickled with cloudpickle into a Secret owned by the job, mounted in every pod with a "
       "small entrypoint and a copy of cloudpickle: **the image needs only Python (the kernel's minor version) and "
       "torch**, plus whatever the cell imports.\n\n"
       "This notebook runs everything with `--dry-run`, which prints the manifests and sends nothing. The commands for "
       "a real cluster are at the end."),
    code("%load_ext ptjupyter"),
    md("## Two nodes x two processes, as a dry run\n\n"
       "The plan (with the source of every value), what the cell ships, then the PyTorchJob and its payload Secret (its keys with sizes, never their values):"),
    code(  # output not compared by nbval (tag): the result nonce and payload sizes differ between runs and versions
         "%%pytorch_elastic --target k8s --dry-run --nnodes 2 --nproc-per-node 2 --image ghcr.io/acme/train:py3.11-torch2.5 --job-name ptj-demo\n"
         "import torch.distributed as dist\n"
         "dist.init_process_group('gloo')\n"
         "print(f'rank {dist.get_rank()} of {dist.get_world_size()}')\n"
         "dist.get_world_size()", metadata={"tags": ["nbval-ignore-output"]}),
    md("The same through the Python API: `ptjupyter.k8s.dry_run(plan, fn)` returns the YAML. The parts that matter:"),
    code("import yaml\n"
         "from ptjupyter import Elastic, Layer, PyTorch, Worker, resolve\n"
         "from ptjupyter.k8s import dry_run\n\n"
         "def train():\n"
         "    import torch.distributed as dist\n"
         "    dist.init_process_group('gloo')\n"
         "    return dist.get_world_size()\n\n"
         "def manifest(config, **options):\n"
         "    plan = resolve(config, [Layer('notebook', {'image': 'ghcr.io/acme/train:py3.11-torch2.5', **options})], target='k8s')\n"
         "    return next(d for d in yaml.safe_load_all(dry_run(plan, train)) if d)\n\n"
         "job = manifest(Elastic(nnodes='2:4', nproc_per_node=2), job_name='ptj-demo')\n"
         "worker = job['spec']['pytorchReplicaSpecs']['Worker']\n"
         "print(job['kind'], job['metadata']['name'])\n"
         "print('elasticPolicy:', job['spec']['elasticPolicy'])\n"
         "print('nprocPerNode:', repr(job['spec']['nprocPerNode']), '| Worker replicas:', worker['replicas'], '| restartPolicy:', worker['restartPolicy'])\n"
         "print('command:', ' '.join(worker['template']['spec']['containers'][0]['command']))"),
    md("A `PyTorch` config gives Master(1) + Worker; one node gives a plain Job:"),
    code("job = manifest(PyTorch(worker=Worker(replicas=3)))\n"
         "print(job['kind'], {k: v['replicas'] for k, v in job['spec']['pytorchReplicaSpecs'].items()})\n"
         "job = manifest(Elastic(nnodes=1, nproc_per_node=4))\n"
         "print(job['apiVersion'], job['kind'], '|', ' '.join(job['spec']['template']['spec']['containers'][0]['command']))"),
    md("## On a real cluster\n\n"
       "Prerequisites: a kubeconfig (`~/.kube/config` or `$KUBECONFIG`; in-cluster config works too), the Kubeflow "
       "training operator for multi-node jobs, and RBAC to create `pytorchjobs.kubeflow.org`, `jobs.batch`, "
       "`secrets` and to get/list/watch `pods`, `pods/log` and `events` in your namespace.\n\n"
       "```bash\n"
       "kubectl apply --server-side -k \"github.com/kubeflow/training-operator.git/manifests/overlays/standalone?ref=v1.9.0\"\n"
       "kubectl auth can-i create pytorchjobs.kubeflow.org -n team-a\n"
       "```\n\n"
       "Then, in the notebook (the image must have the kernel's Python minor version and torch):\n\n"
       "```python\n"
       "%%pytorch_elastic --target k8s --nnodes 2 --nproc-per-node 4 --image ghcr.io/you/train:py3.11-torch2.5 --namespace team-a\n"
       "import torch.distributed as dist\n"
       "dist.init_process_group('nccl')\n"
       "...   # the pods' output arrives here live, prefixed [worker-0], [worker-1]; rank 0's last expression comes back\n"
       "```\n\n"
       "- A status line says why the job waits (`Pending`, `FailedScheduling: 0/3 nodes are available ...`, "
       "`ImagePullBackOff ...`).\n"
       "- Interrupting the cell stops following, not the job; it prints how to reattach or cancel. `--detach` returns "
       "right after submitting.\n"
       "- Rank 0's return value comes back through a marked line of its log when it is at most 64 KiB pickled; save "
       "bigger results to storage.\n\n"
       "```python\n"
       "%pytorch_elastic_jobs                              # ptjupyter's jobs in the namespace, with their state\n"
       "%pytorch_elastic_jobs attach ptj-1a2b3c4d --tail 50  # follow again (last 50 lines of each pod, then live)\n"
       "%pytorch_elastic_jobs cancel ptj-1a2b3c4d          # delete the job; its pods and payload Secret go with it\n"
       "%pytorch_elastic_jobs list -n team-a --context prod\n"
       "```"),
]


def main() -> int:
    nb = nbformat.v4.new_notebook(cells=CELLS)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": os.path.dirname(OUT)}}).execute()
    nbformat.write(nb, OUT)
    print("wrote", os.path.normpath(OUT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
