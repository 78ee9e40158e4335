//! The AWS Batch API: an HTTP endpoint speaking AWS Batch's restJson1 protocol
//! (`POST /v1/<operation>`, JSON bodies, epoch-millisecond times), so that `aws batch`,
//! boto3 and the tools built on them work against Barge unchanged.
//!
//! Every request is signed with AWS Signature Version 4 by a key that `barge credentials`
//! issued ([`auth`]); each key acts in one namespace. Reads come from watch-fed stores
//! ([`Stores`]); writes go through the API server as BatchJobs and JobDefinitions, so that a
//! job submitted with boto3 is one `kubectl get bj` shows, and the other way round.

mod admin;
pub mod auth;
pub mod definitions;
pub mod eks;
mod environments;
mod jobs;
pub mod logs;
mod names;
mod page;
mod shapes;
pub mod stores;
mod tagging;
mod tags;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use kube::Client;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, warn};

pub use auth::Principal;
pub use stores::Stores;

/// The largest request body accepted; larger ones are refused before they are parsed.
/// (AWS Batch's largest requests, a RegisterJobDefinition with a full pod spec, stay far below.)
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The field manager of the objects the endpoint writes.
pub const FIELD_MANAGER: &str = "barge-batch-api";

/// The annotation that keeps an object's AWS name where Kubernetes' naming rules could not
/// (AWS job names are not unique; definition names may hold capitals and underscores).
pub const ANNOTATION_AWS_NAME: &str = "barge.dev/aws-name";

/// Where credential Secrets live unless the operator is told otherwise (the chart's
/// namespace by convention).
pub const DEFAULT_CREDENTIALS_NAMESPACE: &str = "barge-system";

/// Where and as whom the endpoint answers.
#[derive(Clone, Debug)]
pub struct Config {
    pub addr: SocketAddr,
    /// The region in ARNs, and the one requests must be signed for.
    pub region: String,
    /// The 12-digit account id in ARNs.
    pub account_id: String,
    /// Namespace of the credential Secrets (the operator's).
    pub credentials_namespace: String,
    /// Requests each key may make per second (also its burst); `None` for no limit.
    pub requests_per_second: Option<std::num::NonZeroU32>,
    /// Serve HTTPS with this certificate chain and key (PEM files); plain HTTP without.
    pub tls: Option<TlsFiles>,
    /// Where a MANAGED compute environment created through the API gets its nodes.
    pub managed_provider: crate::api::compute_environment::Provider,
    /// The log archive CloudWatch Logs' operations read (none: they answer that there is
    /// no output archived), and how many days it keeps output.
    pub archive: Option<crate::archive::s3::Bucket>,
    pub retention_days: u32,
}

#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// A TLS acceptor from PEM files (rustls, with the aws-lc-rs provider the Kubernetes client
/// uses too).
pub fn tls_acceptor(files: &TlsFiles) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use anyhow::Context as _;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read the certificate chain {}", files.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("cannot read the private key {}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and key do not make a TLS identity")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// An AWS error as restJson1 carries it: the code in `x-amzn-ErrorType` and `__type`,
/// and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    /// The caller's mistake (AWS Batch's `ClientException`).
    pub fn client(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, code: "ClientException", message: message.into() }
    }

    /// Barge's or the cluster's trouble (`ServerException`): retrying may help.
    pub fn server(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "ServerException",
            message: message.into(),
        }
    }

    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    /// What the API server's refusal of a write means to the caller.
    fn from_kube(e: kube::Error, what: &str) -> Self {
        match e {
            kube::Error::Api(s) if s.code == 422 || s.code == 400 => {
                ApiError::client(format!("{what} is invalid: {}", s.message))
            }
            kube::Error::Api(s) if s.code == 409 => ApiError::client(format!("{what}: {}", s.message)),
            kube::Error::Api(s) if s.code == 403 => ApiError::server(format!(
                "Barge may not write {what} in this namespace (its role is missing a permission): {}",
                s.message
            )),
            e => ApiError::server(format!("could not write {what}: {e}")),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// ARNs in AWS's shape, from the configured region and account.
#[derive(Clone, Debug)]
pub struct Arns {
    pub region: String,
    pub account_id: String,
}

impl Arns {
    pub fn of(&self, kind: &str, name: &str) -> String {
        format!("arn:aws:batch:{}:{}:{kind}/{name}", self.region, self.account_id)
    }

    /// The name an ARN of `kind` names, or the text itself when it is no ARN.
    pub fn name<'a>(&self, kind: &str, text: &'a str) -> &'a str {
        if !text.starts_with("arn:") {
            return text;
        }
        text.split_once(&format!(":{kind}/")).map_or(text, |(_, name)| name)
    }
}

