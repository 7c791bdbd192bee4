//! The HTTPS accept loop: rustls handshake, HTTP/1.1 or HTTP/2 by what the client speaks, a bound on
//! open connections, idle connections closed, graceful drain.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::Response;
use futures::future::BoxFuture;
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::Limits;
use super::drain::{DrainBudget, DrainOnDrop};
use crate::metrics::{ConnectionClose, ConnectionResult, Metrics};
use crate::tls::server::VerifiedClient;

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP/2 body answered early is still read, discarded, up to this many times `--max-body-bytes`
/// (see [`super::drain`]).
const DRAIN_BODY_FACTOR: u64 = 4;

/// Serve `app` over TLS on `listener` until `shutdown`, then stop accepting, let in-flight requests
/// finish (HTTP/2 clients get GOAWAY, HTTP/1.1 connections close after their current response), and
/// return once all connections are closed or `drain_timeout` has passed (the rest are dropped).
///
/// At most `limits.max_connections` are open at once (handshakes included). One more is accepted
/// and closed at once rather than left in the listen backlog: its client fails fast instead of
/// spending its whole timeout on a TLS handshake nobody answers (the apiserver retries a webhook
/// call whose connection closed, possibly on another replica), and the backlog never fills up.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    shutdown: CancellationToken,
    drain_timeout: Duration,
    limits: Limits,
    metrics: Metrics,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(Duration::from_secs(30));
    // Every open connection holds a permit, so having them all back means every connection closed.
    let slots = limits.max_connections.clamp(1, u32::MAX as usize);
    let permits = Arc::new(Semaphore::new(slots));
    let edge = Arc::new(Edge {
        acceptor: TlsAcceptor::from(tls),
        builder,
        app,
        limits,
        metrics,
        shutdown: shutdown.clone(),
        force_close: CancellationToken::new(),
    });
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, max_connections = slots, "connection limit reached; closing");
            edge.metrics
                .connection_accepted(ConnectionResult::RejectedFull);
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(edge.clone().serve_connection(tcp, peer, permit));
    }
    drop(listener);
    let open = slots - permits.available_permits();
    tracing::info!(
        open_connections = open,
        "stopped accepting; draining in-flight requests"
    );
    let all_closed = permits.acquire_many(slots as u32);
    tokio::select! {
        _ = all_closed => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(drain_timeout) => {
            tracing::warn!(?drain_timeout, "drain timed out; closing remaining connections");
            edge.force_close.cancel();
        }
    }
}

/// What every connection of one listener shares.
struct Edge {
    acceptor: TlsAcceptor,
    builder: auto::Builder<TokioExecutor>,
    app: Router,
    limits: Limits,
    metrics: Metrics,
    /// Close gracefully: stop taking requests, finish those in flight.
    shutdown: CancellationToken,
    /// The drain ran out of time: drop the connection.
    force_close: CancellationToken,
}

impl Edge {
    /// Handshake, then serve HTTP until the client leaves, the connection has been idle for
    /// `idle_timeout`, or the server shuts down. `permit` is the connection's slot.
    async fn serve_connection(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        permit: OwnedSemaphorePermit,
    ) {
        let _open = self.metrics.connection_opened();
        // Declared after the gauge's guard, so the slot is free by the time the gauge falls.
        let _slot = permit;
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp)).await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                self.metrics.connection_accepted(ConnectionResult::TlsError);
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                self.metrics
                    .connection_accepted(ConnectionResult::HandshakeTimeout);
                return;
            }
        };
        self.metrics.connection_accepted(ConnectionResult::Served);
        let activity = Activity::default();
        let service = ConnectionService {
            app: self.app.clone(),
            // rustls verified any certificate the client presented (or failed the handshake).
            verified: stream
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|certs| !certs.is_empty()),
            activity: activity.clone(),
            drain: DrainBudget {
                max_bytes: (self.limits.max_body_bytes as u64).saturating_mul(DRAIN_BODY_FACTOR),
                within: self.limits.body_read_timeout,
            },
        };
        let conn = self.builder.serve_connection(TokioIo::new(stream), service);
        let mut conn = std::pin::pin!(conn);
        let idle = activity.idle_for(self.limits.idle_timeout);
        let mut idle = std::pin::pin!(idle);
        // Set once we close it gracefully; the connection then ends when its last response is out.
        let mut closing = None;
        let result = loop {
            tokio::select! {
                result = conn.as_mut() => break result,
                _ = &mut idle, if closing.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    closing = Some(ConnectionClose::Idle);
                }
                _ = self.shutdown.cancelled(), if closing.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    closing = Some(ConnectionClose::Shutdown);
                }
                _ = self.force_close.cancelled() => {
                    self.metrics.connection_closed(ConnectionClose::DrainTimeout);
                    return;
                }
            }
        };
        let reason = match (closing, result) {
            (Some(reason), _) => reason,
            (None, Ok(())) => ConnectionClose::Client,
            (None, Err(e)) if is_header_timeout(&*e) => ConnectionClose::HeaderTimeout,
            (None, Err(e)) => {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
                ConnectionClose::Error
            }
        };
        self.metrics.connection_closed(reason);
    }
}

/// hyper's own timeout on a connection: the HTTP/1.1 request head did not arrive in time.
fn is_header_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_timeout)
}

/// The router as one connection serves it: requests from a client that presented a verified
/// certificate are marked, requests in flight are counted (for the idle timeout), and HTTP/2 bodies
/// answered early are drained.
#[derive(Clone)]
struct ConnectionService {
    app: Router,
    verified: bool,
    activity: Activity,
    drain: DrainBudget,
}

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        if self.verified {
            request.extensions_mut().insert(VerifiedClient);
        }
        let drain = (request.version() == http::Version::HTTP_2).then_some(self.drain);
        let request = request.map(|body| DrainOnDrop::new(body, drain));
        let in_flight = self.activity.start();
        let response = self.app.clone().oneshot(request);
        Box::pin(async move {
            let response = response.await;
            drop(in_flight);
            response
        })
    }
}

/// How many requests one connection has in flight.
#[derive(Clone, Default)]
struct Activity(Arc<watch::Sender<usize>>);

impl Activity {
    /// A request started; it ends when the guard is dropped.
    fn start(&self) -> InFlight {
        self.0.send_modify(|n| *n += 1);
        InFlight(self.clone())
    }

    /// Resolves once no request has been in flight for `idle`.
    async fn idle_for(&self, idle: Duration) {
        let mut in_flight = self.0.subscribe();
        loop {
            // Fails only once the sender is gone, and `self` holds it.
            let _ = in_flight.wait_for(|&n| n == 0).await;
            // Any start or end of a request since then restarts the wait.
            if tokio::time::timeout(idle, in_flight.changed())
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// One request in flight on its connection.
struct InFlight(Activity);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.0.send_modify(|n| *n -= 1);
    }
}
