//! Paced, open-loop HTTP/2-over-TLS load generator for latency at a fixed request rate.
//!
//! It POSTs one body to one URL at `--rate` requests per second in total, spread over
//! `--connections` HTTP/2 connections (one reqwest `Client` each, h2 chosen by ALPN), and
//! reports the latency distribution. It exists to answer "what is p99 at 5,000 req/s?"
//! honestly, which `h2load --rps` cannot: h2load releases each client's requests in 10 ms
//! ticks, so 5,000 req/s arrives as bursts of ~50 and its p50/p99 measure how long a burst
//! takes to drain, not how the service answers a steady stream.
//!
//! Schedule: request `i` is due at `start + i / rate`, exactly evenly spaced. The generator
//! is open loop: every request runs in its own task and nothing waits for earlier responses,
//! so a slow server gets more requests in flight, as it would from a real apiserver.
//!
//! Latency is measured from each request's *due* time, not from when it was actually sent.
//! That is the standard correction for coordinated omission: if the generator (or a stalled
//! server holding it up) sends late, the wait counts against the measurement instead of
//! silently disappearing. The flip side is that the generator's own lateness is charged to
//! the service, so it also reports how late requests started (`lag`) and the latency
//! measured from the actual start, to show how much of the figure is the generator's.
//!
//! Two pacers (`--pacer`):
//! - `thread` (default): a dedicated OS thread sleeps (`std::thread::sleep`, a high-resolution
//!   timer) until each due time and spawns the request onto the runtime. On a 2-core machine
//!   at 5,000 req/s requests start ~0.12 ms after their due time (median; p99 ~0.3 ms),
//!   at the cost of a runtime wake-up per request (~twice the client CPU of `tick`).
//! - `tick`: one tokio task sleeps until the next due time and then launches every request
//!   whose due time has passed. tokio's timer has 1 ms granularity, so requests leave in
//!   groups of about rate/1000, ~0.8 ms late at the median and ~2 ms at p99 in the same
//!   setting, and all of that is charged as latency: too coarse for a 2 ms target. Kept to
//!   show the difference.
//!
//! The runtime has `--threads` worker threads (default 1), so on a 2-core machine the other
//! core is left to the server under test (with 2, client and server threads oversubscribe
//! the cores and the tails get much worse).
//!
//! Output: a short human header and one line for scripts, e.g.
//! `loadgen: rate=5000 sent=50000 ok=50000 errors=0 achieved=4999.8/s p50_ms=0.412 p90_ms=...
//! p99_ms=... p999_ms=... max_ms=...` (percentiles over the requests answered with
//! `--expect-status`). Exits non-zero if any request failed or got another status, or if the
//! achieved rate is below 95% of the requested one.
//!
//! ```text
//! cargo run --release --example loadgen -- --url https://127.0.0.1:18443/mutate \
//!     --body pod-create.json --ca ca.crt --rate 5000 --duration 10
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use tokio::task::JoinHandle;