/// What every operation reads and writes through.
pub struct Context {
    pub client: Client,
    pub stores: Stores,
    pub arns: Arns,
    pub credentials_namespace: String,
    /// Where a MANAGED compute environment created through the API gets its nodes.
    pub managed_provider: crate::api::compute_environment::Provider,
    /// The log archive CloudWatch Logs' operations read, and its retention.
    pub archive: Option<crate::archive::s3::Bucket>,
    pub retention_days: u32,
    /// Each key's request rate, as AWS throttles an account's calls.
    limiter: Option<governor::DefaultKeyedRateLimiter<String>>,
    requests_per_second: u32,
}

impl Context {
    /// The ARN of a queue by its object's name, with its AWS name.
    pub fn queue_arn(&self, object: &str) -> String {
        let q = self.stores.queues.get(&kube::runtime::reflector::ObjectRef::new(object));
        self.arns.of("job-queue", &q.map_or_else(|| object.to_string(), |q| names::aws_name(q.as_ref())))
    }

    /// The ARN of a compute environment by its object's name, with its AWS name.
    pub fn environment_arn(&self, object: &str) -> String {
        let c = self.stores.compute_environments.get(&kube::runtime::reflector::ObjectRef::new(object));
        self.arns
            .of("compute-environment", &c.map_or_else(|| object.to_string(), |c| names::aws_name(c.as_ref())))
    }
}

/// Serves the endpoint until the process ends. The stores are started here: every replica
/// answers, whether or not it leads.
pub async fn serve(client: Client, config: Config, tls: Option<tokio_rustls::TlsAcceptor>) {
    let (stores, drive) = Stores::start(client.clone(), &config.credentials_namespace);
    tokio::spawn(drive);
    let ctx = Arc::new(Context {
        client,
        stores,
        arns: Arns { region: config.region.clone(), account_id: config.account_id.clone() },
        credentials_namespace: config.credentials_namespace.clone(),
        managed_provider: config.managed_provider,
        archive: config.archive.clone(),
        retention_days: config.retention_days,
        limiter: config
            .requests_per_second
            .map(|n| governor::RateLimiter::keyed(governor::Quota::per_second(n))),
        requests_per_second: config.requests_per_second.map_or(0, |n| n.get()),
    });
    let listener = match tokio::net::TcpListener::bind(config.addr).await {
        Ok(l) => l,
        Err(e) => {
            warn!(addr = %config.addr, error = %e, "cannot serve the AWS Batch API");
            return std::future::pending().await;
        }
    };
    info!(addr = %config.addr, region = %config.region, tls = tls.is_some(), "serving the AWS Batch API");
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let (ctx, tls) = (ctx.clone(), tls.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(handle(&ctx, req).await) }
            });
            let http = hyper::server::conn::http1::Builder::new();
            match tls {
                None => {
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                    Err(e) => tracing::debug!(%peer, error = %e, "a TLS handshake failed"),
                },
            }
        });
    }
}

/// One request, from its bytes to its answer, which carries a request id as AWS's do (SDKs
/// show it, users quote it, and the operator's log names it).
async fn handle(ctx: &Context, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut response = answer(ctx, req, &request_id).await;
    response.headers_mut().insert(REQUEST_ID_HEADER, request_id.parse().expect("a uuid is a header value"));
    response
}

async fn answer(ctx: &Context, req: Request<Incoming>, request_id: &str) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let started = std::time::Instant::now();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            let message =
                format!("the request body is larger than {MAX_BODY_BYTES} bytes, the most Barge accepts");
            // In each service's own words: CloudWatch Logs refuses a too-large input as a parameter.
            return error_response(&match logs_operation(&parts) {
                Some(_) => ApiError::new(StatusCode::BAD_REQUEST, "InvalidParameterException", message),
                None => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "ClientException", message),
            });
        }
    };
    let outcome = match ctx.stores.ready() {
        false => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServerException",
            "Barge is starting and has not read the cluster yet; retry in a few seconds",
        )),
        true => match auth::verify(&parts, &body, &ctx.stores.credentials(), std::time::SystemTime::now()) {
            Err(e) => Err(e),
            Ok(principal)
                if ctx.limiter.as_ref().is_some_and(|l| l.check_key(&principal.access_key_id).is_err()) =>
            {
                Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyRequestsException",
                    format!(
                        "Too Many Requests: key {} may make {} requests a second; retry with backoff (AWS SDKs do)",
                        principal.access_key_id, ctx.requests_per_second
                    ),
                ))
            }
            Ok(principal) => route(ctx, &principal, &parts, &body).await,
        },
    };
    let operation = logs_operation(&parts)
        .map_or_else(|| parts.uri.path().trim_start_matches("/v1/").to_string(), str::to_string);
    match outcome {
        Ok(json) => {
            tracing::debug!(%operation, %request_id, ms = started.elapsed().as_millis() as u64, "batch api");
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(json)))
                .expect("a valid response")
        }
        Err(e) => {
            tracing::info!(%operation, %request_id, code = e.code, message = %e.message, "batch api refused a request");
            error_response(&e)
        }
    }
}

