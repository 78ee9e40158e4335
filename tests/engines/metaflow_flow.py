"""A Metaflow flow whose steps run as AWS Batch jobs on Barge, in real containers.

start fans out over three items (a Batch job each), the branches join, and `flaky` fails on
its first attempt so that Metaflow's @retry submits it again. Artifacts go through the S3
datastore. Nothing here is Barge's: Metaflow's configuration (METAFLOW_* variables) names
the queue, the job role, the datastore and the S3 endpoint, as it does on AWS.

The containers reach the test bed's S3 at METAFLOW_S3_ENDPOINT_URL, which Metaflow hands to
each job. On AWS a job's credentials come from its job role; the test bed has no identity
webhook to hand them out, so the flow passes its own key on with @environment (which sets
it for the local process that submits the job too), and moto takes any key.

With BARGE_FLOW_FAIL set to an exit code, `start` ends the container with it instead.
"""

import os
import socket
import sys

from metaflow import FlowSpec, batch, current, environment, retry, step

MOTO_KEY = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
FAIL = os.environ.get("BARGE_FLOW_FAIL", "")
ON_BATCH = dict(image="python:3.11", cpu=1, memory=1024)


class BargeFlow(FlowSpec):
    @environment(vars={**MOTO_KEY, "BARGE_FLOW_FAIL": FAIL})
    @batch(**ON_BATCH)
    @step
    def start(self):
        print(f"start on {socket.gethostname()} as Batch job {os.environ['AWS_BATCH_JOB_ID']}")
        if os.environ.get("BARGE_FLOW_FAIL"):
            print("start exits", os.environ["BARGE_FLOW_FAIL"], flush=True)
            sys.exit(int(os.environ["BARGE_FLOW_FAIL"]))
        self.items = ["ant", "bee", "cat"]
        self.next(self.shout, foreach="items")

    @environment(vars=MOTO_KEY)
    @batch(**ON_BATCH)
    @step
    def shout(self):
        self.loud = self.input.upper()
        self.job = os.environ["AWS_BATCH_JOB_ID"]
        print(f"shout {self.input} -> {self.loud}")
        self.next(self.join)

    @environment(vars=MOTO_KEY)
    @batch(**ON_BATCH)
    @step
    def join(self, inputs):
        self.louds = sorted(i.loud for i in inputs)
        self.jobs = sorted(i.job for i in inputs)
        print("joined", self.louds)
        self.next(self.flaky)

    @retry(times=1, minutes_between_retries=0)
    @environment(vars=MOTO_KEY)
    @batch(**ON_BATCH)
    @step
    def flaky(self):
        print(f"flaky attempt {current.retry_count}")
        if current.retry_count == 0:
            raise RuntimeError("the first attempt fails on purpose")
        self.attempts = current.retry_count + 1
        self.next(self.end)

    @step
    def end(self):
        print("result", ",".join(self.louds), "attempts", self.attempts)


if __name__ == "__main__":
    BargeFlow()
