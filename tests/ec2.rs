//! The ec2 provider against moto, through the fault-injecting proxy, with the node bridge
//! playing each instance's kubelet: scale up within maxvCpus and back down, Spot requests
//! and Spot loss, capacity errors, throttling, a multi-node job's instances in one launch,
//! and clean-up when an environment is deleted.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, Instance};
use barge::api::batch_job::JobPhase;
use common::ec2::{Ec2Proxy, Faults, ec2_event, moto, sqs, start_node_bridge};
use common::*;
use k8s_openapi::api::core::v1::{Event, Node};
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

/// Instances of this type never get a node (to exercise the registration timeout).
const NEVER_JOINS: &str = "r6i.xlarge";

struct Aws {
    cluster: String,
    subnets: Vec<String>,
    launch_template: String,
    /// The SQS queue the operator reads EC2's instance notices from.
    notices: String,
}

/// moto's default subnets, a launch template, the proxy, the bridge and an operator with
/// the ec2 provider: once per test process.
async fn aws(client: &Client) -> &'static Aws {
    static AWS: OnceCell<Aws> = OnceCell::const_new();
    install_crds(client).await;
    AWS.get_or_init(start_aws).await
}

async fn start_aws() -> Aws {
    let ec2 = moto().await;
    let (subnets, image) = common::ec2::moto_subnets_and_image().await;
    let lt_name = format!("barge-nodes-{}", suffix());
    ec2.create_launch_template()
        .launch_template_name(&lt_name)
        .launch_template_data(
            aws_sdk_ec2::types::RequestLaunchTemplateData::builder().image_id(image).build(),
        )
        .send()
        .await
        .unwrap();
    let cluster = format!("tests-{}", suffix());
    let proxy = Ec2Proxy::get();
    start_node_bridge(&cluster, HashSet::from([NEVER_JOINS.to_string()]));
    let notices = sqs()
        .await
        .create_queue()
        .queue_name(format!("{cluster}-notices"))
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let moto_url = common::ec2::moto_url();
    let env = [
        ("BARGE_INTERRUPTION_QUEUE_URL", notices.as_str()),
        ("BARGE_INTERRUPTION_QUEUE_WAIT_SECONDS", "1"),
        ("AWS_ENDPOINT_URL_SQS", moto_url.as_str()),
        ("BARGE_EC2_PROVIDER", "true"),
        ("BARGE_CLUSTER_NAME", cluster.as_str()),
        ("BARGE_CAPACITY_COOLDOWN_SECONDS", "30"),
        ("BARGE_REGISTRATION_TIMEOUT_SECONDS", "15"),
        ("AWS_ENDPOINT_URL_EC2", proxy.url.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    spawn_operator_for_process("ec2", &env);
    Aws { cluster, subnets, launch_template: lt_name, notices }
}

async fn setup(prefix: &str) -> (Env, &'static Aws) {
    let client = client().await;
    let aws = aws(&client).await;
    (Env::new(client, prefix).await, aws)
}

fn ec2_spec(aws: &Aws, extra: Value) -> Value {
    let mut spec = json!({
        "provider": "ec2",
        "subnets": aws.subnets,
        "launchTemplate": {"name": aws.launch_template},
        "tags": {"team": "batch"},
    });
    spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    spec
}

/// The instances moto holds for `ce` in any of `states`.
async fn instances(aws: &Aws, ce: &str, states: &[&str]) -> Vec<Instance> {
    let out = moto()
        .await
        .describe_instances()
        .filters(Filter::builder().name("tag:barge.dev/cluster").values(&aws.cluster).build())
        .filters(Filter::builder().name("tag:barge.dev/compute-environment").values(ce).build())
        .send()
        .await
        .unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| i.state().and_then(|s| s.name()).is_some_and(|n| states.contains(&n.as_str())))
        .cloned()
        .collect()
}

fn vcpus(instances: &[Instance]) -> u32 {
    instances
        .iter()
        .map(|i| barge::capacity::catalog::lookup(i.instance_type().unwrap().as_str()).unwrap().vcpus)
        .sum()
}

fn tag<'a>(i: &'a Instance, key: &str) -> Option<&'a str> {
    i.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

const LIVE: &[&str] = &["pending", "running"];

