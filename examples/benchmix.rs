//! Prints the Karpenter scheduling-benchmark pod mix as individual Pod YAML documents, for
//! `nodewright plan` and its benchmarks.
//!
//! Five equal groups (the remainder goes to the first):
//! 1. `generic`: no constraint;
//! 2. `zone-spread`: topology spread over zones, maxSkew 1, DoNotSchedule, selecting its group;
//! 3. `hostname-spread`: the same over nodes;
//! 4. `zone-affinity`: required pod affinity to its own group within a zone;
//! 5. `hostname-anti-affinity`: required pod anti-affinity to its own group per node.
//!
//! Each pod runs one `pause` container whose cpu and memory requests are drawn from fixed lists by
//! a pseudo-random generator seeded with `--seed`, so a seed always gives the same mix.
//!
//! ```text
//! cargo run --example benchmix -- --pods 20000 [--seed 1] [--namespace default] > mix.yaml
//! ```

use std::io::{BufWriter, Write};
use std::process::ExitCode;

const USAGE: &str = "usage: benchmix --pods N [--seed S] [--namespace NAMESPACE]";

const CPU: [&str; 5] = ["100m", "250m", "500m", "1000m", "1500m"];
const MEMORY: [&str; 6] = ["100Mi", "256Mi", "512Mi", "1024Mi", "2048Mi", "4096Mi"];
const ZONE: &str = "topology.kubernetes.io/zone";
const HOSTNAME: &str = "kubernetes.io/hostname";

#[derive(Clone, Copy)]
enum Group {
    Generic,
    ZoneSpread,
    HostnameSpread,
    ZoneAffinity,
    HostnameAntiAffinity,
}

impl Group {
    const ALL: [Group; 5] = [
        Group::Generic,
        Group::ZoneSpread,
        Group::HostnameSpread,
        Group::ZoneAffinity,
        Group::HostnameAntiAffinity,
    ];

    fn name(self) -> &'static str {
        match self {
            Group::Generic => "generic",
            Group::ZoneSpread => "zone-spread",
            Group::HostnameSpread => "hostname-spread",
            Group::ZoneAffinity => "zone-affinity",
            Group::HostnameAntiAffinity => "hostname-anti-affinity",
        }
    }

    /// The group's scheduling constraint, as lines of the pod spec (indented by two).
    fn constraint(self) -> String {
        let name = self.name();
        let spread = |key: &str| {
            format!(
                "  topologySpreadConstraints:\n  - maxSkew: 1\n    topologyKey: {key}\n    whenUnsatisfiable: DoNotSchedule\n    labelSelector:\n      matchLabels:\n        group: {name}\n"
            )
        };
        let affinity = |kind: &str, key: &str| {
            format!(
                "  affinity:\n    {kind}:\n      requiredDuringSchedulingIgnoredDuringExecution:\n      - topologyKey: {key}\n        labelSelector:\n          matchLabels:\n            group: {name}\n"
            )
        };
        match self {
            Group::Generic => String::new(),
            Group::ZoneSpread => spread(ZONE),
            Group::HostnameSpread => spread(HOSTNAME),
            Group::ZoneAffinity => affinity("podAffinity", ZONE),
            Group::HostnameAntiAffinity => affinity("podAntiAffinity", HOSTNAME),
        }
    }
}

/// splitmix64: a tiny, good-enough generator that needs no crate.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn pick<'a>(&mut self, choices: &[&'a str]) -> &'a str {
        choices[(self.next() % choices.len() as u64) as usize]
    }
}

pub struct Args {
    pub pods: usize,
    pub seed: u64,
    pub namespace: String,
}

fn parse_args() -> Result<Args, String> {
    let mut pods = None;
    let mut seed = 1;
    let mut namespace = "default".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = inline
            .or_else(|| args.next())
            .ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--pods" => {
                pods = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--pods: not a count: {value}"))?,
                )
            }
            "--seed" => {
                seed = value
                    .parse()
                    .map_err(|_| format!("--seed: not an unsigned integer: {value}"))?
            }
            "--namespace" => namespace = value,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let pods = pods.ok_or("--pods is required")?;
    Ok(Args {
        pods,
        seed,
        namespace,
    })
}

pub fn write_mix(out: &mut impl Write, args: &Args) -> std::io::Result<()> {
    let mut rng = SplitMix(args.seed);
    let base = args.pods / Group::ALL.len();
    let remainder = args.pods % Group::ALL.len();
    for (g, group) in Group::ALL.into_iter().enumerate() {
        let count = base + if g == 0 { remainder } else { 0 };
        let name = group.name();
        let constraint = group.constraint();
        for i in 0..count {
            let cpu = rng.pick(&CPU);
            let memory = rng.pick(&MEMORY);
            write!(
                out,
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: benchmix-{name}-{i}\n  namespace: {namespace}\n  labels:\n    app: benchmix\n    group: {name}\nspec:\n{constraint}  containers:\n  - name: pause\n    image: registry.k8s.io/pause:3.9\n    resources:\n      requests:\n        cpu: {cpu}\n        memory: {memory}\n",
                namespace = args.namespace,
            )?;
        }
    }
    out.flush()
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) if message.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("benchmix: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    match write_mix(&mut out, &args) {
        Ok(()) => ExitCode::SUCCESS,
        // `benchmix ... | head` is fine.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benchmix: {e}");
            ExitCode::FAILURE
        }
    }
}
