//! Reading the rest of an HTTP/2 request body after an early answer, so the client gets it.
//!
//! A handler that answers before the body has ended (413 from Content-Length, 415, a 413 after
//! `--max-body-bytes`) drops the body. hyper's h2 then resets the stream with RST_STREAM(NO_ERROR)
//! once the response is sent, which RFC 9113 §8.1 allows, but clients still uploading (curl: "Stream
//! error in HTTP/2 framing layer") report the reset instead of the response. Reading and discarding
//! the rest lets the client finish its upload and read the answer. HTTP/1.1 is left alone: there hyper
//! closes the connection after the response, and draining would make a client that sent
//! `Expect: 100-continue` upload the body we refuse.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

/// How much of a dropped body is still read and discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainBudget {
    /// Bytes of the whole body (read before the drop included); a body declared larger is not
    /// drained at all, one that turns out larger is dropped at this point.
    pub max_bytes: u64,
    /// The drain gives up this long after the drop.
    pub within: Duration,
}

/// A request body that, dropped before its end, reads and discards the rest in a task within its
/// [`DrainBudget`] (none: dropped as is).
pub struct DrainOnDrop<B: Body + Send + Unpin + 'static> {
    inner: Option<B>,
    read: u64,
    budget: Option<DrainBudget>,
}

impl<B: Body + Send + Unpin + 'static> DrainOnDrop<B> {
    pub fn new(inner: B, budget: Option<DrainBudget>) -> Self {
        Self {
            inner: Some(inner),
            read: 0,
            budget,
        }
    }
}

impl<B: Body + Send + Unpin + 'static> Body for DrainOnDrop<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.read += data.remaining() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl<B: Body + Send + Unpin + 'static> Drop for DrainOnDrop<B> {
    fn drop(&mut self) {
        let (Some(mut body), Some(budget)) = (self.inner.take(), self.budget) else {
            return;
        };
        let left = budget.max_bytes.saturating_sub(self.read);
        // A body declared larger than the budget would be cut off anyway: reset it now.
        if body.is_end_stream() || body.size_hint().lower() > left {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let discard = async {
                let mut discarded = 0u64;
                while discarded <= left {
                    match body.frame().await {
                        Some(Ok(frame)) => {
                            discarded += frame.data_ref().map_or(0, |d| d.remaining() as u64);
                        }
                        Some(Err(_)) | None => return,
                    }
                }
            };
            // Dropping the body when either bound is hit resets the stream, as without draining.
            let _ = tokio::time::timeout(budget.within, discard).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures::stream::{self, BoxStream};
    use http_body_util::StreamBody;
    use tokio::sync::mpsc;

    type Chunk = Result<Frame<Bytes>, std::convert::Infallible>;

    /// A body fed through a channel; the sender sees when the body is gone.
    fn channel_body() -> (mpsc::Sender<Chunk>, StreamBody<BoxStream<'static, Chunk>>) {
        let (tx, rx) = mpsc::channel(1);
        let chunks = stream::unfold(rx, |mut rx| async { rx.recv().await.map(|c| (c, rx)) });
        (tx, StreamBody::new(Box::pin(chunks)))
    }

    fn budget(max_bytes: u64) -> Option<DrainBudget> {
        Some(DrainBudget {
            max_bytes,
            within: Duration::from_secs(5),
        })
    }

    async fn send(tx: &mpsc::Sender<Chunk>, n: usize) -> bool {
        tx.send(Ok(Frame::data(Bytes::from(vec![0u8; n]))))
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_dropped_body_is_read_to_its_end() {
        let (tx, body) = channel_body();
        let mut body = DrainOnDrop::new(body, budget(100));
        assert!(send(&tx, 10).await);
        body.frame().await.unwrap().unwrap();
        drop(body);
        for _ in 0..8 {
            assert!(send(&tx, 10).await, "still read after the drop");
        }
    }

    #[tokio::test]
    async fn the_drain_stops_at_its_byte_budget() {
        let (tx, body) = channel_body();
        drop(DrainOnDrop::new(body, budget(25)));
        let mut sent = 0;
        while send(&tx, 10).await {
            sent += 1;
            assert!(sent < 10, "drained past its budget");
        }
        assert!(sent >= 3, "drained only {sent} chunks of 10 bytes");
    }

    #[tokio::test]
    async fn without_a_budget_the_body_is_dropped() {
        let (tx, body) = channel_body();
        drop(DrainOnDrop::new(body, None));
        assert!(tx.is_closed());
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_gives_up_after_its_time() {
        let (tx, body) = channel_body();
        drop(DrainOnDrop::new(body, budget(1_000)));
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(tx.is_closed(), "still draining a stalled body");
    }
}
