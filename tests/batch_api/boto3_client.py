"""boto3 against Barge's AWS Batch API, as an AWS Batch user's script would drive it.

Only AWS_ENDPOINT_URL_BATCH, the issued key and a region are set; the queue names come from
the test. Prints one JSON line of what it saw; exits non-zero on the first surprise.
"""

import json
import os
import sys
import time

import boto3
from botocore.exceptions import ClientError

QUEUE = os.environ["BARGE_QUEUE"]
HELD = os.environ["BARGE_HELD_QUEUE"]
batch = boto3.client("batch")
seen = {}


def check(ok, what):
    if not ok:
        line = sys._getframe(1).f_lineno
        print(f"FAIL at line {line}: {what}", file=sys.stderr)
        sys.exit(1)


def error_code(call, **kwargs):
    try:
        call(**kwargs)
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["Error"]["Message"]
    return None, None


# Simulated pods run for as long as this tag says (the local test bed reads it).
RUN = {"sim.barge.dev/duration": "1s"}

reg = batch.register_job_definition(
    jobDefinitionName="boto3_render",
    type="container",
    parameters={"frame": "1"},
    containerProperties={
        "image": "busybox:1.36",
        "command": ["echo", "Ref::frame"],
        "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "512"}],
        "jobRoleArn": "arn:aws:iam::000000000000:role/ignored",
    },
    retryStrategy={"attempts": 2, "evaluateOnExit": [{"onExitCode": "137", "action": "EXIT"}]},
    propagateTags=True,
    tags=RUN,
)
check(reg["revision"] >= 1 and reg["jobDefinitionArn"].endswith(f"job-definition/boto3_render:{reg['revision']}"), reg)
rev = reg["revision"]
again = batch.register_job_definition(
    jobDefinitionName="boto3_render",
    type="container",
    containerProperties={"image": "busybox:1.37", "command": ["echo", "Ref::frame"]},
    propagateTags=True,
    tags=RUN,
)
check(again["revision"] == rev + 1, f"a changed definition is the next revision: {again}")
defs = batch.describe_job_definitions(jobDefinitionName="boto3_render", status="ACTIVE")["jobDefinitions"]
check(sorted(d["revision"] for d in defs) == [rev, rev + 1], defs)
first = next(d for d in defs if d["revision"] == rev)
check(first["containerProperties"]["image"] == "busybox:1.36", first)
check({"type": "MEMORY", "value": "512"} in first["containerProperties"]["resourceRequirements"], first)
check(first["retryStrategy"]["attempts"] == 2, first)
seen["revisions"] = [rev, rev + 1]

queues = batch.describe_job_queues()["jobQueues"]
check({q["jobQueueName"] for q in queues} >= {QUEUE, HELD}, queues)
envs = batch.describe_compute_environments()["computeEnvironments"]
check(envs and all(e["computeResources"]["type"] in ("EC2", "SPOT") for e in envs), envs)

single = batch.submit_job(
    jobName="single_1", jobQueue=QUEUE, jobDefinition=f"boto3_render:{rev}", parameters={"frame": "42"}
)
array = batch.submit_job(jobName="frames", jobQueue=QUEUE, jobDefinition="boto3_render", arrayProperties={"size": 3})
after = batch.submit_job(
    jobName="after",
    jobQueue=QUEUE,
    jobDefinition=reg["jobDefinitionArn"],
    dependsOn=[{"jobId": single["jobId"]}],
    containerOverrides={"environment": [{"name": "STAGE", "value": "two"}], "command": ["echo", "done"]},
)
ids = [single["jobId"], array["jobId"], after["jobId"]]
deadline = time.time() + 120
while True:
    jobs = batch.describe_jobs(jobs=ids + [f"{array['jobId']}:1"])["jobs"]
    status = {j["jobId"]: j["status"] for j in jobs}
    check(not any(s == "FAILED" for s in status.values()), jobs)
    if len(status) == 4 and all(s == "SUCCEEDED" for s in status.values()):
        break
    check(time.time() < deadline, f"jobs did not all succeed in 120 s: {status}")
    time.sleep(1)

