"""Airflow's AWS Batch operator and sensor (the Amazon provider, unchanged) run jobs on Barge.

A DAG of two tasks: BatchOperator submits a job of a registered definition and waits for it
with its own waiter (BatchClientHook polling DescribeJobs), fetching the container's lines
from CloudWatch Logs as it goes (awslogs_enabled); BatchSensor then pokes DescribeJobs for
the same job. `python airflow_dag.py` runs it with `dag.test()`, in this process, with no
scheduler, on a SQLite database; Airflow 3 reads the DAG from its DAGs folder first, so this
file must be in AIRFLOW__CORE__DAGS_FOLDER. Only AWS_ENDPOINT_URL_BATCH / _CLOUDWATCH_LOGS,
the key and the region point it at Barge.

Environment: BARGE_QUEUE, BARGE_DEFINITION, BARGE_EXIT (the container's exit code).
The tasks' logs go to stdout (the operator's awslogs lines among them), then one JSON line of
each task's state.
"""

import json
import os

import pendulum
from airflow.providers.amazon.aws.operators.batch import BatchOperator
from airflow.providers.amazon.aws.sensors.batch import BatchSensor
from airflow.sdk import DAG

queue, definition = os.environ["BARGE_QUEUE"], os.environ["BARGE_DEFINITION"]
exit_code = int(os.environ.get("BARGE_EXIT", "0"))

with DAG("barge_batch", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    submit = BatchOperator(
        task_id="submit",
        job_name="airflow-hello",
        job_queue=queue,
        job_definition=definition,
        container_overrides={
            "command": ["sh", "-c", f"for i in 1 2 3; do echo airflow line $i; sleep 1; done; exit {exit_code}"],
        },
        awslogs_enabled=True,
        awslogs_fetch_interval=pendulum.duration(seconds=1),
        poll_interval=1,
    )
    sense = BatchSensor(task_id="sense", job_id=submit.output, poke_interval=1, timeout=120)
    submit >> sense

if __name__ == "__main__":
    run = dag.test()
    print(json.dumps({"states": {ti.task_id: str(ti.state) for ti in run.get_task_instances()}}))
