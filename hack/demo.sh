#!/usr/bin/env bash
# `make demo`: a local control plane, Barge with simulated nodes, ~200 jobs on two queues,
# progress until they are done, a summary. The cluster stays up to explore afterwards.
#
# Environment: DEMO_JOBS (how many jobs, default 200), DEMO_TIMEOUT (seconds the jobs may
# take before the demo gives up and fails, default 900).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
NS=barge-demo
JOBS=${DEMO_JOBS:-200}
TIMEOUT=${DEMO_TIMEOUT:-900}
case $JOBS$TIMEOUT in *[!0-9]*) echo "demo: DEMO_JOBS and DEMO_TIMEOUT must be whole numbers" >&2; exit 2 ;; esac

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
fail() { # fail <message>: say why, with the operator's last words
  echo "demo: $1" >&2
  echo "--- last lines of the operator log (${state:-.barge/cluster}/logs/barge.log):" >&2
  tail -n 30 "${state:-.barge/cluster}/logs/barge.log" >&2 || true
  exit 1
}

say "Building barge (a cold build compiles ~400 crates: several minutes on 2 cores)"
cargo build --bin barge
barge=${CARGO_TARGET_DIR:-$repo/target}/debug/barge

say "Starting the local control plane (the first run builds it from Go modules: ~17 min on 2 cores)"
env_lines=$(hack/cluster.sh up)
eval "$env_lines"
state=${BARGE_CLUSTER_DIR:-$repo/.barge/cluster}

say "Installing the CRDs"
kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for condition=established --timeout=60s crd/batchjobs.barge.dev crd/jobqueues.barge.dev \
  crd/computeenvironments.barge.dev crd/jobtriggers.barge.dev >/dev/null

say "Starting the operator (local provider, and the AWS Batch API); log: $state/logs/barge.log"
if [ -f "$state/pids/barge" ] && kill -0 "$(cat "$state/pids/barge")" 2>/dev/null; then
  kill "$(cat "$state/pids/barge")"; sleep 1
fi
KEYS_NS=barge-system
kubectl create namespace "$KEYS_NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
api_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# Job output outlives its pod: the operator archives it in a bucket of moto's S3.
archive_env=()
if [ -n "${BARGE_MOTO_URL:-}" ]; then
  # JobTriggers read their SQS queues in moto too.
  archive_env=(BARGE_LOGS_S3_BUCKET=barge-demo-logs "BARGE_LOGS_S3_ENDPOINT=$BARGE_MOTO_URL"
    "AWS_ENDPOINT_URL_SQS=$BARGE_MOTO_URL" AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_REGION=us-east-1)
  s3=(env "${archive_env[@]}" "$BARGE_AWS_CLIENTS_BIN/aws" --endpoint-url "$BARGE_MOTO_URL" s3api)
  "${s3[@]}" head-bucket --bucket barge-demo-logs >/dev/null 2>&1 \
    || "${s3[@]}" create-bucket --bucket barge-demo-logs >/dev/null \
    || fail "could not make the log archive's bucket in moto's S3"
fi
env "${archive_env[@]}" BARGE_BATCH_API_ADDR=127.0.0.1:$api_port BARGE_CREDENTIALS_NAMESPACE=$KEYS_NS \
  RUST_LOG=info "$barge" run >"$state/logs/barge.log" 2>&1 &
echo $! >"$state/pids/barge"

say "Applying examples/: a compute environment (max 64 vCPUs), queues 'urgent' and 'bulk'"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -f examples/compute-environment.yaml -f examples/job-queues.yaml
kubectl delete batchjobs,jobtriggers --all -n "$NS" --wait=false >/dev/null 2>&1 || true

