//! AWS Batch's tags: where Barge keeps a resource's tags, and AWS's rules for them.
//!
//! Where the tags live:
//! - a job's are its BatchJob's `spec.tags` (what SubmitJob set);
//! - a job definition's are the latest revision's `tags` until the API changes them; from
//!   then on the JobDefinition's `barge.dev/aws-tags` annotation holds them, for every
//!   revision (changing `spec.tags` would register a new revision);
//! - a queue's and a compute environment's are in the same annotation (a compute
//!   environment's `spec.tags` are its instances' tags, AWS's `computeResources.tags`).

use std::collections::BTreeMap;

use kube::ResourceExt;

use super::{ApiError, ApiResult};

/// The annotation that holds tags given through the API.
pub const ANNOTATION_TAGS: &str = "barge.dev/aws-tags";

/// AWS's limits on tags of one resource.
const MAX_TAGS: usize = 50;
const MAX_KEY: usize = 128;
const MAX_VALUE: usize = 256;

pub type Tags = BTreeMap<String, String>;

/// The tags an object's annotation holds, if the API ever set them.
pub fn annotated<K: ResourceExt>(obj: &K) -> Option<Tags> {
    obj.annotations().get(ANNOTATION_TAGS).and_then(|t| serde_json::from_str(t).ok())
}

/// Checks tags against AWS's rules; `aws:` is AWS's own prefix.
pub fn validate(tags: &Tags) -> ApiResult<()> {
    for (k, v) in tags {
        if k.is_empty() || k.len() > MAX_KEY {
            return Err(ApiError::client(format!("tag key {k:?} must be 1 to {MAX_KEY} characters")));
        }
        if v.len() > MAX_VALUE {
            return Err(ApiError::client(format!(
                "the value of tag {k:?} is longer than {MAX_VALUE} characters"
            )));
        }
        if k.to_ascii_lowercase().starts_with("aws:") {
            return Err(ApiError::client(format!("tag key {k:?}: the aws: prefix is reserved for AWS")));
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(ApiError::client(format!(
            "a resource holds at most {MAX_TAGS} tags, not {}",
            tags.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_follow_aws_s_rules() {
        assert!(validate(&Tags::from([("team".into(), "film".into())])).is_ok());
        assert!(
            validate(&Tags::from([("aws:created".into(), "x".into())]))
                .unwrap_err()
                .message
                .contains("reserved")
        );
        assert!(validate(&Tags::from([("k".repeat(129), "x".into())])).is_err());
        assert!(validate(&Tags::from([("k".into(), "v".repeat(257))])).is_err());
        let many: Tags = (0..51).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(validate(&many).unwrap_err().message.contains("at most 50"));
    }
}
