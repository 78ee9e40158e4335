//! What a JobTrigger makes of one SQS message, decided without I/O: the S3 object events in
//! it (an S3 notification's records, an EventBridge event, either one wrapped by SNS), which
//! pass the trigger's filter, the parameters its paths take from each, and the name of each
//! object's job, derived from the object so that a redelivered message finds its job made.

use std::collections::BTreeMap;

use percent_encoding::percent_decode_str;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::api::job_trigger::ObjectFilter;

/// One S3 object event, whichever way it came.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectEvent {
    /// As S3 names it: `ObjectCreated:Put`.
    pub name: String,
    pub bucket: String,
    /// Decoded (an S3 notification's keys are URL-encoded).
    pub key: String,
    /// What tells two writes of one key apart: the version id, else the sequencer, else the
    /// ETag (the same upload notified twice has the same one).
    pub version: Option<String>,
    /// The event in its EventBridge form, which parameter paths read.
    pub document: Value,
}

/// What a message holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// Object events (an S3 notification may carry several).
    Events(Vec<ObjectEvent>),
    /// S3's `s3:TestEvent`, sent when a bucket's notifications are set up: nothing to do.
    Test,
}

/// Reads a message body; the error says why it is not an S3 object event.
pub fn parse(body: &str) -> Result<Message, String> {
    let value: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    parse_value(value, true)
}

fn parse_value(value: Value, unwrap_sns: bool) -> Result<Message, String> {
    if unwrap_sns && value.get("Type").and_then(Value::as_str) == Some("Notification") {
        let inner =
            value.get("Message").and_then(Value::as_str).ok_or("an SNS notification without a Message")?;
        let inner: Value = serde_json::from_str(inner)
            .map_err(|e| format!("the SNS notification's Message is not JSON: {e}"))?;
        return parse_value(inner, false);
    }
    if value.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(Message::Test);
    }
    if let Some(records) = value.get("Records") {
        let records = records.as_array().ok_or("Records is not a list")?;
        if records.is_empty() {
            return Err("an S3 notification without records".into());
        }
        return records
            .iter()
            .enumerate()
            .map(|(i, r)| record(r).map_err(|e| format!("record {i}: {e}")))
            .collect::<Result<_, _>>()
            .map(Message::Events);
    }
    if value.get("detail-type").is_some() {
        return eventbridge(value).map(|e| Message::Events(vec![e]));
    }
    Err("neither an S3 event notification (Records), an EventBridge event (detail-type) nor an SNS notification of one".into())
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, p| v.get(p))?.as_str().filter(|s| !s.is_empty())
}

/// An S3 notification record, as the EventBridge event S3 sends for the same write.
fn record(r: &Value) -> Result<ObjectEvent, String> {
    let source = text(r, &["eventSource"]).unwrap_or_default();
    if source != "aws:s3" {
        return Err(format!("eventSource is {source:?}, not aws:s3"));
    }
    let name = text(r, &["eventName"]).ok_or("no eventName")?.trim_start_matches("s3:").to_string();
    let bucket = text(r, &["s3", "bucket", "name"]).ok_or("no s3.bucket.name")?.to_string();
    let raw_key = text(r, &["s3", "object", "key"]).ok_or("no s3.object.key")?;
    // Keys are form-encoded: `+` is a space, `%2B` a plus.
    let key = percent_decode_str(&raw_key.replace('+', " "))
        .decode_utf8()
        .map_err(|_| format!("s3.object.key {raw_key:?} is not UTF-8 once decoded"))?
        .into_owned();
    let object = &r["s3"]["object"];
    let version_id = text(object, &["versionId"]).filter(|v| *v != "null");
    let sequencer = text(object, &["sequencer"]);
    let etag = text(object, &["eTag"]);
    let (detail_type, reason) = eventbridge_names(&name);
    let mut detail_object = json!({"key": key});
    for (field, value) in [
        ("size", object.get("size").cloned()),
        ("etag", etag.map(Value::from)),
        ("version-id", version_id.map(Value::from)),
        ("sequencer", sequencer.map(Value::from)),
    ] {
        if let Some(v) = value.filter(|v| !v.is_null()) {
            detail_object[field] = v;
        }
    }
    let document = json!({
        "version": "0",
        "detail-type": detail_type,
        "source": "aws.s3",
        "time": r.get("eventTime").cloned().unwrap_or(Value::Null),
        "region": r.get("awsRegion").cloned().unwrap_or(Value::Null),
        "resources": [format!("arn:aws:s3:::{bucket}")],
        "detail": {
            "version": "0",
            "bucket": {"name": bucket},
            "object": detail_object,
            "request-id": r.pointer("/responseElements/x-amz-request-id").cloned().unwrap_or(Value::Null),
            "requester": r.pointer("/userIdentity/principalId").cloned().unwrap_or(Value::Null),
            "source-ip-address": r.pointer("/requestParameters/sourceIPAddress").cloned().unwrap_or(Value::Null),
            "reason": reason,
        },
    });
    let version = version_id.or(sequencer).or(etag).map(str::to_string);
    Ok(ObjectEvent { name, bucket, key, version, document })
}

