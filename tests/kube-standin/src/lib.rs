//! `kube-standin`: an in-memory stand-in for kube-apiserver, for nodewright's tests.
//!
//! It speaks the Kubernetes REST wire format (JSON over plain HTTP/1.1 or h2c) with the
//! semantics clients rely on: one global resourceVersion, optimistic concurrency (409
//! Conflict), watches with history replay, bookmarks and 410 Expired, graceful pod deletion,
//! finalizers, CRDs serving their custom resources, and `Status` error bodies. Objects are
//! stored as JSON, so any kind round-trips unchanged.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let standin = kube_standin::StandIn::start("127.0.0.1:0").await?;
//! let kubeconfig = std::env::temp_dir().join("standin.kubeconfig");
//! standin.kubeconfig(&kubeconfig)?;
//! // KUBECONFIG=<that file> now reaches it through kube-rs's Config::infer().
//! standin.faults().update(|f| f.latency_ms = 20);
//! standin.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod access;
mod admission;
mod api;
mod faults;
pub mod proxy;
mod selector;
mod store;
mod util;

pub use faults::{FaultControl, Faults};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use store::Store;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// State shared by every request.
pub(crate) struct App {
    store: Mutex<Store>,
    faults: FaultControl,
    pub(crate) admission: admission::Admission,
    bookmark_interval: Duration,
    pub(crate) watches_started: AtomicU64,
    pub(crate) watches_expired: AtomicU64,
    /// Every resource request, by bearer token.
    pub(crate) access: Mutex<std::collections::HashSet<(Option<String>, access::Access)>>,
}

/// Counters a test can check (did the client really re-watch, get a 410?).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Watch requests answered with a stream.
    pub watches_started: u64,
    /// Watch requests answered with a 410 Expired event (resourceVersion too old).
    pub watches_expired: u64,
}

impl App {
    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Builder for a stand-in server.
#[derive(Debug, Clone)]
pub struct StandIn {
    history_limit: usize,
    bookmark_interval: Duration,
    webhook_connection_reuse: bool,
}

impl Default for StandIn {
    fn default() -> Self {
        Self {
            history_limit: 10_000,
            bookmark_interval: Duration::from_secs(1),
            webhook_connection_reuse: true,
        }
    }
}

impl StandIn {
    /// Start a stand-in with the defaults on `addr` (`127.0.0.1:0` for an ephemeral port).
    pub async fn start(addr: impl ToSocketAddrs) -> std::io::Result<Handle> {
        Self::default().serve(addr).await
    }

    pub fn builder() -> Self {
        Self::default()
    }

    /// How many write events are kept for watches to replay (default 10,000). A watch from
    /// a resourceVersion older than the oldest retained event gets 410 Expired.
    pub fn history_limit(mut self, n: usize) -> Self {
        self.history_limit = n;
        self
    }

    /// How often watches that asked for bookmarks get one (default 1 s).
    pub fn bookmark_interval(mut self, d: Duration) -> Self {
        self.bookmark_interval = d;
        self
    }

    /// Whether admission webhook calls reuse pooled connections (default true: one HTTP
    /// client per CA bundle, HTTP/2 multiplexed as kube-apiserver does). With false every
    /// call opens a new connection, so a round-robin proxy in front of several webhook
    /// replicas spreads the calls, not just the connections.
    pub fn webhook_connection_reuse(mut self, reuse: bool) -> Self {
        self.webhook_connection_reuse = reuse;
        self
    }

    /// Bind `addr` and serve the Kubernetes API on it.
    pub async fn serve(self, addr: impl ToSocketAddrs) -> std::io::Result<Handle> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = Arc::new(App {
            store: Mutex::new(Store::new(self.history_limit)),
            faults: FaultControl::new(),
            admission: admission::Admission::new(self.webhook_connection_reuse),
            bookmark_interval: self.bookmark_interval,
            watches_started: AtomicU64::new(0),
            watches_expired: AtomicU64::new(0),
            access: Mutex::new(std::collections::HashSet::new()),
        });
        let (shutdown, _) = watch::channel(false);
        let shutdown = Arc::new(shutdown);
        let task = tokio::spawn(accept_loop(listener, app.clone(), shutdown.clone(), true));
        tracing::info!(url = %format!("http://{addr}"), "kube-standin listening");
        Ok(Handle {
            app,
            addr,
            shutdown,
            tasks: Mutex::new(vec![task]),
        })
    }
}

/// A running stand-in. Dropping it stops the server.
pub struct Handle {
    app: Arc<App>,
    addr: SocketAddr,
    shutdown: Arc<watch::Sender<bool>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Handle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig (YAML) for this server: plain http, a dummy bearer token, namespace
    /// `default`.
    pub fn kubeconfig_yaml(&self) -> String {
        kubeconfig_yaml(&self.url())
    }

