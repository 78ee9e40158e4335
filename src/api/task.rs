//! Several containers in one job, as AWS Batch's `ecsProperties.taskProperties` runs them:
//! which containers are essential, the order `dependsOn` asks for, and how both become one
//! pod's containers, init containers and sidecars.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::container::{ContainerSpec, Volume};

/// A job's task: its containers, and the volumes they mount.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.containers.exists(c, !has(c.essential) || c.essential)").message("a task needs at least one essential container (essential is true when left out)"))]
#[x_kube(validation = Rule::new("self.containers.all(c, self.containers.exists_one(d, d.name == c.name))").message("each of a task's containers needs a name of its own"))]
#[x_kube(validation = Rule::new("self.containers.all(c, !has(c.mountPoints) || c.mountPoints.all(m, (has(self.volumes) && self.volumes.exists(v, v.name == m.sourceVolume)) || (has(c.volumes) && c.volumes.exists(v, v.name == m.sourceVolume))))").message("every containers[].mountPoints[].sourceVolume must name one of the task's volumes[].name"))]
pub struct TaskSpec {
    #[schemars(length(min = 1, max = 10))]
    pub containers: Vec<TaskContainer>,
    /// Volumes the containers' `mountPoints` name (a host path, EFS, or scratch).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub volumes: Vec<Volume>,
    /// The IAM role of every container: as a container's `jobRoleArn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_role_arn: Option<String>,
    /// Kept and described, as a container's `executionRoleArn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_role_arn: Option<String>,
    /// `task` (the default on a pod: its containers share IPC) or none; `host` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == 'task' || self == 'none'").message("ipcMode host would share the node's IPC namespace; Barge runs task (a pod's containers share IPC) or none"))]
    #[schemars(length(max = 16))]
    pub ipc_mode: Option<String>,
    /// `task`: the containers share one process namespace. `host` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == 'task'").message("pidMode host would share the node's processes; Barge runs pidMode task (shareProcessNamespace) or none"))]
    #[schemars(length(max = 16))]
    pub pid_mode: Option<String>,
}

/// One container of a task: AWS's container fields, plus its name, whether it is
/// essential, and what it waits for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskContainer {
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')").message("a task container's name is a DNS label: lower-case letters, digits and -, at most 63"))]
    #[schemars(length(max = 63))]
    pub name: String,
    /// When an essential container ends, the task ends (default true). A non-essential
    /// one runs beside the essential ones and is stopped once they end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub essential: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub depends_on: Vec<TaskDependency>,
    /// Seconds between SIGTERM and SIGKILL when the job is stopped: the pod's grace
    /// period is its containers' longest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 120").message("stopTimeout is 0 to 120 seconds"))]
    pub stop_timeout: Option<i64>,
    #[serde(flatten)]
    pub container: ContainerSpec,
}

