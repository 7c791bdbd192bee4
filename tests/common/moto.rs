//! The EC2 emulator for integration tests: moto's `moto_server` from the test virtualenv
//! (`NODEWRIGHT_TEST_VENV`, else `<repo>/.venv-test`, made by `scripts/setup-test-deps.sh`), on a
//! free loopback port, killed on drop. Std only, so any test binary can use it.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long moto may take to import and bind (it loads every service's models).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of moto's log kept for failure messages.
const LOG_LINES: usize = 200;

/// A running `moto_server`.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    log: Arc<Mutex<VecDeque<String>>>,
}

/// Where `moto_server` is installed.
pub fn moto_server_path() -> PathBuf {
    let venv = std::env::var_os("NODEWRIGHT_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-test"));
    venv.join("bin").join("moto_server")
}

/// A loopback port nothing listens on (at the time of asking).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral loopback port")
        .port()
}

impl Moto {
    /// Starts moto and waits until it accepts connections. Panics (never skips) when moto is
    /// not installed.
    pub fn start() -> Moto {
        let bin = moto_server_path();
        assert!(
            bin.is_file(),
            "{} not found: run `bash scripts/setup-test-deps.sh` to install the test tools \
             (moto[server] from scripts/requirements-test.txt)",
            bin.display()
        );
        // The port is free when asked but could be taken before moto binds it: try a few.
        let mut last_failure = String::new();
        for _ in 0..3 {
            match Self::try_start(&bin, free_port()) {
                Ok(moto) => return moto,
                Err(failure) => last_failure = failure,
            }
        }
        panic!("moto_server did not start: {last_failure}");
    }

    fn try_start(bin: &PathBuf, port: u16) -> Result<Moto, String> {
        let mut child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        // moto logs every request to stderr: drain it, or the pipe fills and moto blocks.
        let log = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_LINES)));
        let stderr = child.stderr.take().expect("piped stderr");
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut log = log.lock().unwrap();
                    if log.len() == LOG_LINES {
                        log.pop_front();
                    }
                    log.push_back(line);
                }
            });
        }
        let mut moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = moto.child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("exited with {status}: {}", moto.logs()));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(moto);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not listening after {START_TIMEOUT:?}: {}",
                    moto.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines moto logged.
    pub fn logs(&self) -> String {
        let log = self.log.lock().unwrap();
        log.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
