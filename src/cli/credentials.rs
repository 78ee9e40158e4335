//! `barge credentials create|list|revoke`: keys for the AWS Batch API. Each key is a Secret
//! in the operator's namespace, labelled `barge.dev/credentials=true`, that acts in one
//! namespace (and, if given, only on some queues).

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use rand::Rng;

use crate::batch_api::auth::Credential;
use crate::batch_api::stores::{LABEL_CREDENTIALS, credential};

#[derive(clap::Subcommand, Clone, Debug)]
pub enum CredentialsCommand {
    /// Issue a key; prints the access key id and secret (the secret is shown only now).
    Create {
        /// The namespace the key acts in: it sees and submits that namespace's jobs only.
        #[arg(long)]
        namespace: String,
        /// Queues the key may use, comma-separated (default: every queue open to the namespace).
        #[arg(long, value_delimiter = ',')]
        queues: Vec<String>,
        /// May also see every compute environment.
        #[arg(long)]
        admin: bool,
        /// How to print the key: shell exports, or JSON.
        #[arg(long, value_enum, default_value_t = KeyFormat::Env)]
        format: KeyFormat,
        #[command(flatten)]
        at: Operator,
    },
    /// Every key issued: id, namespace, queues (never the secrets).
    List {
        #[command(flatten)]
        at: Operator,
    },
    /// Revoke a key: requests signed with it are refused from then on.
    Revoke {
        access_key_id: String,
        #[command(flatten)]
        at: Operator,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFormat {
    Env,
    Json,
}

#[derive(clap::Args, Clone, Debug)]
pub struct Operator {
    /// Namespace of the Barge operator, where keys are kept.
    #[arg(long, env = "BARGE_CREDENTIALS_NAMESPACE", default_value = crate::batch_api::DEFAULT_CREDENTIALS_NAMESPACE)]
    operator_namespace: String,
}

/// A Secret's name for the key.
fn secret_name(access_key_id: &str) -> String {
    format!("barge-credentials-{}", access_key_id.to_ascii_lowercase())
}

/// `len` characters drawn from `alphabet` by the thread's cryptographically secure generator.
fn random(alphabet: &[u8], len: usize) -> String {
    let mut rng = rand::rng();
    (0..len).map(|_| alphabet[rng.random_range(0..alphabet.len())] as char).collect()
}

/// A new key: an id in AWS's shape (20 upper-case characters) and a 40-character secret.
pub fn new_key(namespace: &str, queues: Vec<String>, admin: bool) -> Credential {
    const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const SECRET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    Credential {
        access_key_id: format!("BRG{}", random(UPPER, 17)),
        secret_access_key: random(SECRET, 40),
        namespace: namespace.to_string(),
        queues,
        admin,
    }
}

pub async fn run(command: CredentialsCommand) -> anyhow::Result<()> {
    let client = Client::try_default().await.context("cannot reach the cluster (check KUBECONFIG)")?;
    match command {
        CredentialsCommand::Create { namespace, queues, admin, format, at } => {
            let key = new_key(&namespace, queues, admin);
            let api: Api<Secret> = Api::namespaced(client, &at.operator_namespace);
            let secret = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(secret_name(&key.access_key_id)),
                    labels: Some([(LABEL_CREDENTIALS.to_string(), "true".to_string())].into()),
                    ..Default::default()
                },
                string_data: Some(
                    [
                        ("accessKeyId", key.access_key_id.clone()),
                        ("secretAccessKey", key.secret_access_key.clone()),
                        ("namespace", key.namespace.clone()),
                        ("queues", key.queues.join(",")),
                        ("admin", key.admin.to_string()),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                ),
                type_: Some("Opaque".into()),
                ..Default::default()
            };
            api.create(&PostParams::default(), &secret).await.with_context(|| {
                format!("cannot create the key's Secret in namespace {} (does it exist, and may you create Secrets there?)", at.operator_namespace)
            })?;
            match format {
                KeyFormat::Env => {
                    println!("export AWS_ACCESS_KEY_ID={}", key.access_key_id);
                    println!("export AWS_SECRET_ACCESS_KEY={}", key.secret_access_key);
                    eprintln!("# acts in namespace {}; the secret is not shown again", key.namespace);
                }
                KeyFormat::Json => println!(
                    "{}",
                    serde_json::json!({
                        "AccessKeyId": key.access_key_id,
                        "SecretAccessKey": key.secret_access_key,
                        "Namespace": key.namespace,
                    })
                ),
            }
        }
        CredentialsCommand::List { at } => {
            let api: Api<Secret> = Api::namespaced(client, &at.operator_namespace);
            let list = api.list(&ListParams::default().labels(&format!("{LABEL_CREDENTIALS}=true"))).await?;
            println!("{:<22} {:<20} {:<6} QUEUES", "ACCESS KEY ID", "NAMESPACE", "ADMIN");
            for s in &list.items {
                let Some(k) = credential(s) else { continue };
                let queues = if k.queues.is_empty() { "*".to_string() } else { k.queues.join(",") };
                println!("{:<22} {:<20} {:<6} {queues}", k.access_key_id, k.namespace, k.admin);
            }
        }
        CredentialsCommand::Revoke { access_key_id, at } => {
            let api: Api<Secret> = Api::namespaced(client, &at.operator_namespace);
            let name = secret_name(&access_key_id);
            match api.get_opt(&name).await? {
                Some(s) if s.labels().get(LABEL_CREDENTIALS).map(String::as_str) == Some("true") => {
                    api.delete(&name, &Default::default()).await?;
                    println!("revoked {access_key_id}");
                }
                _ => bail!(
                    "no key {access_key_id} in namespace {} (see `barge credentials list`)",
                    at.operator_namespace
                ),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_aws_shapes_and_differ() {
        let a = new_key("ns", vec![], false);
        let b = new_key("ns", vec![], false);
        assert_eq!((a.access_key_id.len(), a.secret_access_key.len()), (20, 40));
        assert!(
            a.access_key_id.starts_with("BRG")
                && a.access_key_id.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        );
        assert_ne!(a.access_key_id, b.access_key_id);
        assert_ne!(a.secret_access_key, b.secret_access_key);
        assert!(secret_name(&a.access_key_id).len() <= 63);
    }
}