#[tokio::test]
async fn forty_two_vcpu_jobs_launch_tagged_instances_within_max_vcpus_run_and_scale_back_to_min() {
    let (e, aws) = setup("ec2-scale").await;
    let ce = e
        .ce(
            "od",
            ec2_spec(
                aws,
                json!({"instanceTypes": ["c6i", "m6i"], "allocationStrategy": "BEST_FIT_PROGRESSIVE",
                       "minvCpus": 2, "maxvCpus": 64, "scaleDownDelaySeconds": 5}),
            ),
        )
        .await;
    let q = e.queue("q", 10, "ENABLED", &[&ce]).await;
    for i in 0..40 {
        e.job(&format!("j{i}"), &q, 2.0, json!({"sim.barge.dev/duration": "4s"}), json!({})).await;
    }
    // While the jobs run, the fleet never passes maxvCpus by more than one instance.
    let largest = 32; // c6i/m6i.8xlarge, the largest type a 64-vCPU fleet could add
    let peak = std::sync::atomic::AtomicU32::new(0);
    eventually("all 40 jobs to succeed", Duration::from_secs(180), || async {
        peak.fetch_max(vcpus(&instances(aws, &ce, LIVE).await), std::sync::atomic::Ordering::Relaxed);
        let done = e
            .jobs
            .list(&Default::default())
            .await
            .ok()?
            .items
            .iter()
            .filter(|j| j.status.as_ref().is_some_and(|s| s.phase == JobPhase::Succeeded))
            .count();
        (done == 40).then_some(())
    })
    .await;
    let peak = peak.into_inner();
    assert!(peak > 2 && peak <= 64 + largest, "peak fleet {peak} vCPUs");
    // Every instance carries Barge's tags and the user's; the jobs ran on their nodes.
    let all = instances(aws, &ce, &["pending", "running", "shutting-down", "terminated"]).await;
    for i in &all {
        assert_eq!(tag(i, "barge.dev/cluster"), Some(aws.cluster.as_str()));
        assert_eq!(tag(i, "barge.dev/compute-environment"), Some(ce.as_str()));
        assert_eq!(tag(i, "team"), Some("batch"));
    }
    let job = e.jobs.get("j0").await.unwrap();
    let node_name = job.status.unwrap().node_name.unwrap();
    let node = Api::<Node>::all(e.client.clone()).get(&node_name).await.unwrap();
    let provider_id = node.spec.unwrap().provider_id.unwrap();
    assert!(provider_id.starts_with("aws:///us-east-1"), "{provider_id}");
    // Idle past the delay: back to minvCpus, in moto and in the cluster.
    eventually("scale-down to minvCpus", Duration::from_secs(120), || async {
        let live = instances(aws, &ce, LIVE).await;
        let nodes = e.nodes_of(&ce).await;
        (vcpus(&live) <= 2 + largest && vcpus(&live) >= 2 && nodes.len() == live.len() && live.len() == 1)
            .then_some(())
    })
    .await;
    let fleets = Ec2Proxy::get().calls("CreateFleet", &ce);
    assert!(!fleets.is_empty());
    for f in &fleets {
        assert_eq!(f.param("Type"), Some("instant"));
        assert_eq!(f.param("OnDemandOptions.AllocationStrategy"), Some("lowest-price"));
    }
    e.cleanup(&[&ce]).await;
}

