//! EC2's warnings about an instance, as EventBridge delivers them to an SQS queue: Spot
//! interruption warnings, rebalance recommendations and state changes. Pure parsing: a
//! message body in, what it says about which instance out (or why it says nothing).

use serde::Deserialize;

/// Longest message body read: EC2's events are well under 2 KiB; anything far larger is
/// not one of them.
const MAX_BODY: usize = 64 * 1024;

/// What EC2 told about one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// EC2 takes the Spot instance back in about two minutes (`action`: terminate, stop or
    /// hibernate).
    SpotInterruption { instance_id: String, action: String },
    /// The Spot instance is at elevated risk of interruption: start no new work on it.
    Rebalance { instance_id: String },
    /// The instance entered `state` (pending, running, stopping, stopped, shutting-down,
    /// terminated).
    StateChange { instance_id: String, state: String },
}

impl Notice {
    pub fn instance_id(&self) -> &str {
        match self {
            Notice::SpotInterruption { instance_id, .. }
            | Notice::Rebalance { instance_id }
            | Notice::StateChange { instance_id, .. } => instance_id,
        }
    }

    /// A short, stable name for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Notice::SpotInterruption { .. } => "spot_interruption",
            Notice::Rebalance { .. } => "rebalance_recommendation",
            Notice::StateChange { .. } => "state_change",
        }
    }
}

/// A message that is not a notice Barge acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotNotice {
    /// A well-formed event of another kind (say an AWS Health event): nothing to do.
    Other(String),
    /// Not an EC2 event at all, or one missing what it must carry.
    Malformed(String),
}

impl NotNotice {
    pub fn kind(&self) -> &'static str {
        match self {
            NotNotice::Other(_) => "other",
            NotNotice::Malformed(_) => "malformed",
        }
    }
}

#[derive(Deserialize)]
struct Event {
    source: Option<String>,
    #[serde(rename = "detail-type")]
    detail_type: Option<String>,
    detail: Option<serde_json::Value>,
}

/// SNS in front of the queue wraps the event in an envelope.
#[derive(Deserialize)]
struct SnsEnvelope {
    #[serde(rename = "Type")]
    kind: String,
    #[serde(rename = "Message")]
    message: String,
}

/// Reads one SQS message body: an EventBridge event, bare or inside an SNS envelope.
pub fn parse(body: &str) -> Result<Notice, NotNotice> {
    if body.len() > MAX_BODY {
        return Err(NotNotice::Malformed(format!("a body of {} bytes is not an EC2 event", body.len())));
    }
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| NotNotice::Malformed(format!("not JSON: {e}")))?;
    let value = match serde_json::from_value::<SnsEnvelope>(value.clone()) {
        Ok(sns) if sns.kind == "Notification" => serde_json::from_str(&sns.message)
            .map_err(|e| NotNotice::Malformed(format!("an SNS message that is not JSON: {e}")))?,
        _ => value,
    };
    let event: Event = serde_json::from_value(value)
        .map_err(|e| NotNotice::Malformed(format!("not an EventBridge event: {e}")))?;
    let (Some(source), Some(detail_type)) = (event.source, event.detail_type) else {
        return Err(NotNotice::Malformed("not an EventBridge event: no source or detail-type".into()));
    };
    if source != "aws.ec2" {
        return Err(NotNotice::Other(format!("{source}: {}", clip(&detail_type))));
    }
    let detail = event.detail.unwrap_or_default();
    let field = |name: &str| detail.get(name).and_then(|v| v.as_str()).map(str::to_string);
    let instance = || {
        let id = field("instance-id").ok_or_else(|| {
            NotNotice::Malformed(format!("{} without detail.instance-id", clip(&detail_type)))
        })?;
        if is_instance_id(&id) {
            Ok(id)
        } else {
            Err(NotNotice::Malformed(format!("{:?} is not an EC2 instance id", clip(&id))))
        }
    };
    match detail_type.as_str() {
        "EC2 Spot Instance Interruption Warning" => Ok(Notice::SpotInterruption {
            instance_id: instance()?,
            action: field("instance-action").unwrap_or_else(|| "terminate".into()),
        }),
        "EC2 Instance Rebalance Recommendation" => Ok(Notice::Rebalance { instance_id: instance()? }),
        "EC2 Instance State-change Notification" => {
            let state = field("state").ok_or_else(|| {
                NotNotice::Malformed("EC2 Instance State-change Notification without detail.state".into())
            })?;
            Ok(Notice::StateChange { instance_id: instance()?, state })
        }
        other => Err(NotNotice::Other(format!("aws.ec2: {}", clip(other)))),
    }
}

