//! AWS names and Kubernetes names. AWS allows capitals and underscores in the names of
//! job definitions, queues and compute environments; Kubernetes does not. A name Kubernetes
//! allows is used as it is; any other becomes a lower-case form with a hash of the original
//! (so `My_Queue` and `my-queue` stay two objects), and the AWS name is kept in the
//! `barge.dev/aws-name` annotation, which every answer reads back.

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use sha2::{Digest, Sha256};

use super::ANNOTATION_AWS_NAME;

/// Whether `name` is an AWS name: up to 128 letters, numbers, hyphens and underscores.
pub fn valid_aws_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The Kubernetes name of the object for AWS name `aws`.
pub fn object_name(aws: &str) -> String {
    let plain = aws.len() <= 200
        && aws.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !aws.starts_with('-')
        && !aws.ends_with('-');
    if plain {
        return aws.to_string();
    }
    let base: String = aws
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .take(60)
        .collect();
    let base = base.trim_matches('-');
    let hash: String = Sha256::digest(aws.as_bytes()).iter().take(5).map(|b| format!("{b:02x}")).collect();
    if base.is_empty() { format!("d-{hash}") } else { format!("{base}-{hash}") }
}

/// The AWS name of an object: its annotation, else its Kubernetes name.
pub fn aws_name<K: ResourceExt>(obj: &K) -> String {
    obj.annotations().get(ANNOTATION_AWS_NAME).cloned().unwrap_or_else(|| obj.name_any())
}

/// The cluster-scoped object an AWS name stands for (an object made with `kubectl` is
/// found by its own name).
pub fn find<K>(store: &Store<K>, aws: &str) -> Option<Arc<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store.get(&ObjectRef::new(&object_name(aws))).filter(|o| aws_name(o.as_ref()) == aws)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_names_become_kubernetes_names_that_stay_apart() {
        assert_eq!(object_name("render"), "render");
        let a = object_name("My_Def");
        assert!(a.starts_with("my-def-") && a.len() == "my-def-".len() + 10, "{a}");
        assert_ne!(a, object_name("my-def"));
        assert_ne!(a, object_name("My-Def"));
        assert_eq!(a, object_name("My_Def"));
        assert!(object_name("___").starts_with("d-"));
        assert!(valid_aws_name("snakejob_0a-B"));
        assert!(!valid_aws_name("a b") && !valid_aws_name("") && !valid_aws_name(&"a".repeat(129)));
    }
}