    /// A kube-rs client for this server, configured from [`Handle::kubeconfig_yaml`] exactly as a
    /// kubeconfig file would configure it.
    pub async fn client(&self) -> Result<kube::Client, Box<dyn std::error::Error + Send + Sync>> {
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&self.kubeconfig_yaml())?;
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Write [`Handle::kubeconfig_yaml`] to `path` (for `KUBECONFIG=path`).
    pub fn kubeconfig(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    /// Write a kubeconfig whose bearer token is `token`, so that the requests of whoever uses it
    /// can be told apart in [`Handle::access_by`].
    pub fn kubeconfig_for(&self, path: impl AsRef<Path>, token: &str) -> std::io::Result<()> {
        std::fs::write(
            path,
            self.kubeconfig_yaml().replace(
                "token: kube-standin-dummy-token",
                &format!("token: {token}"),
            ),
        )
    }

    /// The distinct requests sent with bearer token `token`, as RBAC's request attributes.
    pub fn access_by(&self, token: &str) -> Vec<access::Access> {
        let log = self.app.access.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen: Vec<access::Access> = log
            .iter()
            .filter(|(t, _)| t.as_deref() == Some(token))
            .map(|(_, a)| a.clone())
            .collect();
        seen.sort();
        seen.dedup();
        seen
    }

    /// The fault knobs.
    pub fn faults(&self) -> FaultControl {
        self.app.faults.clone()
    }

    pub fn stats(&self) -> Stats {
        Stats {
            watches_started: self.app.watches_started.load(Ordering::Relaxed),
            watches_expired: self.app.watches_expired.load(Ordering::Relaxed),
        }
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.app.store().rv
    }

    /// Drop the whole watch history, as an etcd compaction would: any watch (or paginated
    /// list) from an older resourceVersion now gets 410 Expired. Open watches are not
    /// affected until they reconnect; combine with [`FaultControl::drop_watches`].
    pub fn compact_history(&self) {
        self.app.store().compact();
    }

    /// Also serve the `/_standin/*` control endpoints on a second address, which keeps
    /// accepting while the main one refuses connections. Returns the bound address.
    pub async fn serve_control(&self, addr: impl ToSocketAddrs) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(
            listener,
            self.app.clone(),
            self.shutdown.clone(),
            false,
        ));
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
        Ok(bound)
    }

    /// Stop accepting, cut open connections and wait for the server tasks to end.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

pub fn kubeconfig_yaml(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kube-standin\n  cluster:\n    server: {server}\nusers:\n- name: kube-standin\n  user:\n    token: kube-standin-dummy-token\ncontexts:\n- name: kube-standin\n  context:\n    cluster: kube-standin\n    user: kube-standin\n    namespace: default\ncurrent-context: kube-standin\npreferences: {{}}\n"
    )
}

/// Accept connections until shutdown. The main listener (`faultable`) closes its socket and
/// cuts its connections while the fault knobs say to refuse connections, and rebinds the
/// same address when they stop saying so.
async fn accept_loop(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: Arc<watch::Sender<bool>>,
    faultable: bool,
) {
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let router = api::router(app.clone(), !faultable);
    let mut shutdown_rx = shutdown.subscribe();
    let mut conn_rx = app.faults.conn_changes();
    let mut listener = Some(listener);
    // Bumped to cut every open connection of this listener.
    let (cut_tx, _) = watch::channel(0u64);
    loop {
        if *shutdown_rx.borrow() {
            break;
        }
        let (refusing, until) = if faultable {
            app.faults.refusing()
        } else {
            (false, None)
        };
        if refusing {
            if listener.take().is_some() {
                cut_tx.send_modify(|v| *v += 1);
                app.faults.set_listening(false);
                tracing::info!(%addr, "refusing connections (fault)");
            }
            let wait = until.map(|u| u.saturating_duration_since(std::time::Instant::now()));
            tokio::select! {
                _ = shutdown_rx.changed() => {}
                _ = conn_rx.changed() => {}
                _ = async { match wait { Some(w) => tokio::time::sleep(w).await, None => std::future::pending().await } } => {}
            }
            continue;
        }
        let Some(l) = listener.as_ref() else {
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    tracing::info!(%addr, "accepting connections again");
                    listener = Some(l);
                    app.faults.set_listening(true);
                }
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "rebinding failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            continue;
        };
        tokio::select! {
            _ = shutdown_rx.changed() => {}
            _ = conn_rx.changed() => {}
            accepted = l.accept() => {
                let Ok((stream, _peer)) = accepted else { continue };
                if faultable && app.faults.refusing().0 {
                    continue; // refused since the last look: close it at once
                }
                let _ = stream.set_nodelay(true);
                let svc = TowerToHyperService::new(router.clone());
                let mut cut = cut_tx.subscribe();
                let mut stop = shutdown.subscribe();
                tokio::spawn(async move {
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = cut.changed() => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                });
            }
        }
    }
    cut_tx.send_modify(|v| *v += 1);
}