say "Submitting $JOBS jobs of mixed size and duration, and one that can never fit"
{
  for i in $(seq 1 "$JOBS"); do
    queue=bulk; [ $((i % 4)) -eq 0 ] && queue=urgent
    vcpus=$(( (i % 3) + 1 )); secs=$(( (i % 7) + 2 )); code=0
    [ $((i % 25)) -eq 0 ] && code=1  # a few fail, to show failure reasons
    cat <<JOB
---
apiVersion: barge.dev/v1alpha1
kind: BatchJob
metadata:
  name: job-$i
  annotations: {sim.barge.dev/duration: "${secs}s", sim.barge.dev/exit-code: "$code"}
spec:
  jobQueue: $queue
  container: {image: busybox:1.36, command: [sh, -c, "work $i"], resources: {vcpus: $vcpus, memory: ${vcpus}Gi}}
JOB
  done
} | kubectl apply -n "$NS" --server-side -f - >/dev/null
kubectl apply -n "$NS" -f examples/too-large-job.yaml >/dev/null
say "Registering job definition 'render' and submitting two jobs against it (examples/job-definition.yaml)"
kubectl apply -n "$NS" -f examples/job-definition.yaml >/dev/null

say "Submitting one job with the AWS CLI, through Barge's AWS Batch API"
# A key for namespace barge-demo, and what `aws` needs to reach the endpoint with it.
api_env=$state/batch-api.env
{
  "$barge" credentials create --namespace "$NS" --operator-namespace "$KEYS_NS"
  echo "export AWS_ENDPOINT_URL_BATCH=http://127.0.0.1:$api_port AWS_DEFAULT_REGION=us-east-1"
  echo "export AWS_ENDPOINT_URL_CLOUDWATCH_LOGS=http://127.0.0.1:$api_port"
  [ -z "${BARGE_MOTO_URL:-}" ] || echo "export BARGE_LOGS_S3_BUCKET=barge-demo-logs BARGE_LOGS_S3_ENDPOINT=$BARGE_MOTO_URL"
  echo "export PATH=\"$BARGE_AWS_CLIENTS_BIN:\$PATH\""
} >"$api_env" 2>/dev/null
# shellcheck disable=SC1090
(
  source "$api_env"
  for _ in $(seq 1 60); do aws batch describe-job-queues >/dev/null 2>&1 && break; sleep 1; done
  aws batch register-job-definition --job-definition-name greet --type container \
    --container-properties '{"image": "busybox:1.36", "command": ["echo", "Ref::who"]}' \
    --parameters who=world --tags sim.barge.dev/duration=3s --propagate-tags \
    --query '[jobDefinitionName, revision]' --output text
  aws batch submit-job --job-name greet-from-aws --job-queue bulk --job-definition greet \
    --parameters who=barge --query jobId --output text
) | sed 's/^/  /' || fail "the AWS Batch API did not take the job (see $state/logs/barge.log)"
total=$((JOBS + 3))

say "Progress (Ctrl-C stops watching; the cluster keeps running)"
start=$SECONDS; peak_nodes=0
# A job Barge has not written a status for yet is SUBMITTED, the phase the API defaults to.
job_phases() { kubectl get bj -n "$NS" -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | sed 's/^$/SUBMITTED/'; }
phases() { job_phases | sort | uniq -c | awk '{printf "%s=%s ", $2, $1}'; }
while :; do
  line=$(phases)
  nodes=$(kubectl get nodes -l barge.dev/compute-environment=demo-ondemand --no-headers 2>/dev/null | wc -l)
  vcpus=$(kubectl get ce demo-ondemand -o jsonpath='{.status.totalvCpus}' 2>/dev/null)
  [ "$nodes" -gt "$peak_nodes" ] && peak_nodes=$nodes
  printf '[%3ss] %-75s nodes=%-3s vCPUs=%s/64\n' $((SECONDS - start)) "$line" "$nodes" "${vcpus:-0}"
  finished=$(job_phases | grep -cE 'SUCCEEDED|FAILED' || true)
  [ "$finished" -ge "$total" ] && break
  kill -0 "$(cat "$state/pids/barge")" 2>/dev/null || fail "the operator exited"
  [ $((SECONDS - start)) -gt "$TIMEOUT" ] && fail "$((total - finished)) of $total jobs not finished after $TIMEOUT s"
  sleep 3
done