/// An EventBridge event from S3.
fn eventbridge(value: Value) -> Result<ObjectEvent, String> {
    let source = text(&value, &["source"]).unwrap_or_default();
    if source != "aws.s3" {
        return Err(format!("an EventBridge event from {source:?}, not aws.s3"));
    }
    let detail_type = text(&value, &["detail-type"]).unwrap_or_default();
    let reason = text(&value, &["detail", "reason"]);
    let deletion = text(&value, &["detail", "deletion-type"]);
    let name = s3_name(detail_type, reason, deletion).ok_or_else(|| {
        format!("an S3 event of detail-type {detail_type:?}, which no S3 event name stands for")
    })?;
    let bucket = text(&value, &["detail", "bucket", "name"]).ok_or("no detail.bucket.name")?.to_string();
    let key = text(&value, &["detail", "object", "key"]).ok_or("no detail.object.key")?.to_string();
    let object = &value["detail"]["object"];
    let version = text(object, &["version-id"])
        .filter(|v| *v != "null")
        .or(text(object, &["sequencer"]))
        .or(text(object, &["etag"]))
        .or(text(object, &["eTag"]))
        .map(str::to_string);
    Ok(ObjectEvent { name, bucket, key, version, document: value })
}

/// The EventBridge detail-type and reason S3 sends for an S3 event name.
fn eventbridge_names(name: &str) -> (&'static str, &'static str) {
    match name {
        "ObjectCreated:Put" => ("Object Created", "PutObject"),
        "ObjectCreated:Post" => ("Object Created", "PostObject"),
        "ObjectCreated:Copy" => ("Object Created", "CopyObject"),
        "ObjectCreated:CompleteMultipartUpload" => ("Object Created", "CompleteMultipartUpload"),
        "ObjectRemoved:Delete" | "ObjectRemoved:DeleteMarkerCreated" => ("Object Deleted", "DeleteObject"),
        "ObjectRestore:Post" => ("Object Restore Initiated", "RestoreObject"),
        "ObjectRestore:Completed" => ("Object Restore Completed", "RestoreObject"),
        n if n.starts_with("ObjectCreated:") => ("Object Created", ""),
        n if n.starts_with("ObjectRemoved:") => ("Object Deleted", ""),
        _ => ("", ""),
    }
}

/// The S3 event name an EventBridge event stands for.
fn s3_name(detail_type: &str, reason: Option<&str>, deletion: Option<&str>) -> Option<String> {
    let name = match (detail_type, reason.unwrap_or_default()) {
        ("Object Created", "PostObject") => "ObjectCreated:Post",
        ("Object Created", "CopyObject") => "ObjectCreated:Copy",
        ("Object Created", "CompleteMultipartUpload") => "ObjectCreated:CompleteMultipartUpload",
        ("Object Created", _) => "ObjectCreated:Put",
        ("Object Deleted", _) if deletion == Some("Delete Marker Created") => {
            "ObjectRemoved:DeleteMarkerCreated"
        }
        ("Object Deleted", _) => "ObjectRemoved:Delete",
        ("Object Restore Initiated", _) => "ObjectRestore:Post",
        ("Object Restore Completed", _) => "ObjectRestore:Completed",
        _ => return None,
    };
    Some(name.to_string())
}