by_id = {j["jobId"]: j for j in jobs}
one = by_id[single["jobId"]]
check(one["jobName"] == "single_1" and one["jobQueue"].endswith(f"job-queue/{QUEUE}"), one)
check(one["container"]["command"] == ["echo", "42"], one["container"])
check(one["jobDefinition"].endswith(f"boto3_render:{rev}"), one)
check(one["createdAt"] <= one["startedAt"] <= one["stoppedAt"], one)
check(one["attempts"] and one["attempts"][-1]["container"]["exitCode"] == 0, one["attempts"])
check(by_id[after["jobId"]]["container"]["command"] == ["echo", "done"], by_id[after["jobId"]])
check({"name": "STAGE", "value": "two"} in by_id[after["jobId"]]["container"]["environment"], by_id[after["jobId"]])
check(by_id[after["jobId"]]["dependsOn"] == [{"jobId": single["jobId"]}], by_id[after["jobId"]])
check(by_id[array["jobId"]]["arrayProperties"]["statusSummary"]["SUCCEEDED"] == 3, by_id[array["jobId"]])
check(by_id[array["jobId"]]["jobDefinition"].endswith(f"boto3_render:{rev + 1}"), "NAME alone is the latest revision")
check(by_id[f"{array['jobId']}:1"]["arrayProperties"]["index"] == 1, by_id[f"{array['jobId']}:1"])

pages = batch.get_paginator("list_jobs").paginate(
    jobQueue=QUEUE, jobStatus="SUCCEEDED", PaginationConfig={"PageSize": 1}
)
listed, page_count = [], 0
for page in pages:
    page_count += 1
    listed += [s["jobId"] for s in page["jobSummaryList"]]
check(set(ids) <= set(listed) and len(listed) == len(set(listed)), listed)
check(page_count >= 3, f"one job per page: {page_count} pages")
kids = batch.list_jobs(arrayJobId=array["jobId"], jobStatus="SUCCEEDED")["jobSummaryList"]
check(sorted(k["jobId"] for k in kids) == [f"{array['jobId']}:{i}" for i in range(3)], kids)
named = batch.list_jobs(jobQueue=QUEUE, filters=[{"name": "JOB_NAME", "values": ["single*"]}])["jobSummaryList"]
check([s["jobId"] for s in named] == [single["jobId"]], named)
seen["listed_pages"] = page_count

# A queue that admits nothing: its jobs wait, to be cancelled and terminated.
waiting = batch.submit_job(jobName="to_cancel", jobQueue=HELD, jobDefinition="boto3_render")
stopped = batch.submit_job(jobName="to_terminate", jobQueue=HELD, jobDefinition="boto3_render")
batch.cancel_job(jobId=waiting["jobId"], reason="not needed")
batch.terminate_job(jobId=stopped["jobId"], reason="wrong input")
deadline = time.time() + 60
while True:
    jobs = batch.describe_jobs(jobs=[waiting["jobId"], stopped["jobId"]])["jobs"]
    if all(j["status"] == "FAILED" for j in jobs):
        break
    check(time.time() < deadline, f"cancel and terminate did not end the jobs: {jobs}")
    time.sleep(1)
reasons = {j["jobName"]: j["statusReason"] for j in jobs}
check("not needed" in reasons["to_cancel"] and "wrong input" in reasons["to_terminate"], reasons)

code, message = error_code(batch.submit_job, jobName="x", jobQueue="no-such-queue", jobDefinition="boto3_render")
check(code == "ClientException" and "no-such-queue" in message, (code, message))
code, message = error_code(batch.submit_job, jobName="x", jobQueue=QUEUE, jobDefinition="no_such_def")
check(code == "ClientException" and "no_such_def" in message, (code, message))
code, message = error_code(batch.describe_jobs, jobs=[f"id-{i}" for i in range(101)])
check(code == "ClientException" and "100" in message, (code, message))

dereg = batch.deregister_job_definition(jobDefinition=f"boto3_render:{rev + 1}")
check(dereg["ResponseMetadata"]["HTTPStatusCode"] == 200, dereg)
code, message = error_code(batch.submit_job, jobName="x", jobQueue=QUEUE, jobDefinition="boto3_render")
check(code == "ClientException" and "INACTIVE" in message, (code, message))

seen["jobs"] = {"single": single["jobId"], "array": array["jobId"], "after": after["jobId"]}
print(json.dumps(seen))