/// The header AWS services answer each request's id in.
const REQUEST_ID_HEADER: &str = "x-amzn-requestid";

fn error_response(e: &ApiError) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"__type": e.code, "message": e.message});
    Response::builder()
        .status(e.status)
        .header("content-type", "application/json")
        .header("x-amzn-ErrorType", e.code)
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

/// The operation a path names, run with its parsed input.
async fn route(
    ctx: &Context,
    who: &Principal,
    parts: &hyper::http::request::Parts,
    body: &[u8],
) -> ApiResult<Vec<u8>> {
    let (method, path) = (parts.method.as_str(), parts.uri.path());
    if let Some(operation) = logs_operation(parts) {
        return logs::route(ctx, who, operation, body).await;
    }
    if let Some(arn) = path.strip_prefix("/v1/tags/") {
        let arn = percent_encoding::percent_decode_str(arn)
            .decode_utf8()
            .map_err(|_| ApiError::client("resourceArn is not valid UTF-8"))?;
        return match method {
            "GET" => reply(tagging::list(ctx, who, &arn)?),
            "POST" => {
                let input: tagging::TagInput = parse(body)?;
                reply(tagging::change(ctx, who, &arn, tagging::Change::Add(input.tags)).await?)
            }
            "DELETE" => {
                let keys = tagging::tag_keys(parts.uri.query())?;
                reply(tagging::change(ctx, who, &arn, tagging::Change::Remove(keys)).await?)
            }
            _ => Err(ApiError::client(format!("{method} {path}: tags are GET, POST or DELETE"))),
        };
    }
    if method != "POST" {
        return Err(ApiError::client(format!(
            "{method} {path}: AWS Batch operations are POST /v1/<operation>"
        )));
    }
    match path.trim_end_matches('/') {
        "/v1/submitjob" => reply(jobs::submit(ctx, who, parse(body)?).await?),
        "/v1/describejobs" => reply(jobs::describe(ctx, who, parse(body)?)?),
        "/v1/listjobs" => reply(jobs::list(ctx, who, parse(body)?)?),
        "/v1/canceljob" => reply(jobs::stop(ctx, who, jobs::Stop::Cancel, parse(body)?).await?),
        "/v1/terminatejob" => reply(jobs::stop(ctx, who, jobs::Stop::Terminate, parse(body)?).await?),
        "/v1/registerjobdefinition" => reply(definitions::register(ctx, who, parse(body)?).await?),
        "/v1/describejobdefinitions" => reply(definitions::describe(ctx, who, parse(body)?)?),
        "/v1/deregisterjobdefinition" => reply(definitions::deregister(ctx, who, parse(body)?).await?),
        "/v1/describejobqueues" => reply(environments::queues(ctx, who, parse(body)?)?),
        "/v1/describecomputeenvironments" => {
            reply(environments::compute_environments(ctx, who, parse(body)?)?)
        }
        "/v1/createcomputeenvironment" => reply(admin::create_environment(ctx, who, parse(body)?).await?),
        "/v1/updatecomputeenvironment" => reply(admin::update_environment(ctx, who, parse(body)?).await?),
        "/v1/deletecomputeenvironment" => reply(admin::delete_environment(ctx, who, parse(body)?).await?),
        "/v1/createjobqueue" => reply(admin::create_queue(ctx, who, parse(body)?).await?),
        "/v1/updatejobqueue" => reply(admin::update_queue(ctx, who, parse(body)?).await?),
        "/v1/deletejobqueue" => reply(admin::delete_queue(ctx, who, parse(body)?).await?),
        other => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            format!("{other} is not an AWS Batch operation Barge serves (see the README for the list)"),
        )),
    }
}

/// The CloudWatch Logs operation a request names (`X-Amz-Target: Logs_20140328.<operation>`).
pub fn logs_operation(parts: &hyper::http::request::Parts) -> Option<&str> {
    let target = parts.headers.get("x-amz-target")?.to_str().ok()?;
    target.strip_prefix(logs::TARGET_PREFIX)
}

/// A request body as the operation's input; an empty body is an empty object.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    let body = if body.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { body };
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = match path.as_str() {
            "." | "" => format!("the request body is not valid input for this operation: {inner}"),
            _ => format!("{path}: {inner}"),
        };
        ApiError::client(message)
    })
}

fn reply<T: Serialize>(out: T) -> ApiResult<Vec<u8>> {
    serde_json::to_vec(&out).map_err(|e| ApiError::server(format!("cannot encode the answer: {e}")))
}

