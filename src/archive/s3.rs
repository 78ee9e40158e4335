//! The archive's bucket: any S3-compatible store (S3, MinIO, moto), through the AWS SDK.
//! Writes are whole chunks (PutObject); reads list a prefix and get a chunk.

use aws_config::BehaviorVersion;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::Object;
use chrono::{DateTime, Utc};

use super::{Chunk, StreamId, decode, group_prefix, namespace_prefix};

/// Keys a listing returns at most a page (S3's own limit).
const LIST_PAGE: i32 = 1000;

/// Where the archive is: the bucket, a prefix inside it, and how to reach it.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub bucket: String,
    /// Prepended to every key (`logs/`, say); empty for the bucket's root.
    pub prefix: String,
    /// The bucket's region, else the AWS chain's.
    pub region: Option<String>,
    /// An S3-compatible endpoint (MinIO, moto), reached by path-style addresses.
    pub endpoint: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the log archive's bucket {bucket}: {operation} failed: {message}")]
    Sink { bucket: String, operation: &'static str, message: String },
    #[error("a chunk of the log archive is not UTF-8: {0}")]
    NotText(String),
}

/// One chunk as listed: what its name says, its key, and when it was written.
#[derive(Clone, Debug)]
pub struct Listed {
    pub chunk: Chunk,
    pub key: String,
    pub written: DateTime<Utc>,
    pub bytes: i64,
}

/// A stream as listed: its chunks in order.
#[derive(Clone, Debug)]
pub struct StreamListing {
    pub name: String,
    pub chunks: Vec<Listed>,
}

impl StreamListing {
    pub fn first_ms(&self) -> Option<i64> {
        self.chunks.iter().find(|c| c.chunk.lines > 0).map(|c| c.chunk.first_ms)
    }
    pub fn last_ms(&self) -> Option<i64> {
        self.chunks.iter().rev().find(|c| c.chunk.lines > 0).map(|c| c.chunk.last_ms)
    }
    pub fn created(&self) -> Option<DateTime<Utc>> {
        self.chunks.iter().map(|c| c.written).min()
    }
    pub fn last_written(&self) -> Option<DateTime<Utc>> {
        self.chunks.iter().map(|c| c.written).max()
    }
    pub fn bytes(&self) -> i64 {
        self.chunks.iter().map(|c| c.bytes).sum()
    }
}

#[derive(Clone, Debug)]
pub struct Bucket {
    client: Client,
    bucket: String,
    root: String,
}

impl Bucket {
    /// A client for the archive; credentials from the AWS chain.
    pub async fn new(settings: &Settings) -> Bucket {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &settings.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &settings.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let sdk = loader.load().await;
        let config = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(settings.endpoint.is_some())
            // Checksums only where S3 requires them: MinIO and moto versions differ in the
            // newer flexible ones.
            .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
            .build();
        let mut root = settings.prefix.clone();
        if !root.is_empty() && !root.ends_with('/') {
            root.push('/');
        }
        Bucket { client: Client::from_conf(config), bucket: settings.bucket.clone(), root }
    }

    pub fn name(&self) -> &str {
        &self.bucket
    }

    fn error<E: ProvideErrorMetadata + std::fmt::Debug>(&self, operation: &'static str, e: E) -> Error {
        let message = match (e.code(), e.message()) {
            (Some(code), Some(m)) => format!("{code}: {m}"),
            (Some(code), None) => code.to_string(),
            _ => format!("{e:?}"),
        };
        Error::Sink { bucket: self.bucket.clone(), operation, message }
    }