/// Why `event` does not pass `filter`, or `None` when it does.
pub fn rejected_by(filter: &ObjectFilter, event: &ObjectEvent) -> Option<String> {
    if !filter.buckets.is_empty() && !filter.buckets.contains(&event.bucket) {
        return Some(format!("bucket {} is not one of {}", event.bucket, filter.buckets.join(", ")));
    }
    if let Some(p) = filter.prefix.as_deref().filter(|p| !event.key.starts_with(p)) {
        return Some(format!("key {} does not start with {p}", event.key));
    }
    if let Some(s) = filter.suffix.as_deref().filter(|s| !event.key.ends_with(s)) {
        return Some(format!("key {} does not end with {s}", event.key));
    }
    let default = ["ObjectCreated:*".to_string()];
    let names = if filter.event_names.is_empty() { &default[..] } else { &filter.event_names[..] };
    let matches = |pattern: &String| {
        let pattern = pattern.trim_start_matches("s3:");
        match pattern.strip_suffix('*') {
            Some(head) => event.name.starts_with(head),
            None => event.name == pattern,
        }
    };
    if !names.iter().any(matches) {
        return Some(format!("event {} is not one of {}", event.name, names.join(", ")));
    }
    None
}

/// The value at `path` (`$`, `$.a.b`, `$.a[0]`, `$['a-b']`), as a parameter: strings as
/// they are, anything else as its JSON.
pub fn lookup(document: &Value, path: &str) -> Result<String, String> {
    let rest = path.strip_prefix('$').ok_or_else(|| format!("path {path} does not start with $"))?;
    let mut at = document;
    let mut chars = rest.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let step = match c {
            '.' => {
                let start = i + 1;
                let mut end = rest.len();
                while let Some(&(j, c)) = chars.peek() {
                    if c == '.' || c == '[' {
                        end = j;
                        break;
                    }
                    chars.next();
                }
                Step::Field(&rest[start..end])
            }
            '[' => {
                let close = rest[i..].find(']').ok_or_else(|| format!("path {path}: [ without ]"))? + i;
                let inside = &rest[i + 1..close];
                while chars.peek().is_some_and(|&(j, _)| j <= close) {
                    chars.next();
                }
                match inside.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
                    Some(field) => Step::Field(field),
                    None => Step::Index(
                        inside.parse().map_err(|_| format!("path {path}: [{inside}] is not an index"))?,
                    ),
                }
            }
            _ => return Err(format!("path {path}: unexpected {c:?}")),
        };
        at = match step {
            Step::Field("") => return Err(format!("path {path}: an empty field name")),
            Step::Field(f) => at.get(f),
            Step::Index(n) => at.get(n),
        }
        .ok_or_else(|| format!("path {path} is not in the event"))?;
    }
    Ok(match at {
        Value::String(s) => s.clone(),
        Value::Null => return Err(format!("path {path} is null in the event")),
        other => other.to_string(),
    })
}

enum Step<'a> {
    Field(&'a str),
    Index(usize),
}

/// The parameters `paths` take from `event`.
pub fn parameters(
    paths: &BTreeMap<String, String>,
    event: &ObjectEvent,
) -> Result<BTreeMap<String, String>, String> {
    paths
        .iter()
        .map(|(name, path)| {
            lookup(&event.document, path)
                .map(|v| (name.clone(), v))
                .map_err(|e| format!("parameter {name}: {e}"))
        })
        .collect()
}

/// The id of `event`'s object version: 16 hex digits of a hash of the bucket, key and
/// version (`message_id` stands in for a version the event does not give).
pub fn object_id(event: &ObjectEvent, message_id: &str) -> String {
    hash16([event.bucket.as_str(), event.key.as_str(), event.version.as_deref().unwrap_or(message_id)])
}

/// The name of the job for `event`'s object: `PREFIX-` and its object id.
pub fn job_name(prefix: &str, event: &ObjectEvent, message_id: &str) -> String {
    named(prefix, &object_id(event, message_id))
}

/// The hash that names the array job of a batch of objects, whatever their order.
pub fn batch_id(object_ids: &[String]) -> String {
    let mut ids: Vec<&str> = object_ids.iter().map(String::as_str).collect();
    ids.sort_unstable();
    hash16(ids)
}

/// A batch index's line for one object.
pub fn index_line(event: &ObjectEvent, parameters: &BTreeMap<String, String>) -> String {
    json!({"bucket": event.bucket, "key": event.key, "version": event.version, "parameters": parameters})
        .to_string()
}

/// `PREFIX-HASH`, the prefix cut to 40 characters.
pub fn named(prefix: &str, hash: &str) -> String {
    let prefix: String = prefix.chars().take(40).collect();
    format!("{}-{hash}", prefix.trim_end_matches('-'))
}

