//! The HTTPS edge of the real `nodewright serve` binary, driven with raw TLS, HTTP/1.1 and HTTP/2
//! clients: an oversized HTTP/2 upload gets a readable 413, idle connections are closed, and
//! connections beyond `--max-connections` are refused.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

#[macro_use]
mod common;
use common::{Server, metric_value};

const REPLICASET_POD: &str = include_str!(
    "data/fixtures/admissionreview_v1_pod_create_replicaset__salesforce_generic-sidecar-injector.json"
);

/// A TLS connection to `server` offering only `alpn`.
async fn connect(
    server: &Server,
    ca_pem: &str,
    alpn: &[u8],
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(server.https.trim_start_matches("https://")).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// An HTTP/2 connection; the returned handle resolves when the server has closed it.
async fn h2_connect(
    server: &Server,
    ca_pem: &str,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tls = connect(server, ca_pem, b"h2").await.unwrap();
    let (send, connection) = h2::client::handshake(tls).await.unwrap();
    (send, tokio::spawn(connection))
}

/// POST `body` to `path` over `h2`, the whole body first (the way curl uploads), then read the
/// answer: (status, JSON body).
async fn h2_post(h2: &mut h2::client::SendRequest<Bytes>, path: &str, body: &[u8]) -> (u16, Value) {
    let request = http::Request::post(format!("https://localhost{path}"))
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(())
        .unwrap();
    let ready = h2.clone().ready().await.expect("connection open");
    *h2 = ready;
    let (response, mut upload) = h2.send_request(request, body.is_empty()).unwrap();
    let mut left = body;
    while !left.is_empty() {
        upload.reserve_capacity(left.len().min(64 * 1024));
        let granted = poll_fn(|cx| upload.poll_capacity(cx))
            .await
            .expect("the stream stays open while the client uploads")
            .expect("the stream is not reset while the client uploads");
        let (chunk, rest) = left.split_at(granted.min(left.len()));
        upload
            .send_data(Bytes::copy_from_slice(chunk), rest.is_empty())
            .expect("the stream is not reset while the client uploads");
        left = rest;
    }
    let response = response.await.expect("a response");
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("the response body arrives whole");
        body.flow_control().release_capacity(chunk.len()).unwrap();
        bytes.extend_from_slice(&chunk);
    }
    (status, serde_json::from_slice(&bytes).expect("a JSON body"))
}

/// The server closed the HTTP/2 connection with GOAWAY(NO_ERROR), not a protocol error. The client
/// may still be writing when the server's close arrives (broken pipe, reset): that is not one.
fn assert_closed_without_protocol_error(closed: Result<(), h2::Error>) {
    if let Err(e) = closed {
        assert!(
            e.is_io() || (e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR)),
            "closed with an error: {e}"
        );
    }
}

async fn metric(server: &Server, series: &str) -> f64 {
    metric_value(&server.metrics().await, series)
}

/// curl uploads the whole body before it reads the answer. A 413 sent while it is still uploading
/// must not reset the stream under it (curl: "Stream error in HTTP/2 framing layer", no status).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_uploading_too_much_reads_the_413() {
    let (server, ca, _dir) = Server::self_signed(&["--max-body-bytes", "1048576"]);
    let (mut h2, _connection) = h2_connect(&server, &ca).await;
    // Refused from Content-Length before a byte of the body is read.
    let (status, body) = h2_post(&mut h2, "/mutate", &vec![b' '; 3 * 1024 * 1024]).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "RequestEntityTooLarge");
    // The connection serves the next request.
    let (status, body) = h2_post(&mut h2, "/mutate", REPLICASET_POD.as_bytes()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        metric(
            &server,
            r#"nodewright_request_body_errors_total{kind="too_large"}"#
        )
        .await,
        1.0
    );
}

/// Without Content-Length the limit is found while reading; the rest is drained just the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_upload_without_length_that_passes_the_limit_reads_the_413() {
    let (server, ca, _dir) = Server::self_signed(&["--max-body-bytes", "1048576"]);
    let (h2, _connection) = h2_connect(&server, &ca).await;
    let request = http::Request::post("https://localhost/validate")
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let mut h2 = h2.ready().await.unwrap();
    let (response, mut upload) = h2.send_request(request, false).unwrap();
    let mut left = 3 * 1024 * 1024;
    while left > 0 {
        upload.reserve_capacity(left.min(64 * 1024));
        let granted = poll_fn(|cx| upload.poll_capacity(cx))
            .await
            .expect("the stream stays open while the client uploads")
            .expect("the stream is not reset while the client uploads");
        let n = granted.min(left);
        upload
            .send_data(Bytes::from(vec![b' '; n]), n == left)
            .expect("the stream is not reset while the client uploads");
        left -= n;
    }
    let response = response.await.expect("a response");
    assert_eq!(response.status(), 413);
}