impl TaskContainer {
    pub fn is_essential(&self) -> bool {
        self.essential.unwrap_or(true)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskDependency {
    #[schemars(length(max = 63))]
    pub container_name: String,
    /// START (it has started) or SUCCESS (it ended with 0); see the README for COMPLETE
    /// and HEALTHY.
    #[x_kube(validation = Rule::new("self == 'START' || self == 'SUCCESS'").message("dependsOn condition must be START or SUCCESS: Kubernetes cannot start a container after another exits with any code (COMPLETE) or turns healthy without a health check (HEALTHY)"))]
    #[schemars(length(max = 16))]
    pub condition: String,
}

/// Where a task container runs in the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A main container: essential; the pod ends when all of them have ended.
    Main,
    /// An init container that runs to its end before the containers waiting for it
    /// (something depends on its SUCCESS).
    Init,
    /// A sidecar (an init container with `restartPolicy: Always`): started before the
    /// main containers, stopped once they end.
    Sidecar,
}

/// Each container's role and the order of the init containers, or why the task cannot
/// run on a pod.
pub fn layout(task: &TaskSpec) -> Result<Vec<(usize, Role)>, String> {
    let by_name = |n: &str| task.containers.iter().position(|c| c.name == n);
    let mut roles: Vec<Role> =
        task.containers.iter().map(|c| if c.is_essential() { Role::Main } else { Role::Sidecar }).collect();
    if !roles.contains(&Role::Main) {
        return Err("a task needs at least one essential container (essential is true when left out)".into());
    }
    for (i, c) in task.containers.iter().enumerate() {
        if task.containers[..i].iter().any(|d| d.name == c.name) {
            return Err(format!("two of the task's containers are named {:?}", c.name));
        }
    }
    for c in &task.containers {
        for d in &c.depends_on {
            let Some(t) = by_name(&d.container_name) else {
                return Err(format!(
                    "container {} depends on {:?}, which is not in the task",
                    c.name, d.container_name
                ));
            };
            if task.containers[t].name == c.name {
                return Err(format!("container {} depends on itself", c.name));
            }
            if task.containers[t].is_essential() {
                return Err(format!(
                    "container {} depends on the essential container {}: Kubernetes starts a pod's main containers together; make {} non-essential to start it first",
                    c.name, d.container_name, d.container_name
                ));
            }
            match d.condition.as_str() {
                "START" => {}
                "SUCCESS" => roles[t] = Role::Init,
                other => {
                    return Err(format!(
                        "container {}: dependsOn condition {other} cannot be honoured: Kubernetes starts a container after another has started (START) or ended with 0 (SUCCESS)",
                        c.name
                    ));
                }
            }
        }
    }
    // Init containers and sidecars start in order: each after what it depends on.
    let mut order = Vec::new();
    let mut placed = vec![false; task.containers.len()];
    while order.len() < task.containers.len() {
        let next = (0..task.containers.len()).find(|&i| {
            !placed[i]
                && task.containers[i]
                    .depends_on
                    .iter()
                    .all(|d| by_name(&d.container_name).is_some_and(|t| placed[t]))
        });
        let Some(i) = next else {
            let waiting: Vec<&str> =
                (0..placed.len()).filter(|i| !placed[*i]).map(|i| task.containers[i].name.as_str()).collect();
            return Err(format!("the task's dependsOn go round in a circle among {}", waiting.join(", ")));
        };
        placed[i] = true;
        order.push((i, roles[i]));
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(containers: serde_json::Value) -> TaskSpec {
        serde_json::from_value(serde_json::json!({ "containers": containers })).unwrap()
    }

    #[test]
    fn non_essential_containers_become_sidecars_or_init_containers_in_dependency_order() {
        let t = task(serde_json::json!([
            {"name": "app", "image": "app", "dependsOn": [{"containerName": "setup", "condition": "SUCCESS"},
                                                          {"containerName": "proxy", "condition": "START"}]},
            {"name": "proxy", "image": "envoy", "essential": false, "dependsOn": [{"containerName": "setup", "condition": "SUCCESS"}]},
            {"name": "setup", "image": "busybox", "essential": false},
            {"name": "logs", "image": "fluent-bit", "essential": false}
        ]));
        let names = |l: Vec<(usize, Role)>| {
            l.into_iter().map(|(i, r)| (t.containers[i].name.clone(), r)).collect::<Vec<_>>()
        };
        assert_eq!(
            names(layout(&t).unwrap()),
            [
                ("setup".to_string(), Role::Init),
                ("proxy".to_string(), Role::Sidecar),
                ("app".to_string(), Role::Main),
                ("logs".to_string(), Role::Sidecar)
            ]
        );
    }

    #[test]
    fn what_a_pod_cannot_order_is_refused_naming_the_containers() {
        let err = |c: serde_json::Value| layout(&task(c)).unwrap_err();
        assert!(
            err(serde_json::json!([{"name": "a", "image": "i", "essential": false}])).contains("essential")
        );
        let on_main = serde_json::json!([
            {"name": "a", "image": "i"}, {"name": "b", "image": "i", "dependsOn": [{"containerName": "a", "condition": "START"}]}]);
        assert!(err(on_main).contains("make a non-essential"));
        let complete = serde_json::json!([
            {"name": "a", "image": "i", "essential": false}, {"name": "b", "image": "i", "dependsOn": [{"containerName": "a", "condition": "COMPLETE"}]}]);
        assert!(err(complete).contains("COMPLETE cannot be honoured"));
        let circle = serde_json::json!([
            {"name": "m", "image": "i"},
            {"name": "a", "image": "i", "essential": false, "dependsOn": [{"containerName": "b", "condition": "START"}]},
            {"name": "b", "image": "i", "essential": false, "dependsOn": [{"containerName": "a", "condition": "START"}]}]);
        assert!(err(circle).contains("circle among a, b"));
        let missing = serde_json::json!([{"name": "a", "image": "i", "dependsOn": [{"containerName": "x", "condition": "START"}]}]);
        assert!(err(missing).contains("\"x\", which is not in the task"));
    }
}