fn hash16<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    let mut h = Sha256::new();
    for part in parts {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3_notification(key: &str, etag: &str) -> String {
        json!({"Records": [{
            "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
            "eventTime": "2026-12-08T10:00:00.000Z", "eventName": "ObjectCreated:Put",
            "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": "uploads", "arn": "arn:aws:s3:::uploads"},
                   "object": {"key": key, "size": 1024, "eTag": etag, "sequencer": "0055AED6DCD90281E5"}}
        }]})
        .to_string()
    }

    fn eventbridge_event(key: &str) -> Value {
        json!({
            "version": "0", "id": "17793124-05d4-b198-2fde-7ededc63b103", "detail-type": "Object Created",
            "source": "aws.s3", "account": "123456789012", "time": "2026-12-08T10:00:00Z", "region": "us-east-1",
            "resources": ["arn:aws:s3:::uploads"],
            "detail": {"version": "0", "bucket": {"name": "uploads"},
                       "object": {"key": key, "size": 1024, "etag": "b1946ac92492d2347c6235b4d2611184",
                                  "sequencer": "0055AED6DCD90281E5"},
                       "request-id": "N4N7GDK58NMKJ12R", "requester": "123456789012", "reason": "PutObject"}
        })
    }

    fn one(message: Message) -> ObjectEvent {
        match message {
            Message::Events(mut e) if e.len() == 1 => e.remove(0),
            other => panic!("not one event: {other:?}"),
        }
    }

    #[test]
    fn an_s3_notification_and_an_eventbridge_event_of_one_upload_read_the_same() {
        let from_s3 =
            one(parse(&s3_notification("incoming/a+photo%2B1.png", "b1946ac92492d2347c6235b4d2611184"))
                .unwrap());
        let from_eb = one(parse(&eventbridge_event("incoming/a photo+1.png").to_string()).unwrap());
        assert_eq!(from_s3.key, "incoming/a photo+1.png");
        assert_eq!((from_s3.name.as_str(), from_s3.bucket.as_str()), ("ObjectCreated:Put", "uploads"));
        assert_eq!(from_eb.name, from_s3.name);
        assert_eq!(from_eb.key, from_s3.key);
        assert_eq!(from_s3.version.as_deref(), Some("0055AED6DCD90281E5"));
        assert_eq!(from_eb.version, from_s3.version);
        let paths: BTreeMap<String, String> = [
            ("key", "$.detail.object.key"),
            ("bucket", "$.detail.bucket.name"),
            ("size", "$.detail.object.size"),
            ("reason", "$.detail.reason"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
        assert_eq!(parameters(&paths, &from_s3).unwrap(), parameters(&paths, &from_eb).unwrap());
        assert_eq!(parameters(&paths, &from_s3).unwrap()["size"], "1024");
        assert_eq!(job_name("thumbs", &from_s3, "m1"), job_name("thumbs", &from_eb, "m2"));
    }

    #[test]
    fn sns_wrapped_events_are_unwrapped_once() {
        let wrapped =
            json!({"Type": "Notification", "MessageId": "x", "TopicArn": "arn:aws:sns:us-east-1:1:t",
                             "Message": s3_notification("a.png", "e1")})
            .to_string();
        assert_eq!(one(parse(&wrapped).unwrap()).key, "a.png");
        let twice = json!({"Type": "Notification", "Message": wrapped}).to_string();
        assert!(parse(&twice).unwrap_err().contains("neither"));
        let eb =
            json!({"Type": "Notification", "Message": eventbridge_event("b.png").to_string()}).to_string();
        assert_eq!(one(parse(&eb).unwrap()).key, "b.png");
    }

    #[test]
    fn messages_that_are_no_object_event_say_why() {
        assert!(parse("not json").unwrap_err().starts_with("not JSON"));
        assert!(parse("{}").unwrap_err().contains("neither"));
        assert!(parse(r#"{"Records": []}"#).unwrap_err().contains("without records"));
        assert!(parse(r#"{"Records": [{"eventSource": "aws:sqs"}]}"#).unwrap_err().contains("not aws:s3"));
        let no_key = json!({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                                         "s3": {"bucket": {"name": "b"}, "object": {}}}]});
        assert_eq!(parse(&no_key.to_string()).unwrap_err(), "record 0: no s3.object.key");
        let ec2 = json!({"detail-type": "EC2 Spot Instance Interruption Warning", "source": "aws.ec2", "detail": {}});
        assert!(parse(&ec2.to_string()).unwrap_err().contains("aws.ec2"));
        let test = json!({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "uploads"});
        assert_eq!(parse(&test.to_string()).unwrap(), Message::Test);
    }

    #[test]
    fn the_filter_names_what_it_refuses() {
        let event = one(parse(&s3_notification("incoming/a.png", "e")).unwrap());
        let mut filter = ObjectFilter::default();
        assert_eq!(rejected_by(&filter, &event), None);
        filter.prefix = Some("incoming/".into());
        filter.suffix = Some(".png".into());
        filter.event_names = vec!["s3:ObjectCreated:*".into()];
        assert_eq!(rejected_by(&filter, &event), None);
        filter.suffix = Some(".jpg".into());
        assert_eq!(rejected_by(&filter, &event).unwrap(), "key incoming/a.png does not end with .jpg");
        filter.suffix = None;
        filter.buckets = vec!["other".into()];
        assert!(rejected_by(&filter, &event).unwrap().starts_with("bucket uploads"));
        filter.buckets.clear();
        filter.event_names = vec!["ObjectRemoved:*".into()];
        assert_eq!(
            rejected_by(&filter, &event).unwrap(),
            "event ObjectCreated:Put is not one of ObjectRemoved:*"
        );
        let deleted = json!({"detail-type": "Object Deleted", "source": "aws.s3",
            "detail": {"bucket": {"name": "uploads"}, "object": {"key": "incoming/a.png"}, "deletion-type": "Delete Marker Created"}});
        let deleted = one(parse(&deleted.to_string()).unwrap());
        assert_eq!(deleted.name, "ObjectRemoved:DeleteMarkerCreated");
        assert_eq!(rejected_by(&filter, &deleted), None);
        assert!(rejected_by(&ObjectFilter::default(), &deleted).is_some(), "only creations by default");
    }

    #[test]
    fn paths_read_fields_indexes_and_quoted_names() {
        let doc = eventbridge_event("k");
        assert_eq!(lookup(&doc, "$.resources[0]").unwrap(), "arn:aws:s3:::uploads");
        assert_eq!(lookup(&doc, "$['detail-type']").unwrap(), "Object Created");
        assert_eq!(lookup(&doc, "$.detail.request-id").unwrap(), "N4N7GDK58NMKJ12R");
        assert_eq!(lookup(&doc, "$.detail.bucket").unwrap(), r#"{"name":"uploads"}"#);
        assert_eq!(
            lookup(&doc, "$.detail.object.version-id").unwrap_err(),
            "path $.detail.object.version-id is not in the event"
        );
        assert!(lookup(&doc, "detail").unwrap_err().contains("does not start with $"));
        assert!(lookup(&doc, "$.resources[x]").unwrap_err().contains("not an index"));
        assert!(lookup(&doc, "$..key").unwrap_err().contains("empty field"));
    }

    #[test]
    fn one_name_per_object_version() {
        let a = one(parse(&s3_notification("a.png", "e1")).unwrap());
        let mut again = a.clone();
        again.document = Value::Null;
        assert_eq!(job_name("thumbs", &a, "m1"), job_name("thumbs", &again, "m2"), "a redelivery");
        let mut rewritten = a.clone();
        rewritten.version = Some("0055AED6DCD90281E6".into());
        assert_ne!(
            job_name("thumbs", &a, "m"),
            job_name("thumbs", &rewritten, "m"),
            "a new write of the key"
        );
        let name = job_name(&"x".repeat(80), &a, "m");
        assert_eq!(name.len(), 40 + 1 + 16);
        assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
    }

    #[test]
    fn a_batch_is_named_by_its_objects_in_any_order() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(batch_id(&ids(&["a", "b", "c"])), batch_id(&ids(&["c", "a", "b"])));
        assert_ne!(batch_id(&ids(&["a", "b"])), batch_id(&ids(&["a", "b", "c"])));
        let event = one(parse(&s3_notification("incoming/a b.png", "e1")).unwrap());
        let params: BTreeMap<String, String> = [("key".to_string(), event.key.clone())].into();
        let line: Value = serde_json::from_str(&index_line(&event, &params)).unwrap();
        assert_eq!(line["key"], "incoming/a b.png");
        assert_eq!(line["parameters"]["key"], "incoming/a b.png");
        assert_eq!(line["version"], "0055AED6DCD90281E5");
    }
}
