//! Who is asking: AWS Signature Version 4, checked against the keys `barge credentials`
//! issued. The expected signature is computed by the `aws-sigv4` crate over the request as
//! it arrived (the headers the client says it signed, the body) and compared in constant time.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use hyper::StatusCode;
use hyper::http::request::Parts;
use subtle::ConstantTimeEq;

use super::ApiError;

/// How far a request's `X-Amz-Date` may be from Barge's clock, as AWS allows.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);

/// A key Barge issued: what it may do, and its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// The one namespace the key acts in.
    pub namespace: String,
    /// The queues it may submit to and see; empty means every queue open to its namespace.
    pub queues: Vec<String>,
    /// Whether it may create, change and delete queues and compute environments.
    pub admin: bool,
}

/// The caller of a request whose signature checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub access_key_id: String,
    pub namespace: String,
    pub queues: Vec<String>,
    pub admin: bool,
}

impl Principal {
    /// Whether the key may use the queue at all (queues outside its list do not exist for it).
    pub fn may_use_queue(&self, queue: &str) -> bool {
        self.queues.is_empty() || self.queues.iter().any(|q| q == queue)
    }
}

fn denied(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, code, message)
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 …` header.
#[derive(Debug, PartialEq, Eq)]
struct Authorization<'a> {
    access_key_id: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, ApiError> {
    let incomplete = |what: &str| {
        denied(
            "IncompleteSignatureException",
            format!("the Authorization header is not an AWS Signature Version 4 header: {what}"),
        )
    };
    let rest = value
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| incomplete("it must start with AWS4-HMAC-SHA256"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',').map(str::trim) {
        match part.split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => {}
        }
    }
    let credential = credential.ok_or_else(|| incomplete("Credential= is missing"))?;
    let mut scope = credential.split('/');
    let (Some(access_key_id), Some(_date), Some(region), Some(service), Some("aws4_request"), None) =
        (scope.next(), scope.next(), scope.next(), scope.next(), scope.next(), scope.next())
    else {
        return Err(incomplete("Credential= must be KEY/DATE/REGION/SERVICE/aws4_request"));
    };
    Ok(Authorization {
        access_key_id,
        region,
        service,
        signed_headers: signed.ok_or_else(|| incomplete("SignedHeaders= is missing"))?.split(';').collect(),
        signature: signature.ok_or_else(|| incomplete("Signature= is missing"))?,
    })
}

/// `X-Amz-Date`'s basic ISO 8601 form, e.g. 20261202T101500Z.
fn parse_amz_date(value: &str) -> Option<SystemTime> {
    let t = chrono::NaiveDateTime::parse_from_str(value, "%Y%m%dT%H%M%SZ").ok()?;
    let secs = u64::try_from(t.and_utc().timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// The caller of a signed request, or the AWS error that refuses it.
pub fn verify(
    parts: &Parts,
    body: &[u8],
    keys: &[Credential],
    now: SystemTime,
) -> Result<Principal, ApiError> {
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let Some(authorization) = header("authorization") else {
        return Err(denied(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token: sign requests with AWS Signature Version 4, using a key from `barge credentials create`",
        ));
    };
    let auth = parse_authorization(authorization)?;
    // CloudWatch Logs' operations are signed for `logs`, AWS Batch's for `batch`.
    let service = if super::logs_operation(parts).is_some() { "logs" } else { "batch" };
    if auth.service != service {
        return Err(denied(
            "InvalidSignatureException",
            format!(
                "the request is signed for the service {:?}; this operation is {service}'s",
                auth.service
            ),
        ));
    }
    let date = header("x-amz-date").ok_or_else(|| {
        denied(
            "IncompleteSignatureException",
            "the X-Amz-Date header is missing (needed to check the signature)",
        )
    })?;
    let signed_at = parse_amz_date(date).ok_or_else(|| {
        denied(
            "IncompleteSignatureException",
            format!("X-Amz-Date {date:?} is not of the form 20261202T101500Z"),
        )
    })?;
    let skew = now.duration_since(signed_at).or_else(|e| Ok::<_, ()>(e.duration())).unwrap_or_default();
    if skew > MAX_CLOCK_SKEW {
        return Err(denied(
            "InvalidSignatureException",
            format!(
                "Signature expired: {date} is more than {} minutes from Barge's clock; check this machine's time",
                MAX_CLOCK_SKEW.as_secs() / 60
            ),
        ));
    }
    if header("x-amz-security-token").is_some() {
        return Err(denied(
            "UnrecognizedClientException",
            "the request carries a session token; Barge's keys have none (unset AWS_SESSION_TOKEN)",
        ));
    }
    let key = keys.iter().find(|k| k.access_key_id == auth.access_key_id).ok_or_else(|| {
        denied(
            "UnrecognizedClientException",
            format!(
                "The security token included in the request is invalid: Barge issued no key {} (or it was revoked); see `barge credentials list`",
                auth.access_key_id
            ),
        )
    })?;
    let expected = expected_signature(parts, body, &auth, key, signed_at)?;
    if !bool::from(expected.as_bytes().ct_eq(auth.signature.as_bytes())) {
        return Err(denied(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.",
        ));
    }
    Ok(Principal {
        access_key_id: key.access_key_id.clone(),
        namespace: key.namespace.clone(),
        queues: key.queues.clone(),
        admin: key.admin,
    })
}

/// The signature `key` gives the request, over exactly the headers the client signed.
fn expected_signature(
    parts: &Parts,
    body: &[u8],
    auth: &Authorization<'_>,
    key: &Credential,
    signed_at: SystemTime,
) -> Result<String, ApiError> {
    let host = parts.headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or("localhost");
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = format!("http://{host}{path}");
    // x-amz-date and the host are added by the signer itself.
    let headers: Vec<(&str, &str)> = auth
        .signed_headers
        .iter()
        .filter(|h| !matches!(**h, "x-amz-date" | "host"))
        .flat_map(|h| parts.headers.get_all(*h).iter().filter_map(move |v| Some((*h, v.to_str().ok()?))))
        .collect();
    let mut settings = SigningSettings::default();
    settings.excluded_headers = Some(Vec::new());
    let identity = Credentials::new(&key.access_key_id, &key.secret_access_key, None, None, "barge").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(auth.region)
        .name(auth.service)
        .time(signed_at)
        .settings(settings)
        .build()
        .map_err(|e| ApiError::server(format!("cannot check the signature: {e}")))?
        .into();
    let request =
        SignableRequest::new(parts.method.as_str(), uri, headers.into_iter(), SignableBody::Bytes(body))
            .map_err(|e| {
                denied("InvalidSignatureException", format!("the request cannot be signed as sent: {e}"))
            })?;
    let output = sign(request, &params).map_err(|e| denied("InvalidSignatureException", format!("{e}")))?;
    Ok(output.signature().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Credential {
        Credential {
            access_key_id: "BARGEEXAMPLEKEY00001".into(),
            secret_access_key: "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTAx".into(),
            namespace: "team-a".into(),
            queues: vec![],
            admin: false,
        }
    }

    /// A request signed the way an AWS SDK signs it.
    fn signed(body: &str, at: SystemTime, secret: &str) -> (Parts, Vec<u8>) {
        let mut req = hyper::Request::builder()
            .method("POST")
            .uri("http://barge.example:8443/v1/submitjob")
            .header("host", "barge.example:8443")
            .header("content-type", "application/json")
            .body(body.as_bytes().to_vec())
            .unwrap();
        let identity = Credentials::new("BARGEEXAMPLEKEY00001", secret, None, None, "test").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("batch")
            .time(at)
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let headers: Vec<(&str, &str)> =
            req.headers().iter().map(|(k, v)| (k.as_str(), v.to_str().unwrap())).collect();
        let signable = SignableRequest::new(
            "POST",
            "http://barge.example:8443/v1/submitjob",
            headers.into_iter(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        instructions.apply_to_request_http1x(&mut req);
        let (parts, body) = req.into_parts();
        (parts, body)
    }

    #[test]
    fn a_request_signed_with_the_issued_secret_is_its_keys() {
        let now = SystemTime::now();
        let (parts, body) = signed(r#"{"jobName":"a"}"#, now, &key().secret_access_key);
        let who = verify(&parts, &body, &[key()], now).unwrap();
        assert_eq!(who.namespace, "team-a");
    }

    #[test]
    fn tampering_a_wrong_secret_an_unknown_key_and_an_old_date_are_refused() {
        let now = SystemTime::now();
        let (parts, _) = signed(r#"{"jobName":"a"}"#, now, &key().secret_access_key);
        let e = verify(&parts, br#"{"jobName":"b"}"#, &[key()], now).unwrap_err();
        assert_eq!(e.code, "InvalidSignatureException");

        let (parts, body) = signed(r#"{}"#, now, "not-the-secret");
        assert_eq!(verify(&parts, &body, &[key()], now).unwrap_err().code, "InvalidSignatureException");

        let (parts, body) = signed(r#"{}"#, now, &key().secret_access_key);
        assert_eq!(verify(&parts, &body, &[], now).unwrap_err().code, "UnrecognizedClientException");

        let then = now - Duration::from_secs(16 * 60);
        let (parts, body) = signed(r#"{}"#, then, &key().secret_access_key);
        let e = verify(&parts, &body, &[key()], now).unwrap_err();
        assert!(e.message.starts_with("Signature expired"), "{e:?}");
        // Within the window, either way, is fine.
        let (parts, body) = signed(r#"{}"#, now + Duration::from_secs(600), &key().secret_access_key);
        verify(&parts, &body, &[key()], now).unwrap();
    }

    #[test]
    fn an_unsigned_request_is_told_how_to_sign() {
        let (mut parts, body) = signed("{}", SystemTime::now(), "x");
        parts.headers.remove("authorization");
        let e = verify(&parts, &body, &[key()], SystemTime::now()).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::FORBIDDEN, "MissingAuthenticationTokenException"));
        assert!(e.message.contains("barge credentials create"));
    }

    #[test]
    fn authorization_headers_are_read_in_full_or_refused() {
        let a = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AK/20261202/eu-west-1/batch/aws4_request, SignedHeaders=host;x-amz-date, Signature=ab12",
        )
        .unwrap();
        assert_eq!((a.access_key_id, a.region, a.service, a.signature), ("AK", "eu-west-1", "batch", "ab12"));
        assert_eq!(a.signed_headers, ["host", "x-amz-date"]);
        for bad in [
            "Basic abc",
            "AWS4-HMAC-SHA256 Credential=AK/x, SignedHeaders=host, Signature=1",
            "AWS4-HMAC-SHA256 SignedHeaders=host",
        ] {
            assert_eq!(parse_authorization(bad).unwrap_err().code, "IncompleteSignatureException", "{bad}");
        }
    }
}
