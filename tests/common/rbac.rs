//! What `nodewright serve` really asks of the Kubernetes API, for the chart's RBAC check.
//!
//! Tests give nodewright a kubeconfig with its own bearer token ([`TOKEN`]); at the end each
//! writes the distinct requests the stand-in saw with that token, as RBAC request attributes, to
//! `$CARGO_TARGET_TMPDIR/rbac-observed/<test>.jsonl`. `scripts/chart-check.py` then checks that
//! the chart's ClusterRole and Role allow every one of them.

use std::io::Write;
use std::path::PathBuf;

use kube_standin::Handle;

/// The bearer token of nodewright's kubeconfig in these tests (its ServiceAccount).
pub const TOKEN: &str = "nodewright-serviceaccount";

/// Where the observations go.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rbac-observed")
}

/// Write a kubeconfig for nodewright (token [`TOKEN`]) to `path`.
pub fn kubeconfig(standin: &Handle, path: &std::path::Path) {
    standin.kubeconfig_for(path, TOKEN).unwrap();
}

/// Record what nodewright asked of `standin`, under the name of the running test (the test
/// harness names each test's thread after it) prefixed by `file`.
pub fn record(standin: &Handle, file: &str) {
    let thread = std::thread::current();
    let test = format!(
        "{file}-{}",
        thread.name().unwrap_or("unnamed").replace("::", "-")
    );
    let seen = standin.access_by(TOKEN);
    assert!(
        !seen.is_empty(),
        "nodewright made no API request with its kubeconfig"
    );
    std::fs::create_dir_all(dir()).unwrap();
    let mut file = std::fs::File::create(dir().join(format!("{test}.jsonl"))).unwrap();
    for access in seen {
        writeln!(file, "{}", serde_json::to_string(&access).unwrap()).unwrap();
    }
}
