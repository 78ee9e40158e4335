"""Snakemake's AWS Batch executor plugin runs a two-step workflow through Barge, for real.

Snakemake (from PyPI, unchanged) registers a job definition per step, submits it to the
queue, polls DescribeJobs until it ends and deregisters the definition. Each step's job runs
Snakemake's own command in the snakemake/snakemake:v<version> image on the real node: that
snakemake reads the step's input from moto's S3 and writes its output there. Only
AWS_ENDPOINT_URL_BATCH, an issued key and the S3 storage plugin's settings point it at the
test bed; the plugin hands its key to the jobs as its documented variables.

Environment: BARGE_QUEUE, BARGE_WORKDIR, BARGE_S3_URL (moto where the jobs reach it),
BARGE_BUCKET, BARGE_ROLE, and the AWS variables.
Prints one JSON line of what it saw; exits non-zero on the first surprise.
"""

import json
import os
import subprocess
import sys

import boto3

QUEUE = os.environ["BARGE_QUEUE"]
WORKDIR = os.environ["BARGE_WORKDIR"]
S3_URL = os.environ["BARGE_S3_URL"]
BUCKET = os.environ["BARGE_BUCKET"]
PREFIX = f"s3://{BUCKET}/workflow"

SNAKEFILE = """
rule all:
    input: "counts.txt"

rule greet:
    output: "hello.txt"
    resources: mem_mb=1024
    shell: "echo hello from Barge on $(hostname) > {output}"

rule count:
    input: "hello.txt"
    output: "counts.txt"
    resources: mem_mb=1024
    shell: "wc -w < {input} > {output}"
"""
STEPS = ["greet", "count"]

batch = boto3.client("batch")
s3 = boto3.client("s3", endpoint_url=S3_URL)


def fail(what):
    print(f"FAIL: {what}", file=sys.stderr)
    sys.exit(1)


os.makedirs(WORKDIR, exist_ok=True)
with open(os.path.join(WORKDIR, "Snakefile"), "w") as f:
    f.write(SNAKEFILE)
s3.create_bucket(Bucket=BUCKET)

run = subprocess.run(
    [
        os.path.join(os.path.dirname(sys.executable), "snakemake"),
        "--executor", "aws-batch",
        "--aws-batch-region", os.environ["AWS_DEFAULT_REGION"],
        "--aws-batch-job-queue", QUEUE,
        "--aws-batch-job-role", os.environ["BARGE_ROLE"],
        "--aws-batch-task-timeout", "300",
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
    timeout=900,
    # moto takes any key; the plugin passes these to each step's job.
    env={**os.environ, "SNAKEMAKE_STORAGE_S3_ACCESS_KEY": "testing", "SNAKEMAKE_STORAGE_S3_SECRET_KEY": "testing"},
)
log = run.stdout + run.stderr
if run.returncode != 0:
    fail(f"snakemake exited {run.returncode}:\n{log}")
if "3 of 3 steps (100%) done" not in log:
    fail(f"snakemake did not finish its steps:\n{log}")

# What the steps' containers wrote, each from its own snakemake.
hello = s3.get_object(Bucket=BUCKET, Key="workflow/hello.txt")["Body"].read().decode()
counts = s3.get_object(Bucket=BUCKET, Key="workflow/counts.txt")["Body"].read().decode()
if not hello.startswith("hello from Barge on ") or counts.strip() != "5":
    fail(f"the steps' outputs: {hello!r}, {counts!r}")

# What Snakemake left in Barge: its jobs, finished, and its definitions deregistered.
jobs = batch.list_jobs(jobQueue=QUEUE, jobStatus="SUCCEEDED")["jobSummaryList"]
seen = {"jobs": {}, "hello": hello.strip()}
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