/// `i-` and 8 or 17 hexadecimal digits.
fn is_instance_id(id: &str) -> bool {
    id.strip_prefix("i-")
        .is_some_and(|hex| matches!(hex.len(), 8 | 17) && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// What of a sender's string goes into a log line.
fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(detail_type: &str, detail: serde_json::Value) -> String {
        serde_json::json!({
            "version": "0", "id": "7e5a0b3c-1d6e-4a43-8e1a-05c1a7d0f6a1",
            "detail-type": detail_type, "source": "aws.ec2", "account": "123456789012",
            "time": "2026-12-04T12:00:00Z", "region": "us-east-1",
            "resources": ["arn:aws:ec2:us-east-1a:instance/i-0b662ef9931388ba0"],
            "detail": detail,
        })
        .to_string()
    }

    #[test]
    fn a_spot_interruption_warning_names_its_instance_and_action() {
        let body = event(
            "EC2 Spot Instance Interruption Warning",
            serde_json::json!({"instance-id": "i-0b662ef9931388ba0", "instance-action": "terminate"}),
        );
        assert_eq!(
            parse(&body),
            Ok(Notice::SpotInterruption {
                instance_id: "i-0b662ef9931388ba0".into(),
                action: "terminate".into()
            })
        );
    }

    #[test]
    fn rebalance_recommendations_and_state_changes_are_read() {
        let rebalance =
            event("EC2 Instance Rebalance Recommendation", serde_json::json!({"instance-id": "i-1234abcd"}));
        assert_eq!(parse(&rebalance), Ok(Notice::Rebalance { instance_id: "i-1234abcd".into() }));
        let change = event(
            "EC2 Instance State-change Notification",
            serde_json::json!({"instance-id": "i-1234abcd", "state": "shutting-down"}),
        );
        assert_eq!(
            parse(&change),
            Ok(Notice::StateChange { instance_id: "i-1234abcd".into(), state: "shutting-down".into() })
        );
    }

    #[test]
    fn an_event_inside_an_sns_envelope_is_unwrapped() {
        let inner =
            event("EC2 Instance Rebalance Recommendation", serde_json::json!({"instance-id": "i-1234abcd"}));
        let body =
            serde_json::json!({"Type": "Notification", "MessageId": "1", "Message": inner}).to_string();
        assert_eq!(parse(&body), Ok(Notice::Rebalance { instance_id: "i-1234abcd".into() }));
    }

    #[test]
    fn other_events_are_ignored_and_broken_ones_are_malformed() {
        let health =
            serde_json::json!({"source": "aws.health", "detail-type": "AWS Health Event", "detail": {}});
        assert!(matches!(parse(&health.to_string()), Err(NotNotice::Other(_))));
        let ami = event("EC2 AMI State Change", serde_json::json!({}));
        assert!(matches!(parse(&ami), Err(NotNotice::Other(_))));
        for body in [
            "",
            "not json",
            "[1,2,3]",
            "{}",
            r#"{"source": 7, "detail-type": "x"}"#,
            &event("EC2 Spot Instance Interruption Warning", serde_json::json!({})),
            &event("EC2 Spot Instance Interruption Warning", serde_json::json!({"instance-id": "i-xyz"})),
            &event("EC2 Spot Instance Interruption Warning", serde_json::json!({"instance-id": 42})),
            &event(
                "EC2 Instance State-change Notification",
                serde_json::json!({"instance-id": "i-1234abcd"}),
            ),
            r#"{"Type": "Notification", "Message": "{{"}"#,
        ] {
            assert!(matches!(parse(body), Err(NotNotice::Malformed(_))), "{body:?} → {:?}", parse(body));
        }
        let huge = "x".repeat(MAX_BODY + 1);
        assert!(matches!(parse(&huge), Err(NotNotice::Malformed(_))));
    }

    #[test]
    fn instance_ids_have_eight_or_seventeen_hex_digits() {
        assert!(is_instance_id("i-0123abcd"));
        assert!(is_instance_id("i-0123456789abcdef0"));
        for bad in ["i-", "i-123", "0123abcd", "i-0123abcg", "i-0123456789abcdef", "i-ⅰⅱⅲⅳⅴⅵⅶⅷ"]
        {
            assert!(!is_instance_id(bad), "{bad}");
        }
    }
}
