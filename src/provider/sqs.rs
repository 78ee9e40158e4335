//! SQS queues Barge reads: the one EC2's instance warnings arrive on (an EventBridge rule
//! feeds it) and those of JobTriggers. Long-poll receive, batch delete, visibility extension,
//! and a send for dead letters.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, MessageAttributeValue,
};

use crate::ProviderError;

/// SQS returns at most ten messages a call, and deletes at most ten a batch.
const BATCH: usize = 10;

/// One message as received: its id, its receipt handle (to delete it) and its body.
#[derive(Clone, Debug)]
pub struct Message {
    pub id: String,
    pub receipt: String,
    pub body: String,
}

#[derive(Debug)]
pub struct SqsQueue {
    pub url: String,
    client: Client,
}

impl SqsQueue {
    /// A client for the queue at `url`, in the region its host names (`sqs.REGION.amazonaws.com`)
    /// or the AWS chain's; credentials and endpoint (`AWS_ENDPOINT_URL_SQS`) from the chain.
    pub async fn new(url: String) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = region_of(&url) {
            loader = loader.region(aws_config::Region::new(region));
        }
        let client = Client::new(&loader.load().await);
        SqsQueue { url, client }
    }

    /// A client for the queue at `url` in `region` (else the one its URL names, else the
    /// chain's) with `credentials` (else the chain's); the endpoint is the chain's.
    pub async fn with(
        url: String,
        region: Option<String>,
        credentials: Option<aws_credential_types::Credentials>,
    ) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = region.or_else(|| region_of(&url)) {
            loader = loader.region(aws_config::Region::new(region));
        }
        if let Some(c) = credentials {
            loader = loader.credentials_provider(c);
        }
        let client = Client::new(&loader.load().await);
        SqsQueue { url, client }
    }

    /// Waits up to `wait` (at most 20 s, SQS's longest poll) for messages.
    pub async fn receive(&self, wait: Duration) -> Result<Vec<Message>, ProviderError> {
        self.receive_some(wait, BATCH, None).await
    }

    /// Waits up to `wait` for at most `max` (1 to 10) messages, hidden from other readers for
    /// `visibility` (the queue's default without one).
    pub async fn receive_some(
        &self,
        wait: Duration,
        max: usize,
        visibility: Option<Duration>,
    ) -> Result<Vec<Message>, ProviderError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, BATCH) as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .set_visibility_timeout(visibility.map(|v| v.as_secs() as i32))
            .send()
            .await
            .map_err(|e| error("ReceiveMessage", e))?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| {
                Some(Message {
                    id: m.message_id().unwrap_or_default().to_string(),
                    receipt: m.receipt_handle()?.to_string(),
                    body: m.body().unwrap_or_default().to_string(),
                })
            })
            .collect())
    }

    /// Deletes messages by receipt handle, ten to a call.
    pub async fn delete(&self, receipts: &[String]) -> Result<(), ProviderError> {
        for chunk in receipts.chunks(BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .build()
                        .map_err(|e| ProviderError::other(format!("DeleteMessageBatch: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| error("DeleteMessageBatch", e))?;
            if let Some(failed) = out.failed().first() {
                return Err(ProviderError::other(format!(
                    "DeleteMessageBatch: {} of {} not deleted ({}: {})",
                    out.failed().len(),
                    chunk.len(),
                    failed.code(),
                    failed.message().unwrap_or_default()
                )));
            }
        }
        Ok(())
    }
}

impl SqsQueue {
    /// Keeps messages hidden for `visibility` more, ten to a call.
    pub async fn extend(&self, receipts: &[String], visibility: Duration) -> Result<(), ProviderError> {
        for chunk in receipts.chunks(BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .visibility_timeout(visibility.as_secs() as i32)
                        .build()
                        .map_err(|e| ProviderError::other(format!("ChangeMessageVisibilityBatch: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.client
                .change_message_visibility_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| error("ChangeMessageVisibilityBatch", e))?;
        }
        Ok(())
    }

    /// Sends `body` with string attributes.
    pub async fn send(&self, body: &str, attributes: &[(&str, &str)]) -> Result<(), ProviderError> {
        let mut request = self.client.send_message().queue_url(&self.url).message_body(body);
        for (name, value) in attributes {
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(*value)
                .build()
                .map_err(|e| ProviderError::other(format!("SendMessage: {e}")))?;
            request = request.message_attributes(*name, value);
        }
        request.send().await.map_err(|e| error("SendMessage", e))?;
        Ok(())
    }
}

/// The region in a queue URL such as `https://sqs.us-west-2.amazonaws.com/123456789012/q`.
fn region_of(url: &str) -> Option<String> {
    let host = url.split("://").nth(1)?.split(['/', ':']).next()?;
    let rest = host.strip_prefix("sqs.")?;
    let region = rest.split('.').next()?;
    (!region.is_empty() && rest[region.len()..].starts_with(".amazonaws.com")).then(|| region.to_string())
}

fn error<E, R>(op: &str, e: aws_sdk_sqs::error::SdkError<E, R>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let code = e.code().map(str::to_string);
    let message = format!("{op}: {}", e.message().map(str::to_string).unwrap_or_else(|| e.to_string()));
    match code.as_deref() {
        Some("AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist") => {
            ProviderError::Misconfigured(format!("{message} (is the queue URL right?)"))
        }
        Some("AccessDenied" | "AccessDeniedException") => ProviderError::Misconfigured(message),
        Some("ThrottlingException" | "RequestThrottled") => ProviderError::Throttled(message),
        _ => ProviderError::Other { message, source: Some(Box::new(e)) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_comes_from_an_aws_queue_url_and_not_from_a_test_endpoint() {
        assert_eq!(
            region_of("https://sqs.eu-west-1.amazonaws.com/123456789012/interruptions").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(region_of("https://sqs.cn-north-1.amazonaws.com.cn/1/q").as_deref(), Some("cn-north-1"));
        assert_eq!(region_of("http://127.0.0.1:5000/123456789012/interruptions"), None);
        assert_eq!(region_of("sqs.us-east-1.amazonaws.com/1/q"), None);
    }
}
