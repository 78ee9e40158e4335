#!/usr/bin/env python3
"""What one write of each kind Barge makes costs kube-apiserver and etcd, in CPU.

Runs against a local cluster started by hack/cluster.sh (it reads the components' pids
from its state directory) with Barge's CRDs installed and no operator running:

    eval "$(hack/cluster.sh env)"; kubectl apply --server-side -f crds/
    hack/apiserver-cost.py .barge/cluster 3000

Each kind of write is made N times, 16 at a time, and the CPU seconds the apiserver and
etcd spent meanwhile are divided by N. Pods are created unschedulable, so that only their
create is counted. Uses `requests` (with PyYAML, from PyPI).
"""
import base64
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import requests
import yaml

STATE, N = sys.argv[1], int(sys.argv[2])
NS = "apiserver-cost"
NOW = "2026-01-01T00:00:00Z"

config = yaml.safe_load(open(os.environ["KUBECONFIG"]))
cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
SERVER = cluster["server"]


def material(path_key, data_key, source):
    if data_key in source:
        path = tempfile.mktemp()
        with open(path, "wb") as f:
            f.write(base64.b64decode(source[data_key]))
        return path
    return source[path_key]


session = requests.Session()
session.trust_env = False
session.cert = (material("client-certificate", "client-certificate-data", user),
                material("client-key", "client-key-data", user))
session.verify = material("certificate-authority", "certificate-authority-data", cluster)
session.mount("https://", requests.adapters.HTTPAdapter(pool_maxsize=16))


def server_cpu_s():
    total = 0.0
    for component in ("kube-apiserver", "etcd"):
        pid = open(f"{STATE}/pids/{component}").read().strip()
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def measure(label, write):
    before, start = server_cpu_s(), time.time()
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(write, range(N)))
    cpu = server_cpu_s() - before
    failed = [c for c in codes if c >= 300]
    print(f"{label:42s} {1000 * cpu / N:5.2f} ms a write  ({cpu:.1f} CPU s, {time.time() - start:.1f} s"
          f"{f', {len(failed)} failed: {failed[0]}' if failed else ''})", flush=True)


JOBS = f"{SERVER}/apis/barge.dev/v1alpha1/namespaces/{NS}/batchjobs"


def create_job(i):
    job = {"apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob",
           "metadata": {"name": f"j{i}", "labels": {"app": "cost"}},
           "spec": {"jobQueue": "q", "container": {"image": "busybox", "command": ["true"],
                                                   "resources": {"vcpus": 1, "memory": "64Mi"}}}}
    return session.post(JOBS, json=job).status_code


def status(i, phase):
    """A status as Barge writes it for a started job."""
    return {"phase": phase, "statusReason": f"now {phase}", "createdAt": NOW, "runnableAt": NOW,
            "startedAt": NOW, "computeEnvironment": "ce", "nodeName": "node-1", "attemptCount": 1,
            "attempts": [{"podName": f"j{i}-0", "nodeName": "node-1", "startedAt": NOW}],
            "observedGeneration": 1,
            "conditions": [{"type": "Runnable", "status": "True", "reason": "Scheduled", "message": phase,
                            "lastTransitionTime": NOW, "observedGeneration": 1}]}


def apply_status(phase):
    def write(i):
        body = {"apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob", "status": status(i, phase)}
        return session.patch(f"{JOBS}/j{i}/status?fieldManager=barge&force=true", data=json.dumps(body),
                             headers={"Content-Type": "application/apply-patch+yaml"}).status_code
    return write


def merge_status(phase):
    def write(i):
        return session.patch(f"{JOBS}/j{i}/status", data=json.dumps({"status": status(i, phase)}),
                             headers={"Content-Type": "application/merge-patch+json"}).status_code
    return write


def event(i):
    ev = {"metadata": {"name": f"j{i}.{time.time_ns()}"}, "eventTime": "2026-01-01T00:00:00.000000Z",
          "reportingController": "barge", "reportingInstance": "cost", "action": "Run",
          "reason": "Succeeded", "note": "done", "type": "Normal",
          "regarding": {"apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob", "namespace": NS, "name": f"j{i}"}}
    return session.post(f"{SERVER}/apis/events.k8s.io/v1/namespaces/{NS}/events", json=ev).status_code


def create_pod(i):
    pod = {"metadata": {"name": f"p{i}", "labels": {"app": "cost"}},
           "spec": {"nodeSelector": {"nowhere": "true"},
                    "containers": [{"name": "main", "image": "busybox", "command": ["true"],
                                    "resources": {"requests": {"cpu": "1", "memory": "64Mi"}}}]}}
    return session.post(f"{SERVER}/api/v1/namespaces/{NS}/pods", json=pod).status_code


session.post(f"{SERVER}/api/v1/namespaces", json={"metadata": {"name": NS}})
measure("pod create", create_pod)
measure("BatchJob create", create_job)
measure("BatchJob status, server-side apply", apply_status("STARTING"))
measure("BatchJob status, server-side apply again", apply_status("RUNNING"))
measure("BatchJob status, JSON merge patch", merge_status("SUCCEEDED"))
measure("event create", event)