#[tokio::test]
async fn a_spot_environment_requests_spot_and_a_lost_spot_instance_is_a_retried_host_loss() {
    let (e, aws) = setup("ec2-spot").await;
    let ce = e
        .ce(
            "spot",
            ec2_spec(
                aws,
                json!({"instanceTypes": ["m6i.xlarge", "m7i.xlarge"], "capacityType": "SPOT",
                       "allocationStrategy": "SPOT_PRICE_CAPACITY_OPTIMIZED", "bidPercentage": 60,
                       "maxvCpus": 16, "scaleDownDelaySeconds": 600}),
            ),
        )
        .await;
    let q = e.queue("q", 10, "ENABLED", &[&ce]).await;
    e.job(
        "long",
        &q,
        2.0,
        json!({"sim.barge.dev/duration": "20s"}),
        json!({"retryStrategy": {"attempts": 2}}),
    )
    .await;
    let running = e.wait_phase("long", JobPhase::Running).await;
    let fleet = Ec2Proxy::get().calls("CreateFleet", &ce).into_iter().next().expect("a CreateFleet call");
    assert_eq!(fleet.param("SpotOptions.AllocationStrategy"), Some("price-capacity-optimized"));
    assert_eq!(fleet.param("TargetCapacitySpecification.DefaultTargetCapacityType"), Some("spot"));
    assert_eq!(
        fleet.param("LaunchTemplateConfigs.1.Overrides.1.MaxPrice"),
        Some("0.11520"),
        "60% of m6i.xlarge"
    );
    let live = instances(aws, &ce, LIVE).await;
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].instance_lifecycle().map(|l| l.as_str()), Some("spot"));
    // The cost shown is the Spot price (moto's is near zero), not the On-Demand price.
    let ces: Api<barge::api::ComputeEnvironment> = Api::all(e.client.clone());
    eventually("a Spot cost in status", WAIT, || async {
        let s = ces.get(&ce).await.ok()?.status?;
        (s.nodes == 1 && s.cost_per_hour? < 0.01).then_some(())
    })
    .await;

    // The Spot instance is taken away mid-attempt.
    let node =
        Api::<Node>::all(e.client.clone()).get(&running.status.unwrap().node_name.unwrap()).await.unwrap();
    let id = node.spec.unwrap().provider_id.unwrap().rsplit('/').next().unwrap().to_string();
    moto().await.terminate_instances().instance_ids(&id).send().await.unwrap();

    let done = eventually("the job to succeed on a new instance", Duration::from_secs(120), || async {
        let j = e.jobs.get("long").await.ok()?;
        (j.status.as_ref()?.phase == JobPhase::Succeeded).then_some(j)
    })
    .await;
    let s = done.status.unwrap();
    assert_eq!(s.attempts.len(), 2, "{:?}", s.attempts);
    assert_eq!(
        s.attempts[0].reason.as_deref(),
        Some(format!("Host EC2 (instance {id}) terminated.").as_str())
    );
    assert_eq!(s.attempts[1].exit_code, Some(0));
    assert_ne!(s.attempts[1].node_name, s.attempts[0].node_name);
    e.cleanup(&[&ce]).await;
}

/// Sends EC2 notices to the interruption queue, as EventBridge would.
async fn notify(aws: &Aws, bodies: &[String]) {
    let sqs = sqs().await;
    for body in bodies {
        sqs.send_message().queue_url(&aws.notices).message_body(body).send().await.unwrap();
    }
}

fn instance_of(node: &Node) -> String {
    node.spec.as_ref().unwrap().provider_id.as_ref().unwrap().rsplit('/').next().unwrap().to_string()
}

fn spot_interruption(id: &str) -> String {
    ec2_event(
        "EC2 Spot Instance Interruption Warning",
        json!({"instance-id": id, "instance-action": "terminate"}),
    )
}

fn rebalance(id: &str) -> String {
    ec2_event("EC2 Instance Rebalance Recommendation", json!({"instance-id": id}))
}

