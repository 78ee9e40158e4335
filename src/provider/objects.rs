//! Writes small objects to S3 with a JobTrigger's credentials: the index of a batch of
//! objects that an array job's children read.

use aws_config::BehaviorVersion;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;

use crate::ProviderError;

#[derive(Clone, Debug)]
pub struct ObjectWriter {
    client: Client,
}

impl ObjectWriter {
    /// A client in `region` (else the chain's) with `credentials` (else the chain's). An
    /// endpoint from the chain (`AWS_ENDPOINT_URL_S3`: MinIO, moto) is reached path-style.
    pub async fn new(region: Option<String>, credentials: Option<aws_credential_types::Credentials>) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = region {
            loader = loader.region(aws_config::Region::new(region));
        }
        if let Some(c) = credentials {
            loader = loader.credentials_provider(c);
        }
        let custom_endpoint =
            ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"].iter().any(|v| std::env::var_os(v).is_some());
        let sdk = loader.load().await;
        let config = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(custom_endpoint)
            .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
            .build();
        ObjectWriter { client: Client::from_conf(config) }
    }

    /// Writes `body` at `s3://bucket/key` (again, if it is there: the same batch writes the
    /// same index).
    pub async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: String,
        content_type: &str,
    ) -> Result<(), ProviderError> {
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body.into_bytes()))
            .send()
            .await
            .map_err(|e| {
                let e = e.into_service_error();
                let message = format!(
                    "PutObject s3://{bucket}/{key}: {}",
                    e.message().map(str::to_string).unwrap_or_else(|| e.to_string())
                );
                match e.code() {
                    Some("AccessDenied" | "NoSuchBucket") => ProviderError::Misconfigured(message),
                    _ => ProviderError::other(message),
                }
            })?;
        Ok(())
    }
}
