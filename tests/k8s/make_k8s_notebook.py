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
    md("## Kubeflow Trainer v2: a TrainJob, as a dry run\n\n"
       "`--api auto|trainjob|pytorchjob|job` (default `auto`) picks the API. **The `--api auto` rule**: one node -> a "
       "`batch/v1` Job; an elastic range (`--nnodes 1:4`) or a `PyTorch` (Master/Worker) config -> a v1 `PyTorchJob` "
       "(Trainer v2 has no elastic training yet); a fixed node count -> a Trainer v2 `TrainJob` when the cluster serves "
       "`trainjobs.trainer.kubeflow.org/v1alpha1`, else a `PyTorchJob`. Without a cluster, `--dry-run` prints both "
       "candidates. **Kueue**: `--queue NAME` sets `kueue.x-k8s.io/queue-name` and `--priority-class NAME` "
       "`kueue.x-k8s.io/priority-class` (TrainJob, PyTorchJob or Job alike); a job Kueue holds shows "
       "`waiting for admission in queue NAME` until admitted. The TrainJob runs on `--runtime` (default "
       "ClusterTrainingRuntime `torch-distributed`), the payload Secret mounted through a `runtimePatches` entry:"),
    code(  # output not compared by nbval (tag): the result nonce and payload sizes differ between runs and versions
         "%%pytorch_elastic --target k8s --api trainjob --nnodes 2 --nproc-per-node 2 --image repo/train:1 --job-name ptj-tj --queue team-a --dry-run\n"
         "import torch.distributed as dist\n"
         "dist.init_process_group('gloo')\n"
         "dist.get_world_size()", metadata={"tags": ["nbval-ignore-output"]}),
    md("The parts that do not change between runs, from the magic itself: the TrainJob, then `--api auto` with its two "
       "candidates (which one is sent is decided by the cluster's discovery when it connects):"),
    code("import contextlib, io\n"
         "import yaml\n\n"
         "def magic_dry_run(line, body='1'):\n"
         "    buf = io.StringIO()\n"
         "    with contextlib.redirect_stdout(buf):\n"
         "        get_ipython().run_cell_magic('pytorch_elastic', line, body)\n"
         "    return buf.getvalue()\n\n"
         "text = magic_dry_run('--target k8s --api trainjob --nnodes 2 --nproc-per-node 2 --image repo/train:1 --job-name ptj-tj --queue team-a --dry-run')\n"
         "tj, secret = [d for d in yaml.safe_load_all(text) if isinstance(d, dict) and d.get('kind') in ('TrainJob', 'Secret')]\n"
         "print(tj['kind'], tj['metadata']['name'], '| runtime:', tj['spec']['runtimeRef']['name'], '| numNodes:', "
         "tj['spec']['trainer']['numNodes'], '| numProcPerNode:', tj['spec']['trainer']['numProcPerNode'])\n"
         "print('queue label:', tj['metadata']['labels']['kueue.x-k8s.io/queue-name'])\n"
         "print('command:', ' '.join(tj['spec']['trainer']['command']))\n"
         "print('payload:', secret['kind'], secret['type'], secret['metadata']['name'], '| values in the dry run:', 'data' in secret)\n\n"
         "text = magic_dry_run('--target k8s --api auto --nnodes 2 --nproc-per-node 2 --image repo/train:1 --job-name ptj-auto --dry-run')\n"
         "print('api auto candidates:', [d['kind'] for d in yaml.safe_load_all(text) if isinstance(d, dict) and d.get('kind') in ('PyTorchJob', 'TrainJob')])\n"
         "print(*[ln for ln in text.splitlines() if ln.startswith(('# api auto', '# ... else'))], sep='\\n')"),
    md("## On a real cluster\n\n"
       "Prerequisites: a kubeconfig (`~/.kube/config` or `$KUBECONFIG`; in-cluster config works too), the Kubeflow "
       "training operator (or Kubeflow Trainer v2) for multi-node jobs, and RBAC to create `pytorchjobs.kubeflow.org` (or `trainjobs.trainer.kubeflow.org`), `jobs.batch`, "
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
