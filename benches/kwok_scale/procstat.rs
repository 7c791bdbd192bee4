//! Processes: RSS and CPU from /proc, and the nodewright process the benchmark runs.

use super::*;

pub(crate) fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// utime + stime of the whole process (threads that have exited included), in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// A `/proc/PID/status` field in kB (VmRSS, VmHWM).
pub(crate) fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix(key)?
            .strip_prefix(':')?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

/// The pid of a running `program` (by its file name) one of whose arguments contains `needle`.
pub(crate) fn find_pid(program: &str, needle: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let named = args
            .first()
            .is_some_and(|a| Path::new(a).file_name().is_some_and(|f| f == program));
        if named && args.iter().skip(1).any(|a| a.contains(needle)) {
            return Some(pid);
        }
    }
    None
}

/// A process watched over a window: CPU seconds at the start, RSS and peak at the end.
pub(crate) struct Watched {
    pub(crate) name: String,
    pub(crate) pid: Option<u32>,
    pub(crate) cpu_start: f64,
}

impl Watched {
    pub(crate) fn new(name: &str, pid: Option<u32>) -> Watched {
        Watched {
            name: name.into(),
            pid,
            cpu_start: pid.and_then(cpu_seconds).unwrap_or(0.0),
        }
    }

    /// "name: CPU s over the window, RSS MiB now, peak MiB".
    pub(crate) fn line(&self, window: Duration) -> String {
        let Some(pid) = self.pid else {
            return format!("{:<23} (process not found)", self.name);
        };
        let cpu = cpu_seconds(pid).unwrap_or(self.cpu_start) - self.cpu_start;
        format!(
            "{:<23} cpu {:>8.1} s ({:>5.1} % of one core)   rss {:>8} now, {:>8} peak",
            self.name,
            cpu,
            100.0 * cpu / window.as_secs_f64().max(1e-9),
            mib(status_kib(pid, "VmRSS")),
            mib(status_kib(pid, "VmHWM")),
        )
    }
}

pub(crate) fn mib(kib: Option<u64>) -> String {
    match kib {
        Some(k) => format!("{:.1} MiB", k as f64 / 1024.0),
        None => "-".into(),
    }
}

/// `nodewright serve`, killed when dropped (and, by PR_SET_PDEATHSIG, when this binary dies).
pub(crate) struct Nodewright {
    pub(crate) child: Child,
    pub(crate) metrics: String,
    pub(crate) https: String,
    pub(crate) log: PathBuf,
}

impl Drop for Nodewright {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nodewright {
    pub(crate) async fn start(
        plane: &ControlPlane,
        install: &Install,
        certs: &Path,
        label: &str,
        log_level: &str,
    ) -> Nodewright {
        let (port, metrics_port) = (controlplane::free_port(), controlplane::free_port());
        let log = plane.dir.join(format!("nodewright-{label}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_nodewright"));
        command
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .arg("--config")
            .arg(certs.join("config.yaml"))
            .arg("--tls-cert")
            .arg(certs.join("tls.crt"))
            .arg("--tls-key")
            .arg(certs.join("tls.key"))
            .args(["--namespace", &install.namespace])
            .env("KUBECONFIG", &install.kubeconfig)
            .env("NODEWRIGHT_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().expect("start nodewright");
        let server = Nodewright {
            child,
            metrics: format!("http://127.0.0.1:{metrics_port}"),
            https: format!("https://127.0.0.1:{port}"),
            log,
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let status = http
                .get(format!("{}/readyz", server.metrics))
                .send()
                .await
                .map(|r| r.status().as_u16());
            if matches!(status, Ok(200)) {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "nodewright not ready within 120 s; log {}:\n{}",
                server.log.display(),
                controlplane::tail(&server.log, 60)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}
