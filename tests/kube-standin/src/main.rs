//! `kube-standin --listen 127.0.0.1:PORT [--kubeconfig-out FILE] [--control-listen ADDR]`

use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

/// An in-memory Kubernetes API server stand-in for tests (plain HTTP).
#[derive(Parser, Debug)]
#[command(name = "kube-standin", version)]
struct Args {
    /// Address to serve the Kubernetes API on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Write a kubeconfig for the server to this file.
    #[arg(long)]
    kubeconfig_out: Option<PathBuf>,
    /// Also serve the /_standin/* control endpoints here; this listener keeps accepting
    /// while the fault knobs make the main one refuse connections.
    #[arg(long)]
    control_listen: Option<String>,
    /// Write events kept for watch replay; older resourceVersions get 410 Expired.
    #[arg(long, default_value_t = 10_000)]
    history_limit: usize,
    /// Interval between watch bookmarks, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    bookmark_interval_ms: u64,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let handle = kube_standin::StandIn::builder()
        .history_limit(args.history_limit)
        .bookmark_interval(Duration::from_millis(args.bookmark_interval_ms.max(1)))
        .serve(args.listen.as_str())
        .await?;
    if let Some(path) = &args.kubeconfig_out {
        handle.kubeconfig(path)?;
        tracing::info!(path = %path.display(), "kubeconfig written");
    }
    if let Some(control) = &args.control_listen {
        let addr = handle.serve_control(control.as_str()).await?;
        tracing::info!(url = %format!("http://{addr}"), "control endpoints listening");
        println!("kube-standin control http://{addr}");
    }
    // One line on stdout, for scripts and tests that start the binary.
    println!("kube-standin listening on {}", handle.url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    handle.shutdown().await;
    Ok(())
}
