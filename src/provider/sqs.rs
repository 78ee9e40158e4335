//! The SQS queue EC2's instance warnings arrive on (an EventBridge rule feeds it): long-poll
//! receive and batch delete, nothing else.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;

use crate::ProviderError;

/// SQS returns at most ten messages a call, and deletes at most ten a batch.
const BATCH: usize = 10;

/// One message as received: its receipt handle (to delete it) and its body.
#[derive(Clone, Debug)]
pub struct Message {
    pub receipt: String,
    pub body: String,
}

#[derive(Debug)]
pub struct NoticeQueue {
    pub url: String,
    client: Client,
}

impl NoticeQueue {
    /// A client for the queue at `url`, in the region its host names (`sqs.REGION.amazonaws.com`)
    /// or the AWS chain's; credentials and endpoint (`AWS_ENDPOINT_URL_SQS`) from the chain.
    pub async fn new(url: String) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = region_of(&url) {
            loader = loader.region(aws_config::Region::new(region));
        }
        let client = Client::new(&loader.load().await);
        NoticeQueue { url, client }
    }

    /// Waits up to `wait` (at most 20 s, SQS's longest poll) for messages.
    pub async fn receive(&self, wait: Duration) -> Result<Vec<Message>, ProviderError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(BATCH as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .send()
            .await
            .map_err(|e| error("ReceiveMessage", e))?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| {
                Some(Message {
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
            ProviderError::Misconfigured(format!("{message} (is the interruption queue URL right?)"))
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