#[tokio::test]
async fn a_spot_interruption_warning_stops_the_attempt_before_the_reclaim_and_the_job_retries_elsewhere() {
    let (e, aws) = setup("ec2-warned").await;
    let ce = e
        .ce(
            "spot",
            ec2_spec(
                aws,
                json!({"instanceTypes": ["m6i.xlarge"], "capacityType": "SPOT",
                       "maxvCpus": 16, "scaleDownDelaySeconds": 600}),
            ),
        )
        .await;
    let q = e.queue("q", 10, "ENABLED", &[&ce]).await;
    e.job(
        "long",
        &q,
        2.0,
        json!({"sim.barge.dev/duration": "15s"}),
        json!({"retryStrategy": {"attempts": 2}}),
    )
    .await;
    let running = e.wait_phase("long", JobPhase::Running).await;
    let nodes: Api<Node> = Api::all(e.client.clone());
    let node = nodes.get(&running.status.unwrap().node_name.unwrap()).await.unwrap();
    let id = instance_of(&node);

    // What a real queue also carries: events Barge did not expect, then the warning, twice,
    // and a rebalance recommendation that must not undo it.
    notify(
        aws,
        &[
            "not json at all".into(),
            json!({"detail-type": "EC2 Spot Instance Interruption Warning"}).to_string(),
            spot_interruption("i-0123456789abcdef0"),
            json!({"source": "aws.health", "detail-type": "AWS Health Event", "detail": {}}).to_string(),
            spot_interruption(&id),
        ],
    )
    .await;
    let cordoned = eventually("the warned node cordoned and marked", WAIT, || async {
        let n = nodes.get(&node.name_any()).await.ok()?;
        let marked =
            n.labels().get("barge.dev/interruption").map(String::as_str) == Some("spot-interruption");
        (marked && n.spec.as_ref()?.unschedulable == Some(true)).then_some(n)
    })
    .await;
    notify(aws, &[spot_interruption(&id), rebalance(&id)]).await;

    // The attempt stops ahead of the reclaim (nobody terminates the instance here) and the
    // job runs again on another instance.
    let done = eventually("the job to succeed on a new instance", Duration::from_secs(120), || async {
        let j = e.jobs.get("long").await.ok()?;
        (j.status.as_ref()?.phase == JobPhase::Succeeded).then_some(j)
    })
    .await;
    let s = done.status.unwrap();
    assert_eq!(s.attempts.len(), 2, "one stopped attempt, one retry, no more: {:?}", s.attempts);
    assert_eq!(
        s.attempts[0].reason.as_deref(),
        Some(format!("Host EC2 (instance {id}) Spot interruption").as_str())
    );
    assert_ne!(s.attempts[1].node_name.as_deref(), Some(cordoned.name_any().as_str()));
    assert_eq!(s.attempts[1].exit_code, Some(0));

    // Idle and warned, the instance goes without waiting out scaleDownDelaySeconds.
    eventually("the warned instance terminated by Barge", Duration::from_secs(60), || async {
        let live = instances(aws, &ce, LIVE).await;
        (!live.iter().any(|i| i.instance_id() == Some(id.as_str()))).then_some(())
    })
    .await;
    let events: Api<Event> = Api::namespaced(e.client.clone(), "default");
    eventually("a SpotInterruption event on the environment", WAIT, || async {
        let by_ce = ListParams::default().fields(&format!("involvedObject.name={ce}"));
        let list = events.list(&by_ce).await.ok()?;
        list.items
            .iter()
            .find(|ev| {
                ev.reason.as_deref() == Some("SpotInterruption")
                    && ev
                        .message
                        .as_deref()
                        .is_some_and(|m| m.contains(&id) && m.contains("1 running attempt stopped"))
            })
            .map(|_| ())
    })
    .await;
    // Every message was read and deleted, the unexpected ones included.
    let sqs = sqs().await;
    eventually("the notice queue drained", WAIT, || async {
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(&aws.notices)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
            .send()
            .await
            .ok()?;
        let count = |k: aws_sdk_sqs::types::QueueAttributeName| {
            attrs.attributes().and_then(|a| a.get(&k)).map_or(0, |v| v.parse::<u32>().unwrap_or(0))
        };
        (count(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages) == 0
            && count(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible) == 0)
            .then_some(())
    })
    .await;
    e.cleanup(&[&ce]).await;
}

#[tokio::test]
async fn a_rebalance_recommendation_lets_running_jobs_finish_and_sends_new_ones_elsewhere() {
    let (e, aws) = setup("ec2-rebalance").await;
    let ce = e
        .ce(
            "spot",
            ec2_spec(
                aws,
                json!({"instanceTypes": ["m6i.xlarge"], "capacityType": "SPOT",
                       "maxvCpus": 16, "scaleDownDelaySeconds": 600}),
            ),
        )
        .await;
    let q = e.queue("q", 10, "ENABLED", &[&ce]).await;
    e.job("first", &q, 1.0, json!({"sim.barge.dev/duration": "12s"}), json!({})).await;
    let running = e.wait_phase("first", JobPhase::Running).await;
    let nodes: Api<Node> = Api::all(e.client.clone());
    let node = running.status.unwrap().node_name.unwrap();
    let id = instance_of(&nodes.get(&node).await.unwrap());
    notify(aws, &[rebalance(&id)]).await;
    eventually("the node cordoned for rebalancing", WAIT, || async {
        let n = nodes.get(&node).await.ok()?;
        let marked =
            n.labels().get("barge.dev/interruption").map(String::as_str) == Some("rebalance-recommendation");
        (marked && n.spec.as_ref()?.unschedulable == Some(true)).then_some(())
    })
    .await;
    // The node has room for it, but it goes to a new instance.
    e.job("second", &q, 1.0, json!({"sim.barge.dev/duration": "1s"}), json!({})).await;
    let second = e.wait_phase("second", JobPhase::Succeeded).await;
    assert_ne!(second.status.unwrap().node_name.as_deref(), Some(node.as_str()));
    let first = e.wait_phase("first", JobPhase::Succeeded).await.status.unwrap();
    assert_eq!(first.attempts.len(), 1, "the running job was left alone: {:?}", first.attempts);
    eventually("the recommended instance removed once idle", Duration::from_secs(60), || async {
        let live = instances(aws, &ce, LIVE).await;
        (!live.iter().any(|i| i.instance_id() == Some(id.as_str()))).then_some(())
    })
    .await;
    e.cleanup(&[&ce]).await;
}