#[derive(Parser, Debug)]
#[command(about = "Paced open-loop HTTP/2-over-TLS load generator (latency at a fixed rate)")]
struct Args {
    /// URL to POST to (https://...).
    #[arg(long)]
    url: String,
    /// File sent as the request body, as-is, with content-type: application/json.
    #[arg(long)]
    body: PathBuf,
    /// PEM file with the root certificate to trust.
    #[arg(long)]
    ca: PathBuf,
    /// Requests per second, in total over all connections.
    #[arg(long)]
    rate: f64,
    /// Seconds of measured load (after the warm-up).
    #[arg(long)]
    duration: f64,
    /// HTTP/2 connections (one reqwest Client each); requests go round-robin.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds of load at the same rate before the measured part, not recorded.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// The status every response must have.
    #[arg(long, default_value_t = 200)]
    expect_status: u16,
    /// tokio worker threads for the client side.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// How requests are released on schedule (see the doc comment at the top).
    #[arg(long, value_enum, default_value_t = Pacer::Thread)]
    pacer: Pacer,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Pacer {
    /// A dedicated OS thread sleeps until each due time (sub-millisecond accuracy).
    Thread,
    /// One tokio task on the runtime's 1 ms timer, releasing due requests in groups.
    Tick,
}

/// How one request ended.
enum Outcome {
    /// Answered with the expected status.
    Ok,
    /// Answered with another status.
    Status(u16),
    /// Failed before a complete response (connect, stream, body or timeout error).
    Error(String),
}

/// One finished request. Times are in microseconds.
struct Record {
    /// Counted in the results (false during the warm-up).
    measured: bool,
    outcome: Outcome,
    /// From the due time to the end of the response body.
    from_due_us: u64,
    /// From the due time to when the request's task started running.
    lag_us: u64,
    /// When the response ended, from the schedule's start.
    done_at: Duration,
}

/// Everything a request task needs, shared by all of them.
struct Target {
    clients: Vec<reqwest::Client>,
    /// Parsed once: reqwest would parse a string on every request.
    url: reqwest::Url,
    body: Bytes,
    expect_status: u16,
    start: Instant,
    warmup_n: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("loadgen: cannot start the tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<ExitCode> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number");
    }
    if !(args.duration.is_finite() && args.duration > 0.0) {
        bail!("--duration must be a positive number of seconds");
    }
    if !(args.warmup.is_finite() && args.warmup >= 0.0) {
        bail!("--warmup must be zero or a positive number of seconds");
    }
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let body = Bytes::from(
        std::fs::read(&args.body).with_context(|| format!("reading {}", args.body.display()))?,
    );
    let url = reqwest::Url::parse(&args.url).with_context(|| format!("parsing {}", args.url))?;
    let clients = connect(&args, &url, &body).await?;

    let warmup_n = (args.warmup * args.rate).round() as u64;
    let measured_n = ((args.duration * args.rate).round() as u64).max(1);
    let pacer = match args.pacer {
        Pacer::Thread => "a pacer thread (mostly asleep)",
        Pacer::Tick => "a tokio task on the 1 ms timer",
    };
    println!(
        "paced open-loop load: POST {} at {} req/s for {} s after {} s of warm-up, \
         {} HTTP/2 connection(s), paced by {pacer}; {} tokio worker thread(s) send and \
         receive, leaving the machine's other cores to the server",
        args.url,
        args.rate,
        args.duration,
        args.warmup,
        args.connections,
        args.threads.max(1),
    );
    println!(
        "latency is from each request's scheduled send time to the end of its response, \
         not from when it was actually sent (corrects for coordinated omission)"
    );

    // Give the pacer a moment so the first due times are not already past.
    let start = Instant::now() + Duration::from_millis(20);
    let target = Arc::new(Target {
        clients,
        url,
        body,
        expect_status: args.expect_status,
        start,
        warmup_n,
    });
    let schedule = Schedule {
        start,
        period: 1.0 / args.rate,
        total: warmup_n + measured_n,
    };
    let handles = pace(args.pacer, schedule, target).await?;
    let mut tally = Tally::default();
    for handle in handles {
        tally.add(handle.await.context("a request task panicked")?);
    }

    // The measured part starts when its first request is due and ends with its last
    // response; n requests make n - 1 intervals in it (just under `rate` when all is well).
    let measured_start = schedule.due(warmup_n) - start;
    let span = tally.last_done.saturating_sub(measured_start).as_secs_f64();
    let achieved = if span > 0.0 && measured_n > 1 {
        (measured_n - 1) as f64 / span
    } else {
        0.0
    };
    let errors = tally.bad_status + tally.failed;
    let (from_due, lag, from_send) = (
        sorted(tally.from_due),
        sorted(tally.lag),
        sorted(tally.from_send),
    );