# The seed's pipeline (examples/s3-trigger.yaml): PNGs uploaded to a bucket in moto's S3
# notify an SQS queue; the JobTrigger makes one job per image on the real node, each writing
# a thumbnail under processed/.
s3_trigger() {
  local bucket=barge-demo-photos images=20
  local aws=(env AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_DEFAULT_REGION=us-east-1 AWS_CONFIG_FILE=/dev/null
    "$BARGE_AWS_CLIENTS_BIN/aws" --endpoint-url "$BARGE_MOTO_URL")
  say "From S3 upload to job: $images PNGs uploaded to s3://$bucket/incoming/, one job each (examples/s3-trigger.yaml)"
  "${aws[@]}" sqs create-queue --queue-name uploads >/dev/null
  "${aws[@]}" s3api head-bucket --bucket "$bucket" >/dev/null 2>&1 || "${aws[@]}" s3api create-bucket --bucket "$bucket" >/dev/null
  "${aws[@]}" s3api put-bucket-notification-configuration --bucket "$bucket" --notification-configuration \
    '{"QueueConfigurations": [{"Id": "uploads", "QueueArn": "arn:aws:sqs:us-east-1:123456789012:uploads",
      "Events": ["s3:ObjectCreated:*"], "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "incoming/"}]}}}]}'
  echo "  bucket $bucket notifies SQS queue uploads of uploads under incoming/"
  # The example names AWS's endpoints; here they are moto's (the pods reach it on the node's address).
  sed -e "s|https://sqs.us-east-1.amazonaws.com|$BARGE_MOTO_URL|" -e "s|https://s3.us-east-1.amazonaws.com|$BARGE_MOTO_NODE_URL|" \
    -e "s|AKIAEXAMPLEUPLOADS01|demo|; s|example-secret-access-key-for-uploads|demo|" examples/s3-trigger.yaml \
    | kubectl apply -n "$NS" -f - >/dev/null
  python3 hack/make-pngs.py "$images" "$state/pngs"
  "${aws[@]}" s3 cp --recursive --quiet "$state/pngs" "s3://$bucket/incoming/"
  echo "  \$ aws s3 cp --recursive pngs/ s3://$bucket/incoming/   # $images files"
  local started=$SECONDS done=0
  while :; do
    line=$(kubectl get bj -n "$NS" -l barge.dev/trigger=thumbnails -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' \
      | sed 's/^$/SUBMITTED/' | sort | uniq -c | awk '{printf "%s=%s ", $2, $1}')
    printf '  [%3ss] %s\n' $((SECONDS - started)) "${line:-no jobs yet}"
    done=$(kubectl get bj -n "$NS" -l barge.dev/trigger=thumbnails -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -cE 'SUCCEEDED|FAILED' || true)
    [ "$done" -ge "$images" ] && break
    [ $((SECONDS - started)) -gt 300 ] && fail "$((images - done)) of $images image jobs not finished after 300 s"
    sleep 3
  done
  kubectl wait jt thumbnails -n "$NS" --for=jsonpath='{.status.activeJobs}'=0 --timeout=15s >/dev/null || true
  kubectl get jt thumbnails -n "$NS"
  local listing
  listing=$("${aws[@]}" s3 ls "s3://$bucket/processed/")
  echo "  \$ aws s3 ls s3://$bucket/processed/   # $(wc -l <<<"$listing") thumbnails"
  head -n 3 <<<"$listing" | sed 's/^/  /'
  first=$(kubectl get bj -n "$NS" -l barge.dev/trigger=thumbnails -o jsonpath='{.items[0].metadata.name}')
  echo "  \$ barge logs $first -n $NS"
  "$barge" logs "$first" -n "$NS" | sed 's/^/  /'
  total=$((total + images))
}

if [ -n "${BARGE_REAL_NODE:-}" ]; then
  say "One job that really runs, on the real node $BARGE_REAL_NODE (examples/real-node.yaml), and its output"
  kubectl apply -n "$NS" -f examples/real-node.yaml >/dev/null
  for _ in $(seq 1 120); do
    case $(kubectl get bj hello-real -n "$NS" -o jsonpath='{.status.phase}') in SUCCEEDED|FAILED) break ;; esac
    sleep 1
  done
  kubectl get bj hello-real -n "$NS" -o jsonpath='  hello-real: {.status.phase} on {.status.attempts[0].nodeName}, exit code {.status.attempts[0].exitCode}{"\n"}'
  echo "  \$ barge logs hello-real -n $NS"
  "$barge" logs hello-real -n "$NS" | sed 's/^/  /' || fail "barge logs could not read the real job's output"
  if [ -n "${BARGE_MOTO_URL:-}" ]; then
    say "Its pod deleted, as a node scaled down takes it: the output is read back from the log archive"
    pod=$(kubectl get bj hello-real -n "$NS" -o jsonpath='{.status.attempts[0].podName}')
    stream=$(kubectl get bj hello-real -n "$NS" -o jsonpath='{.status.attempts[0].logStreamName}')
    # shellcheck disable=SC1090
    (
      source "$api_env"
      for _ in $(seq 1 30); do
        [ -n "$(aws logs get-log-events --log-group-name /aws/batch/job --log-stream-name "$stream" \
          --limit 1 --query 'events[0].message' --output text 2>/dev/null | grep -v None)" ] && break
        sleep 1
      done
      kubectl delete pod "$pod" -n "$NS" --wait=true >/dev/null
      echo "  \$ barge logs hello-real -n $NS   # the pod is gone"
      "$barge" logs hello-real -n "$NS" 2>&1 | sed -n '1,4s/^/  /p'
      echo "  \$ aws logs get-log-events --log-group-name /aws/batch/job --log-stream-name $stream --start-from-head"
      aws logs get-log-events --log-group-name /aws/batch/job --log-stream-name "$stream" --start-from-head \
        --query 'events[:3].message' --output text | tr '\t' '\n' | sed 's/^/  /'
    ) || fail "the archived output could not be read back (see $state/logs/barge.log)"
  fi
  total=$((total + 1)); on_real=" and the real node"
  [ -z "${BARGE_MOTO_URL:-}" ] || s3_trigger