#[tokio::test]
async fn no_capacity_for_one_type_uses_another_and_for_all_types_says_why_and_moves_on() {
    let (e, aws) = setup("ec2-ice").await;
    let proxy = Ec2Proxy::get();
    // c7i.xlarge is the cheapest choice and has no capacity: EC2 gives an m7i.xlarge.
    let mixed = e.tag.clone() + "-mixed";
    proxy.set_faults(
        &mixed,
        Faults { no_capacity: HashSet::from(["c7i.xlarge".into()]), ..Default::default() },
    );
    let mixed = e
        .ce("mixed", ec2_spec(aws, json!({"instanceTypes": ["c7i.xlarge", "m7i.xlarge"], "maxvCpus": 8})))
        .await;
    let q = e.queue("q", 10, "ENABLED", &[&mixed]).await;
    e.job("a", &q, 2.0, json!({"sim.barge.dev/duration": "1s"}), json!({})).await;
    e.wait_phase("a", JobPhase::Succeeded).await;
    let types: HashSet<String> = instances(aws, &mixed, LIVE)
        .await
        .iter()
        .map(|i| i.instance_type().unwrap().as_str().to_string())
        .collect();
    assert_eq!(types, HashSet::from(["m7i.xlarge".to_string()]));

    // The only type of `scarce` has no capacity: the job says so, then runs once the queue
    // gets a second environment.
    let scarce = e.tag.clone() + "-scarce";
    proxy.set_faults(
        &scarce,
        Faults { no_capacity: HashSet::from(["c7i.2xlarge".into()]), ..Default::default() },
    );
    let scarce =
        e.ce("scarce", ec2_spec(aws, json!({"instanceTypes": ["c7i.2xlarge"], "maxvCpus": 16}))).await;
    let q2 = e.queue("q2", 10, "ENABLED", &[&scarce]).await;
    e.job("b", &q2, 2.0, json!({"sim.barge.dev/duration": "1s"}), json!({})).await;
    eventually("the capacity reason", WAIT, || async {
        let j = e.jobs.get("b").await.ok()?;
        let r = j.status?.status_reason?;
        (r.starts_with("CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY") && r.contains("c7i.2xlarge")).then_some(())
    })
    .await;
    let fallback = e.ce("fallback", json!({"instanceTypes": ["m6i"], "maxvCpus": 16})).await;
    e.queue("q2", 10, "ENABLED", &[&scarce, &fallback]).await;
    let b = e.wait_phase("b", JobPhase::Succeeded).await;
    assert_eq!(b.status.unwrap().compute_environment.as_deref(), Some(fallback.as_str()));
    e.cleanup(&[&mixed, &scarce, &fallback]).await;
}

#[tokio::test]
async fn throttled_and_failing_launch_calls_back_off_and_then_succeed() {
    let (e, aws) = setup("ec2-throttle").await;
    let proxy = Ec2Proxy::get();
    let name = e.tag.clone() + "-slow";
    proxy.set_faults(&name, Faults { throttle: 5, server_errors: 1, ..Default::default() });
    let ce = e.ce("slow", ec2_spec(aws, json!({"instanceTypes": ["m6i.large"], "maxvCpus": 8}))).await;
    let q = e.queue("q", 10, "ENABLED", &[&ce]).await;
    e.job("a", &q, 1.0, json!({"sim.barge.dev/duration": "1s"}), json!({})).await;
    e.wait_phase("a", JobPhase::Succeeded).await;
    let calls = proxy.calls("CreateFleet", &ce);
    let injected = calls.iter().filter(|c| c.injected.is_some()).count();
    assert_eq!(injected, 6, "five throttled calls and one server error");
    // Six faults, then success: the SDK's retries plus the environment's backoff add up
    // to a handful of calls, not a storm.
    assert!(calls.len() <= 9, "{} CreateFleet calls", calls.len());
    eprintln!("throttled launch: {} CreateFleet calls, {injected} answered with a fault", calls.len());
    assert_eq!(instances(aws, &ce, LIVE).await.len(), 1, "one instance, not one per retry");
    e.cleanup(&[&ce]).await;
}

