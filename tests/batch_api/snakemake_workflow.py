"""Snakemake's AWS Batch executor plugin drives a two-step workflow through Barge.

Snakemake (from PyPI, unchanged) registers a job definition per job, submits it to the queue,
polls DescribeJobs until it ends, terminates it and deregisters the definition, with only
AWS_ENDPOINT_URL_BATCH and an issued key pointing it at Barge. Its storage is moto's S3.

The simulated nodes do not run containers, so nothing runs the `snakemake` command each job
carries. This script stands in for it: when a job's pod starts (the job is RUNNING), it checks
the job's command is Snakemake's for that step, writes the step's output object as the command
would have, and ends the pod as the test bed ends a container (the `sim.barge.dev/duration`
annotation, which kwok reads). Snakemake then sees the job SUCCEEDED, finds the output and goes
on to the next step.

Environment: BARGE_QUEUE, BARGE_NAMESPACE, BARGE_WORKDIR, BARGE_S3_URL, BARGE_BUCKET, and the
AWS variables; kubectl on PATH.
Prints one JSON line of what it saw; exits non-zero on the first surprise.
"""

import json
import os
import subprocess
import sys
import threading
import time

import boto3

QUEUE = os.environ["BARGE_QUEUE"]
NAMESPACE = os.environ["BARGE_NAMESPACE"]
WORKDIR = os.environ["BARGE_WORKDIR"]
S3_URL = os.environ["BARGE_S3_URL"]
BUCKET = os.environ["BARGE_BUCKET"]
PREFIX = f"s3://{BUCKET}/workflow"

SNAKEFILE = """
rule all:
    input: "counts.txt"

rule greet:
    output: "hello.txt"
    resources: mem_mb=2048
    shell: "echo hello from Barge > {output}"

rule count:
    input: "hello.txt"
    output: "counts.txt"
    shell: "wc -w {input} > {output}"
"""
# What each step's command would write: (the step's output, the job's name prefix).
STEPS = {"greet": "hello.txt", "count": "counts.txt"}

batch = boto3.client("batch")
s3 = boto3.client("s3", endpoint_url=S3_URL)
seen = {"jobs": {}, "played": []}
stop = threading.Event()


def fail(what):
    print(f"FAIL: {what}", file=sys.stderr)
    sys.exit(1)


def play_the_containers():
    """Writes each running step's output, as its container's snakemake would."""
    try:
        play()
    except Exception as e:  # the main thread reports it
        seen["unexpected"] = repr(e)


def play():
    done = set()
    while not stop.is_set():
        for summary in batch.list_jobs(jobQueue=QUEUE, jobStatus="RUNNING")["jobSummaryList"]:
            job_id = summary["jobId"]
            if job_id in done:
                continue
            job = batch.describe_jobs(jobs=[job_id])["jobs"][0]
            command = " ".join(job["container"]["command"])
            step = next((s for s in STEPS if f"snakejob-{s}-" in job["jobName"]), None)
            # Snakemake's command for one step names the step as its target job.
            if step is None or "snakemake" not in command or f"{step}:" not in command:
                seen["unexpected"] = {"name": job["jobName"], "command": command}
                stop.set()
                return
            s3.put_object(Bucket=BUCKET, Key=f"workflow/{STEPS[step]}", Body=f"{step} output\n".encode())
            # The container exits 0 now: the job's pod (named by its job id) ends.
            subprocess.run(
                ["kubectl", "annotate", "pods", "-n", NAMESPACE, "-l", f"barge.dev/job-name={job_id}",
                 "sim.barge.dev/duration=1s", "--overwrite"],
                check=True, capture_output=True,
            )
            seen["played"].append(step)
            done.add(job_id)
        time.sleep(0.5)


os.makedirs(WORKDIR, exist_ok=True)
with open(os.path.join(WORKDIR, "Snakefile"), "w") as f:
    f.write(SNAKEFILE)
s3.create_bucket(Bucket=BUCKET)
player = threading.Thread(target=play_the_containers, daemon=True)
player.start()

run = subprocess.run(
    [
        os.path.join(os.path.dirname(sys.executable), "snakemake"),
        "--executor", "aws-batch",
        "--aws-batch-region", os.environ["AWS_DEFAULT_REGION"],
        "--aws-batch-job-queue", QUEUE,
        "--aws-batch-job-role", "arn:aws:iam::123456789012:role/snakemake-jobs",
        "--aws-batch-task-timeout", "60",  # a step the stand-in missed fails in a minute
        "--default-storage-provider", "s3",
        "--default-storage-prefix", PREFIX,
        "--storage-s3-endpoint-url", S3_URL,
        "--jobs", "2",
        "--latency-wait", "5",
        "--seconds-between-status-checks", "1",
    ],
    cwd=WORKDIR,
    capture_output=True,
    text=True,
    timeout=600,
)
stop.set()
log = run.stdout + run.stderr
if "unexpected" in seen:
    fail(f"standing in for the containers: {seen['unexpected']}\n{log}")
if run.returncode != 0:
    fail(f"snakemake exited {run.returncode}:\n{log}")
if "2 of 3 steps" not in log and "3 of 3 steps (100%) done" not in log:
    fail(f"snakemake did not finish its steps:\n{log}")

# What Snakemake left in Barge: its jobs, finished, and its definitions deregistered.
jobs = batch.list_jobs(jobQueue=QUEUE, jobStatus="SUCCEEDED")["jobSummaryList"]
for step in STEPS:
    mine = [j for j in jobs if f"snakejob-{step}-" in j["jobName"]]
    if len(mine) != 1:
        fail(f"one SUCCEEDED job for step {step}: {jobs}")
    seen["jobs"][step] = mine[0]["jobId"]
described = batch.describe_jobs(jobs=list(seen["jobs"].values()))["jobs"]
definitions = [j["jobDefinition"] for j in described]
active = batch.describe_job_definitions(jobDefinitions=definitions, status="ACTIVE")["jobDefinitions"]
if active:
    fail(f"Snakemake deregisters its definitions: {[d['jobDefinitionArn'] for d in active]}")
seen["definitions"] = definitions
seen["tail"] = [line for line in log.splitlines() if "steps" in line][-1:]
print(json.dumps(seen))