    println!(
        "from actual start: p50_ms={} p99_ms={} max_ms={}; start lag behind schedule: \
         p50_ms={} p99_ms={} max_ms={}",
        ms(pct(&from_send, 0.50)),
        ms(pct(&from_send, 0.99)),
        ms(from_send.last().copied()),
        ms(pct(&lag, 0.50)),
        ms(pct(&lag, 0.99)),
        ms(lag.last().copied()),
    );
    if errors > 0 {
        println!(
            "errors: {} with a status other than {}, {} failed; first: {}",
            tally.bad_status,
            args.expect_status,
            tally.failed,
            tally.first_problem.as_deref().unwrap_or("?"),
        );
    }
    println!(
        "loadgen: rate={} sent={measured_n} ok={} errors={errors} achieved={achieved:.1}/s \
         p50_ms={} p90_ms={} p99_ms={} p999_ms={} max_ms={}",
        args.rate,
        tally.ok,
        ms(pct(&from_due, 0.50)),
        ms(pct(&from_due, 0.90)),
        ms(pct(&from_due, 0.99)),
        ms(pct(&from_due, 0.999)),
        ms(from_due.last().copied()),
    );

    let mut code = ExitCode::SUCCESS;
    if errors > 0 {
        eprintln!(
            "loadgen: FAILED: {errors} of {measured_n} requests failed or got another status"
        );
        code = ExitCode::FAILURE;
    }
    if achieved < 0.95 * args.rate {
        eprintln!(
            "loadgen: FAILED: achieved {achieved:.1} req/s, below 95% of the requested {} req/s",
            args.rate
        );
        code = ExitCode::FAILURE;
    }
    Ok(code)
}

/// Builds one client per connection and sends one request on each, one at a time, before
/// any load: that opens the client's connection (so the load does not race to open several
/// per client) and checks that ALPN chose HTTP/2 and the status is the expected one.
async fn connect(args: &Args, url: &reqwest::Url, body: &Bytes) -> Result<Vec<reqwest::Client>> {
    let ca_pem =
        std::fs::read(&args.ca).with_context(|| format!("reading {}", args.ca.display()))?;
    let ca = reqwest::Certificate::from_pem(&ca_pem)
        .with_context(|| format!("parsing {}", args.ca.display()))?;
    let mut clients = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let client = reqwest::Client::builder()
            .add_root_certificate(ca.clone())
            .timeout(Duration::from_secs_f64(args.timeout))
            .build()
            .context("building the HTTP client")?;
        let response = client
            .post(url.clone())
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .with_context(|| format!("first request on connection {i} to {url}"))?;
        let (version, status) = (response.version(), response.status().as_u16());
        response
            .bytes()
            .await
            .context("reading the first response")?;
        if version != reqwest::Version::HTTP_2 {
            bail!("connection {i} answered over {version:?}, not HTTP/2 (ALPN did not pick h2)");
        }
        if status != args.expect_status {
            bail!(
                "first request on connection {i} answered {status}, want {}",
                args.expect_status
            );
        }
        clients.push(client);
    }
    Ok(clients)
}

/// When each request is due: request `i` at `start + i * period`.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    /// Seconds between requests (1 / rate).
    period: f64,
    /// Requests in all, warm-up included.
    total: u64,
}

impl Schedule {
    fn due(self, i: u64) -> Instant {
        self.start + Duration::from_secs_f64(i as f64 * self.period)
    }
}