    /// Writes one chunk of a stream.
    pub async fn put(&self, stream: &StreamId, chunk: &Chunk, body: String) -> Result<(), Error> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(stream.key(&self.root, chunk))
            .content_type("text/plain; charset=utf-8")
            .body(ByteStream::from(body.into_bytes()))
            .send()
            .await
            .map_err(|e| self.error("PutObject", e.into_service_error()))?;
        Ok(())
    }

    /// A stream's chunks, in order (none if it does not exist).
    pub async fn chunks(&self, stream: &StreamId) -> Result<Vec<Listed>, Error> {
        let mut out = self.list(&stream.prefix(&self.root)).await?;
        out.sort_by_key(|(_, l)| l.chunk.seq);
        Ok(out.into_iter().map(|(_, l)| l).collect())
    }

    /// A chunk's body.
    pub async fn read(&self, key: &str) -> Result<String, Error> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.error("GetObject", e.into_service_error()))?;
        let bytes = out.body.collect().await.map_err(|e| Error::Sink {
            bucket: self.bucket.clone(),
            operation: "GetObject",
            message: e.to_string(),
        })?;
        String::from_utf8(bytes.into_bytes().to_vec()).map_err(|_| Error::NotText(key.to_string()))
    }

    /// The streams of a group whose names start with `prefix`, each with its chunks, in the
    /// order of their names (at most `limit` streams after `after`, and whether more follow).
    pub async fn streams(
        &self,
        namespace: &str,
        group: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<StreamListing>, bool), Error> {
        let base = group_prefix(&self.root, namespace, group);
        let start_after = after.map(|a| format!("{base}{}/\u{10FFFF}", super::encode(a)));
        let mut streams: Vec<StreamListing> = Vec::new();
        let mut token: Option<String> = None;
        let prefix = format!("{base}{}", super::encode(prefix));
        loop {
            let after = if token.is_none() { start_after.clone() } else { None };
            let out = self.page(&prefix, None, after, token.clone()).await?;
            for o in out.contents() {
                let Some(key) = o.key() else { continue };
                let Some((stream, chunk)) = key[base.len()..].split_once('/') else { continue };
                let Some(chunk) = Chunk::parse(chunk) else { continue };
                let name = decode(stream);
                if streams.last().is_none_or(|s| s.name != name) {
                    if streams.len() == limit {
                        return Ok((streams, true));
                    }
                    streams.push(StreamListing { name, chunks: Vec::new() });
                }
                streams.last_mut().expect("pushed").chunks.push(listed(o, chunk));
            }
            token = out.next_continuation_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        for s in &mut streams {
            s.chunks.sort_by_key(|c| c.chunk.seq);
        }
        Ok((streams, false))
    }

    /// The log groups a namespace has output in.
    pub async fn groups(&self, namespace: &str) -> Result<Vec<String>, Error> {
        let base = namespace_prefix(&self.root, namespace);
        let mut groups = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self.page(&base, Some("/"), None, token.clone()).await?;
            for p in out.common_prefixes() {
                if let Some(level) = p.prefix().and_then(|p| p.strip_prefix(&base)) {
                    groups.push(decode(level.trim_end_matches('/')));
                }
            }
            token = out.next_continuation_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        Ok(groups)
    }

    /// Removes every chunk written before `before`; how many went.
    pub async fn sweep(&self, before: DateTime<Utc>) -> Result<usize, Error> {
        let old: Vec<String> = self
            .list(&self.root)
            .await?
            .into_iter()
            .filter(|(_, l)| l.written < before)
            .map(|(k, _)| k)
            .collect();
        for key in &old {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| self.error("DeleteObject", e.into_service_error()))?;
        }
        Ok(old.len())
    }

    /// Every chunk under `prefix`, with its key.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Listed)>, Error> {
        let mut out_keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self.page(prefix, None, None, token.clone()).await?;
            for o in out.contents() {
                let Some(key) = o.key() else { continue };
                let Some(chunk) = key.rsplit('/').next().and_then(Chunk::parse) else { continue };
                out_keys.push((key.to_string(), listed(o, chunk)));
            }
            token = out.next_continuation_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        Ok(out_keys)
    }

    /// One page of a listing under `prefix`: keys, or with a delimiter the levels below it.
    async fn page(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        start_after: Option<String>,
        token: Option<String>,
    ) -> Result<ListObjectsV2Output, Error> {
        self.client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_delimiter(delimiter.map(str::to_string))
            .set_start_after(start_after)
            .set_continuation_token(token)
            .max_keys(LIST_PAGE)
            .send()
            .await
            .map_err(|e| self.error("ListObjectsV2", e.into_service_error()))
    }
}

/// A listed object that is a chunk.
fn listed(o: &Object, chunk: Chunk) -> Listed {
    let written = o.last_modified().and_then(|t| DateTime::from_timestamp_millis(t.to_millis().ok()?));
    Listed {
        chunk,
        key: o.key().unwrap_or_default().to_string(),
        written: written.unwrap_or_default(),
        bytes: o.size().unwrap_or(0),
    }
}