/// An HTTP/2 connection with nothing in flight for `--idle-timeout` gets GOAWAY and is closed; one
/// with a request in flight is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed() {
    let idle = Duration::from_millis(1000);
    let (server, ca, _dir) = Server::self_signed(&["--idle-timeout", "1s"]);
    let (mut h2, connection) = h2_connect(&server, &ca).await;

    // A body that takes twice the idle timeout to arrive: the request is in flight all along.
    let request = http::Request::post("https://localhost/mutate")
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    h2 = h2.ready().await.unwrap();
    let (response, mut upload) = h2.send_request(request, false).unwrap();
    let (head, tail) = REPLICASET_POD.as_bytes().split_at(10);
    upload
        .send_data(Bytes::copy_from_slice(head), false)
        .unwrap();
    tokio::time::sleep(2 * idle).await;
    upload
        .send_data(Bytes::copy_from_slice(tail), true)
        .unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    // The connection was not closed under the slow request: it takes another one.
    let asked = Instant::now();
    let (status, _) = h2_post(&mut h2, "/mutate", REPLICASET_POD.as_bytes()).await;
    assert_eq!(status, 200);

    let closed = tokio::time::timeout(Duration::from_secs(15), connection)
        .await
        .expect("the server closes an idle connection");
    assert_closed_without_protocol_error(closed.unwrap());
    // The server's idle time starts after it received that request.
    assert!(asked.elapsed() >= idle, "closed before it was idle");
    eventually!(
        server,
        "the close is counted as idle",
        metric(
            &server,
            r#"nodewright_https_connections_closed_total{reason="idle"}"#
        )
        .await
            == 1.0
    );
}

/// An HTTP/1.1 keep-alive connection is closed once idle too (with the head timeout set long, only
/// the idle timeout can close it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http1_connection_is_closed() {
    let (server, ca, _dir) =
        Server::self_signed(&["--idle-timeout", "200ms", "--header-read-timeout", "60s"]);
    let mut tls = connect(&server, &ca, b"http/1.1").await.unwrap();
    tls.write_all(b"GET /nothing HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), tls.read_to_end(&mut received))
        .await
        .expect("the server closes an idle connection")
        .ok();
    let received = String::from_utf8_lossy(&received);
    assert!(received.starts_with("HTTP/1.1 404"), "{received}");
    assert!(
        !received.contains("connection: close"),
        "closed for idleness, not by the response: {received}"
    );
}

/// With `--max-connections 1`, a second connection is closed while the first is open, and served
/// once the first has gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed() {
    let (server, ca, _dir) = Server::self_signed(&["--max-connections", "1"]);
    let (mut h2, connection) = h2_connect(&server, &ca).await;
    let (status, _) = h2_post(&mut h2, "/mutate", REPLICASET_POD.as_bytes()).await;
    assert_eq!(status, 200);

    assert!(
        connect(&server, &ca, b"h2").await.is_err(),
        "a second connection completes its TLS handshake"
    );
    assert_eq!(
        metric(
            &server,
            r#"nodewright_https_connections_accepted_total{result="rejected_full"}"#
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(&server, "nodewright_https_connections_open").await,
        1.0
    );
    assert_eq!(
        metric(
            &server,
            r#"nodewright_https_connections_accepted_total{result="served"}"#
        )
        .await,
        1.0
    );

    drop(h2);
    connection.await.unwrap().unwrap();
    eventually!(
        server,
        "the first connection's slot is free",
        metric(&server, "nodewright_https_connections_open").await == 0.0
    );
    let (mut h2, _connection) = h2_connect(&server, &ca).await;
    let (status, _) = h2_post(&mut h2, "/mutate", REPLICASET_POD.as_bytes()).await;
    assert_eq!(status, 200);
    // The client closed the first one; whether hyper saw a clean close depends on whether the TLS
    // close_notify arrived, which h2's client does not wait for.
    let text = server.metrics().await;
    let closed_by = |reason: &str| {
        metric_value(
            &text,
            &format!(r#"nodewright_https_connections_closed_total{{reason="{reason}"}}"#),
        )
    };
    assert_eq!(closed_by("client") + closed_by("error"), 1.0, "{text}");
}

/// On SIGTERM an open HTTP/2 connection with nothing in flight gets GOAWAY at once, so the process
/// exits well before `--shutdown-timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_open_connections_gracefully() {
    let (mut server, ca, _dir) = Server::self_signed(&["--shutdown-timeout", "60s"]);
    let (mut h2, connection) = h2_connect(&server, &ca).await;
    let (status, _) = h2_post(&mut h2, "/mutate", REPLICASET_POD.as_bytes()).await;
    assert_eq!(status, 200);
    server.sigterm();
    let closed = tokio::time::timeout(Duration::from_secs(15), connection)
        .await
        .expect("the server closes the connection on SIGTERM");
    assert_closed_without_protocol_error(closed.unwrap());
    let status = server.wait_exit(Duration::from_secs(15));
    assert!(
        status.success(),
        "exit status {status:?}: {}",
        server.logs()
    );
}
