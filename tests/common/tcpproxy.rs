//! A round-robin TCP proxy: one address in front of several backends, as a Service puts one
//! name in front of several webhook replicas. Raw TCP is forwarded (TLS passes through), and
//! each new connection goes to the next backend; a backend that refuses the connection is
//! skipped for the next one. In front of the real kube-apiserver it is also a fault proxy: shut
//! down, it cuts every open connection and refuses new ones (the API is unreachable), and a new
//! one on the same address brings the API back.
//!
//! ```ignore
//! let proxy = RoundRobin::start(vec![a, b]).await?;
//! let url = format!("https://localhost:{}/validate", proxy.addr().port());
//! proxy.set_backends(vec![a]); // b was killed: stop sending new connections to it
//! proxy.shutdown().await;
//! ```

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a connection attempt to one backend may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts round-robin proxies (see [`RoundRobin::start`]).
#[derive(Debug)]
pub struct RoundRobin;

struct Shared {
    backends: Mutex<Vec<SocketAddr>>,
    next: AtomicUsize,
    /// Connections forwarded, per backend.
    counts: Mutex<HashMap<SocketAddr, u64>>,
}

/// A running proxy. Dropping it stops it (open connections are cut).
pub struct ProxyHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl RoundRobin {
    /// Listen on an ephemeral port of 127.0.0.1 and forward each new connection to the next
    /// of `backends`.
    pub async fn start(backends: Vec<SocketAddr>) -> io::Result<ProxyHandle> {
        Self::start_on("127.0.0.1:0", backends).await
    }

    /// The same, on a given address.
    pub async fn start_on(
        addr: impl tokio::net::ToSocketAddrs,
        backends: Vec<SocketAddr>,
    ) -> io::Result<ProxyHandle> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            backends: Mutex::new(backends),
            next: AtomicUsize::new(0),
            counts: Mutex::new(HashMap::new()),
        });
        let (stop, _) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared.clone(), stop.subscribe()));
        Ok(ProxyHandle {
            addr,
            shared,
            stop,
            task: Mutex::new(Some(task)),
        })
    }
}

impl ProxyHandle {
    /// The proxy's address (127.0.0.1:PORT).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replace the backends. Connections already open stay where they are.
    pub fn set_backends(&self, backends: Vec<SocketAddr>) {
        *self
            .shared
            .backends
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = backends;
    }

    /// The current backends.
    pub fn backends(&self) -> Vec<SocketAddr> {
        self.shared
            .backends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many connections were forwarded to each backend so far.
    pub fn connections(&self) -> HashMap<SocketAddr, u64> {
        self.shared
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stop accepting, cut the open connections and wait for the accept loop to end.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            a = listener.accept() => a,
        };
        let Ok((client, _)) = accepted else {
            // Out of file descriptors and the like: back off a little.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = client.set_nodelay(true);
        let shared = shared.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let Some(upstream) = connect(&shared).await else {
                return; // every backend refused: the client sees the connection close
            };
            let (mut client, mut upstream) = (client, upstream);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    }
}

/// Connect to the next backend in turn, trying the following ones if it fails.
async fn connect(shared: &Shared) -> Option<TcpStream> {
    let backends = shared
        .backends
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if backends.is_empty() {
        return None;
    }
    let start = shared.next.fetch_add(1, Ordering::Relaxed);
    for i in 0..backends.len() {
        let addr = backends[(start + i) % backends.len()];
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                *shared
                    .counts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(addr)
                    .or_default() += 1;
                return Some(s);
            }
            Ok(Err(e)) => {
                tracing::debug!(%addr, error = %e, "proxy: backend refused; trying the next")
            }
            Err(_) => tracing::debug!(%addr, "proxy: backend connect timed out; trying the next"),
        }
    }
    None
}