/// Starts every request of `schedule` in its own task, on time, without waiting for any
/// response (open loop), and returns their handles once the last one has started.
async fn pace(
    pacer: Pacer,
    schedule: Schedule,
    target: Arc<Target>,
) -> Result<Vec<JoinHandle<Record>>> {
    let capacity = usize::try_from(schedule.total).unwrap_or(0);
    match pacer {
        Pacer::Thread => {
            let runtime = tokio::runtime::Handle::current();
            let pacer = std::thread::Builder::new()
                .name("loadgen-pacer".into())
                .spawn(move || {
                    let mut handles = Vec::with_capacity(capacity);
                    for i in 0..schedule.total {
                        let due = schedule.due(i);
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        handles.push(runtime.spawn(request(Arc::clone(&target), i, due)));
                    }
                    handles
                })
                .context("starting the pacer thread")?;
            tokio::task::spawn_blocking(move || pacer.join())
                .await
                .context("waiting for the pacer thread")?
                .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))
        }
        Pacer::Tick => {
            let mut handles = Vec::with_capacity(capacity);
            let mut next = 0;
            while next < schedule.total {
                // tokio's timer fires on whole milliseconds: this wakes at the first 1 ms
                // tick at or after the next due time, then releases everything due by now.
                tokio::time::sleep_until(schedule.due(next).into()).await;
                let now = Instant::now();
                while next < schedule.total && schedule.due(next) <= now {
                    let due = schedule.due(next);
                    handles.push(tokio::spawn(request(Arc::clone(&target), next, due)));
                    next += 1;
                }
            }
            Ok(handles)
        }
    }
}

/// The measured requests' results, merged from every request task.
#[derive(Default)]
struct Tally {
    ok: u64,
    bad_status: u64,
    failed: u64,
    first_problem: Option<String>,
    /// Per request answered with the expected status, in microseconds: from its due time
    /// to the end of the response, from the due time to its task's start, and the difference.
    from_due: Vec<u64>,
    lag: Vec<u64>,
    from_send: Vec<u64>,
    /// When the last measured response ended, from the schedule's start.
    last_done: Duration,
}

impl Tally {
    fn add(&mut self, record: Record) {
        if !record.measured {
            return;
        }
        self.last_done = self.last_done.max(record.done_at);
        match record.outcome {
            Outcome::Ok => {
                self.ok += 1;
                self.from_due.push(record.from_due_us);
                self.lag.push(record.lag_us);
                self.from_send
                    .push(record.from_due_us.saturating_sub(record.lag_us));
            }
            Outcome::Status(status) => {
                self.bad_status += 1;
                self.first_problem
                    .get_or_insert_with(|| format!("status {status}"));
            }
            Outcome::Error(e) => {
                self.failed += 1;
                self.first_problem.get_or_insert(e);
            }
        }
    }
}

fn sorted(mut values: Vec<u64>) -> Vec<u64> {
    values.sort_unstable();
    values
}

/// Sends request `i`, due at `due_at`, and times it.
async fn request(target: Arc<Target>, i: u64, due_at: Instant) -> Record {
    let began = Instant::now();
    let client = &target.clients[i as usize % target.clients.len()];
    let result = async {
        let response = client
            .post(target.url.clone())
            .header("content-type", "application/json")
            .body(target.body.clone())
            .send()
            .await?;
        let status = response.status().as_u16();
        // The whole body: a response is done when its last byte is in.
        response.bytes().await?;
        Ok::<u16, reqwest::Error>(status)
    }
    .await;
    let done = Instant::now();
    let outcome = match result {
        Ok(status) if status == target.expect_status => Outcome::Ok,
        Ok(status) => Outcome::Status(status),
        Err(e) => Outcome::Error(format!("{e:#}")),
    };
    Record {
        measured: i >= target.warmup_n,
        outcome,
        from_due_us: micros(done.saturating_duration_since(due_at)),
        lag_us: micros(began.saturating_duration_since(due_at)),
        done_at: done.saturating_duration_since(target.start),
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Nearest-rank percentile of sorted values (the same rule as benches/load/run.sh).
fn pct(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    // The epsilon keeps a product that should be whole but lands just above (f64) from
    // rounding up to the next rank.
    let rank = (p * sorted.len() as f64 - 1e-9).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Microseconds as milliseconds with three decimals, or "-" when there is no value.
fn ms(us: Option<u64>) -> String {
    us.map_or_else(|| "-".to_owned(), |us| format!("{:.3}", us as f64 / 1000.0))
}