else
  say "No real node on this cluster (see the [cluster] lines above): the demo's jobs all ran on simulated nodes"
fi

say "Summary"
echo "$total jobs finished in $((SECONDS - start)) s on at most $peak_nodes simulated nodes${on_real:-}: $(phases)"
echo
echo "Jobs run from job definition render (the revision each resolved, and its command):"
for j in frame-42 frame-43-4k; do
  rev=$(kubectl get bj "$j" -n "$NS" -o jsonpath='{.status.jobDefinition}')
  cmd=$(kubectl get pods -n "$NS" -l "barge.dev/job-name=$j" -o jsonpath='{.items[0].spec.containers[0].command}')
  echo "  $j: $(kubectl get bj "$j" -n "$NS" -o jsonpath='{.status.phase}') on $rev, command $cmd"
done
echo
echo "The job submitted with the AWS CLI, as the AWS CLI describes it:"
(source "$api_env"; aws batch list-jobs --job-queue bulk --filters name=JOB_NAME,values=greet-from-aws \
  --query 'jobSummaryList[0].[jobName, jobId, status]' --output text | sed 's/^/  /')
echo
echo "Why the too-large job waits:"
kubectl get bj too-large -n "$NS" -o jsonpath='  {.status.phase}: {.status.statusReason}{"\n"}'
failed=$(kubectl get bj -n "$NS" -o jsonpath='{range .items[?(@.status.phase=="FAILED")]}{.metadata.name}{"\n"}{end}' | head -n 1)
if [ -n "$failed" ]; then
  echo "A failed job ($failed):"
  kubectl get bj "$failed" -n "$NS" -o jsonpath='  {.status.phase}: {.status.statusReason} (attempts: {.status.attemptCount}){"\n"}'
fi
echo
kubectl get ce,jq
echo
echo "Idle nodes are removed 20 s after their last job (scaleDownDelaySeconds)."
echo "Explore:   eval \"\$(hack/cluster.sh env)\"; kubectl get bj,jq,ce -A; kubectl describe bj too-large -n $NS"
echo "AWS CLI:   source $api_env; aws batch list-jobs --job-queue bulk --job-status SUCCEEDED"
echo "Stop:      make demo-down"
