//! AWS Batch's shapes that several operations share, and their mapping to Barge's fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ApiError, ApiResult};
use crate::api::batch_job::{EnvVar, EvaluateOnExit, Resources, RetryAction, RetryStrategy, Timeout};

/// Fields a request may carry that Barge does not serve: refused by name rather than
/// dropped, so that nothing a caller asked for is silently left out.
pub type Unknown = BTreeMap<String, Value>;

pub fn refuse_unknown(unknown: &Unknown, within: &str) -> ApiResult<()> {
    match unknown.keys().next() {
        None => Ok(()),
        Some(k) => Err(ApiError::client(format!(
            "{within}{k} is not supported by Barge (see the README's AWS Batch API section for the fields it serves)"
        ))),
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValuePair {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ResourceRequirement {
    pub value: String,
    #[serde(rename = "type")]
    pub type_: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EvaluateOnExitShape {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_status_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_exit_code: Option<String>,
    pub action: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RetryStrategyShape {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evaluate_on_exit: Vec<EvaluateOnExitShape>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TimeoutShape {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_duration_seconds: Option<u64>,
}

impl RetryStrategyShape {
    pub fn to_barge(&self) -> ApiResult<RetryStrategy> {
        let attempts = self.attempts.unwrap_or(1);
        if !(1..=10).contains(&attempts) {
            return Err(ApiError::client(format!(
                "retryStrategy.attempts must be between 1 and 10, not {attempts}"
            )));
        }
        let rules = self
            .evaluate_on_exit
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let action = match r.action.to_ascii_uppercase().as_str() {
                    "RETRY" => RetryAction::Retry,
                    "EXIT" => RetryAction::Exit,
                    other => {
                        return Err(ApiError::client(format!(
                            "retryStrategy.evaluateOnExit[{i}].action must be RETRY or EXIT, not {other:?}"
                        )));
                    }
                };
                Ok(EvaluateOnExit {
                    on_exit_code: r.on_exit_code.clone(),
                    on_reason: r.on_reason.clone(),
                    on_status_reason: r.on_status_reason.clone(),
                    action,
                })
            })
            .collect::<ApiResult<Vec<_>>>()?;
        Ok(RetryStrategy { attempts, evaluate_on_exit: rules })
    }

    pub fn of(r: &RetryStrategy) -> Self {
        RetryStrategyShape {
            attempts: Some(r.attempts),
            evaluate_on_exit: r
                .evaluate_on_exit
                .iter()
                .map(|e| EvaluateOnExitShape {
                    on_status_reason: e.on_status_reason.clone(),
                    on_reason: e.on_reason.clone(),
                    on_exit_code: e.on_exit_code.clone(),
                    action: match e.action {
                        RetryAction::Retry => "RETRY".into(),
                        RetryAction::Exit => "EXIT".into(),
                    },
                })
                .collect(),
        }
    }
}

impl TimeoutShape {
    pub fn to_barge(&self) -> ApiResult<Option<Timeout>> {
        match self.attempt_duration_seconds {
            None => Ok(None),
            Some(s) if s >= 60 => Ok(Some(Timeout { attempt_duration_seconds: s })),
            Some(s) => {
                Err(ApiError::client(format!("timeout.attemptDurationSeconds must be at least 60, not {s}")))
            }
        }
    }
}

pub fn environment(env: &[KeyValuePair], within: &str) -> ApiResult<Vec<EnvVar>> {
    env.iter()
        .map(|kv| {
            if kv.name.is_empty() {
                return Err(ApiError::client(format!("{within}environment: every variable needs a name")));
            }
            if kv.name.starts_with(crate::api::job_definition::RESERVED_ENV_PREFIX) {
                return Err(ApiError::client(format!(
                    "{within}environment: {} is reserved (variables named AWS_BATCH_* are set by Barge)",
                    kv.name
                )));
            }
            Ok(EnvVar { name: kv.name.clone(), value: kv.value.clone() })
        })
        .collect()
}

pub fn key_values(env: &[EnvVar]) -> Vec<KeyValuePair> {
    env.iter().map(|e| KeyValuePair { name: e.name.clone(), value: e.value.clone() }).collect()
}

/// What `resourceRequirements` (and the older `vcpus` and `memory`, in MiB) ask for.
#[derive(Debug, Default, PartialEq)]
pub struct Asked {
    pub vcpus: Option<f64>,
    pub memory: Option<String>,
    pub gpus: Option<u32>,
}

pub fn asked(
    reqs: &[ResourceRequirement],
    vcpus: Option<f64>,
    memory_mib: Option<u64>,
    within: &str,
) -> ApiResult<Asked> {
    let mut a = Asked { vcpus, memory: memory_mib.map(|m| format!("{m}Mi")), gpus: None };
    for r in reqs {
        let bad = |what: &str| {
            ApiError::client(format!("{within}resourceRequirements {}: {:?} is not {what}", r.type_, r.value))
        };
        match r.type_.as_str() {
            "VCPU" => {
                let v: f64 = r.value.parse().map_err(|_| bad("a number of vCPUs such as 2 or 0.5"))?;
                if v <= 0.0 {
                    return Err(bad("a number of vCPUs above 0"));
                }
                a.vcpus = Some(v);
            }
            "MEMORY" => {
                let m: u64 = r.value.parse().map_err(|_| bad("a whole number of MiB such as 2048"))?;
                if m == 0 {
                    return Err(bad("a number of MiB above 0"));
                }
                a.memory = Some(format!("{m}Mi"));
            }
            "GPU" => a.gpus = Some(r.value.parse().map_err(|_| bad("a whole number of GPUs"))?),
            other => {
                return Err(ApiError::client(format!(
                    "{within}resourceRequirements: type {other:?} is not VCPU, MEMORY or GPU"
                )));
            }
        }
    }
    Ok(a)
}

/// A container's resources in AWS's words.
pub fn requirements(r: &Resources) -> Vec<ResourceRequirement> {
    let mut out = vec![
        ResourceRequirement { type_: "VCPU".into(), value: trim_float(r.vcpus) },
        ResourceRequirement { type_: "MEMORY".into(), value: memory_mib(&r.memory).to_string() },
    ];
    if r.gpus > 0 {
        out.push(ResourceRequirement { type_: "GPU".into(), value: r.gpus.to_string() });
    }
    out
}

pub fn memory_mib(quantity: &str) -> u64 {
    crate::resources::parse_mib(quantity).unwrap_or(0)
}

fn trim_float(v: f64) -> String {
    if v.fract() == 0.0 { format!("{}", v as i64) } else { v.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_requirements_map_to_quantities_and_back() {
        let reqs = vec![
            ResourceRequirement { type_: "VCPU".into(), value: "0.5".into() },
            ResourceRequirement { type_: "MEMORY".into(), value: "3072".into() },
            ResourceRequirement { type_: "GPU".into(), value: "1".into() },
        ];
        let a = asked(&reqs, Some(4.0), Some(100), "").unwrap();
        assert_eq!(a, Asked { vcpus: Some(0.5), memory: Some("3072Mi".into()), gpus: Some(1) });
        let r = Resources { vcpus: 2.0, memory: "3Gi".into(), gpus: 0 };
        assert_eq!(requirements(&r)[1].value, "3072");
        assert_eq!(requirements(&r)[0].value, "2");
        let bad = vec![ResourceRequirement { type_: "MEMORY".into(), value: "2Gi".into() }];
        assert!(
            asked(&bad, None, None, "containerOverrides.")
                .unwrap_err()
                .message
                .contains("containerOverrides.resourceRequirements MEMORY")
        );
    }

    #[test]
    fn retry_rules_take_either_case_and_refuse_other_actions() {
        let r = RetryStrategyShape {
            attempts: Some(3),
            evaluate_on_exit: vec![EvaluateOnExitShape {
                on_exit_code: Some("1*".into()),
                action: "exit".into(),
                ..Default::default()
            }],
        };
        let b = r.to_barge().unwrap();
        assert_eq!((b.attempts, b.evaluate_on_exit[0].action), (3, RetryAction::Exit));
        assert_eq!(RetryStrategyShape::of(&b).evaluate_on_exit[0].action, "EXIT");
        let mut bad = r.clone();
        bad.evaluate_on_exit[0].action = "MAYBE".into();
        assert!(bad.to_barge().is_err());
        assert!(RetryStrategyShape { attempts: Some(11), ..Default::default() }.to_barge().is_err());
    }
}