#[tokio::test]
async fn a_multi_node_job_gets_its_instances_in_one_launch_and_they_are_terminated_when_it_ends() {
    let (e, aws) = setup("ec2-gang").await;
    let ce = e
        .ce(
            "gang",
            ec2_spec(
                aws,
                json!({"instanceTypes": ["m6i"], "allocationStrategy": "BEST_FIT_PROGRESSIVE",
                       "maxvCpus": 64, "scaleDownDelaySeconds": 5}),
            ),
        )
        .await;
    let q = e.queue("q", 1, "ENABLED", &[&ce]).await;
    // Four nodes of half a vCPU: packed, three would share an m6i.large. A multi-node job
    // runs one node per instance.
    let node = json!({"image": "mpi:1", "resources": {"vcpus": 0.5, "memory": "512Mi"}});
    apply(
        &e.jobs,
        json!({"apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob",
        "metadata": {"name": "mpi", "annotations": {"sim.barge.dev/duration": "5s"}},
        "spec": {"jobQueue": q, "nodeProperties": {"numNodes": 4, "mainNode": 0,
                 "nodeRangeProperties": [{"targetNodes": "0:", "container": node}]}}}),
    )
    .await
    .unwrap();
    let job = e.wait_phase("mpi", JobPhase::Succeeded).await;
    let s = job.status.unwrap();
    let hosts: HashSet<String> =
        s.multi_node.unwrap().nodes.iter().filter_map(|n| n.node_name.clone()).collect();
    assert_eq!(hosts.len(), 4, "one instance per node: {hosts:?}");
    // One launch decision: one CreateFleet for all four instances.
    let fleets = Ec2Proxy::get().calls("CreateFleet", &ce);
    assert_eq!(fleets.len(), 1, "{} CreateFleet calls", fleets.len());
    assert_eq!(fleets[0].param("TargetCapacitySpecification.TotalTargetCapacity"), Some("4"));
    assert_eq!(instances(aws, &ce, &["pending", "running", "shutting-down", "terminated"]).await.len(), 4);
    // The job over and the delay past: every instance is terminated and its node gone.
    eventually("the gang's instances to be terminated", Duration::from_secs(120), || async {
        let live = instances(aws, &ce, LIVE).await;
        (live.is_empty() && e.nodes_of(&ce).await.is_empty()).then_some(())
    })
    .await;
    e.cleanup(&[&ce]).await;
}

#[tokio::test]
async fn an_instance_that_never_joins_is_terminated_and_deleting_the_environment_terminates_the_rest() {
    let (e, aws) = setup("ec2-gc").await;
    // `ghost` launches an instance type whose instances never join; `kept` holds two.
    let ghost = e
        .ce("ghost", ec2_spec(aws, json!({"instanceTypes": [NEVER_JOINS], "minvCpus": 4, "maxvCpus": 4})))
        .await;
    let kept = e
        .ce("kept", ec2_spec(aws, json!({"instanceTypes": ["m6i.xlarge"], "minvCpus": 8, "maxvCpus": 8})))
        .await;
    eventually("two nodes for minvCpus", WAIT, || async {
        (e.nodes_of(&kept).await.len() == 2).then_some(())
    })
    .await;
    // The ghost's instance never gets a node: terminated after the registration timeout.
    let first = eventually("a ghost instance", WAIT, || async {
        instances(aws, &ghost, LIVE).await.first().and_then(|i| i.instance_id().map(str::to_string))
    })
    .await;
    eventually("the unregistered instance to be terminated", WAIT, || async {
        let gone = instances(aws, &ghost, &["shutting-down", "terminated"]).await;
        gone.iter().any(|i| i.instance_id() == Some(first.as_str())).then_some(())
    })
    .await;
    let ces: Api<barge::api::ComputeEnvironment> = Api::all(e.client.clone());
    eventually("the status to say why", WAIT, || async {
        let message = ces.get(&ghost).await.ok()?.status?.message?;
        message.contains("did not register as a node").then_some(())
    })
    .await;

    // Deleting the environments leaves nothing running for them.
    for ce in [&ghost, &kept] {
        ces.delete(ce, &DeleteParams::default()).await.unwrap();
    }
    eventually("the environments to be gone", WAIT, || async {
        let left = ces.list(&Default::default()).await.ok()?.items;
        (!left.iter().any(|c| c.name_any() == ghost || c.name_any() == kept)).then_some(())
    })
    .await;
    for ce in [&ghost, &kept] {
        assert!(instances(aws, ce, &["pending", "running", "stopping", "stopped"]).await.is_empty());
    }
    assert!(e.nodes_of(&kept).await.is_empty());
}