/// Epoch milliseconds, as AWS Batch gives times.
pub fn millis(t: &chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_that_are_not_the_input_are_refused_naming_the_field() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(rename_all = "camelCase")]
        #[allow(dead_code)]
        struct Input {
            job_name: Option<String>,
            array_properties: Option<Inner>,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Inner {
            size: Option<u32>,
        }
        let e = parse::<Input>(br#"{"arrayProperties": {"size": "ten"}}"#).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "ClientException"));
        assert!(e.message.contains("arrayProperties.size"), "{}", e.message);
        assert!(parse::<Input>(b"{not json").is_err());
        assert!(parse::<Input>(b"").unwrap().job_name.is_none());
    }

    /// Every operation, thrown random bytes and random JSON made of its field names: each
    /// answer is an output or an AWS error, never a panic (nothing exists in the stores, and
    /// the API server it would write to does not answer).
    #[test]
    fn random_bodies_get_an_answer_or_an_aws_error() {
        use proptest::prelude::*;
        const OPS: &[&str] = &[
            "/v1/submitjob",
            "/v1/describejobs",
            "/v1/listjobs",
            "/v1/canceljob",
            "/v1/terminatejob",
            "/v1/registerjobdefinition",
            "/v1/describejobdefinitions",
            "/v1/deregisterjobdefinition",
            "/v1/describejobqueues",
            "/v1/describecomputeenvironments",
            "/v1/createcomputeenvironment",
            "/v1/updatecomputeenvironment",
            "/v1/deletecomputeenvironment",
            "/v1/createjobqueue",
            "/v1/updatejobqueue",
            "/v1/deletejobqueue",
            "/v1/tags/arn%3Aaws%3Abatch%3Aus-east-1%3A123456789012%3Ajob%2Fx",
            "/v1/nosuchthing",
        ];
        const FIELDS: &[&str] = &[
            "jobName",
            "jobQueue",
            "jobDefinition",
            "jobDefinitionName",
            "type",
            "parameters",
            "containerOverrides",
            "containerProperties",
            "image",
            "command",
            "environment",
            "resourceRequirements",
            "value",
            "vcpus",
            "memory",
            "arrayProperties",
            "size",
            "dependsOn",
            "jobId",
            "retryStrategy",
            "attempts",
            "evaluateOnExit",
            "action",
            "timeout",
            "attemptDurationSeconds",
            "tags",
            "jobs",
            "jobStatus",
            "filters",
            "name",
            "values",
            "maxResults",
            "nextToken",
            "reason",
            "status",
            "jobQueues",
            "arrayJobId",
        ];
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            (-1e6f64..1e6).prop_map(serde_json::Value::from),
            "[a-zA-Z0-9:_*/-]{0,12}".prop_map(serde_json::Value::from),
            prop::sample::select(&["ACTIVE", "RUNNING", "container", "EXIT", "VCPU", "MEMORY", "N_TO_N"][..])
                .prop_map(serde_json::Value::from),
        ];
        let json = leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(prop::sample::select(FIELDS).prop_map(String::from), inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        });
        let body = prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            json.prop_map(|v| serde_json::to_vec(&v).unwrap()),
        ];
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let ctx = runtime.block_on(async {
            let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
            Context {
                client: Client::try_from(config).unwrap(),
                stores: Stores::empty(),
                arns: Arns { region: "us-east-1".into(), account_id: "123456789012".into() },
                credentials_namespace: "keys".into(),
                managed_provider: crate::api::compute_environment::Provider::Local,
                archive: None,
                retention_days: 0,
                limiter: None,
                requests_per_second: 0,
            }
        });
        let who =
            Principal { access_key_id: "K".into(), namespace: "ns".into(), queues: vec![], admin: false };
        let mut runner =
            proptest::test_runner::TestRunner::new(proptest::test_runner::Config::with_cases(512));
        runner
            .run(&(prop::sample::select(OPS), body), |(op, body)| {
                let (parts, ()) = hyper::Request::post(op).body(()).unwrap().into_parts();
                let answer = runtime.block_on(route(&ctx, &who, &parts, &body));
                if let Err(e) = answer {
                    prop_assert!(e.status.is_client_error() || e.status.is_server_error(), "{e:?}");
                    prop_assert!(!e.message.is_empty());
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn arns_name_and_are_read_back() {
        let arns = Arns { region: "eu-west-1".into(), account_id: "123456789012".into() };
        let arn = arns.of("job-queue", "bulk");
        assert_eq!(arn, "arn:aws:batch:eu-west-1:123456789012:job-queue/bulk");
        assert_eq!(arns.name("job-queue", &arn), "bulk");
        assert_eq!(arns.name("job-queue", "bulk"), "bulk");
        assert_eq!(arns.name("job-definition", "arn:aws:batch:r:1:job-definition/render:3"), "render:3");
    }
}
