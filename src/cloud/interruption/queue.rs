//! The interruption queue (SQS, fed by EventBridge rules): long-polled by the leader, each
//! message handed to the provisioner and deleted only once it was handled (or found malformed,
//! which no retry would fix). A stand-in for tests is not needed: moto serves SQS.

use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::ProvideErrorMetadata;

/// SQS's longest long poll.
const WAIT: i32 = 20;
/// Messages per receive (SQS's maximum).
const BATCH: i32 = 10;
/// How long a received message stays invisible to other receivers while it is handled.
const VISIBILITY: i32 = 30;

/// One received message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub receipt_handle: String,
    pub body: String,
}

/// The queue, by URL.
#[derive(Clone, Debug)]
pub struct Queue {
    client: Client,
    url: String,
}

/// An SQS client from the standard chain (the same HTTP client and region as EC2's).
pub async fn client_from_env(region: Option<&str>) -> Client {
    let mut loader = crate::cloud::ec2::config_loader();
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_owned()));
    }
    Client::new(&loader.load().await)
}

fn describe<E: ProvideErrorMetadata + std::fmt::Debug>(call: &str, e: &E) -> String {
    format!(
        "SQS {call}: {}: {}",
        e.code().unwrap_or("error"),
        e.message().unwrap_or("no message")
    )
}

impl Queue {
    /// `name_or_url`: a queue URL (`https://…`) or a name in the client's region and account.
    pub async fn new(client: Client, name_or_url: &str) -> Result<Self, String> {
        let url = if name_or_url.starts_with("https://") || name_or_url.starts_with("http://") {
            name_or_url.to_owned()
        } else {
            client
                .get_queue_url()
                .queue_name(name_or_url)
                .send()
                .await
                .map_err(|e| describe("GetQueueUrl", &e))?
                .queue_url
                .ok_or_else(|| format!("SQS GetQueueUrl: no URL for queue {name_or_url:?}"))?
        };
        Ok(Self { client, url })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Wait up to 20 s for up to 10 messages.
    pub async fn receive(&self) -> Result<Vec<Received>, String> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(BATCH)
            .wait_time_seconds(WAIT)
            .visibility_timeout(VISIBILITY)
            .send()
            .await
            .map_err(|e| describe("ReceiveMessage", &e))?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                Some(Received {
                    receipt_handle: m.receipt_handle?,
                    body: m.body.unwrap_or_default(),
                })
            })
            .collect())
    }

    pub async fn delete(&self, receipt_handle: &str) -> Result<(), String> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .send()
            .await
            .map_err(|e| describe("DeleteMessage", &e))?;
        Ok(())
    }

    /// The pause after a failed receive before the next.
    pub fn retry_after() -> Duration {
        Duration::from_secs(5)
    }
}
